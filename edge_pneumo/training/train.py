"""`edge-pneumo train`: choose epochs and threshold on a patient-wise validation split,
refit on the whole train split, evaluate on test, save the model and its run record."""

from __future__ import annotations

import json
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from .. import jsonout
from ..data import CLASS_NAMES, discover, find_split, load_images, patient_split
from ..errors import DatasetError
from ..metrics import binary_report
from ..preprocess import Preprocessing
from .fit import Recipe, fit, predict
from .keras_io import MODEL_NAME, record_path, save_model

TEST_LOG = "test_evaluations.jsonl"


@dataclass(frozen=True)
class TrainConfig:
    data: Path
    out: Path
    seed: int = 0
    val_fraction: float = 0.15
    refit_full: bool = True
    skip_bad: bool = False
    intensity: str = "clahe"
    recipe: Recipe = Recipe()
    evaluate_test: bool = True


def versions() -> dict:
    import cv2
    import keras
    import tensorflow as tf

    from .. import __version__

    return {
        "edge_pneumo": __version__,
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "numpy": np.__version__,
        "opencv": cv2.__version__,
    }


def run_training(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train, evaluate and save; returns the run record (also written beside the model)."""
    started = time.time()
    preprocessing = Preprocessing(intensity=cfg.intensity)
    samples = discover(find_split(cfg.data, "train"))
    train_s, val_s = patient_split(samples, cfg.val_fraction, cfg.seed)
    log(f"train/: {len(samples)} images; patient-wise split (seed {cfg.seed}): "
        f"{len(train_s)} train, {len(val_s)} validation images")
    full = load_images(samples, preprocessing, skip_bad=cfg.skip_bad)
    if full.skipped:
        log(f"skipped {len(full.skipped)} unusable file(s): {full.skipped[0]}" + (" ..." if len(full.skipped) > 1 else ""))
    val_set = set(val_s)
    in_val = np.array([s in val_set for s in full.samples])
    if in_val.all() or not in_val.any():
        raise DatasetError("the validation split is empty or takes everything; add images or change --val-fraction")
    x_tr, y_tr, x_va, y_va = full.x[~in_val], full.y[~in_val], full.x[in_val], full.y[in_val]

    def epoch_line(stage):
        def show(r):
            extra = f"  val_auc {r['val_auc']:.4f}  val_acc@0.5 {r['val_accuracy']:.4f}" if "val_auc" in r else ""
            log(f"[{stage}] epoch {r['epoch']:>2}  loss {r['loss']:.4f}  acc {r['accuracy']:.4f}{extra}")
        return show

    chosen = fit(x_tr, y_tr, cfg.recipe, cfg.seed, x_va, y_va, on_epoch=epoch_line("validation run"))
    vm = chosen.val_metrics
    log(f"validation: best epoch {chosen.best_epoch}, threshold {chosen.threshold:.4f} "
        f"(balanced accuracy), accuracy {vm['accuracy']:.4f}, AUC {vm['auc']:.4f}")
    final, final_history = chosen, None
    if cfg.refit_full:
        final = fit(full.x, full.y, cfg.recipe, cfg.seed, epochs=chosen.best_epoch, threshold=chosen.threshold,
                    on_epoch=epoch_line("full-train refit"))
        final_history = final.history

    record: dict = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["edge-pneumo", *sys.argv[1:]]) if sys.argv else "",
        "seed": cfg.seed,
        "model_file": MODEL_NAME,
        "class_names": list(CLASS_NAMES),
        "threshold": chosen.threshold,
        "threshold_rule": f"max balanced accuracy on the validation split, ties within {cfg.recipe.threshold_tolerance} broken toward 0.5",
        "preprocessing": preprocessing.to_dict(),
        "recipe": cfg.recipe.to_dict(),
        "split": {
            "val_fraction": cfg.val_fraction,
            "train_images": int((~in_val).sum()),
            "val_images": int(in_val.sum()),
            "train_patients": len({s.patient for s in train_s}),
            "val_patients": len({s.patient for s in val_s}),
            "skipped_files": full.skipped,
        },
        "best_epoch": chosen.best_epoch,
        "refit_on_full_train": cfg.refit_full,
        "history": {"validation_run": chosen.history, "full_train_refit": final_history},
        "validation": vm,
        "versions": versions(),
    }

    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.evaluate_test:
        try:
            test_dir = find_split(cfg.data, "test")
        except DatasetError:
            test_dir = None
        if test_dir is not None and test_dir != Path(cfg.data) / "train":
            test = load_images(discover(test_dir), preprocessing, skip_bad=cfg.skip_bad)
            tm = binary_report(test.y, predict(final.model, test.x), final.threshold)
            log(f"test ({tm['n']} images, threshold {tm['threshold']:.4f}): accuracy {tm['accuracy']:.4f}  "
                f"AUC {tm['auc']:.4f}  sensitivity {tm['sensitivity']:.4f}  specificity {tm['specificity']:.4f}")
            record["test"] = tm
            record["test_evaluations"] = _log_test_look(cfg.out, record, tm)
    record["seconds"] = round(time.time() - started, 1)
    save_model(final.model, cfg.out / MODEL_NAME)
    rp = record_path(cfg.out / MODEL_NAME)
    tmp = rp.with_suffix(".tmp")
    tmp.write_text(jsonout.dumps(record, indent=2) + "\n")
    tmp.replace(rp)
    log(f"wrote {cfg.out / MODEL_NAME} and {rp} ({record['seconds']:.0f} s)")
    return record


def _log_test_look(out: Path, record: dict, tm: dict) -> list[dict]:
    """Every look at the test split is logged, so the reported number says how often test was seen."""
    path = out / TEST_LOG
    entry = {"created": record["created"], "command": record["command"], "seed": record["seed"],
             "recipe": record["recipe"], "intensity": record["preprocessing"]["intensity"],
             "accuracy": tm["accuracy"], "auc": tm["auc"]}
    with path.open("a") as f:
        f.write(jsonout.dumps(entry) + "\n")
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
