"""One result type and one row format, for every front end (infer, serve, watch, batch);
apps/rows.py writes the rows as JSON lines, CSV or Parquet.

A result has a `status`:
- `classified`: a label, the calibrated probability of PNEUMONIA, and a confidence
  (`confident`, or `indeterminate` between the rule-out and rule-in thresholds);
- `rejected`: the input guard refused it (not a frontal chest X-ray); `reason` says why,
  and there is no label;
- `failed`: the file could not be read; `reason` says why.
Every row names the artifact's sha256 and the model version, so a stored result can be
traced to the exact model that made it.
"""

from __future__ import annotations

import numpy as np

CLASSIFIED, REJECTED, FAILED = "classified", "rejected", "failed"
CONFIDENT, INDETERMINATE = "confident", "indeterminate"

# The row's fields, in order: JSON keys, CSV columns.
FIELDS = (
    "path",
    "status",
    "label",
    "probability",
    "confidence",
    "reason",
    "warnings",
    "raw_probability",
    "threshold",
    "artifact",
    "sha256",
    "model_version",
    "tta",
    "guard",
    "ms",
)


class Result:
    """One input's answer. (A plain class: a dataclass costs ~1 ms at import, on every `infer` start.)

    probability: calibrated P(PNEUMONIA); raw_probability: the model's own output; threshold: the
    decision threshold on the calibrated scale; sha256: the artifact's, first 16 hex digits; tta:
    "flip" when the probability is the mean over the image and its mirror (tta.py), else None; guard:
    the guard's scores (and the DICOM tags it read); heatmap: explain()'s (size, size) float32 map
    in [0, 1]; content_sha256: of the input bytes, when the front end asked for it."""

    __slots__ = (*FIELDS, "heatmap", "content_sha256")

    def __init__(
        self,
        path: str,
        status: str,
        label: str | None = None,
        probability: float | None = None,
        confidence: str | None = None,
        reason: str | None = None,
        warnings: list[str] | None = None,
        raw_probability: float | None = None,
        threshold: float | None = None,
        artifact: str | None = None,
        sha256: str | None = None,
        model_version: str | None = None,
        tta: str | None = None,
        guard: dict | None = None,
        ms: float = 0.0,
        heatmap: np.ndarray | None = None,
        content_sha256: str | None = None,
    ):
        self.path, self.status, self.label, self.probability = path, status, label, probability
        self.confidence, self.reason, self.warnings = confidence, reason, list(warnings or [])
        self.raw_probability, self.threshold, self.artifact, self.sha256 = raw_probability, threshold, artifact, sha256
        self.model_version, self.tta, self.guard, self.ms = model_version, tta, dict(guard or {}), ms
        self.heatmap, self.content_sha256 = heatmap, content_sha256

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in FIELDS if getattr(self, k) not in (None, [], {}))
        return f"Result({shown})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Result) and self.to_dict() == other.to_dict()

    @property
    def ok(self) -> bool:
        """The file could be read (classified or rejected); False for a failure."""
        return self.status != FAILED

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in FIELDS}
        for k in ("probability", "raw_probability", "threshold"):
            if d[k] is not None:
                d[k] = round(float(d[k]), 6)
        d["ms"] = round(float(self.ms), 3)
        d["warnings"] = list(self.warnings)
        if self.content_sha256:
            d["content_sha256"] = self.content_sha256
        return d

    def text_line(self) -> str:
        if self.status == CLASSIFIED:
            conf = "" if self.confidence == CONFIDENT else f"  ({self.confidence})"
            tta = f"+{self.tta} TTA" if self.tta else ""
            return (
                f"{self.path}  {self.label:<9}  p={self.probability:.4f}{conf}  threshold={self.threshold:.4f}  "
                f"{self.artifact}{tta}  {self.ms:.1f} ms"
            )
        return f"{self.path}  {self.status.upper():<9}  {self.reason}"


def failure(path: str, reason: str, **kw) -> Result:
    return Result(path=path, status=FAILED, reason=reason, **kw)
