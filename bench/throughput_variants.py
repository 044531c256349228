"""Why folder throughput is what it is: `Classifier.predict_many` under different thread settings.

    python bench/throughput_variants.py --data ../shared/data/chest_xray --models exported \
        --out bench/results_throughput_variants.json

In-process, over the test split, timing around the loop only (1 warm-up pass, median of --runs).
Rows: the parts alone (decode+preprocess with 1 and N threads, the model alone at batch 32
with 1 and N threads), then predict_many with backend threads x decode threads, onnxruntime
thread spinning off, OpenCV's own thread pool off, and larger batches. A row that fails is
recorded with its error. Diagnostic only: it changes settings from outside the package
(session options, cv2.setNumThreads), never the package itself.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as bl  # noqa: E402

import numpy as np  # noqa: E402


def session(path, threads: int, spinning: bool):
    import onnxruntime as ort

    o = ort.SessionOptions()
    o.intra_op_num_threads = threads
    o.inter_op_num_threads = 1
    o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    o.log_severity_level = 3
    if not spinning:
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), sess_options=o, providers=["CPUExecutionProvider"])


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/chest_xray"))
    ap.add_argument("--models", type=Path, default=Path("exported"))
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("bench/results_throughput_variants.json"))
    ap.add_argument("--md", type=Path, default=None)
    args = ap.parse_args(argv)
    models = args.models.resolve()
    record = bl.run_record([str(Path(sys.argv[0])), *argv])
    print(f"load average at start: {record['loadavg_start']}", flush=True)

    import cv2

    from edge_pneumo import Classifier
    from edge_pneumo.runtime import default_threads

    n_cores = default_threads()
    paths = [p for p, _ in bl.test_images(args.data.resolve())]
    n = len(paths)
    rows = []

    def measure(name, desc, fn):
        row = {"name": name, "desc": desc, "status": "pending", "error": None, "times_s": [], "cpu_s": []}
        try:
            fn()  # warm-up
            for _ in range(args.runs):
                t, c = time.perf_counter(), time.process_time()
                fn()
                row["times_s"].append(time.perf_counter() - t)
                row["cpu_s"].append(time.process_time() - c)
            row["status"] = "ok"
            med = statistics.median(row["times_s"])
            row.update(images_per_s=n / med, ms_per_image=1000 * med / n,
                       cpu_ms_per_image=1000 * statistics.median(row["cpu_s"]) / n)
        except Exception as e:
            row["status"], row["error"] = "failed", f"{type(e).__name__}: {e}"
            row["traceback"] = traceback.format_exc(limit=4)
        rows.append(row)
        print(f"  {name}: {bl.fmt(row.get('images_per_s'), 0)} img/s, load {bl.loadavg()}", flush=True)

    base = Classifier.load(models, threads=1)
    pp = base.preprocessing
    X = np.stack([pp.load(p)[0] for p in paths])

    measure("decode_1thread", "Preprocessing.load for every image, 1 thread", lambda: [pp.load(p) for p in paths])
    def decode_pool():
        with ThreadPoolExecutor(n_cores) as ex:
            list(ex.map(pp.load, paths))
    measure(f"decode_{n_cores}threads", f"Preprocessing.load, ThreadPoolExecutor({n_cores})", decode_pool)
    for th in sorted({1, n_cores}):
        for spin in (True, False):
            try:
                s = session(base.entry.path(base.manifest.folder), th, spin)
                name_in = s.get_inputs()[0].name
                Xf = X.astype(np.float32)
                def model_only(s=s, name_in=name_in, Xf=Xf):
                    for i in range(0, n, 32):
                        s.run(None, {name_in: Xf[i : i + 32]})
                measure(f"model_only_{th}t{'' if spin else '_nospin'}", f"onnxruntime alone, batch 32, {th} thread(s), spinning {'on' if spin else 'off'}", model_only)
            except Exception as e:
                rows.append({"name": f"model_only_{th}t", "status": "failed", "error": str(e)})

    def pm(clf, decode_threads=None, batch=32):
        def fn():
            k = 0
            for r in clf.predict_many(paths, batch_size=batch, decode_threads=decode_threads):
                if not r.ok:
                    raise RuntimeError(r.error)
                k += 1
            if k != n:
                raise RuntimeError(f"{k} results")
        return fn

    for bt, dt in ((None, None), (1, 1), (1, n_cores), (n_cores, 1)):
        label_b = bt or f"{n_cores} (default)"
        label_d = dt or f"{n_cores} (default)"
        try:
            clf = Classifier.load(models, threads=bt)
            measure(f"predict_many_b{bt or 'def'}_d{dt or 'def'}", f"predict_many: backend threads {label_b}, decode threads {label_d}, batch 32", pm(clf, dt))
        except Exception as e:
            rows.append({"name": f"predict_many_b{bt}_d{dt}", "status": "failed", "error": str(e)})
    # onnxruntime without spinning threads, default threads elsewhere
    try:
        clf = Classifier.load(models)
        clf.backend.session = session(clf.entry.path(clf.manifest.folder), n_cores, False)
        measure("predict_many_nospin", "predict_many defaults, onnxruntime session.intra_op.allow_spinning=0", pm(clf))
    except Exception as e:
        rows.append({"name": "predict_many_nospin", "status": "failed", "error": str(e)})
    # OpenCV's own thread pool off (cv2.resize may fan out to its threads inside each decode thread)
    prev = cv2.getNumThreads()
    try:
        cv2.setNumThreads(1)
        clf = Classifier.load(models)
        measure("predict_many_cv1", "predict_many defaults, cv2.setNumThreads(1)", pm(clf))
        clf.backend.session = session(clf.entry.path(clf.manifest.folder), n_cores, False)
        measure("predict_many_cv1_nospin", "predict_many defaults, cv2.setNumThreads(1) + allow_spinning=0", pm(clf))
        clf1 = Classifier.load(models, threads=1)
        measure("predict_many_cv1_b1_ddef", f"predict_many backend 1 thread, decode {n_cores}, cv2.setNumThreads(1)", pm(clf1))
    except Exception as e:
        rows.append({"name": "predict_many_cv1", "status": "failed", "error": str(e)})
    finally:
        cv2.setNumThreads(prev)
    for batch in (64, 128):
        try:
            clf = Classifier.load(models)
            measure(f"predict_many_batch{batch}", f"predict_many defaults, batch_size={batch}", pm(clf, None, batch))
        except Exception as e:
            rows.append({"name": f"predict_many_batch{batch}", "status": "failed", "error": str(e)})

    results = {"record": record, "images": n, "cores": n_cores, "rows": rows, "loadavg_end": bl.loadavg()}
    bl.write_json(args.out, results)
    md = args.md or args.out.with_name("RESULTS_throughput_variants.md")
    L = ["# Folder throughput variants (bench/throughput_variants.py)\n",
         f"- date (UTC): {record['date_utc']}; command: `{record['command']}`",
         f"- machine: {record['machine']['cpu_model']}, {n_cores} cores; load average start {record['loadavg_start']}, end {results['loadavg_end']}",
         "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v),
         f"- {n} test images, in-process, timing around the loop only, median of {args.runs} after 1 warm-up. "
         "CPU = process CPU time (all threads) per image.\n",
         "| row | what | images/s | ms/image | CPU ms/image | status |", "|---|---|---|---|---|---|"]
    for r in rows:
        st = r["status"] if r["status"] == "ok" else f"{r['status']}: {' '.join(str(r.get('error')).split())[:120]}"
        L.append(f"| {r['name']} | {r.get('desc', '')} | {bl.fmt(r.get('images_per_s'), 0)} | {bl.fmt(r.get('ms_per_image'), 3)} | "
                 f"{bl.fmt(r.get('cpu_ms_per_image'), 3)} | {st} |")
    bl.write_text(md, "\n".join(L) + "\n")
    print(f"wrote {args.out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
