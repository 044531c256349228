"""Classification metrics in plain numpy (the device side has no scikit-learn)."""

from __future__ import annotations

import numpy as np


def roc_auc(y_true: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve = P(score of a random positive > a random negative), ties count half."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s), dtype=np.float64)
    sorted_s = s[order]
    # average ranks over ties
    _, first, counts = np.unique(sorted_s, return_index=True, return_counts=True)
    avg = first + (counts + 1) / 2.0
    ranks[order] = np.repeat(avg, counts)
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(y_true: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate, thresholds), thresholds decreasing."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, dtype=np.float64)
    thresholds = np.unique(s)[::-1]
    tpr = np.array([0.0] + [float((s[y] >= t).mean()) if y.any() else 0.0 for t in thresholds])
    fpr = np.array([0.0] + [float((s[~y] >= t).mean()) if (~y).any() else 0.0 for t in thresholds])
    return fpr, tpr, np.concatenate([[np.inf], thresholds])


def confusion(y_true: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """2x2 matrix [[TN, FP], [FN, TP]] (rows: true NORMAL, PNEUMONIA)."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(predicted).astype(int)
    m = np.zeros((2, 2), dtype=np.int64)
    np.add.at(m, (y, p), 1)
    return m


def _ratio(a: float, b: float) -> float:
    return float(a / b) if b else float("nan")


def binary_report(y_true: np.ndarray, probabilities: np.ndarray, threshold: float) -> dict:
    """Accuracy, AUC, sensitivity (PNEUMONIA recall), specificity, precision, F1, confusion."""
    y = np.asarray(y_true).astype(int)
    p = np.asarray(probabilities, dtype=np.float64)
    pred = (p >= threshold).astype(int)
    (tn, fp), (fn, tp) = confusion(y, pred)
    precision = _ratio(tp, tp + fp)
    sensitivity = _ratio(tp, tp + fn)
    f1 = _ratio(2 * precision * sensitivity, precision + sensitivity) if tp else 0.0
    return {
        "n": int(len(y)),
        "threshold": float(threshold),
        "accuracy": _ratio(tp + tn, len(y)),
        "auc": roc_auc(y, p),
        "sensitivity": sensitivity,
        "specificity": _ratio(tn, tn + fp),
        "precision": precision,
        "f1": f1,
        "confusion_matrix": [[int(tn), int(fp)], [int(fn), int(tp)]],
    }


def agreement_stats(probabilities: np.ndarray, reference: np.ndarray, threshold: float) -> dict:
    """How closely an artifact follows its reference: same-class share and |delta probability|."""
    dp = np.abs(np.asarray(probabilities, np.float64) - np.asarray(reference, np.float64))
    same = (np.asarray(probabilities) >= threshold) == (np.asarray(reference) >= threshold)
    return {"agreement": float(np.mean(same)), "max_abs_dp": float(dp.max()), "mean_abs_dp": float(dp.mean())}


def best_threshold(y_true: np.ndarray, probabilities: np.ndarray, tolerance: float = 0.0) -> float:
    """The threshold with the highest balanced accuracy (Youden's J), for choosing on validation.

    Among thresholds whose J is within `tolerance` of the best, the one closest to 0.5 wins:
    with class weighting 0.5 is the balanced-prior default, and a flat optimum on an easy
    validation split should not drag the threshold to an edge. Returned as a midpoint between
    neighbouring scores so it does not sit on one image's score.
    """
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    s = np.unique(p)
    candidates = np.concatenate([[0.5], (s[:-1] + s[1:]) / 2.0]) if len(s) > 1 else np.array([0.5])
    pred = p[None, :] >= candidates[:, None]
    j = pred[:, y].mean(axis=1) + (~pred[:, ~y]).mean(axis=1) - 1.0
    near_best = np.flatnonzero(j >= j.max() - tolerance - 1e-12)
    return float(candidates[near_best[np.argmin(np.abs(candidates[near_best] - 0.5))]])
