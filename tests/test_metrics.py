"""Metrics checked against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edge_pneumo.metrics import best_threshold, binary_report, roc_auc, roc_curve


def test_known_confusion_matrix():
    y = np.array([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.7, 0.9, 0.8, 0.6, 0.55, 0.4, 0.3, 0.95])
    r = binary_report(y, p, 0.5)
    # TN=2 (0.1, 0.2), FP=2 (0.7, 0.9), FN=2 (0.4, 0.3), TP=4
    assert r["confusion_matrix"] == [[2, 2], [2, 4]]
    assert r["accuracy"] == pytest.approx(0.6)
    assert r["sensitivity"] == pytest.approx(4 / 6)
    assert r["specificity"] == pytest.approx(0.5)
    assert r["precision"] == pytest.approx(4 / 6)
    assert r["f1"] == pytest.approx(4 / 6)
    assert r["n"] == 10


def test_auc_counts_pairs_and_ties():
    y = np.array([0, 0, 1, 1])
    assert roc_auc(y, np.array([0.1, 0.4, 0.35, 0.8])) == pytest.approx(0.75)  # 3 of 4 pairs ordered
    assert roc_auc(y, np.array([0.5, 0.5, 0.5, 0.5])) == pytest.approx(0.5)
    assert roc_auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == pytest.approx(1.0)
    assert np.isnan(roc_auc(np.array([1, 1]), np.array([0.2, 0.3])))


def test_roc_curve_ends_at_corners():
    fpr, tpr, _ = roc_curve(np.array([0, 1, 0, 1]), np.array([0.2, 0.9, 0.6, 0.4]))
    assert (fpr[0], tpr[0]) == (0.0, 0.0) and (fpr[-1], tpr[-1]) == (1.0, 1.0)


def test_best_threshold_separates_when_possible():
    y = np.array([0, 0, 0, 1, 1])
    p = np.array([0.05, 0.1, 0.3, 0.35, 0.9])
    t = best_threshold(y, p)
    assert 0.3 < t <= 0.35
    assert binary_report(y, p, t)["accuracy"] == 1.0
