"""Issue 26: the two shipped tiers side by side (`--model seed` and `--model small`), one table.

    python bench/bench_tiers.py                 # ~4-8 min on 2 cores; writes bench/RESULTS_tiers.md
    python bench/bench_tiers.py --rounds 5 --max-load 1.5

Per tier, with the artifact `infer` runs by default (int8 TFLite with LiteRT installed) and int8 ONNX:
- file size; test figures from the tier's own `compare` report (`<tier>/report.json`, the logged
  look that made it: accuracy, AUC, sensitivity, specificity at the manifest threshold, int8
  agreement with the float model, Grad-CAM deletion ratio, the guard's pass rate);
- one image: `edge-pneumo infer IMAGE --model TIER`, whole processes in turn, median wall and peak RSS;
- folder: `edge-pneumo infer --dir SPLIT --model TIER --format json --output FILE`, images/s and ms
  per image, and the model's share of it (the artifact alone on the same preprocessed images, in
  batches of 64, in this process).
This script reads no labels: its test figures are the reports' (no new look at test).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _benchlib as bl  # noqa: E402
from bench_folder import default_data, run_rounds  # noqa: E402

TIERS = ("seed", "small")
ARTIFACTS = ("tflite_int8", "onnx_int8")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data())
    ap.add_argument("--split", default="train", help="the folder timed (no labels read)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--image-rounds", type=int, default=7)
    ap.add_argument("--max-load", type=float, default=0.0)
    ap.add_argument("--out", type=Path, default=bl.BENCH_DIR / "results_tiers.json")
    args = ap.parse_args()
    record = bl.run_record(sys.argv)
    record["quiet_wait"] = bl.wait_for_quiet(args.max_load, 900)
    folders = {t: tier_folder(t) for t in TIERS}
    cli = str(Path(sys.executable).parent / "edge-pneumo")
    folder = args.data / args.split
    image = str(sorted((args.data / "test" / "PNEUMONIA").glob("*.jpeg"))[0])
    n_images = sum(1 for p in folder.rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
    with tempfile.TemporaryDirectory() as td:
        env = {**os.environ, "EDGE_PNEUMO_PROFILE": str(Path(td) / "no-profile.json")}
        one = run_rounds(
            {t: [cli, "infer", image, "--model", str(folders[t]), "--format", "json"] for t in TIERS},
            args.image_rounds,
            env,
            warmup=1,
        )
        rows = {
            f"{t}_{a}": [
                cli, "infer", "--dir", str(folder), "--model", str(folders[t]), "--artifact", a,
                "--format", "json", "--output", str(Path(td) / f"{t}_{a}.jsonl"),
            ]
            for t in TIERS
            for a in ARTIFACTS
        }  # fmt: skip
        folder_res = run_rounds(rows, args.rounds, env)
    tiers = {}
    for t in TIERS:
        manifest = bl.load_manifest_json(folders[t])
        tiers[t] = {
            "folder": str(folders[t]),
            "model": manifest.get("model") or {"name": "seed", "description": "seed CNN (64 px)"},
            "input_size": manifest["preprocessing"]["size"],
            "threshold": manifest["threshold"],
            "sizes_mb": {
                a["name"]: round((folders[t] / a["file"]).stat().st_size / 1e6, 2) for a in manifest["artifacts"]
            },
            "report": report_figures(folders[t]),
            "model_ms_per_image": {a: model_ms_per_image(folders[t], a, folder) for a in ARTIFACTS},
        }
    results = {
        "record": record,
        "images": n_images,
        "split": args.split,
        "one_image": {**one, "image": image},
        "folder": folder_res,
        "tiers": tiers,
        "loadavg_end": bl.loadavg(),
    }
    bl.write_json(args.out, results)
    bl.write_text(args.out.parent / "RESULTS_tiers.md", markdown(results))
    print((args.out.parent / "RESULTS_tiers.md").read_text())


def tier_folder(tier: str) -> Path:
    from edge_pneumo.device.tiers import resolve_model  # the CLI's own resolver (`--model NAME`)

    return Path(resolve_model(tier))


def report_figures(folder: Path) -> dict:
    """The tier's own `compare` report: figures of every row at the manifest threshold, and the checks."""
    path = folder / "report.json"
    if not path.is_file():
        return {}
    r = json.loads(path.read_text())
    rows = {row["name"]: row["metrics"] for row in r["rows"] if row.get("status") == "ok"}
    expl = (r.get("explanation") or {}).get("artifacts", {})
    guard = r.get("guard") or {}
    return {
        "file": str(path),
        "images": r.get("images"),
        "rows": {
            k: {m: v.get(m) for m in ("accuracy", "auc", "sensitivity", "specificity", "agreement")}
            for k, v in rows.items()
        },
        "deletion_ratio": {k: (v.get("deletion") or {}).get("ratio") for k, v in expl.items()},
        "int8_map_spearman": {k: (v.get("vs_float32") or {}).get("spearman_mean") for k, v in expl.items()},
        "guard": {
            "artifact": guard.get("artifact"),
            "images": guard.get("images"),
            "rejected": len(guard.get("rejected") or []),
        },
    }


def model_ms_per_image(folder: Path, artifact: str, images: Path, n: int = 512, batch: int = 64) -> float:
    """The artifact alone, on n preprocessed images of the timed folder in batches: wall ms per image."""
    from edge_pneumo.device.manifest import load_manifest
    from edge_pneumo.device.runtime import open_backend
    from edge_pneumo.lab.dataset import discover, load_images

    m = load_manifest(folder)
    entry = m.artifacts[artifact]
    backend = open_backend(entry.path(folder), threads=2)
    every = discover(images)
    samples = every[:: max(1, len(every) // n)][:n]
    x = load_images(samples, m.preprocessing).x
    backend.run(x[:batch], want=("probability", "features"))  # warm-up
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        for i in range(0, len(x), batch):
            backend.run(x[i : i + batch], want=("probability", "features"))
        times.append((time.perf_counter() - t0) * 1000 / len(x))
    return float(statistics.median(times))


def markdown(res: dict) -> str:
    r, one, f, tiers, n = res["record"], res["one_image"], res["folder"], res["tiers"], res["images"]
    L = [
        "# The two tiers side by side (issue 26)",
        "",
        f"`{r['command']}`  ",
        f"{r['date_utc']}, git {r['git']['commit'][:10]}, {r['machine']['cpu_model']}, "
        f"{r['machine']['cores_usable']} cores; load average {r['loadavg_start']} -> {res['loadavg_end']}.  ",
        "Test figures: each tier's own `compare` report (the file named in the row; no new look here). "
        f"Speed: one image `{Path(one['image']).name}` (median of {len(one['seed']['walls'])} whole processes), "
        f"folder = {n} {res['split']} images (median of {len(f['seed_tflite_int8']['walls'])} runs).",
        "",
        "| tier | input | int8 TFLite / ONNX size | accuracy | AUC | sensitivity | specificity | int8 agreement "
        "| Grad-CAM deletion ratio | one image wall / peak RSS | folder images/s (TFLite / ONNX) | ms per image "
        "(TFLite) | model's share |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t, d in tiers.items():
        rep = d["report"].get("rows", {}).get("tflite_int8", {})
        ratio = d["report"].get("deletion_ratio", {}).get("tflite_int8")
        o = one[t]
        ips = {a: n / f[f"{t}_{a}"]["wall_s"] for a in ARTIFACTS}
        ms = 1000 / ips["tflite_int8"]
        share = d["model_ms_per_image"]["tflite_int8"] / ms
        sizes = d["sizes_mb"]
        L.append(
            f"| `{t}` | {d['input_size']} px | {sizes.get('tflite_int8')} / {sizes.get('onnx_int8')} MB "
            f"| {bl.fmt(rep.get('accuracy'))} | {bl.fmt(rep.get('auc'), 4)} | {bl.fmt(rep.get('sensitivity'))} "
            f"| {bl.fmt(rep.get('specificity'))} | {bl.fmt(rep.get('agreement'), 4)} | {bl.fmt(ratio, 2)} "
            f"| {o['wall_s'] * 1000:.0f} ms / {o['maxrss_mb']:.0f} MB "
            f"| {ips['tflite_int8']:.0f} / {ips['onnx_int8']:.0f} "
            f"| {ms:.2f} | {share:.0%} |"
        )
    s, b = one["small"]["wall_s"], one["seed"]["wall_s"]
    L += [
        "",
        f"One-image wall, small over seed: **{s / b:.2f}x** (target <= 1.5x).",
        "",
        "Reports: " + "; ".join(f"`{t}`: {d['report'].get('file', 'none')}" for t, d in tiers.items()) + ".",
        "",
        "Walls per round: " + "; ".join(f"{k} {v['walls']}" for k, v in {**one, **f}.items() if isinstance(v, dict)),
        "",
    ]
    return "\n".join(L)


if __name__ == "__main__":
    main()
