"""Refit the shipped model's temperature and confidence band on the hardest population train/ offers.

    .venv/bin/python experiments/refit_calibration.py --data ../shared/data/chest_xray [--model exported] [--write]

The images the shipped threshold was chosen on (the training run's validation split: held-out NORMAL2
normals + validation pneumonia, reconstructed from the run record's split seed) and their copies under
the 11 acquisition shifts of training/shifts.py, scored by the shipped artifacts through the runtime
(no TensorFlow, no retraining; the shipped model was not refit on full train, so these images are held
out), plain and with flip TTA. The rule (lab/metrics.hardest_population_calibration) is the one `train`
now applies. The threshold stays as shipped. Reads train/ only: no look at test/.
With --write the manifest's `calibration` and `tta` sections are replaced (the old numbers are kept under
`replaces`); artifacts and their sha256 are untouched.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from edge_pneumo.device import tta as flip_tta
from edge_pneumo.device.classifier import Classifier
from edge_pneumo.device.manifest import load_manifest, write_manifest
from edge_pneumo.lab.dataset import discover, find_split, image_family, load_images, selection_split
from edge_pneumo.lab.metrics import hardest_population_calibration
from edge_pneumo.training.shifts import shifted_sets


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True)
    ap.add_argument("--model", type=Path, default=Path("exported"))
    ap.add_argument("--artifact", default="onnx_float32", help="the reference artifact (matches Keras within 1e-6)")
    ap.add_argument("--write", action="store_true", help="write the refit into the manifest")
    a = ap.parse_args(argv)

    manifest = load_manifest(a.model)
    record = json.loads((a.model / manifest.raw["source_model"]["file"].replace(".keras", ".record.json")).read_text())
    split = record["split"]
    if record.get("refit_on_full_train", True):
        print("the shipped model was refit on all of train/: its validation images are not held out", file=sys.stderr)
        return 2
    samples = discover(find_split(a.data, "train"))
    _, val = selection_split(samples, split["val_fraction"], split["split_seed"], split["holdout_family"])
    fam = split["threshold_family"]
    on = [s for s in val if s.label == 1 or image_family(s.path.name) == fam]
    y = np.array([s.label for s in on])
    pp = manifest.preprocessing
    x = load_images(on, pp).x
    shifted_x = shifted_sets([str(s.path) for s in on], pp)
    clf = Classifier.load(a.model, artifact=a.artifact, guard=False)
    plain = {"predict": clf.predict_array}
    flip = {"predict": lambda b: flip_tta.predict(clf.predict_array, b)}
    ref = np.asarray(record["selection_scores"]["probability"])[np.asarray(record["selection_scores"]["shift_set"]) == 1]
    out = {}
    for name, how, threshold in (
        ("calibration", plain, manifest.threshold),
        ("tta", flip, float(manifest.raw["tta"]["threshold"])),
    ):
        p = how["predict"](x)
        if name == "calibration":
            print(f"check: max |p - the training run's Keras scores| = {np.abs(p - ref).max():.2e} over {len(p)} images")
        shifted = {k: how["predict"](v) for k, v in shifted_x.items()}
        c = hardest_population_calibration(y, p, shifted, threshold)
        c["rule"] += f"; scored with the shipped {a.artifact} through the runtime (experiments/refit_calibration.py)"
        out[name] = c
        b = c["band_population"]
        print(
            f"{name}: threshold {threshold:.4f}, temperature {c['temperature']:.3f}, band [{c['rule_out']:.4f}, "
            f"{c['rule_in']:.4f}) (fitted {c['fitted_band'][0]:.4f}, {c['fitted_band'][1]:.4f}; widened {c['widened']}); "
            f"on the {c['population_images']} scores: ECE {c['ece_population']:.3f} -> {c['ece_population_calibrated']:.3f}, "
            f"decided {b['decided_share']:.3f}, rule-out sensitivity {b['rule_out_sensitivity']:.4f}, "
            f"rule-in specificity {b['rule_in_specificity']:.4f}"
        )
    if a.write:
        raw = manifest.raw
        old = {k: raw["calibration"].get(k) for k in ("temperature", "rule_out", "rule_in", "rule")}
        raw["calibration"] = {**out["calibration"], "replaces": raw["calibration"].get("replaces", old)}
        t = raw["tta"]
        t_old = {k: t.get(k) for k in ("temperature", "rule_out", "rule_in", "rule")}
        t.update({k: out["tta"][k] for k in ("temperature", "rule_out", "rule_in", "rule", "widened", "fitted_band")})
        t["replaces"] = t.get("replaces", t_old)
        write_manifest(a.model, raw)
        print(f"wrote {a.model / 'manifest.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
