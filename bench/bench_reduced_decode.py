"""Does decoding big JPEGs at reduced size (IMREAD_REDUCED_GRAYSCALE_2/4/8) change the predictions?

    python bench/bench_reduced_decode.py --data ../shared/data/chest_xray --models exported \
        --out bench/results_reduced_decode.json

Every test image is upscaled (cv2.resize INTER_CUBIC) to --size x --size px and written as a
JPEG (quality 95, same channels as the source) into a temporary folder, never the repository.
Each big image is then loaded twice through the package's preprocessing (the manifest's
Preprocessing, with reduced_jpeg_decode on and off; the timing alternates which goes first)
and both batches go through the same int8 ONNX backend
(`edge_pneumo.device.runtime.open_backend(path).predict(batch_uint8)`). The original 224 px images
are run too, as the reference the model was evaluated on. Reported: accuracy (labels from the
folder names, threshold from the manifest), AUC, label agreement, max/mean |delta prob|,
and decode+resize ms per image both ways (single thread).
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _benchlib as bl  # noqa: E402
import numpy as np  # noqa: E402


def predict_all(backend, xs: list[np.ndarray], batch_size: int) -> np.ndarray:
    out = []
    for i in range(0, len(xs), batch_size):
        out.append(backend.predict(np.stack(xs[i : i + batch_size])))
    return np.concatenate(out) if out else np.zeros(0, np.float32)


def scores(y: np.ndarray, p: np.ndarray, threshold: float) -> dict:
    from edge_pneumo.lab.metrics import roc_auc

    pred = p >= threshold
    d = {"n": int(len(y)), "accuracy": float(np.mean(pred == y.astype(bool)))}
    try:
        d["auc"] = float(roc_auc(y, p))
    except Exception as e:  # AUC is a bonus; never lose the row for it
        d["auc"] = None
        d["auc_error"] = str(e)
    d["sensitivity"] = float(np.mean(pred[y == 1])) if np.any(y == 1) else None
    d["specificity"] = float(np.mean(~pred[y == 0])) if np.any(y == 0) else None
    return d


def compare(a: np.ndarray, b: np.ndarray, threshold: float) -> dict:
    d = np.abs(a - b)
    return {
        "label_agreement": float(np.mean((a >= threshold) == (b >= threshold))),
        "label_flips": int(np.sum((a >= threshold) != (b >= threshold))),
        "max_abs_dprob": float(d.max()) if len(d) else None,
        "mean_abs_dprob": float(d.mean()) if len(d) else None,
        "p99_abs_dprob": float(np.percentile(d, 99)) if len(d) else None,
    }


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=Path("../shared/data/chest_xray"))
    ap.add_argument("--models", type=Path, default=Path("exported"))
    ap.add_argument("--artifact", default="onnx_int8")
    ap.add_argument("--size", type=int, default=2000, help="side of the upscaled JPEGs, px")
    ap.add_argument("--limit", type=int, default=0, help="use only this many test images (0: all)")
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--out", type=Path, default=Path("bench/results_reduced_decode.json"))
    ap.add_argument("--md", type=Path, default=None, help="default: RESULTS_reduced_decode.md beside --out")
    ap.add_argument(
        "--quiet-load",
        type=float,
        default=0.0,
        help="first wait until the 1-min load average is <= this (0: don't wait)",
    )
    ap.add_argument("--quiet-timeout", type=float, default=1800.0)
    args = ap.parse_args(argv)
    quiet = bl.wait_for_quiet(args.quiet_load, args.quiet_timeout)
    models, data = args.models.resolve(), args.data.resolve()
    md_path = args.md or args.out.with_name("RESULTS_reduced_decode.md")
    record = bl.run_record([str(Path(sys.argv[0])), *argv])
    record["wait_for_quiet"] = quiet
    print(f"load average at start: {record['loadavg_start']}", flush=True)

    from edge_pneumo.decoders.decode import jpeg_size
    from edge_pneumo.device.preprocess import Preprocessing
    from edge_pneumo.device.runtime import open_backend

    manifest = bl.load_manifest_json(models)
    threshold = float(manifest["threshold"])
    base = Preprocessing.from_dict(manifest["preprocessing"])
    pp_on = dataclasses.replace(base, reduced_jpeg_decode=True)
    pp_off = dataclasses.replace(base, reduced_jpeg_decode=False)
    onnx_file = models / (bl.artifact_file(manifest, args.artifact) or "pneumonia_int8.onnx")
    images = bl.test_images(data)
    if args.limit:
        images = images[:: max(1, len(images) // args.limit)][: args.limit]
    y = np.array([l for _, l in images], dtype=np.int64)
    results: dict = {
        "record": record,
        "model": {
            "folder": str(models),
            "artifact": args.artifact,
            "file": onnx_file.name,
            "threshold": threshold,
            "preprocessing": base.to_dict(),
        },
        "images": {
            "n": len(images),
            "size_px": [args.size, args.size],
            "source": "test split, cv2.resize INTER_CUBIC, JPEG quality 95, same channels as source",
        },
        "rows": {},
        "comparisons": {},
    }
    backend = open_backend(onnx_file, 1)  # 1 thread: the model is not what is measured here
    with tempfile.TemporaryDirectory(prefix="edge_pneumo_reduced_") as td:
        t0 = time.perf_counter()
        big = bl.upscale_images([p for p, _ in images], Path(td), args.size)
        results["images"]["make_s"] = time.perf_counter() - t0
        results["images"]["jpeg_bytes"] = bl.stats([Path(p).stat().st_size for p in big])
        sz = jpeg_size(np.fromfile(big[0], np.uint8))
        results["images"]["reduction_factor"] = next((f for f in (8, 4, 2) if sz and min(sz) // f >= 2 * base.size), 1)
        print(f"upscaled {len(big)} images in {results['images']['make_s']:.1f} s, load {bl.loadavg()}", flush=True)

        probs: dict[str, np.ndarray] = {}
        # Decode timings: interleaved, alternating which mode goes first, so cache and load hit both alike.
        xs = {"reduced_on": [], "reduced_off": []}
        ms = {"reduced_on": [], "reduced_off": []}
        errors = {"reduced_on": None, "reduced_off": None}
        pps = {"reduced_on": pp_on, "reduced_off": pp_off}
        for i, p in enumerate(big):
            order = ("reduced_on", "reduced_off") if i % 2 == 0 else ("reduced_off", "reduced_on")
            for key in order:
                if errors[key]:
                    continue
                try:
                    t = time.perf_counter()
                    x, _ = pps[key].load(p)
                    ms[key].append(1000 * (time.perf_counter() - t))
                    xs[key].append(x)
                except Exception as e:
                    errors[key] = f"{p}: {type(e).__name__}: {e}"
        for key, desc in (
            ("reduced_on", "upscaled, reduced JPEG decoding (package default)"),
            ("reduced_off", "upscaled, Preprocessing(reduced_jpeg_decode=False)"),
        ):
            row = {"desc": desc, "status": "pending", "error": errors[key]}
            try:
                if errors[key]:
                    raise RuntimeError(errors[key])
                probs[key] = predict_all(backend, xs[key], args.batch_size)
                row.update(scores(y, probs[key], threshold))
                row["decode_ms_per_image"] = bl.stats(ms[key])
                row["status"] = "ok"
            except Exception as e:
                row["status"], row["error"] = "failed", f"{type(e).__name__}: {e}"
                row["traceback"] = traceback.format_exc(limit=4)
            results["rows"][key] = row
        xs.clear()
    row = {"desc": "original test images (224 px), same preprocessing", "status": "pending", "error": None}
    try:
        t_ms, x0 = [], []
        for p, _ in images:
            t = time.perf_counter()
            x0.append(pp_on.load(p)[0])
            t_ms.append(1000 * (time.perf_counter() - t))
        probs["original"] = predict_all(backend, x0, args.batch_size)
        row.update(scores(y, probs["original"], threshold))
        row["decode_ms_per_image"] = bl.stats(t_ms)
        row["status"] = "ok"
    except Exception as e:
        row["status"], row["error"] = "failed", f"{type(e).__name__}: {e}"
    results["rows"]["original"] = row
    for a, b in (("reduced_on", "reduced_off"), ("reduced_on", "original"), ("reduced_off", "original")):
        if a in probs and b in probs:
            results["comparisons"][f"{a} vs {b}"] = compare(probs[a], probs[b], threshold)
    on, off = results["rows"].get("reduced_on", {}), results["rows"].get("reduced_off", {})
    if on.get("status") == "ok" and off.get("status") == "ok":
        results["decode_speedup"] = off["decode_ms_per_image"]["median"] / on["decode_ms_per_image"]["median"]
    results["loadavg_end"] = bl.loadavg()
    bl.write_json(args.out, results)
    bl.write_text(md_path, markdown(results))
    print(f"wrote {args.out} and {md_path}; load average at end: {results['loadavg_end']}")
    return 0


def markdown(r: dict) -> str:
    rec, im = r["record"], r["images"]
    L = [
        "# Reduced JPEG decoding: speed and effect on predictions (bench/bench_reduced_decode.py)\n",
        f"- date (UTC): {rec['date_utc']}; command: `{rec['command']}` (cwd `{rec['cwd']}`)",
        f"- machine: {rec['machine']['cpu_model']}, {rec['machine']['cores_logical']} cores; load average start "
        f"{rec['loadavg_start']}, end {r.get('loadavg_end')}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in rec["versions"].items() if v),
        f"- model: `{r['model']['folder']}/{r['model']['file']}`, threshold {r['model']['threshold']:.4f}, "
        f"intensity {r['model']['preprocessing'].get('intensity')}",
        f"- images: all {im['n']} test images upscaled to {im['size_px'][0]}x{im['size_px'][1]} px ({im['source']}), "
        f"median {im.get('jpeg_bytes', {}).get('median', 0) / 1e3:.0f} kB; reduced decoding uses "
        f"1/{im.get('reduction_factor')} "
        "scale for these\n",
        "| input | accuracy | AUC | sensitivity | specificity | decode+resize ms/img median (mean) | status |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, row in r["rows"].items():
        d = row.get("decode_ms_per_image") or {}
        dm = f"{d['median']:.2f} ({d['mean']:.2f})" if d.get("n") else "-"
        st = row["status"] if row["status"] == "ok" else f"{row['status']}: {' '.join(str(row['error']).split())[:150]}"
        L.append(
            f"| {key}: {row['desc']} | {bl.fmt(row.get('accuracy'), 4)} | {bl.fmt(row.get('auc'), 4)} | "
            f"{bl.fmt(row.get('sensitivity'), 4)} | {bl.fmt(row.get('specificity'), 4)} | {dm} | {st} |"
        )
    L += [
        "",
        "| comparison | label agreement | label flips | max abs dprob | mean abs dprob | p99 abs dprob |",
        "|---|---|---|---|---|---|",
    ]
    for k, c in r["comparisons"].items():
        L.append(
            f"| {k} | {c['label_agreement']:.4f} | {c['label_flips']} | {c['max_abs_dprob']:.5f} | "
            f"{c['mean_abs_dprob']:.5f} | {c['p99_abs_dprob']:.5f} |"
        )
    if r.get("decode_speedup"):
        L.append(
            f"\nReduced decoding is {r['decode_speedup']:.1f}x faster per image (median decode+resize, one thread)."
        )
    return "\n".join(L) + "\n"


if __name__ == "__main__":
    sys.exit(main())
