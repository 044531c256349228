"""What a site file costs `infer`: in-process `predict_many` over a folder, with and without a site file.

    .venv/bin/python bench/site_infer_overhead.py --dir FOLDER --site site.json [--site-head site_head.json] \
        [--artifact tflite_int8] [--rounds 7]

Whole-process timings on this shared 2-core machine swing by +-30% from run to run, far more than the
5% the issue asks about, so this times the loop alone, in one process, rounds alternating between the
calibrations (min and median per calibration). Images only: no labels are read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

from edge_pneumo.decoders.decode import IMAGE_SUFFIXES
from edge_pneumo.device.classifier import Classifier


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--dir", type=Path, required=True)
    ap.add_argument("--site", type=Path, required=True)
    ap.add_argument("--site-head", type=Path)
    ap.add_argument("--model", type=Path, default=Path("exported"))
    ap.add_argument("--artifact", default="tflite_int8")
    ap.add_argument("--rounds", type=int, default=7)
    a = ap.parse_args(argv)
    paths = sorted(str(p) for p in a.dir.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    variants = {"shipped": Classifier.load(a.model, artifact=a.artifact), "site": Classifier.load(a.model, site=a.site)}
    if a.site_head:
        variants["site + head"] = Classifier.load(a.model, site=a.site_head)
    times = {k: [] for k in variants}
    for _ in range(a.rounds):
        for name, clf in variants.items():
            t0 = time.perf_counter()
            n = sum(1 for _ in clf.predict_many(paths))
            times[name].append(time.perf_counter() - t0)
    base = min(times["shipped"])
    print(f"{len(paths)} images ({n} results per run), {a.rounds} alternating rounds, artifact {a.artifact}")
    for name, t in times.items():
        print(
            f"{name:<12} min {min(t):.3f} s  median {statistics.median(t):.3f} s  "
            f"({len(paths) / min(t):.0f} images/s; min vs shipped {100 * (min(t) / base - 1):+.1f}%)"
        )
    # The calibration's own work, alone: what the site path adds per image (scores for a batch of 32,
    # then the per-row decision, confidence and temperature), free of the machine's load swings.
    import numpy as np

    rng = np.random.default_rng(0)
    p, f = rng.random(32), rng.random((32, 128)).astype(np.float32)
    for name, clf in variants.items():
        cal = clf.calibration
        t0 = time.perf_counter()
        for _ in range(300):
            for s in cal.scores(p, f):
                cal.decision(float(s)), cal.confidence(float(s)), cal.calibrate(float(s))
        us = 1e6 * (time.perf_counter() - t0) / (300 * 32)
        share = 100 * us / (1e6 * base / len(paths))
        print(
            f"{name:<12} calibration work alone: {us:.2f} us per image ({share:.2f}% of the fastest round's per image)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
