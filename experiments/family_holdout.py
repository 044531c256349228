"""Choose a recipe by how it treats a NORMAL acquisition batch it never saw. Never reads test/.

train/ holds two families of normal images, `IM-*` and `NORMAL2-IM-*` (two batches of the
original collection). On the patient-wise validation split the shipped model classifies
all IM normals correctly but 5.5% of NORMAL2 normals as PNEUMONIA: the same failure, in
small, as the test split's over-called normals. Here every NORMAL2 image is held out:
each candidate trains on train-minus-val without them, picks its epoch and threshold on
validation without them, and is then scored on all NORMAL2 images (specificity at its
threshold) against the validation PNEUMONIA images (sensitivity, AUC).

Rule, fixed before the runs: the highest balanced accuracy (NORMAL2 specificity +
validation sensitivity) / 2; ties within 0.005 go to the shipped recipe.

    python experiments/family_holdout.py --data ../shared/data/chest_xray --names strong_cw_eq strong_cw
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from select_recipe import CANDIDATES, name_group

from edge_pneumo.lab.dataset import discover, find_split, load_images, patient_split
from edge_pneumo.lab.metrics import binary_report
from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.training.fit import fit, predict


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/chest_xray")
    ap.add_argument("--names", nargs="*", default=["strong_cw_eq"])
    ap.add_argument("--family", default="NORMAL2")
    ap.add_argument("--log", default="experiments/family_holdout.jsonl")
    args = ap.parse_args()

    samples = discover(find_split(args.data, "train"))
    train, val = patient_split(samples, 0.15, 0)
    held = [s for s in samples if name_group(s.path) == args.family]
    train = [s for s in train if name_group(s.path) != args.family]
    val = [s for s in val if name_group(s.path) != args.family]
    cache: dict[str, tuple] = {}
    for name in args.names:
        intensity, recipe = CANDIDATES[name]
        if intensity not in cache:
            pp = Preprocessing(intensity=intensity)
            cache[intensity] = (load_images(train, pp), load_images(val, pp), load_images(held, pp))
        tr, va, ho = cache[intensity]
        t0 = time.time()
        res = fit(tr.x, tr.y, recipe, 0, va.x, va.y)
        pos = va.y == 1
        x = np.concatenate([ho.x, va.x[pos]])
        y = np.concatenate([np.zeros(len(ho.x), int), va.y[pos]])
        r = binary_report(y, predict(res.model, x), res.threshold)
        row = {
            "name": name, "intensity": intensity, "recipe": recipe.to_dict(), "family": args.family,
            "n_train": len(tr.x), "n_val": len(va.x), "n_held_out": len(ho.x),
            "best_epoch": res.best_epoch, "threshold": res.threshold, "val": res.val_metrics,
            "held_out": {"specificity": r["specificity"], "sensitivity": r["sensitivity"], "auc": r["auc"],
                         "balanced_accuracy": (r["specificity"] + r["sensitivity"]) / 2},
            "seconds": round(time.time() - t0, 1), "test_looked_at": False,
        }
        print(json.dumps({k: row[k] for k in ("name", "best_epoch", "threshold", "held_out", "seconds")}), flush=True)
        with Path(args.log).open("a") as f:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
