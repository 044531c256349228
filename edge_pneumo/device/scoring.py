"""How the runner turns a model output into an answer: temperature and the confidence band.

The device applies these; `edge_pneumo.lab.metrics` fits them on labelled data.
"""

from __future__ import annotations

import numpy as np


def _logit(p: np.ndarray) -> np.ndarray:
    q = np.clip(np.asarray(p, np.float64), 1e-7, 1 - 1e-7)
    return np.log(q / (1 - q))


def apply_temperature(p: np.ndarray, temperature: float) -> np.ndarray:
    """sigmoid(logit(p) / T): T > 1 softens overconfident probabilities; the ranking is unchanged."""
    return 1.0 / (1.0 + np.exp(-_logit(p) / temperature))


def effective_band(threshold: float, rule_out: float | None, rule_in: float | None) -> tuple[float, float]:
    """The band the runner applies: [lo, hi) is indeterminate. A rule point on the far side of
    the threshold is moved to it, so nothing is ruled in below the threshold or out above it."""
    lo = threshold if rule_out is None else min(rule_out, threshold)
    hi = threshold if rule_in is None else max(rule_in, threshold)
    return lo, hi
