"""Issue 27: `infer --dir` against a hand-written loop, and one-image `infer` against the minimal scripts.

    python bench/bench_folder.py                      # ~3-6 min on 2 cores; writes bench/RESULTS_folder.md
    python bench/bench_folder.py --rounds 5 --split test --max-load 1.5

1. Folder, whole processes in turn (round-robin, medians): `edge-pneumo infer --dir SPLIT --format
   json --output FILE --artifact A` against bench/folder_baseline.py (cv2 decode on 2 threads, the
   manifest's preprocessing, batches of 64, one JSON line per image) on the same artifact A, for
   int8 TFLite (LiteRT) and int8 ONNX (onnxruntime). Wall, CPU (user + sys: steadier than wall on
   a shared machine), peak RSS; images/s and ratios; the two runs' probabilities compared per image.
2. One image, whole processes in turn: `infer IMAGE` (default artifact, no device profile: int8
   TFLite with LiteRT installed) against bench/minimal_tflite.py, and `infer --artifact onnx_int8`
   against bench/minimal_onnx.py.
The device profile is pointed at a file that does not exist, so every row runs what it names.
The package's bytecode is compiled first (`compileall`, as `pip install` does; `--no-compile`
skips it): with PYTHONDONTWRITEBYTECODE set and no __pycache__, every `infer` start would compile
the package's ~25 modules from source (~30 ms) where an installed device never does.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import _benchlib as bl  # noqa: E402

RUNTIMES = {"tflite": "tflite_int8", "onnx": "onnx_int8"}
TARGET_FOLDER, TARGET_ONE = 1.3, 1.1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=default_data(), help="default: $EDGE_PNEUMO_DATA, else ../shared/...")
    ap.add_argument("--models", type=Path, default=bl.REPO_DIR / "exported")
    ap.add_argument("--split", default="train")
    ap.add_argument("--rounds", type=int, default=3, help="folder rounds (each runs every row once)")
    ap.add_argument("--image-rounds", type=int, default=9)
    ap.add_argument("--max-load", type=float, default=0.0, help="wait for this 1-min load first (0: don't)")
    ap.add_argument("--out", type=Path, default=bl.BENCH_DIR / "results_folder.json")
    ap.add_argument("--no-compile", action="store_true", help="do not compile the package's bytecode first")
    args = ap.parse_args()
    record = bl.run_record(sys.argv)
    record["bytecode"] = compile_package(not args.no_compile)
    record["quiet_wait"] = bl.wait_for_quiet(args.max_load, 900)
    manifest = bl.load_manifest_json(args.models)
    record["artifacts"] = {a["name"]: a["sha256"] for a in manifest["artifacts"] if a["name"] in RUNTIMES.values()}
    folder = args.data / args.split
    n_images = sum(1 for p in folder.rglob("*") if p.suffix.lower() in {".jpeg", ".jpg", ".png"})
    py = sys.executable
    cli = str(Path(py).parent / "edge-pneumo")
    with tempfile.TemporaryDirectory() as td:
        env = {**os.environ, "EDGE_PNEUMO_PROFILE": str(Path(td) / "no-profile.json")}
        out = Path(td)
        folder_rows = {}
        for rt, art in RUNTIMES.items():
            folder_rows[f"loop_{rt}"] = [
                py, str(bl.BENCH_DIR / "folder_baseline.py"), "--models", str(args.models), "--runtime", rt,
                "--dir", str(folder), "--output", str(out / f"loop_{rt}.jsonl"),
            ]  # fmt: skip
            folder_rows[f"infer_{rt}"] = [
                cli, "infer", "--dir", str(folder), "--model", str(args.models), "--artifact", art,
                "--format", "json", "--output", str(out / f"infer_{rt}.jsonl"),
            ]  # fmt: skip
        folder_res = run_rounds(folder_rows, args.rounds, env)
        for rt in RUNTIMES:
            folder_res[f"agreement_{rt}"] = agreement(out / f"loop_{rt}.jsonl", out / f"infer_{rt}.jsonl")
        image = str(sorted((args.data / "test" / "PNEUMONIA").glob("*.jpeg"))[0])
        flags = bl.intensity_flags(manifest)
        files = {a["name"]: str(args.models / a["file"]) for a in manifest["artifacts"]}
        one_rows = {
            "minimal_tflite": [py, str(bl.BENCH_DIR / "minimal_tflite.py"), files["tflite_int8"], image, *flags],
            "infer_default": [cli, "infer", image, "--model", str(args.models), "--format", "json"],
            "minimal_onnx": [py, str(bl.BENCH_DIR / "minimal_onnx.py"), files["onnx_int8"], image, *flags],
            "infer_onnx": [cli, "infer", image, "--model", str(args.models), "--artifact", "onnx_int8", "-f", "json"],
        }
        one = run_rounds(one_rows, args.image_rounds, env, warmup=1)
    results = {
        "record": record,
        "images": n_images,
        "split": args.split,
        "folder": folder_res,
        "one_image": {**one, "image": image},
        "loadavg_end": bl.loadavg(),
    }
    results["summary"] = summarise(results)
    bl.write_json(args.out, results)
    bl.write_text(args.out.parent / "RESULTS_folder.md", markdown(results) + kept_profile(args.out.parent))
    print((args.out.parent / "RESULTS_folder.md").read_text())


def default_data() -> Path:
    if os.environ.get("EDGE_PNEUMO_DATA"):
        return Path(os.environ["EDGE_PNEUMO_DATA"])
    for up in (bl.REPO_DIR.parent, bl.REPO_DIR.parent.parent):  # a checkout, or a worktree beside it
        if (up / "shared" / "data" / "chest_xray").is_dir():
            return up / "shared" / "data" / "chest_xray"
    return bl.REPO_DIR.parent / "shared" / "data" / "chest_xray"


def kept_profile(folder: Path) -> str:
    """The Profile section bench/profile_folder.py wrote into RESULTS_folder.md, kept as it was."""
    path = folder / "RESULTS_folder.md"
    text = path.read_text() if path.exists() else ""
    return "\n## Profile" + text.split("\n## Profile", 1)[1] if "\n## Profile" in text else ""


def compile_package(compile_it: bool) -> dict:
    """Compile the package `infer` imports (this process's edge_pneumo: the same PYTHONPATH) to
    __pycache__, as an install does; say whether its bytecode is there."""
    import compileall
    from importlib.util import find_spec

    folder = Path(find_spec("edge_pneumo").submodule_search_locations[0])
    if compile_it:
        compileall.compile_dir(str(folder), quiet=1)
    cached = sorted(folder.glob("**/__pycache__/*.pyc"))
    return {
        "package": str(folder),
        "compiled_here": compile_it,
        "pyc_files": len(cached),
        "PYTHONDONTWRITEBYTECODE": os.environ.get("PYTHONDONTWRITEBYTECODE"),
    }


def run_rounds(rows: dict[str, list[str]], rounds: int, env: dict, warmup: int = 0) -> dict:
    """Every row once per round, in turn; medians of wall, CPU and peak RSS over the timed rounds."""
    runs: dict[str, list[dict]] = {name: [] for name in rows}
    for i in range(warmup + rounds):
        for name, cmd in rows.items():
            r = bl.timed_process(cmd, env=env)
            if r["returncode"] not in (0, 1):
                raise RuntimeError(f"{name} exited {r['returncode']}: {r['stderr'][-800:]}")
            if i >= warmup:
                runs[name].append(r)
        print(f"round {i + 1}/{warmup + rounds} done, load {bl.loadavg()}", file=sys.stderr, flush=True)
    out = {}
    for name, rs in runs.items():
        out[name] = {
            "wall_s": statistics.median(r["wall_s"] for r in rs),
            "cpu_s": statistics.median(r["user_s"] + r["sys_s"] for r in rs),
            "maxrss_mb": statistics.median(r["maxrss_mb"] for r in rs),
            "walls": [round(r["wall_s"], 3) for r in rs],
        }
    return out


def agreement(loop: Path, infer: Path) -> dict:
    a = {r["path"]: r for r in map(json.loads, loop.read_text().splitlines())}
    b = {r["path"]: r for r in map(json.loads, infer.read_text().splitlines())}
    dp = [
        abs(a[p]["probability"] - b[p]["raw_probability"]) for p in a if b.get(p, {}).get("raw_probability") is not None
    ]
    statuses: dict[str, int] = {}
    for r in b.values():
        statuses[r["status"]] = statuses.get(r["status"], 0) + 1
    return {"loop_rows": len(a), "infer_rows": len(b), "max_abs_dp": max(dp) if dp else None, "statuses": statuses}


def summarise(res: dict) -> dict:
    f, o, n = res["folder"], res["one_image"], res["images"]
    s = {}
    for rt in RUNTIMES:
        loop, inf = f[f"loop_{rt}"], f[f"infer_{rt}"]
        s[rt] = {
            "loop_images_per_s": n / loop["wall_s"],
            "infer_images_per_s": n / inf["wall_s"],
            "wall_ratio": inf["wall_s"] / loop["wall_s"],
            "cpu_ratio": inf["cpu_s"] / loop["cpu_s"],
            "rss_ratio": inf["maxrss_mb"] / loop["maxrss_mb"],
        }
    for a, b in (("infer_default", "minimal_tflite"), ("infer_onnx", "minimal_onnx")):
        s[f"{a}_over_{b}"] = {k: o[a][k] / o[b][k] for k in ("wall_s", "cpu_s", "maxrss_mb")}
    return s


def markdown(res: dict) -> str:
    r, f, o, s = res["record"], res["folder"], res["one_image"], res["summary"]
    m = r["machine"]
    L = [
        "# Folder runs and one image against hand-written scripts (issue 27)",
        "",
        f"`{r['command']}`  ",
        f"{r['date_utc']}, git {r['git']['commit'][:10]}{' (package modified)' if r['git']['package_dirty'] else ''}, "
        f"{m['cpu_model']}, {m['cores_usable']} cores; load average {r['loadavg_start']} -> {res['loadavg_end']} "
        "(a shared machine: wall times move with the neighbours, CPU seconds much less).  ",
        "Artifacts: " + ", ".join(f"{k} `{v[:16]}`" for k, v in r["artifacts"].items()) + ".  ",
        _bytecode_line(r.get("bytecode")),
        "",
        f"## Folder: {res['images']} {res['split']} images, whole processes in turn, "
        f"medians of {len(f['loop_tflite']['walls'])}",
        "",
        "| runtime | loop wall | `infer --dir` wall | loop images/s | infer images/s | wall ratio | CPU ratio "
        "| peak RSS loop / infer | target <= 1.3x | max abs dp | infer statuses |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for rt in RUNTIMES:
        lp, inf, x, ag = f[f"loop_{rt}"], f[f"infer_{rt}"], s[rt], f[f"agreement_{rt}"]
        L.append(
            f"| {RUNTIMES[rt]} | {lp['wall_s']:.2f} s | {inf['wall_s']:.2f} s | {x['loop_images_per_s']:.0f} | "
            f"{x['infer_images_per_s']:.0f} | **{x['wall_ratio']:.2f}x** | {x['cpu_ratio']:.2f}x | "
            f"{lp['maxrss_mb']:.0f} / {inf['maxrss_mb']:.0f} MB | "
            f"{'met' if x['wall_ratio'] <= TARGET_FOLDER else 'not met'} "
            f"| {bl.fmt(ag['max_abs_dp'], 4)} | {ag['statuses']} |"
        )
    L += ["", "Walls per round: " + "; ".join(f"{k} {v['walls']}" for k, v in f.items() if "walls" in v), ""]
    L += [
        f"## One image, whole process, medians of {len(o['minimal_tflite']['walls'])} (after 1 warm-up round)",
        "",
        f"Image `{Path(o['image']).name}`.",
        "",
        "| row | wall | CPU | peak RSS |",
        "|---|---|---|---|",
    ]
    for k in ("minimal_tflite", "infer_default", "minimal_onnx", "infer_onnx"):
        L.append(
            f"| {k} | {o[k]['wall_s'] * 1000:.0f} ms | {o[k]['cpu_s'] * 1000:.0f} ms | {o[k]['maxrss_mb']:.1f} MB |"
        )
    L += ["", "| ratio | wall | CPU | peak RSS | target |", "|---|---|---|---|---|"]
    for k in ("infer_default_over_minimal_tflite", "infer_onnx_over_minimal_onnx"):
        x = s[k]
        met = x["wall_s"] <= TARGET_ONE and x["maxrss_mb"] <= TARGET_ONE
        L.append(
            f"| {k} | **{x['wall_s']:.2f}x** | {x['cpu_s']:.2f}x | {x['maxrss_mb']:.2f}x | "
            f"<= 1.1x wall and RSS: {'met' if met else 'not met'} |"
        )
    return "\n".join(L) + "\n"


def _bytecode_line(b: dict | None) -> str:
    if not b:
        return "Package bytecode: not recorded."
    how = "compiled before timing (as `pip install` does)" if b["compiled_here"] else "not compiled by the bench"
    return (
        f"Package bytecode: {how}; {b['pyc_files']} .pyc files; "
        f"PYTHONDONTWRITEBYTECODE={b['PYTHONDONTWRITEBYTECODE'] or 'unset'}."
    )


if __name__ == "__main__":
    main()
