"""Drift watch: is the stream of results still like the population the answers were calibrated on?

Five statistics over a window of results (`serve` and `watch`: the last `WINDOW` readable results;
`edge-pneumo drift`: consecutive windows of a results file, in file order):
share rejected by the guard, share with an out-of-population warning, mean guard feature distance
(Mahalanobis, from the Dense(128) features), share indeterminate, share positive.

Each is compared with a *reference*: the same statistics measured on results of the calibration
population (the shipped one: every train/ image through the shipped artifact; a site's: its own
images), stored as aggregates only (counts, a mean and a standard deviation), never per-image rows.

The limits, at the window's own size n (so nine adult films can trip it, and 500 site images do
not), each at a false-alarm rate of `ALPHA` per statistic and window:
- a share: the beta-binomial predictive of the count in n rows, given the reference's x of N
  (Jeffreys prior): it adds the reference's own sampling error to the window's, which matters for
  a site reference of a few hundred images. The limit is the largest count whose upper tail is
  still above ALPHA; for the positive share both tails (ALPHA/2 each): a prevalence change or a
  model that stopped finding pneumonia both count. Only the upper tail for the others (fewer
  rejections or warnings than the reference is not drift to worry about).
- the mean distance: reference mean + z(1 - ALPHA) x sd x sqrt(1/n + 1/N), z = 3.09 (a normal
  approximation of the window's mean, with the reference mean's own error in it); upper only.
Shares are over classified rows (rejected: over readable rows); failed reads are I/O, not the
population, and are left out. numpy only: this runs on the device.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import threading
from collections import deque
from pathlib import Path

import numpy as np

from edge_pneumo import jsonout
from edge_pneumo.device.guard import OUT_OF_POPULATION
from edge_pneumo.errors import EdgePneumoError, ModelFileError

WINDOW = 500  # results in the rolling window (serve, watch) and in each window of `drift`
ALPHA = 0.001  # false-alarm rate per statistic and window
REFERENCE_NAME = "drift_reference.json"  # beside the manifest; `drift --write-reference` writes it
SCHEMA = 1
MIN_REFERENCE = 50  # readable results a reference is measured on, at the least
RULE = (
    f"alarm when a window statistic leaves its limit at the window's size, false-alarm rate {ALPHA:g} each: "
    "shares by the beta-binomial predictive of the reference's count (positive share two-sided), the mean "
    "feature distance by reference mean + z x sd x sqrt(1/n + 1/N)"
)
TRAINING_POPULATION = "training population"

# name (as in a reference's summary), what it is (for a person)
STATISTICS = (
    ("rejected", "share rejected by the input guard"),
    ("out_of_population", "share with an out-of-population warning"),
    ("feature_distance", "mean guard feature distance"),
    ("indeterminate", "share indeterminate"),
    ("positive", "share positive"),
)
SHARES = ("rejected", "out_of_population", "indeterminate", "positive")
_OOP_PREFIX = OUT_OF_POPULATION.split("{")[0]


class DriftError(EdgePneumoError):
    """A results file or a reference that cannot be used."""


def row_flags(row: dict) -> dict | None:
    """What drift reads from one result row (infer/serve/watch JSON), or None for a failed read.

    The one place that knows the row's fields. Positive: `label` (every classified row keeps it);
    indeterminate: `decision` == "indeterminate" when the row has a decision, else `confidence`."""
    status = row.get("status")
    if status not in ("classified", "rejected"):
        return None
    if status == "rejected":
        return {"rejected": True}
    decision = row.get("decision")  # when the row has it; the band's verdict either way
    indeterminate = decision == "indeterminate" if decision is not None else row.get("confidence") == "indeterminate"
    distance = (row.get("guard") or {}).get("features")
    return {
        "rejected": False,
        "out_of_population": any(str(w).startswith(_OOP_PREFIX) for w in row.get("warnings") or ()),
        "feature_distance": float(distance) if isinstance(distance, (int, float)) else math.nan,
        "indeterminate": indeterminate,
        "positive": str(row.get("label", "")).upper() == "PNEUMONIA",  # the label, also for indeterminate rows
    }


def summarise(flags: list[dict]) -> dict:
    """Counts and the distance's mean/sd over rows of `row_flags` (aggregates only)."""
    readable = len(flags)
    classified = [f for f in flags if not f["rejected"]]
    d = np.array([f["feature_distance"] for f in classified], np.float64)
    d = d[np.isfinite(d)]
    out = {"readable": readable, "classified": len(classified), "rejected": readable - len(classified)}
    for name in ("out_of_population", "indeterminate", "positive"):
        out[name] = int(sum(f[name] for f in classified))
    out["feature_distance"] = {
        "n": int(d.size),
        "mean": float(d.mean()) if d.size else None,
        "sd": float(d.std(ddof=1)) if d.size > 1 else None,
    }
    return out


def _denominator(summary: dict, name: str) -> int:
    return summary["readable"] if name == "rejected" else summary["classified"]


# --- limits ----------------------------------------------------------------------------


def predictive_pmf(n: int, x_ref: int, n_ref: int) -> np.ndarray:
    """P(k of n) for k = 0..n: beta-binomial, the count's distribution given x_ref of n_ref in the reference
    (Jeffreys prior). By the ratio of neighbouring terms, in logs: vectorised, no lgamma needed."""
    a, b = x_ref + 0.5, n_ref - x_ref + 0.5
    k = np.arange(n, dtype=np.float64)
    log_ratio = np.log(n - k) - np.log(k + 1) + np.log(k + a) - np.log(n - k - 1 + b)  # log p(k+1) / p(k)
    log_p = np.concatenate([[0.0], np.cumsum(log_ratio)])
    p = np.exp(log_p - log_p.max())
    return p / p.sum()


def share_limits(n: int, x_ref: int, n_ref: int, two_sided: bool, alpha: float = ALPHA) -> tuple[int | None, int]:
    """(lowest, highest) count in n rows that is still in control (lowest None for one-sided)."""
    pmf = predictive_pmf(n, x_ref, n_ref)
    tail = alpha / 2 if two_sided else alpha
    upper = np.cumsum(pmf[::-1])[::-1]  # P(X >= k)
    high = int(np.argmax(upper <= tail)) - 1 if (upper <= tail).any() else n
    if not two_sided:
        return None, high
    lower = np.cumsum(pmf)  # P(X <= k)
    low = int(np.argmax(lower > tail))
    return low, high


def z_upper(alpha: float) -> float:
    """z with P(Z > z) = alpha for a standard normal Z (bisection on math.erfc; numpy has no quantile)."""
    lo, hi = 0.0, 40.0
    for _ in range(100):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if 0.5 * math.erfc(mid / math.sqrt(2)) > alpha else (lo, mid)
    return (lo + hi) / 2


# --- the reference ---------------------------------------------------------------------


class Reference:
    """Aggregates of the calibration population's results, for one artifact at one operating point."""

    def __init__(self, source: str, summary: dict, artifact: str, sha256: str, operating_point: dict):
        self.source, self.summary, self.artifact = source, summary, artifact
        self.sha256, self.operating_point = sha256, operating_point

    @classmethod
    def from_rows(cls, rows: list[dict], source: str, band: dict | None = None) -> Reference:
        """From results rows of the calibration population: one artifact at one operating point.

        band: the manifest's rule_out/rule_in the rows were made with (rows do not carry it)."""
        shas = {r.get("sha256") for r in rows if r.get("sha256")}
        points = {
            (r.get("artifact"), r.get("threshold"), r.get("tta")) for r in rows if r.get("status") == "classified"
        }
        if len(shas) != 1 or len(points) != 1:
            raise DriftError(
                "a reference needs results of one artifact at one operating point; these rows come from "
                f"{len(shas)} artifact(s) and {len(points)} operating point(s)"
            )
        artifact, threshold, tta = points.pop()
        flags = [f for f in map(row_flags, rows) if f is not None]
        if len(flags) < MIN_REFERENCE:
            raise DriftError(f"a reference needs results of at least {MIN_REFERENCE} readable images, not {len(flags)}")
        return cls(source, summarise(flags), artifact, shas.pop(), {"threshold": threshold, "tta": tta, **(band or {})})

    def to_dict(self) -> dict:
        return {
            "source": self.source,
            "artifact": self.artifact,
            "sha256": self.sha256,
            "operating_point": self.operating_point,
            "summary": self.summary,
        }

    @classmethod
    def from_dict(cls, d: dict) -> Reference:
        return cls(d["source"], d["summary"], d["artifact"], d["sha256"], d["operating_point"])

    @classmethod
    def from_site(cls, raw: dict, site_sha: str, where) -> Reference:
        """From a site file's `population` (edge-pneumo calibrate: per statistic its mean and sd over the
        site's n images; the shares of indeterminate and positive over those the guard accepted)."""
        try:
            pop, art = raw["population"], raw["artifact"]
            n, st = int(pop["n"]), pop["statistics"]
            rejected = round(st["rejected"]["mean"] * n)
            classified = n - rejected
            fd = st.get("feature_distance") or {}
            summary = {
                "readable": n,
                "classified": classified,
                "rejected": rejected,
                "out_of_population": round(st["out_of_population_warning"]["mean"] * n),  # rejected rows carry none
                "indeterminate": round(st["indeterminate"]["mean"] * classified),
                "positive": round(st["positive"]["mean"] * classified),
                "feature_distance": {"n": classified, "mean": fd.get("mean"), "sd": fd.get("sd")},
            }
            source = str(raw.get("id") or f"site {site_sha}")
            return cls(source, summary, str(art["name"]), str(art["sha256"]), {"site": site_sha})
        except (KeyError, TypeError, ValueError) as e:
            raise DriftError(f"{where}: its population section is incomplete ({type(e).__name__}: {e})") from None

    def rate(self, name: str) -> float:
        return self.summary[name] / max(1, _denominator(self.summary, name))


def write_reference(path: Path, ref: Reference, command: str = "") -> Path:
    """Add (or replace) `ref` in the reference file at `path`, keyed by artifact name; atomic."""
    path = Path(path)
    doc = {"schema": SCHEMA, "artifacts": {}}
    if path.is_file():
        doc = _read_json(path)
        if "population" in doc or "artifacts" not in doc:
            raise DriftError(f"{path}: not a drift reference file (a site file?); write the reference to its own file")
    doc["schema"] = SCHEMA
    doc.setdefault("artifacts", {})[ref.artifact] = {**ref.to_dict(), "command": command}
    doc["rule"] = RULE
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(jsonout.dumps(doc, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def _read_json(path: Path) -> dict:
    try:
        doc = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise DriftError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DriftError(f"{path}: not a readable JSON file ({e})") from None
    if not isinstance(doc, dict):
        raise DriftError(f"{path}: not a drift reference or site file (a JSON object expected)")
    return doc


def references_in(path: Path) -> dict[str, Reference]:
    """The references in a reference file, or in a site file's `drift` section, by artifact name."""
    doc = _read_json(path)
    if "population" in doc:  # a site file from `edge-pneumo calibrate`
        ref = Reference.from_site(doc, hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16], path)
        return {ref.artifact: ref}
    doc = doc.get("drift", doc)  # a file that keeps a reference under "drift"
    try:
        if "artifacts" in doc:
            return {name: Reference.from_dict(d) for name, d in doc["artifacts"].items()}
        ref = Reference.from_dict(doc)  # a single reference
        return {ref.artifact: ref}
    except (KeyError, TypeError, AttributeError):
        raise DriftError(
            f"{path}: holds no drift reference; make one with `edge-pneumo infer ... --format json --output r.jsonl` "
            f"on the site's own images, then `edge-pneumo drift r.jsonl --write-reference {path}`"
        ) from None


def pick_reference(path: Path, sha256: str, op: dict) -> Reference:
    """The reference in `path` made with this artifact (sha256, full or prefix) at operating point `op`
    (threshold on the rows' scale, tta, and rule_out/rule_in where known)."""
    refs = references_in(path)
    for ref in refs.values():
        if ref.sha256 and (ref.sha256.startswith(sha256) or sha256.startswith(ref.sha256)):
            theirs = ref.operating_point
            differ = [k for k in op if k in theirs and not _same(theirs[k], op[k])]
            if differ:
                was = ", ".join(f"{k} {theirs[k]} (now {op[k]})" for k in differ)
                raise DriftError(
                    f"{path}: its reference for {ref.artifact} was measured at another operating point: {was}; "
                    "results and reference must come from the same model, calibration and band (README, 'Drift watch')"
                )
            return ref
    raise DriftError(
        f"{path}: no reference for the artifact with sha256 {sha256[:16]} (it has {', '.join(refs) or 'none'}); "
        "re-measure it (README, 'Drift watch')"
    )


def guard_identity(manifest_raw: dict) -> str:
    """The guard's limits and view check as the manifest states them, hashed: a changed guard changes what is
    rejected or warned, so a reference measured under another guard is refused like one for another band."""
    guard = {"guard": manifest_raw.get("guard"), "view_check": manifest_raw.get("view_check")}
    return hashlib.sha256(json.dumps(guard, sort_keys=True, default=str).encode()).hexdigest()[:16]


def operating_point(clf) -> dict:
    """A running classifier's operating point, as `Reference.operating_point` records it."""
    cal = clf.calibration
    return {
        "threshold": round(cal.calibrated_threshold, 6),
        "tta": "flip" if clf.tta else None,
        "rule_out": cal.rule_out,
        "rule_in": cal.rule_in,
        "guard": guard_identity(clf.manifest.raw) if clf.guard is not None else "off",
    }


def _same(a, b) -> bool:
    if a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return a == b
    return abs(float(a) - float(b)) <= 1e-5


def reference_for(clf, site: Path | None = None) -> Reference:
    """The reference a running classifier is judged against: the site's (the file given, else the site
    file the classifier applies), else the shipped one beside the manifest."""
    active = getattr(clf, "site", None)  # the site file the classifier applies (--site, $EDGE_PNEUMO_SITE)
    if site is None and active is not None:
        return Reference.from_site(active.raw, active.sha256[:16], active.path)
    path = Path(site) if site is not None else Path(clf.manifest.folder) / REFERENCE_NAME
    if site is None and not path.is_file():
        raise ModelFileError(f"{clf.manifest.folder}: no {REFERENCE_NAME} (the training population's drift reference)")
    return pick_reference(path, clf.entry.sha256, operating_point(clf))


# --- judging a window ------------------------------------------------------------------


def judge(summary: dict, ref: Reference, alpha: float = ALPHA) -> dict:
    """The window's statistics, their limits at its size, and which left them and why."""
    stats = []
    for name, what in STATISTICS:
        if name == "feature_distance":
            stats.append(_judge_distance(summary, ref, what, alpha))
            continue
        n, x = _denominator(summary, name), summary[name]
        n_ref, x_ref = _denominator(ref.summary, name), ref.summary[name]
        s = {"name": name, "what": what, "n": n, "count": x, "value": x / n if n else None,
             "expected": ref.rate(name), "low": None, "high": None, "out": False, "why": None}  # fmt: skip
        if n:
            low, high = share_limits(n, x_ref, n_ref, two_sided=name == "positive", alpha=alpha)
            s["low"], s["high"] = None if low is None else low / n, high / n
            side = "above" if x > high else "below" if low is not None and x < low else None
            if side:
                bound = high if side == "above" else low
                s["out"] = True
                s["why"] = (
                    f"{what} {x}/{n} = {x / n:.1%} is {side} its limit {bound / n:.1%} "
                    f"({ref.source}: {ref.rate(name):.1%} of {n_ref}; false-alarm rate {alpha:g})"
                )
        stats.append(s)
    return {
        "reference": {"source": ref.source, "artifact": ref.artifact, "readable": ref.summary["readable"]},
        "alpha": alpha,
        "readable": summary["readable"],
        "statistics": stats,
        "out": [s["name"] for s in stats if s["out"]],
    }


def _judge_distance(summary: dict, ref: Reference, what: str, alpha: float) -> dict:
    d, r = summary["feature_distance"], ref.summary["feature_distance"]
    s = {"name": "feature_distance", "what": what, "n": d["n"], "value": d["mean"], "expected": r["mean"],
         "low": None, "high": None, "out": False, "why": None}  # fmt: skip
    if not d["n"] or r["mean"] is None or r["sd"] is None:
        return s
    high = r["mean"] + z_upper(alpha) * r["sd"] * math.sqrt(1 / d["n"] + 1 / r["n"])
    s["high"] = high
    if d["mean"] > high:
        s["out"] = True
        s["why"] = (
            f"{what} {d['mean']:.2f} over {d['n']} images is above its limit {high:.2f} "
            f"({ref.source}: {r['mean']:.2f} +- {r['sd']:.2f} sd over {r['n']}; false-alarm rate {alpha:g})"
        )
    return s


def windows(rows: list[dict], size: int = WINDOW) -> list[tuple[int, int, dict]]:
    """(first row, last row, 1-based, inclusive; summary) of consecutive windows of `size` readable rows."""
    out, flags, first = [], [], None
    for i, row in enumerate(rows, 1):
        f = row_flags(row)
        if f is None:
            continue
        first = first or i
        flags.append(f)
        if len(flags) == size:
            out.append((first, i, summarise(flags)))
            flags, first = [], None
    if flags:
        out.append((first, len(rows), summarise(flags)))
    return out


class DriftWindow:
    """The last `size` readable results of a running front end (serve, watch), judged on demand."""

    def __init__(self, reference: Reference | None, size: int = WINDOW, problem: str | None = None):
        self.reference, self.size, self.problem = reference, size, problem
        self._flags: deque = deque(maxlen=size)
        self._lock = threading.Lock()  # serve adds from its event loop and from the DICOM node's thread
        self.seen = 0

    @classmethod
    def for_classifier(cls, clf, site: Path | None = None, size: int = WINDOW) -> DriftWindow:
        """A window judged against `reference_for(clf, site)`; without a usable reference it still
        counts, and says why it cannot judge (a server must start anyway)."""
        try:
            return cls(reference_for(clf, site), size)
        except EdgePneumoError as e:
            return cls(None, size, problem=str(e))

    def add(self, row: dict) -> None:
        f = row_flags(row)
        if f is not None:
            with self._lock:
                self._flags.append(f)
                self.seen += 1

    def snapshot(self) -> dict:
        with self._lock:
            flags = list(self._flags)
        summary = summarise(flags)
        head = {"window": self.size, "seen": self.seen}
        if self.reference is None:
            return {**head, "readable": summary["readable"], "summary": summary, "reference": None,
                    "problem": self.problem, "out": []}  # fmt: skip
        return {**head, **judge(summary, self.reference)}
