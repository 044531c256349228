"""Where the CPU time of `infer` goes, stage by stage, against the hand-written scripts (issue 27).

    python bench/profile_folder.py                                  # both runtimes, prints the tables
    python bench/profile_folder.py --before DIR --write             # DIR: a copy of the package before
                                                                    # the change; writes the Profile section
                                                                    # of bench/RESULTS_folder.md

Folder: one process per artifact, one thread for everything (decoding and the model), CPU time
(`time.process_time`: steadier than wall on a shared machine). Each stage is one pass over the
same images with the package's own functions, in the order `predict_many` runs them; then the
whole of `predict_many` plus writing JSON rows, and the loop's own steps (bench/folder_baseline.py:
cv2.imread grey, resize, CLAHE, channels, batches of 64, a JSON line). Milliseconds per image,
the fastest of --rounds passes. One image: a fresh process per runtime that does what `infer IMAGE`
does, phase by phase (CPU ms and resident memory after each). `--before DIR` runs every
measurement with DIR's package too (its PYTHONPATH first), in turn with this one.
`--cprofile ARTIFACT`: the folder path under cProfile, the top functions by own time.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # as the CLI's entry point sets it

BENCH_DIR = Path(__file__).resolve().parent
bl = None  # bench/_benchlib.py, imported by main() (a one-image child imports nothing it does not time)
ARTIFACTS = ("tflite_int8", "onnx_int8")
RUNTIME_MODULE = {"tflite_int8": "ai_edge_litert.interpreter", "onnx_int8": "onnxruntime"}
SECTION = "## Profile"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, help="default: $EDGE_PNEUMO_DATA, else ../shared/...")
    ap.add_argument("--split", default="train")
    ap.add_argument("--images", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--before", type=Path, help="a folder holding the package before the change")
    ap.add_argument("--write", action="store_true", help="replace the Profile section of bench/RESULTS_folder.md")
    ap.add_argument("--cprofile", metavar="ARTIFACT")
    ap.add_argument("--child", choices=("folder", "one"), help=argparse.SUPPRESS)
    ap.add_argument("--artifact", default="tflite_int8", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child == "one":  # first, before this script imports anything heavy: the phases start from nothing
        print(json.dumps(one_image_phases(args)))
        return
    sys.path.insert(0, str(BENCH_DIR))
    global bl
    import _benchlib as bl
    from bench_folder import default_data

    args.data = args.data or default_data()
    if args.child == "folder":
        print(json.dumps(folder_stages(args)))
        return
    if args.cprofile:
        cprofile(args)
        return
    codes = {**({"before": args.before} if args.before else {}), "after": None}
    import compileall  # both packages as an install leaves them: bytecode compiled (bench_folder.py does the same)

    for code_dir in codes.values():
        compileall.compile_dir(str((code_dir or bl.REPO_DIR) / "edge_pneumo"), quiet=1)
    load_start = bl.loadavg()
    with tempfile.TemporaryDirectory() as td:
        os.environ["EDGE_PNEUMO_PROFILE"] = str(Path(td) / "profile.json")  # no profile; a private hash cache
        folder = {(c, a): child(args, code_dir, "folder", a) for a in ARTIFACTS for c, code_dir in codes.items()}
        one = {(c, a): one_image(args, code_dir, a) for a in ARTIFACTS for c, code_dir in codes.items()}
    text = markdown(args, codes, folder, one, load_start)
    print(text)
    if args.write:
        write_section(bl.BENCH_DIR / "RESULTS_folder.md", text)


def child(args, code_dir: Path | None, kind: str, artifact: str) -> dict:
    """One measurement in a fresh process, with `code_dir`'s package first on the path (None: this one)."""
    env = dict(os.environ)
    pkg = code_dir or bl.REPO_DIR
    env["PYTHONPATH"] = os.pathsep.join([str(pkg), env.get("PYTHONPATH", "")])
    cmd = [sys.executable, __file__, "--child", kind, "--artifact", artifact, "--data", str(args.data)]
    cmd += ["--split", args.split, "--images", str(args.images), "--rounds", str(args.rounds)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True, check=True, cwd=pkg)
    return json.loads(out.stdout.strip().splitlines()[-1])


def one_image(args, code_dir: Path | None, artifact: str, runs: int = 5) -> dict[str, list[float]]:
    """The one-image phases in `runs` fresh processes after a warm-up one (which fills the hash
    cache, as a device's first start does): the median of each phase's CPU ms and memory."""
    child(args, code_dir, "one", artifact)
    got = [child(args, code_dir, "one", artifact) for _ in range(runs)]
    return {k: [statistics.median(g[k][i] for g in got) for i in (0, 1)] for k in got[0]}


def folder_stages(args) -> dict[str, float]:
    import cv2
    import numpy as np

    from edge_pneumo.apps.infer import gather_paths
    from edge_pneumo.apps.rows import RowWriter
    from edge_pneumo.decoders.decode import read_bytes, read_grey
    from edge_pneumo.device import classifier as C

    paths = gather_paths([], args.data / args.split)[: args.images]
    clf = C.Classifier.load(None, artifact=args.artifact, threads=1)
    pp, guard, n = clf.preprocessing, clf.guard, len(paths)
    per_task = getattr(C, "PER_TASK", 32)  # since 2026-11-29 a task is a model batch (predict_many's 32)
    stacked = hasattr(guard, "check_pixels_many")
    sink = open(os.devnull, "w")

    def ms(fn) -> float:
        best = float("inf")
        for _ in range(args.rounds):
            t = time.process_time()
            fn()
            best = min(best, time.process_time() - t)
        return 1000 * best / n

    def groups(items):
        return [items[i : i + per_task] for i in range(0, n, per_task)]

    images = [read_grey(p, pp.min_side_hint) for p in paths]
    smalls = [pp.resize(im.pixels) for im in images]
    prepared = [clf._prepare(p) for p in paths]
    batch = np.stack([p.x for p in prepared if hasattr(p, "x")])
    results = list(clf.predict_many(paths, decode_threads=1))
    writer = RowWriter("json", sink)
    out = {
        "read file": ms(lambda: [read_bytes(Path(p)) for p in paths]),
        "read + decode (grey, and the 1/8 colour thumbnail for the colour check)": ms(
            lambda: [read_grey(p, pp.min_side_hint) for p in paths]
        ),
        "resize to the model's side": ms(lambda: [pp.resize(im.pixels) for im in images]),
        "guard: pixel checks": ms(
            (lambda: [guard.check_pixels_many(i, s) for i, s in zip(groups(images), groups(smalls))])
            if stacked
            else (lambda: [guard.check_pixels(i, s) for i, s in zip(images, smalls)])
        ),
        "CLAHE + channels": ms(lambda: [pp.finish(s) for s in smalls]),
        "decode to model input, whole": ms(
            (lambda: [clf._prepare_all(g) for g in groups(paths)])
            if stacked
            else (lambda: [clf._prepare(p) for p in paths])
        ),
        "main model, batches of 32": ms(lambda: [clf.backend.run(batch[i : i + 32]) for i in range(0, len(batch), 32)]),
        "view model, batches of 32": ms(
            lambda: [clf.view_check.scores(batch[i : i + 32]) for i in range(0, len(batch), 32)]
        ),
        "model to results, whole (both models, feature guard, calibration)": ms(
            lambda: [clf._run_batch(prepared[i : i + 32]) for i in range(0, n, 32)]
        ),
        "JSON rows": ms(lambda: [writer.write(r) for r in results]),
        "predict_many + JSON rows, whole": ms(
            lambda: [writer.write(r) for r in clf.predict_many(paths, decode_threads=1)]
        ),
    }
    clahe = cv2.createCLAHE(2.0, (4, 4))

    def loop_load(p):
        x = cv2.resize(cv2.imread(p, cv2.IMREAD_GRAYSCALE), (pp.size, pp.size), interpolation=cv2.INTER_AREA)
        return cv2.cvtColor(clahe.apply(x), cv2.COLOR_GRAY2BGR)

    out["loop: imread grey, resize, CLAHE, channels"] = ms(lambda: [loop_load(p) for p in paths])
    out["loop: model, batches of 64"] = ms(
        lambda: [clf.backend.predict(batch[i : i + 64]) for i in range(0, len(batch), 64)]
    )
    out["loop: JSON line"] = ms(
        lambda: [sink.write(json.dumps({"path": p, "probability": round(0.5, 6)}) + "\n") for p in paths]
    )
    out["loop, whole"] = sum(v for k, v in out.items() if k.startswith("loop:"))
    return out


def one_image_phases(args) -> dict[str, list[float]]:
    """What `infer IMAGE --artifact A -f json` does, phase by phase: [CPU ms, resident MB after]."""
    t0 = time.process_time()
    out: dict[str, list[float]] = {}

    def phase(name: str) -> None:
        nonlocal t0
        out[name] = [round(1000 * (time.process_time() - t0), 1), round(_rss_mb(), 1)]
        t0 = time.process_time()

    import cv2  # noqa: F401
    import numpy  # noqa: F401

    phase("import numpy, cv2")
    __import__(RUNTIME_MODULE[args.artifact])
    phase("import the runtime")
    from edge_pneumo.apps.infer import InferOptions, gather_paths  # noqa: F401
    from edge_pneumo.device.classifier import Classifier

    phase("import edge_pneumo (infer, classifier)")
    image = str(sorted((args.data / "test" / "PNEUMONIA").glob("*.jpeg"))[0])
    clf = Classifier.load(None, artifact=args.artifact, threads=None)
    phase("Classifier.load (manifest, sha256 checks, guard, both sessions)")
    r = clf.predict(image)
    phase("predict one image")
    from edge_pneumo import jsonout

    jsonout.dumps(r.to_dict())
    phase("the row")
    out["imported modules"] = [float(len(sys.modules)), 0.0]
    return out


def _rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cprofile(args) -> None:
    import cProfile
    import pstats

    from edge_pneumo.apps.infer import gather_paths
    from edge_pneumo.apps.rows import RowWriter
    from edge_pneumo.device.classifier import Classifier

    paths = gather_paths([], args.data / args.split)[: args.images]
    clf = Classifier.load(None, artifact=args.cprofile, threads=1)
    writer = RowWriter("json", open(os.devnull, "w"))
    pr = cProfile.Profile()
    pr.enable()
    for r in clf.predict_many(paths, decode_threads=1):
        writer.write(r)
    pr.disable()
    pstats.Stats(pr).sort_stats("tottime").print_stats(25)


def markdown(args, codes, folder, one, load_start) -> str:
    cols = [(code, a) for a in ARTIFACTS for code in codes]
    head = " | ".join(f"{a} {code}" if len(codes) > 1 else a for code, a in cols)
    L = [
        SECTION,
        "",
        f"`python bench/profile_folder.py{' --before ' + str(args.before) if args.before else ''} "
        f"--images {args.images} --rounds {args.rounds}{' --write' if args.write else ''}`  ",
        f"{time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}, load average {load_start} -> {bl.loadavg()}; "
        f"{args.images} {args.split} images, one thread for everything, CPU ms per image (the fastest of "
        f"{args.rounds} passes); `before`: the package at {args.before} (the code this round started from); "
        "both with their bytecode compiled; one image: medians of 5 fresh processes after a warm-up one.",
        "",
        f"| folder stage, ms/image | {head} |",
        "|---|" + "---|" * len(cols),
    ]
    for stage in folder[cols[0]]:
        L.append(f"| {stage} | " + " | ".join(_ms(folder[c].get(stage)) for c in cols) + " |")
    whole = "predict_many + JSON rows, whole"
    L.append(
        "| **infer / loop (CPU, 1 thread)** | "
        + " | ".join(f"**{folder[c][whole] / folder[c]['loop, whole']:.2f}x**" for c in cols)
        + " |"
    )
    L += ["", f"| one image, CPU ms (resident MB after) | {head} |", "|---|" + "---|" * len(cols)]
    for ph in one[cols[0]]:
        if ph == "imported modules":
            L.append(f"| {ph} | " + " | ".join(f"{one[c][ph][0]:.0f}" for c in cols) + " |")
        else:
            L.append(f"| {ph} | " + " | ".join(f"{one[c][ph][0]:.1f} ({one[c][ph][1]:.1f})" for c in cols) + " |")
    return "\n".join(L) + "\n"


def _ms(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def write_section(path: Path, section: str) -> None:
    """Replace (or add) the Profile section: it runs to the end of the file, after bench_folder.py's tables."""
    text = path.read_text() if path.exists() else ""
    head = text.split(SECTION, 1)[0].rstrip() + "\n\n" if text.strip() else ""
    bl.write_text(path, head + section)


if __name__ == "__main__":
    main()
