"""Fit one site's calibration on its own labelled images, in numpy (no scikit-learn): what `calibrate` runs.

From the deployed artifact's outputs on the site's images (probability, Dense(128) features), fits the
temperature, the screening threshold (the shipped rule: max balanced accuracy, ties within one standard
error toward 0.5), the band (lab/metrics.conformal_band, smoothed by default: its promises hold for new
patients of the site, exactly on average over calibrations)
and, on request, a site head: a logistic regression on the standardised features plus the shipped
logit, pulled toward the shipped head (weights 0, logit weight 1) by L2. With a head, the threshold and
band are fitted on out-of-fold head scores, never on scores of images the head was fitted on.
`cross_fit_report` says what this buys by patient-grouped k-fold cross-fitting inside the site data.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from edge_pneumo.device.scoring import _logit, decide, effective_band, ordered_band, sigmoid
from edge_pneumo.device.site import SiteHead
from edge_pneumo.lab.metrics import ONE_SE, best_threshold, conformal_band, conformal_rank, fit_temperature

MIN_PER_CLASS = 20
L2_GRID = (1.0, 10.0, 100.0)  # the head's pull toward the shipped head, chosen by inner cross-validation


@dataclass(frozen=True)
class SiteOptions:
    """The promises and the fitting choices `calibrate` records in the site file."""

    sensitivity: float = 0.97  # rule-out: share of the site's pneumonias not ruled out
    specificity: float = 0.95  # rule-in: share of the site's normals not ruled in
    threshold_tolerance: float | str = ONE_SE
    head: bool = False
    folds: int = 5
    seed: int = 0
    band: str = "smoothed"  # BAND_RULES: how the finite-sample rank is rounded (metrics.conformal_rank)


BAND_RULES = ("smoothed", "conservative")


@dataclass(frozen=True)
class SiteData:
    """One site's labelled images as the artifact saw them: labels (1 = PNEUMONIA), the model's
    probabilities, its features (n, 128) and a patient key per image (for grouped folds)."""

    y: np.ndarray
    probability: np.ndarray
    features: np.ndarray
    patients: np.ndarray

    def take(self, idx: np.ndarray) -> SiteData:
        return SiteData(self.y[idx], self.probability[idx], self.features[idx], self.patients[idx])


@dataclass(frozen=True)
class SiteFit:
    threshold: float
    temperature: float
    rule_out: float
    rule_in: float
    widened: list
    head: SiteHead | None
    l2: float | None = None  # the head's pull toward the shipped head, when there is a head
    ranks: dict = field(default_factory=dict)  # per band end: the conformal rank, of how many, its promise

    def scores(self, d: SiteData) -> np.ndarray:
        return d.probability.astype(np.float64) if self.head is None else self.head.score(d.probability, d.features)

    def calibration(self, opts: SiteOptions) -> dict:
        return {
            "threshold": self.threshold,
            "temperature": self.temperature,
            "rule_out": self.rule_out,
            "rule_in": self.rule_in,
            "widened": self.widened,
            "on": "the site head's probability" if self.head is not None else "the model's raw probability",
            "rule": (
                f"threshold: max balanced accuracy on the site's images, ties within "
                f"{'one standard error' if opts.threshold_tolerance == ONE_SE else opts.threshold_tolerance} "
                f"toward 0.5; temperature: min NLL; band: {opts.band} split-conformal rule-out sensitivity >= "
                f"{opts.sensitivity} "
                f"and rule-in specificity >= {opts.specificity} for a new patient of the site, then "
                "rule_out < threshold < rule_in enforced"
                + ("; all on out-of-fold head scores" if self.head is not None else "")
            ),
            "band_ranks": self.ranks,
        }


def band_draws(y: np.ndarray, scores: np.ndarray, opts: SiteOptions) -> tuple[float, float] | None:
    """The smoothed band's two uniform numbers (None for the conservative rule), fixed by the site's
    labels, scores and seed, so that the same images (in any order) give the same site file."""
    if opts.band == "conservative":
        return None
    if opts.band not in BAND_RULES:
        raise ValueError(f"band rule {opts.band!r}: use one of {', '.join(BAND_RULES)}")
    y, s = np.asarray(y).astype(bool), np.asarray(scores, np.float64)
    key = np.sort(s[y]).tobytes() + b"|" + np.sort(s[~y]).tobytes() + str(opts.seed).encode()  # order-free
    rng = np.random.default_rng(int.from_bytes(hashlib.sha256(key).digest()[:8], "little"))
    u = rng.random(2)
    return float(u[0]), float(u[1])


def band_ranks(y: np.ndarray, opts: SiteOptions, draws: tuple[float, float] | None) -> dict:
    """What the band rests on, for the site file: per end the rank k of n scores and its promise k / (n + 1)."""
    y = np.asarray(y).astype(bool)
    out = {}
    for end, n, alpha, u in (
        ("rule_out", int(y.sum()), 1.0 - opts.sensitivity, None if draws is None else draws[0]),
        ("rule_in", int((~y).sum()), 1.0 - opts.specificity, None if draws is None else draws[1]),
    ):
        k = conformal_rank(n, alpha, u)
        out[end] = {"rank": k, "of": n, "promise": round(k / (n + 1), 4), "asked": round(alpha, 4)}
    return {"rule": opts.band, **out}


def grouped_folds(y: np.ndarray, patients: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A fold (0..k-1) per image: every image of a patient in one fold, each class spread over folds."""
    rng = np.random.default_rng(seed)
    fold = np.zeros(len(y), np.int64)
    for label in (0, 1):
        keys = sorted({str(p) for p, t in zip(patients, y) if t == label})
        rank = {keys[i]: r % k for r, i in enumerate(rng.permutation(len(keys)))}
        for i in np.flatnonzero(y == label):
            fold[i] = rank[str(patients[i])]
    return fold


def fit_head(d: SiteData, l2: float) -> SiteHead:
    """Newton's method on sum NLL + l2/2 (|w|^2 + (a - 1)^2): w on standardised features, a on the
    shipped logit, the bias free. l2 -> infinity gives back the shipped model's logit plus a bias."""
    mean = d.features.mean(axis=0)
    sd = d.features.std(axis=0)
    scale = np.where(sd > 1e-6, sd, 1.0)
    x = np.column_stack([(d.features - mean) / scale, _logit(d.probability), np.ones(len(d.y))])
    y = d.y.astype(np.float64)
    n_w = d.features.shape[1]
    centre = np.zeros(n_w + 2)
    centre[n_w] = 1.0
    pull = np.full(n_w + 2, l2)
    pull[-1] = 1e-6  # the bias: (almost) free
    theta = centre.copy()
    for _ in range(50):
        q = sigmoid(x @ theta)
        grad = x.T @ (q - y) + pull * (theta - centre)
        hess = (x * (q * (1 - q))[:, None]).T @ x + np.diag(pull)
        step = np.linalg.solve(hess, grad)
        theta -= step
        if np.abs(step).max() < 1e-8:
            break
    return SiteHead(theta[:n_w], mean, scale, theta[n_w], theta[-1])


def _log_loss(y: np.ndarray, q: np.ndarray) -> float:
    q = np.clip(q, 1e-7, 1 - 1e-7)
    return float(-np.mean(y * np.log(q) + (1 - y) * np.log(1 - q)))


def out_of_fold_head(d: SiteData, opts: SiteOptions) -> tuple[np.ndarray, float]:
    """(out-of-fold head scores at the chosen l2, that l2): each image scored by a head fitted on the
    other folds; l2 chosen from L2_GRID by the out-of-fold log-loss."""
    folds = grouped_folds(d.y, d.patients, opts.folds, opts.seed + 1)
    best = None
    for l2 in L2_GRID:
        s = np.zeros(len(d.y))
        for f in range(opts.folds):
            held = folds == f
            if held.any():
                s[held] = fit_head(d.take(~held), l2).score(d.probability[held], d.features[held])
        loss = _log_loss(d.y, s)
        if best is None or loss < best[0] - 1e-12:
            best = (loss, s, l2)
    return best[1], best[2]


def fit_site(d: SiteData, opts: SiteOptions) -> SiteFit:
    """The site's calibration: see the module docstring."""
    head, l2 = None, None
    if opts.head:
        scores, l2 = out_of_fold_head(d, opts)
        head = fit_head(d, l2)
    else:
        scores = d.probability.astype(np.float64)
    threshold = best_threshold(d.y, scores, opts.threshold_tolerance)
    temperature = fit_temperature(d.y, scores)
    draws = band_draws(d.y, scores, opts)
    rule_out, rule_in = conformal_band(d.y, scores, opts.sensitivity, opts.specificity, draws)
    rule_out, rule_in, widened = ordered_band(threshold, rule_out, rule_in)
    return SiteFit(threshold, temperature, rule_out, rule_in, widened, head, l2, band_ranks(d.y, opts, draws))


def outcome(y: np.ndarray, scores: np.ndarray, threshold: float, rule_out: float | None, rule_in: float | None) -> dict:
    """What a calibration does on labelled images: accuracy of the label, and how the band splits them."""
    return _judged(y, scores, np.tile([threshold, rule_out, rule_in], (len(scores), 1)))


def cross_fit_report(d: SiteData, opts: SiteOptions, shipped: tuple[float, float | None, float | None]) -> dict:
    """Before (the shipped threshold and band) -> after (this site's fit), each image scored only by a
    fit that never saw it or its patient's other images (patient-grouped k-fold). With `opts.head`, the
    band-only fit is reported beside the head's."""
    folds = grouped_folds(d.y, d.patients, opts.folds, opts.seed)
    variants = {"site": SiteOptions(**{**opts.__dict__, "head": False})}
    if opts.head:
        variants["site_head"] = opts
    scores = {name: np.zeros(len(d.y)) for name in variants}
    cuts = {name: np.zeros((len(d.y), 3), dtype=object) for name in variants}
    for f in range(opts.folds):
        held = folds == f
        if not held.any():
            continue
        rest = d.take(~held)
        for name, o in variants.items():
            fit = fit_site(rest, o)
            scores[name][held] = fit.scores(d.take(held))
            cuts[name][held] = (fit.threshold, fit.rule_out, fit.rule_in)
    report = {"folds": opts.folds, "grouping": "patient", "before": outcome(d.y, d.probability, *shipped)}
    for name in variants:
        report[name] = _judged(d.y, scores[name], cuts[name])
    return report


def _judged(y: np.ndarray, scores: np.ndarray, cuts: np.ndarray) -> dict:
    """Accuracy, sensitivity, specificity, decided share, error among decided and the two band errors,
    each image judged by its own row of `cuts` (threshold, rule_out, rule_in; None = no such point)."""
    y = np.asarray(y).astype(bool)
    scores = np.asarray(scores, np.float64)
    label = scores >= cuts[:, 0].astype(np.float64)
    decisions = np.array([decide(float(s), *effective_band(t, lo, hi)) for s, (t, lo, hi) in zip(scores, cuts)])
    decided = decisions != "indeterminate"
    wrong = decided & ((decisions == "pneumonia") != y)
    return {
        "n": int(len(y)),
        "accuracy": float(np.mean(label == y)),
        "sensitivity": float(label[y].mean()),
        "specificity": float((~label[~y]).mean()),
        "decided_share": float(decided.mean()),
        "error_among_decided": float(wrong.sum() / decided.sum()) if decided.any() else float("nan"),
        "pneumonias_ruled_out": float((y & (decisions == "no_pneumonia")).sum() / max(int(y.sum()), 1)),
        "normals_ruled_in": float((~y & (decisions == "pneumonia")).sum() / max(int((~y).sum()), 1)),
    }
