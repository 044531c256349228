"""One line per training run folder (its run record): the seed-spread table for experiments/README.md.

    python experiments/summarize_runs.py /tmp/students2/* > experiments/seed_spread_round2.jsonl
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

for folder in sys.argv[1:]:
    rec_path = Path(folder) / "pneumonia_cnn.record.json"
    if not rec_path.is_file():
        continue
    r = json.loads(rec_path.read_text())
    t, v = r.get("test", {}), r["validation"]
    sel = r.get("selection_figures", {})
    print(json.dumps({
        "run": Path(folder).name, "seed": r["seed"], "teacher": bool(r.get("teacher")),
        "distill_alpha": r["recipe"].get("distill_alpha"), "best_epoch": r["best_epoch"],
        "threshold": r["threshold"], "threshold_rule": r["threshold_rule"],
        "temperature": r["calibration"]["temperature"], "rule_out": r["calibration"]["rule_out"],
        "rule_in": r["calibration"]["rule_in"],
        "validation_auc": v["auc"], "validation_accuracy": v["accuracy"],
        "shift_set": {k: (sel.get("shift_set") or sel.get("holdout_family") or {}).get(k) for k in ("auc", "sensitivity", "specificity")},
        "test_accuracy": t.get("accuracy"), "test_auc": t.get("auc"), "test_sensitivity": t.get("sensitivity"),
        "test_specificity": t.get("specificity"), "test_ece": t.get("ece"), "test_ece_calibrated": t.get("ece_calibrated"),
        "test_decided_share": (t.get("band") or {}).get("decided_share"), "seconds": r.get("seconds"),
        "augment": r["recipe"].get("augment"),
        "tta": None if not r.get("tta") else {
            "threshold": r["tta"]["threshold"], "validation_auc": r["tta"]["selection_figures"]["validation"]["auc"],
            "shift_set_auc": r["tta"]["selection_figures"]["shift_set"]["auc"],
            "test_accuracy": (t.get("tta") or {}).get("accuracy"), "test_auc": (t.get("tta") or {}).get("auc")},
    }))
