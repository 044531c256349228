"""How the runner turns a model output into an answer: temperature, the confidence band, the decision.

The device applies these; `edge_pneumo.lab.metrics` and `edge_pneumo.lab.site_fit` fit them on labelled data.
"""

from __future__ import annotations

import numpy as np

# The three decisions a classified row can carry (`Result.decision`), and what people read for each.
PNEUMONIA, NO_PNEUMONIA, UNDECIDED = "pneumonia", "no_pneumonia", "indeterminate"
DECISION_TEXT = {
    PNEUMONIA: "pneumonia likely",
    NO_PNEUMONIA: "no pneumonia found",
    UNDECIDED: "indeterminate: needs a reader",
}
TRAINING_POPULATION = "training population"  # `calibrated_on` without a site file


class BandError(ValueError):
    """A band that contradicts its threshold (rule_out >= threshold or rule_in <= threshold)."""


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


def sigmoid(z: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-np.clip(np.asarray(z, np.float64), -500.0, 500.0)))


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): T > 1 softens overconfident probabilities; the ranking is unchanged."""
    return sigmoid(_logit(p) / temperature)


def effective_band(threshold: float, rule_out: float | None, rule_in: float | None) -> tuple[float, float]:
    """The band the runner applies: [lo, hi) is indeterminate. A rule point on the far side of
    the threshold (an old manifest's degenerate band) is moved to it, so nothing is ruled in below
    the threshold or out above it: a decision never contradicts the label."""
    lo = threshold if rule_out is None else min(rule_out, threshold)
    hi = threshold if rule_in is None else max(rule_in, threshold)
    return lo, hi


def ordered_band(threshold: float, rule_out: float, rule_in: float, widen: bool = True) -> tuple[float, float, list]:
    """(rule_out, rule_in, widened) with rule_out < threshold < rule_in, the rule every fitted band
    must keep (train, export, calibrate). A point on the wrong side is moved just past the
    threshold (`widen`: the indeterminate zone grows, so each promise still holds) or, without
    `widen`, BandError says which one is wrong. `widened` names the points that were moved."""
    widened = []
    if not rule_out < threshold:
        if not widen:
            raise BandError(f"rule-out point {rule_out:.4f} is not below the threshold {threshold:.4f}")
        rule_out, widened = float(np.nextafter(threshold, 0.0)), [*widened, "rule_out"]
    if not rule_in > threshold:
        if not widen:
            raise BandError(f"rule-in point {rule_in:.4f} is not above the threshold {threshold:.4f}")
        rule_in, widened = float(np.nextafter(threshold, 1.0)), [*widened, "rule_in"]
    return float(rule_out), float(rule_in), widened


def decide(score: float, lo: float, hi: float) -> str:
    """The decision for a score (the scale the threshold is on), given the band [lo, hi)."""
    if score >= hi:
        return PNEUMONIA
    return NO_PNEUMONIA if score < lo else UNDECIDED
