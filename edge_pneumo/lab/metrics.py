"""Classification metrics in plain numpy (the device side has no scikit-learn)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from edge_pneumo.device.scoring import (  # noqa: F401  (the runner's rules, re-used here)
    _logit,
    apply_temperature,
    effective_band,
    ordered_band,
)


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


ONE_SE = "se"  # threshold tolerance: one standard error of J at its maximum


def best_threshold(
    y_true: np.ndarray, probabilities: np.ndarray, tolerance: float | str = 0.0, shifted: Sequence[np.ndarray] = ()
) -> float:
    """The threshold with the highest balanced accuracy (Youden's J), for choosing on validation.

    Among thresholds whose J is within `tolerance` of the best, the one closest to 0.5 wins:
    with class weighting 0.5 is the balanced-prior default, and a flat optimum on an easy
    validation split should not drag the threshold to an edge. `tolerance="se"` is one
    standard error of J at the best threshold (the one-standard-error rule): a maximum over a
    few hundred images is itself that noisy, so a smaller slack lets noise pick the threshold.
    With `shifted` (the same images' probabilities under acquisition shifts, one array per
    shift) the tie goes first to the highest mean J over those copies: among equally good
    thresholds, the one that best survives a new acquisition batch.
    Returned as a midpoint between neighbouring scores so it does not sit on one image's score.
    """
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(probabilities, dtype=np.float64)
    s = np.unique(p)
    candidates = np.concatenate([[0.5], (s[:-1] + s[1:]) / 2.0]) if len(s) > 1 else np.array([0.5])
    j, sens, spec = youden(y, p, candidates)
    if tolerance == ONE_SE:
        b = int(np.argmax(j))
        tolerance = j_standard_error(sens[b], spec[b], int(y.sum()), int((~y).sum()))
    elif isinstance(tolerance, str):
        raise ValueError(f"tolerance must be a number or {ONE_SE!r}")
    near_best = np.flatnonzero(j >= j.max() - tolerance - 1e-12)
    if len(shifted):
        robust = np.mean([youden(y, q, candidates[near_best])[0] for q in shifted], axis=0)
        near_best = near_best[robust >= robust.max() - 1e-12]
    return float(candidates[near_best[np.argmin(np.abs(candidates[near_best] - 0.5))]])


def youden(
    y_true: np.ndarray, probabilities: np.ndarray, thresholds: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(J, sensitivity, specificity) at each threshold (predict positive when p >= threshold)."""
    y = np.asarray(y_true).astype(bool)
    pred = np.asarray(probabilities, np.float64)[None, :] >= np.asarray(thresholds, np.float64)[:, None]
    sens, spec = pred[:, y].mean(axis=1), (~pred[:, ~y]).mean(axis=1)
    return sens + spec - 1.0, sens, spec


def j_standard_error(sensitivity: float, specificity: float, positives: int, negatives: int) -> float:
    """Binomial standard error of Youden's J = sensitivity + specificity - 1 (independent classes)."""
    return float(
        np.sqrt(
            sensitivity * (1 - sensitivity) / max(positives, 1) + specificity * (1 - specificity) / max(negatives, 1)
        )
    )


def fit_temperature(y_true: np.ndarray, probabilities: np.ndarray) -> float:
    """The temperature that minimises the negative log-likelihood (Guo et al. 2017), by a
    golden-section search over log T in [-3, 3]."""
    y = np.asarray(y_true, np.float64)
    z = _logit(probabilities)

    def nll(log_t: float) -> float:
        q = np.clip(1.0 / (1.0 + np.exp(-z / np.exp(log_t))), 1e-12, 1 - 1e-12)
        return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))

    lo, hi = -3.0, 3.0
    g = (np.sqrt(5) - 1) / 2
    a, b = hi - g * (hi - lo), lo + g * (hi - lo)
    fa, fb = nll(a), nll(b)
    for _ in range(80):
        if fa < fb:
            hi, b, fb = b, a, fa
            a = hi - g * (hi - lo)
            fa = nll(a)
        else:
            lo, a, fa = a, b, fb
            b = lo + g * (hi - lo)
            fb = nll(b)
    return float(np.exp((lo + hi) / 2))


def expected_calibration_error(y_true: np.ndarray, probabilities: np.ndarray, bins: int = 10) -> float:
    """ECE: the mean |observed rate - mean predicted probability| over equal-width bins, weighted by bin size."""
    y = np.asarray(y_true, np.float64)
    p = np.asarray(probabilities, np.float64)
    idx = np.minimum((p * bins).astype(int), bins - 1)
    ece = 0.0
    for b in range(bins):
        m = idx == b
        if m.any():
            ece += m.mean() * abs(y[m].mean() - p[m].mean())
    return float(ece)


def band_thresholds(
    y_true: np.ndarray, probabilities: np.ndarray, sensitivity: float = 0.97, specificity: float = 0.95
) -> tuple[float, float]:
    """(rule_out, rule_in): below rule_out the model rules PNEUMONIA out with at least `sensitivity`
    (the largest such threshold); at or above rule_in it rules PNEUMONIA in with at least
    `specificity` (the smallest such threshold). Between them: indeterminate."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(probabilities, np.float64)
    pos, neg = np.sort(p[y]), np.sort(p[~y])
    # sensitivity of (p >= t) is the share of positives at or above t: keep at least ceil(sens * n) of them
    k = int(np.ceil(sensitivity * len(pos) - 1e-9))
    rule_out = float(pos[len(pos) - k]) if 0 < k <= len(pos) else 0.0
    # specificity of (p >= t) is the share of negatives below t: need at least ceil(spec * n) of them below
    m = int(np.ceil(specificity * len(neg) - 1e-9))
    rule_in = float(np.nextafter(neg[m - 1], 1.0)) if 0 < m <= len(neg) else 1.0
    return rule_out, rule_in


def conformal_rank(n: int, alpha: float, draw: float | None = None) -> int:
    """How many of n calibration scores a band end leaves beyond it, so that a new score of the same
    population lands beyond with probability rank / (n + 1) (split-conformal).

    Conservative (`draw` None): floor(alpha (n + 1)), never above alpha, but the steps are 1 / (n + 1)
    wide: with 38 normals and alpha = 0.05 the promise kept is 1/39 = 2.6%, which costs decisions.
    Smoothed (`draw`, a uniform number in [0, 1)): one more with probability frac(alpha (n + 1)), so
    that over calibrations the promise is exactly alpha (Vovk's smoothed conformal rule)."""
    t = alpha * (n + 1)
    k = int(np.floor(t + 1e-9))
    if draw is not None and draw < t - k - 1e-9:
        k += 1
    return min(k, n)


def conformal_band(
    y_true: np.ndarray,
    scores: np.ndarray,
    sensitivity: float = 0.97,
    specificity: float = 0.95,
    draws: tuple[float, float] | None = None,
) -> tuple[float, float]:
    """(rule_out, rule_in) whose promises hold for a new patient of the same population, not only
    on the images they were fitted on (split-conformal, finite-sample): a new pneumonia is ruled out
    (score < rule_out) with probability <= 1 - `sensitivity`, a new normal ruled in (score >= rule_in)
    with probability <= 1 - `specificity`, in expectation over the fitting sample.

    With n pneumonias, rule_out is the k-th lowest pneumonia score, k = `conformal_rank` (conservative
    without `draws`; smoothed, exact in expectation, with `draws` = two uniform numbers, one per end):
    a new one falls below it with probability k / (n + 1). k = 0 (too few pneumonias: < 33 for 0.97,
    conservative) rules nothing out (rule_out = 0); likewise rule_in sits just above the m-th highest
    normal score, and is 1.0 (nothing ruled in) when m = 0."""
    y = np.asarray(y_true).astype(bool)
    s = np.asarray(scores, np.float64)
    pos, neg = np.sort(s[y]), np.sort(s[~y])[::-1]
    u_out, u_in = draws if draws is not None else (None, None)
    k = conformal_rank(len(pos), 1.0 - sensitivity, u_out)
    rule_out = float(pos[k - 1]) if k >= 1 else 0.0
    m = conformal_rank(len(neg), 1.0 - specificity, u_in)
    rule_in = float(np.nextafter(neg[m - 1], 2.0)) if m >= 1 else 1.0
    return rule_out, min(rule_in, 1.0)


def hardest_population_calibration(
    y: np.ndarray,
    p: np.ndarray,
    shifted: dict[str, np.ndarray],
    threshold: float,
    sensitivity: float = 0.97,
    specificity: float = 0.95,
) -> dict:
    """The out-of-the-box temperature and band, fitted on the hardest population train/ offers: the
    images the threshold was chosen on (held-out NORMAL2 normals + validation pneumonia) pooled with
    their copies under every acquisition shift (`shifted`: one score array per shift, same order).
    Temperature: min NLL on the pool; band: rule-out sensitivity and rule-in specificity on the pool,
    then ordered around the unchanged threshold (rule_out < threshold < rule_in; a point on the wrong
    side is moved past it, and `widened` says so)."""
    y = np.asarray(y).astype(int)
    pool_p = np.concatenate([np.asarray(p, np.float64), *[np.asarray(q, np.float64) for q in shifted.values()]])
    pool_y = np.tile(y, 1 + len(shifted))
    temperature = fit_temperature(pool_y, pool_p)
    fitted_out, fitted_in = band_thresholds(pool_y, pool_p, sensitivity, specificity)
    rule_out, rule_in, widened = ordered_band(threshold, fitted_out, fitted_in)
    return {
        "temperature": temperature,
        "rule_out": rule_out,
        "rule_in": rule_in,
        "widened": widened,
        "rule": (
            f"hardest population train/ offers: the {len(y)} images the threshold was chosen on (held-out NORMAL2 "
            f"normals + validation pneumonia) and their copies under {len(shifted)} acquisition shifts "
            f"({len(pool_y)} scores); temperature: min NLL on them; rule-out: sensitivity >= {sensitivity}, "
            f"rule-in: specificity >= {specificity} on them; then rule_out < threshold < rule_in enforced "
            "(a point on the wrong side moved just past the threshold: `widened`)"
        ),
        "fitted_band": [fitted_out, fitted_in],
        "ece_population": expected_calibration_error(pool_y, pool_p),
        "ece_population_calibrated": expected_calibration_error(pool_y, apply_temperature(pool_p, temperature)),
        "band_population": band_report(pool_y, pool_p, threshold, rule_out, rule_in),
        "population_images": int(len(pool_y)),
        "shifts": list(shifted),
    }


def band_report(
    y_true: np.ndarray, probabilities: np.ndarray, threshold: float, rule_out: float, rule_in: float
) -> dict:
    """How the confidence band splits a labelled set: the share decided automatically, and how
    right those automatic decisions are."""
    y = np.asarray(y_true).astype(bool)
    p = np.asarray(probabilities, np.float64)
    lo, hi = effective_band(threshold, rule_out, rule_in)
    out_m, in_m = p < lo, p >= hi
    decided = out_m | in_m
    return {
        "decided_share": float(decided.mean()),
        "ruled_out": int(out_m.sum()),
        "ruled_in": int(in_m.sum()),
        "indeterminate": int((~decided).sum()),
        # of the PNEUMONIA cases, the share the rule-out did not wrongly dismiss
        "rule_out_sensitivity": _ratio(float((y & ~out_m).sum()), float(y.sum())),
        # of the NORMAL cases, the share the rule-in did not wrongly call PNEUMONIA
        "rule_in_specificity": _ratio(float((~y & ~in_m).sum()), float((~y).sum())),
        "pneumonia_among_ruled_out": int((y & out_m).sum()),
        "normal_among_ruled_in": int((~y & in_m).sum()),
        "accuracy_of_decided": _ratio(float(((p >= threshold) == y)[decided].sum()), float(decided.sum())),
    }
