"""Why folder throughput is what it is: `Classifier.predict_many` under different thread settings.

    python bench/throughput_variants.py --data ../shared/data/chest_xray --models exported \
        --out bench/results_throughput_variants.json

In-process, over the test split, timing around the loop only. Every variant gets one warm-up
pass, then the variants run round-robin for --runs rounds (so background load drifts hit all
of them alike); medians are reported, with process CPU time per image (all threads).
Rows: the parts alone (decode+preprocess with 1 and N threads, the model alone at batch 32),
then predict_many with backend threads x decode threads, onnxruntime thread spinning off,
OpenCV's own thread pool off, and larger batches. A variant that fails is recorded with its
error. Diagnostic only: settings are changed from outside the package (session options,
cv2.setNumThreads), never the package itself.
"""

from __future__ import annotations

import argparse
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
    ap.add_argument("--runs", type=int, default=5, help="round-robin rounds after the warm-up")
    ap.add_argument("--out", type=Path, default=Path("bench/results_throughput_variants.json"))
    ap.add_argument("--md", type=Path, default=None)
    ap.add_argument(
        "--quiet-load",
        type=float,
        default=0.0,
        help="first wait until the 1-min load average is <= this (0: don't wait)",
    )
    ap.add_argument("--quiet-timeout", type=float, default=1800.0)
    args = ap.parse_args(argv)
    quiet = bl.wait_for_quiet(args.quiet_load, args.quiet_timeout)
    models = args.models.resolve()
    record = bl.run_record([str(Path(sys.argv[0])), *argv])
    record["wait_for_quiet"] = quiet
    print(f"load average at start: {record['loadavg_start']}", flush=True)

    import cv2

    from edge_pneumo import Classifier
    from edge_pneumo.device.runtime import default_threads

    n_cores = default_threads()
    paths = [p for p, _ in bl.test_images(args.data.resolve())]
    n = len(paths)
    cv_default = cv2.getNumThreads()
    base = Classifier.load(models, threads=1)
    pp = base.preprocessing
    onnx_path = base.entry.path(base.manifest.folder)
    X = np.stack([pp.load(p)[0] for p in paths]).astype(np.float32)

    variants: list[dict] = []

    def add(name, desc, setup):
        """setup() -> a callable that runs the whole pass once; built lazily so a failure stays in its row."""
        variants.append(
            {"name": name, "desc": desc, "setup": setup, "status": "pending", "error": None, "times_s": [], "cpu_s": []}
        )

    def decode_serial():
        return lambda: [pp.load(p) for p in paths]

    def decode_pool():
        def fn():
            with ThreadPoolExecutor(n_cores) as ex:
                list(ex.map(pp.load, paths))

        return fn

    def model_only(threads, spinning):
        def setup():
            s = session(onnx_path, threads, spinning)
            name_in = s.get_inputs()[0].name

            def fn():
                for i in range(0, n, 32):
                    s.run(None, {name_in: X[i : i + 32]})

            return fn

        return setup

    def pm(threads=None, decode=None, batch=32, spinning=None, cv_threads=None):
        """spinning / cv_threads: None keeps what the package does; True/False or a number force it."""

        def setup():
            clf = Classifier.load(models, threads=threads)
            if spinning is not None:
                clf.backend.session = session(onnx_path, threads or n_cores, spinning)

            def fn():
                if cv_threads is not None:
                    cv2.setNumThreads(cv_threads)
                try:
                    k = 0
                    for r in clf.predict_many(paths, batch_size=batch, decode_threads=decode):
                        if not r.ok:
                            raise RuntimeError(r.error)
                        k += 1
                    if k != n:
                        raise RuntimeError(f"{k} results for {n} images")
                finally:
                    cv2.setNumThreads(cv_default)

            return fn

        return setup

    add("decode_1thread", "Preprocessing.load for every image, 1 thread", decode_serial)
    add(f"decode_{n_cores}threads", f"Preprocessing.load, ThreadPoolExecutor({n_cores})", decode_pool)
    for th in sorted({1, n_cores}):
        for spin in (True, False):
            add(
                f"model_only_{th}t{'' if spin else '_nospin'}",
                f"onnxruntime alone on preprocessed float32, batch 32, {th} thread(s), spinning "
                f"{'on' if spin else 'off'}",
                model_only(th, spin),
            )
    try:
        from edge_pneumo.apps.infer import split_threads

        cli_m, cli_d = split_threads(n_cores, n)
    except ImportError:
        cli_m, cli_d = n_cores, n_cores
    other_cv = n_cores if cv_default == 1 else 1
    add(
        "pm_api_default",
        f"predict_many API defaults (model {n_cores} / decode {n_cores} threads); package's session options, "
        f"OpenCV threads {cv_default}",
        pm(),
    )
    add(
        "pm_cli_split",
        f"predict_many as infer --dir runs it: model {cli_m} / decode {cli_d} threads (infer_cli.split_threads)",
        pm(cli_m, cli_d),
    )
    add("pm_api_default_spin_on", "API defaults, onnxruntime allow_spinning forced on", pm(spinning=True))
    add("pm_api_default_spin_off", "API defaults, onnxruntime allow_spinning forced off", pm(spinning=False))
    add(
        f"pm_api_default_cv{other_cv}",
        f"API defaults, cv2.setNumThreads({other_cv}) instead of {cv_default}",
        pm(cv_threads=other_cv),
    )
    add("pm_m1_d1", "model 1 / decode 1 thread", pm(1, 1))
    add(f"pm_m1_d{n_cores}", f"model 1 / decode {n_cores} threads", pm(1, n_cores))
    add(f"pm_m{n_cores}_d1", f"model {n_cores} / decode 1 thread", pm(n_cores, 1))
    add("pm_api_default_batch8", "API defaults, batch_size=8", pm(batch=8))
    add("pm_api_default_batch128", "API defaults, batch_size=128", pm(batch=128))

    fns = {}
    for v in variants:
        try:
            fns[v["name"]] = v["setup"]()
            fns[v["name"]]()  # warm-up
        except Exception as e:
            v["status"], v["error"] = "failed", f"{type(e).__name__}: {e}"
            v["traceback"] = traceback.format_exc(limit=4)
    for i in range(args.runs):
        for v in variants:
            if v["status"] == "failed":
                continue
            try:
                t, c = time.perf_counter(), time.process_time()
                fns[v["name"]]()
                v["times_s"].append(time.perf_counter() - t)
                v["cpu_s"].append(time.process_time() - c)
                v["status"] = "ok"
            except Exception as e:
                v["status"], v["error"] = "failed", f"{type(e).__name__}: {e}"
        print(f"round {i + 1}/{args.runs}, load {bl.loadavg()}", flush=True)
    for v in variants:
        v.pop("setup", None)
        if v["times_s"]:
            med = statistics.median(v["times_s"])
            v.update(
                images_per_s=n / med,
                images_per_s_best=n / min(v["times_s"]),
                ms_per_image=1000 * med / n,
                cpu_ms_per_image=1000 * statistics.median(v["cpu_s"]) / n,
            )

    results = {"record": record, "images": n, "cores": n_cores, "rows": variants, "loadavg_end": bl.loadavg()}
    bl.write_json(args.out, results)
    md = args.md or args.out.with_name("RESULTS_throughput_variants.md")
    L = [
        "# Folder throughput variants (bench/throughput_variants.py)\n",
        f"- date (UTC): {record['date_utc']}; command: `{record['command']}`",
        f"- machine: {record['machine']['cpu_model']}, {n_cores} cores; load average start {record['loadavg_start']}, "
        f"end {results['loadavg_end']}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in record["versions"].items() if v),
        f"- {n} test images, in-process, timing around the loop only; 1 warm-up each, then {args.runs} rounds "
        "round-robin; "
        "median (and best) images/s; CPU = process CPU time (all threads) per image.\n",
        "| row | what | images/s median (best) | ms/image | CPU ms/image | status |",
        "|---|---|---|---|---|---|",
    ]
    for r in variants:
        st = r["status"] if r["status"] == "ok" else f"{r['status']}: {' '.join(str(r.get('error')).split())[:120]}"
        ips = f"{r['images_per_s']:.0f} ({r['images_per_s_best']:.0f})" if r.get("images_per_s") else "-"
        L.append(
            f"| {r['name']} | {r.get('desc', '')} | {ips} | {bl.fmt(r.get('ms_per_image'), 3)} | "
            f"{bl.fmt(r.get('cpu_ms_per_image'), 3)} | {st} |"
        )
    bl.write_text(md, "\n".join(L) + "\n")
    print(f"wrote {args.out} and {md}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
