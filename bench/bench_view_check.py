"""The view check: its cost per image and its source-held-out results, into bench/RESULTS_guard.md.

    .venv/bin/python bench/bench_view_check.py [--data ../shared/data/chest_xray] [--rounds 5]

Cost: (1) the view model alone, in-process, batches of 32 model inputs (the test split's), per
artifact; (2) `infer --dir test/` whole process, the shipped folder against a copy without the
manifest's view_check section (same artifacts otherwise), rounds alternated, medians.
Results: the manifest's `view_check.held_out` (written by `edge-pneumo train-view`).
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from edge_pneumo.lab.compare import view_check_table

REPO = Path(__file__).resolve().parents[1]


def model_cost(folder: Path, x: np.ndarray, rounds: int) -> dict:
    from edge_pneumo.device.manifest import load_manifest
    from edge_pneumo.device.view_check import SECTION, ViewCheck

    m = load_manifest(folder)
    out = {}
    for e in m.raw[SECTION]["artifacts"]:
        view = ViewCheck.from_manifest(m, artifact=e["name"])
        view.scores(x[:32])
        per = []
        for _ in range(rounds):
            t0 = time.perf_counter()
            for i in range(0, len(x), 32):
                view.scores(x[i : i + 32])
            per.append(1000 * (time.perf_counter() - t0) / len(x))
        out[e["name"]] = round(statistics.median(per), 4)
    return out


def in_process(folder: Path, paths: list, rounds: int) -> tuple[float, float, str]:
    """Best-of-rounds wall time of `predict_many` over the folder, with and without the view
    check (the same Classifier, the check switched off and on, rounds alternated)."""
    from edge_pneumo import Classifier

    clf = Classifier.load(folder)
    view = clf.view_check
    best = {True: float("inf"), False: float("inf")}
    for _ in range(rounds):
        for on in (True, False):
            clf.view_check = view if on else None
            t0 = time.perf_counter()
            for _r in clf.predict_many(paths):
                pass
            best[on] = min(best[on], time.perf_counter() - t0)
    return best[True], best[False], view.name


def folder_run(folder: Path, data: Path) -> float:
    exe = Path(sys.executable).parent / "edge-pneumo"
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        subprocess.run(
            [str(exe), "infer", "--model", str(folder), "--dir", str(data), "-f", "json", "-o", f"{tmp}/o.jsonl"],
            check=True,
            capture_output=True,
        )
        return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "chest_xray")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    from edge_pneumo.device.manifest import load_manifest

    shipped = REPO / "exported"
    m = load_manifest(shipped)
    test = args.data / "test"
    paths = sorted(test.glob("*/*.jpeg"))
    x = np.stack([m.preprocessing.load(p)[0] for p in paths])
    cost = model_cost(shipped, x, args.rounds)
    on, off, used = in_process(shipped, paths, args.rounds)
    with tempfile.TemporaryDirectory() as tmp:
        bare = Path(tmp) / "exported"
        shutil.copytree(shipped, bare, ignore=shutil.ignore_patterns("*.keras", "*.png", "*.jsonl", "view_*"))
        raw = json.loads((bare / "manifest.json").read_text())
        raw.pop("view_check")
        (bare / "manifest.json").write_text(json.dumps(raw))
        with_view, without = [], []
        for _ in range(args.rounds):
            with_view.append(folder_run(shipped, test))
            without.append(folder_run(bare, test))
    n = len(paths)
    extra_ms = 1000 * (statistics.median(with_view) - statistics.median(without)) / n
    section = m.raw["view_check"]
    lines = [
        "# The input guard's view check: results and cost",
        "",
        f"Made by `.venv/bin/python bench/bench_view_check.py --rounds {args.rounds}` on this machine "
        f"({_cpu()}), {time.strftime('%Y-%m-%d')}. Source-held-out figures: `edge-pneumo train-view` "
        "(written into `exported/manifest.json`, section `view_check.held_out`).",
        "",
        "## Source-held-out (each image scored by a model fitted without its repository / patient / film)",
        "",
        f"Limit: refuse below {section['refuse_below']} ({section['rule']}).",
        "",
        *view_check_table(section, let_through=True),
    ]
    lines += [
        "",
        "## Cost",
        "",
        f"- the view model alone, batches of 32, {n} test-split inputs, median of {args.rounds} rounds: "
        + ", ".join(f"{k} {v:.3f} ms/image" for k, v in cost.items()),
        f"- `Classifier.predict_many` over the {n} images (the folder loop `infer --dir` runs), in-process, best of "
        f"{args.rounds} alternated rounds: {on:.3f} s with the view check ({used}), {off:.3f} s "
        f"without: {1000 * (on - off) / n:+.3f} ms/image",
        f"- `infer --dir test/` ({n} images), whole process (load included; noisy on a shared machine), "
        f"median of {args.rounds} alternated rounds: "
        f"{statistics.median(with_view):.2f} s with the view check, {statistics.median(without):.2f} s without: "
        f"{extra_ms:+.3f} ms/image",
        "",
    ]
    out = REPO / "bench" / "RESULTS_guard.md"
    out.write_text("\n".join(lines))
    print("\n".join(lines))


def _cpu() -> str:
    from edge_pneumo.apps.verify import device_info

    d = device_info()
    return f"{d['cpu']}, {d['cores']} cores"


if __name__ == "__main__":
    main()
