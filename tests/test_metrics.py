"""Metrics checked against cases worked out by hand."""

from __future__ import annotations

import numpy as np
import pytest

from edge_pneumo.lab.metrics import best_threshold, binary_report, roc_auc, roc_curve


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


def test_temperature_undoes_overconfidence_and_keeps_the_ranking():
    from edge_pneumo.lab.metrics import apply_temperature, expected_calibration_error, fit_temperature

    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 4000)
    z = rng.normal(0, 1, 4000) + (2 * y - 1) * 1.2
    calibrated = 1 / (1 + np.exp(-2.4 * z))  # the true posterior for these two Gaussians
    overconfident = 1 / (1 + np.exp(-3 * 2.4 * z))  # logits x3
    t = fit_temperature(y, overconfident)
    assert 2.5 < t < 3.5
    fixed = apply_temperature(overconfident, t)
    assert expected_calibration_error(y, fixed) < expected_calibration_error(y, overconfident) / 2
    order = np.argsort(overconfident, kind="stable")
    assert np.all(np.diff(fixed[order]) >= 0)  # a monotone map: the ranking (and AUC) is unchanged
    assert abs(fit_temperature(y, calibrated) - 1) < 0.15


def test_band_thresholds_meet_their_targets():
    from edge_pneumo.lab.metrics import band_report, band_thresholds

    rng = np.random.default_rng(1)
    y = rng.integers(0, 2, 3000)
    p = 1 / (1 + np.exp(-(rng.normal(0, 1, 3000) + (2 * y - 1) * 1.5)))
    lo, hi = band_thresholds(y, p, 0.97, 0.95)
    assert ((p >= lo)[y == 1]).mean() >= 0.97 and ((p < hi)[y == 0]).mean() >= 0.95
    assert ((p >= np.nextafter(lo, 1))[y == 1]).mean() < 0.97 + 1e-3  # the largest such threshold
    r = band_report(y, p, 0.5, lo, hi)
    assert r["rule_out_sensitivity"] >= 0.97 and r["rule_in_specificity"] >= 0.95
    assert r["ruled_out"] + r["ruled_in"] + r["indeterminate"] == 3000 and 0 < r["decided_share"] < 1


def test_one_standard_error_tolerance_moves_a_noisy_maximum_toward_half():
    from edge_pneumo.lab.metrics import j_standard_error

    # 165 normals and 291 pneumonias: the maximum of J sits at 0.12 by a single normal, while 0.5
    # is within one standard error of it (two more pneumonias missed).
    rng = np.random.default_rng(1)
    neg = np.concatenate([rng.uniform(0.0, 0.10, 160), [0.11, 0.6, 0.7, 0.8, 0.9]])
    pos = np.concatenate([[0.13, 0.3], rng.uniform(0.55, 1.0, 289)])
    y = np.concatenate([np.zeros(165, int), np.ones(291, int)])
    p = np.concatenate([neg, pos])
    strict = best_threshold(y, p, 0.0)
    loose = best_threshold(y, p, "se")
    assert 0.11 < strict < 0.13 and 0.3 < loose <= 0.55
    rep_strict, rep_loose = binary_report(y, p, strict), binary_report(y, p, loose)
    j = lambda r: r["sensitivity"] + r["specificity"] - 1  # noqa: E731
    se = j_standard_error(rep_strict["sensitivity"], rep_strict["specificity"], 291, 165)
    assert 0 < j(rep_strict) - j(rep_loose) <= se
    with pytest.raises(ValueError):
        best_threshold(y, p, "two")


def test_j_standard_error_is_zero_for_a_perfect_split_and_grows_with_fewer_images():
    from edge_pneumo.lab.metrics import j_standard_error

    assert j_standard_error(1.0, 1.0, 10, 10) == 0.0
    assert j_standard_error(0.9, 0.9, 100, 100) > j_standard_error(0.9, 0.9, 1000, 1000) > 0


def test_shifted_scores_break_the_tie_toward_the_threshold_that_survives_the_shift():
    # Clean: normals 0-0.3, pneumonias 0.7-1, so every threshold between them is perfect and the
    # plain rule takes 0.5. Under the shift the normals drift up to 0.6: only a higher threshold keeps them.
    rng = np.random.default_rng(0)
    neg, pos = rng.uniform(0.0, 0.3, 100), rng.uniform(0.7, 1.0, 100)
    mid = np.linspace(0.31, 0.69, 39)  # scores inside the gap make candidate thresholds there
    y = np.concatenate([np.zeros(100, int), np.ones(100, int), np.zeros(20, int), np.ones(19, int)])
    p = np.concatenate([neg, pos, mid[::2], mid[1::2]])
    shifted = [np.concatenate([neg + 0.3, pos, mid[::2], mid[1::2]])]
    plain = best_threshold(y, p, 0.2)
    robust = best_threshold(y, p, 0.2, shifted=shifted)

    def j(q, t):
        r = binary_report(y, q, t)
        return r["sensitivity"] + r["specificity"] - 1

    assert robust > 0.6 > plain
    assert j(shifted[0], robust) > j(shifted[0], plain)
    assert j(p, robust) >= j(p, best_threshold(y, p, 0.0)) - 0.2  # still one of the equally good ones
    # an unshifted copy breaks the tie by clean J itself: the strict maximum
    assert best_threshold(y, p, 0.2, shifted=[p]) == best_threshold(y, p, 0.0)
