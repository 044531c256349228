"""A site file (`edge-pneumo calibrate`): one site's own temperature, threshold, band and optional head.

The device reads it at run time (`--site FILE` or $EDGE_PNEUMO_SITE) and applies it instead of the
manifest's out-of-the-box calibration. It is bound to one artifact by sha256: applied to any other
artifact its numbers mean nothing, so it is refused. It holds aggregates only (counts, fitted
numbers, feature means), never an image, a file name, a patient id or a per-image score.

Keys (schema 1): kind, schema_version, id (what rows say as `calibrated_on`), created, command,
artifact {name, sha256}, model_version, tta, counts {NORMAL, PNEUMONIA, patients, rejected_by_guard},
calibration {threshold, temperature, rule_out, rule_in, widened, on, rule}, head (null or SiteHead's
dict), population {n, rule, statistics: {rejected, out_of_population_warning, feature_distance,
indeterminate, positive: {mean, sd, window, window_limits}}} (what a drift watch compares with),
report (the cross-fitted before -> after), seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from edge_pneumo import jsonout
from edge_pneumo.errors import ModelFileError

KIND = "edge-pneumo site calibration"
SCHEMA_VERSION = 1
SITE_ENV = "EDGE_PNEUMO_SITE"


class SiteHead:
    """The site head: logit = w . (features - mean) / scale + a * logit(p) + b, fitted on the site's
    images (lab/site_fit.py). w = 0, a = 1, b = 0 is the shipped model unchanged."""

    __slots__ = ("weights", "feature_mean", "feature_scale", "logit_weight", "bias")

    def __init__(self, weights, feature_mean, feature_scale, logit_weight: float, bias: float):
        self.weights = np.asarray(weights, np.float64)
        self.feature_mean = np.asarray(feature_mean, np.float64)
        self.feature_scale = np.asarray(feature_scale, np.float64)
        self.logit_weight, self.bias = float(logit_weight), float(bias)

    @classmethod
    def from_dict(cls, d: dict) -> SiteHead:
        head = cls(d["weights"], d["feature_mean"], d["feature_scale"], d["logit_weight"], d["bias"])
        n = len(head.weights)
        if head.feature_mean.shape != (n,) or head.feature_scale.shape != (n,) or not np.all(head.feature_scale > 0):
            raise ValueError("head weights, feature_mean and feature_scale must be equal-length, scales positive")
        return head

    def to_dict(self, **extra) -> dict:
        return {
            "weights": [round(float(v), 6) for v in self.weights],
            "feature_mean": [round(float(v), 6) for v in self.feature_mean],
            "feature_scale": [round(float(v), 6) for v in self.feature_scale],
            "logit_weight": float(self.logit_weight),
            "bias": float(self.bias),
            **extra,
        }

    def logits(self, probability: np.ndarray, features: np.ndarray) -> np.ndarray:
        from edge_pneumo.device.scoring import _logit

        f = (np.asarray(features, np.float64) - self.feature_mean) / self.feature_scale
        return f @ self.weights + self.logit_weight * _logit(probability) + self.bias

    def score(self, probability: np.ndarray, features: np.ndarray) -> np.ndarray:
        """The site's P(PNEUMONIA) before temperature: the scale its threshold and band are on."""
        from edge_pneumo.device.scoring import sigmoid

        return sigmoid(self.logits(probability, features))


class SiteFile:
    """A parsed site file: `raw` as written, `sha256` of its bytes, `head` or None."""

    __slots__ = ("path", "raw", "sha256", "head")

    def __init__(self, path: Path, raw: dict, sha256: str, head: SiteHead | None):
        self.path, self.raw, self.sha256, self.head = path, raw, sha256, head

    @property
    def id(self) -> str:
        return str(self.raw.get("id") or f"site {self.sha256[:16]}")

    @property
    def short(self) -> str:
        return self.sha256[:16]

    @property
    def artifact_name(self) -> str:
        return str(self.raw["artifact"]["name"])

    @property
    def calibration(self) -> dict:
        return self.raw["calibration"]

    def check_artifact(self, name: str, sha256: str, tta: bool = False) -> None:
        """Refuse to apply this site file to another artifact (or with flip TTA, which it was not fitted for)."""
        want = self.raw["artifact"]
        if want.get("sha256") != sha256:
            made_for = self.raw.get("model_version")
            raise ModelFileError(
                f"{self.path}: this site file was fitted for artifact {want.get('name')} "
                + (f"of model {made_for} " if made_for else "")
                + f"(sha256 {str(want.get('sha256'))[:12]}...), not {name} (sha256 {sha256[:12]}...); "
                "its threshold and band mean nothing for another model. Run `edge-pneumo calibrate` again "
                f"for this artifact, or pass --artifact {want.get('name')} with the model it was made for "
                "(`edge-pneumo models` lists each model's version)"
            )
        if tta and not self.raw.get("tta"):
            raise ModelFileError(f"{self.path}: this site file was fitted without flip TTA; run without --tta")

    def summary(self) -> dict:
        """What `verify` and the page show about the active site calibration (aggregates only)."""
        c = self.calibration
        return {
            "id": self.id,
            "file": str(self.path),
            "sha256": self.short,
            "artifact": self.artifact_name,
            "created": self.raw.get("created"),
            "counts": self.raw.get("counts"),
            "threshold": c["threshold"],
            "temperature": c["temperature"],
            "rule_out": c["rule_out"],
            "rule_in": c["rule_in"],
            "head": self.head is not None,
            "band_promises": band_promises(c.get("band_ranks")),
        }


def band_promises(ranks: dict | None) -> str | None:
    """What each end of a site band promises on new patients of the site, from its conformal rank
    (None for a site file written before the ranks were recorded)."""
    if not ranks:
        return None
    words = {"rule_out": "pneumonias ruled out", "rule_in": "normals ruled in"}
    parts = [
        f"{words[end]} <= {r['promise']:.1%} (rank {r['rank']} of {r['of']}; asked {r['asked']:.0%})"
        for end, r in ranks.items()
        if end in words
    ]
    return f"band ({ranks['rule']} split-conformal): " + "; ".join(parts)


def site_path(explicit: str | os.PathLike | None) -> Path | None:
    """The site file to apply: the explicit one, else $EDGE_PNEUMO_SITE, else none."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(SITE_ENV, "").strip()
    return Path(env) if env else None


def load_site(path: str | os.PathLike) -> SiteFile:
    """Read and check a site file; ModelFileError naming the file when it is unusable."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise ModelFileError(f"{path}: no such site file (made by `edge-pneumo calibrate SITE --out FILE`)") from None
    except OSError as e:
        raise ModelFileError(f"{path}: cannot read the site file ({e.strerror or e})") from None
    try:
        raw = json.loads(data.decode("utf-8"))
        if raw.get("kind") != KIND:
            raise ValueError(f"not a site file (kind {raw.get('kind')!r})")
        if raw.get("schema_version") != SCHEMA_VERSION:
            raise ValueError(f"schema_version {raw.get('schema_version')!r}; this edge-pneumo reads {SCHEMA_VERSION}")
        c = raw["calibration"]
        t, lo, hi, temp = (float(c[k]) for k in ("threshold", "rule_out", "rule_in", "temperature"))
        if not (0.0 <= lo < t < hi <= 1.0) or not temp > 0:
            raise ValueError(f"band {lo:.4f} < threshold {t:.4f} < {hi:.4f} and temperature > 0 do not hold")
        raw["artifact"]["name"], raw["artifact"]["sha256"]  # noqa: B018  (both required)
        head = SiteHead.from_dict(raw["head"]) if raw.get("head") else None
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError, AttributeError) as e:
        raise ModelFileError(
            f"{path}: not a usable site file ({type(e).__name__}: {e}); run `edge-pneumo calibrate` again"
        ) from None
    return SiteFile(path, raw, hashlib.sha256(data).hexdigest(), head)


def write_site(path: str | os.PathLike, site: dict) -> Path:
    """Write atomically (a temporary name beside it, then rename): a reader never sees half a file."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.partial")
    try:
        tmp.write_text(jsonout.dumps(site, indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, path)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ModelFileError(f"{path}: cannot write the site file ({e.strerror or e})") from None
    return path
