"""Scoring a predictor on a labelled folder: the numbers `evaluate` and `compare` print."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.lab.dataset import LoadedImages, discover, find_split, load_images
from edge_pneumo.lab.looks import is_test_split, log_look_or_warn
from edge_pneumo.lab.metrics import binary_report


def load_labelled(
    data: str | Path,
    preprocessing: Preprocessing,
    skip_bad: bool = False,
    progress: Callable[[int], None] | None = None,
) -> LoadedImages:
    """DIR/test/{NORMAL,PNEUMONIA} (or DIR/{NORMAL,PNEUMONIA}) through the one preprocessing."""
    return load_images(discover(find_split(data, "test")), preprocessing, skip_bad=skip_bad, progress=progress)


def predict_in_batches(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    return np.concatenate(
        [np.asarray(predict(x[i : i + batch_size])).reshape(-1) for i in range(0, len(x), batch_size)]
    )


def evaluate(predict: Callable[[np.ndarray], np.ndarray], images: LoadedImages, threshold: float) -> dict:
    probabilities = predict_in_batches(predict, images.x)
    report = binary_report(images.y, probabilities, threshold)
    report["skipped"] = len(images.skipped)
    return report


def log_evaluation(report: dict, model_folder: Path) -> None:
    """An evaluation on the test split is a look at its labels (lab.looks): logged beside the model."""
    if is_test_split(find_split(report["data"], "test")):
        figures = {k: report[k] for k in ("model", "data", "threshold", "accuracy", "auc")}
        log_look_or_warn(model_folder, "evaluate", figures)


def format_report(r: dict, title: str) -> str:
    (tn, fp), (fn, tp) = r["confusion_matrix"]
    return "\n".join(
        [
            title,
            f"  images       {r['n']}" + (f" ({r['skipped']} skipped)" if r.get("skipped") else ""),
            f"  threshold    {r['threshold']:.4f}",
            f"  accuracy     {r['accuracy']:.4f}",
            f"  ROC AUC      {r['auc']:.4f}",
            f"  sensitivity  {r['sensitivity']:.4f}  (recall of PNEUMONIA)",
            f"  specificity  {r['specificity']:.4f}",
            f"  precision    {r['precision']:.4f}",
            f"  F1           {r['f1']:.4f}",
            "  confusion    predicted NORMAL  PNEUMONIA",
            f"    NORMAL     {tn:>16}  {fp:>9}",
            f"    PNEUMONIA  {fn:>16}  {tp:>9}",
        ]
    )
