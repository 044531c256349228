"""One result type and one row format, for every front end (infer, serve, watch, batch).

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

from dataclasses import dataclass, field

import numpy as np

CLASSIFIED, REJECTED, FAILED = "classified", "rejected", "failed"
CONFIDENT, INDETERMINATE = "confident", "indeterminate"

# The row's fields, in order: JSON keys, CSV columns.
FIELDS = ("path", "status", "label", "probability", "confidence", "reason", "warnings", "raw_probability",
          "threshold", "artifact", "sha256", "model_version", "guard", "ms")


@dataclass
class Result:
    path: str
    status: str
    label: str | None = None
    probability: float | None = None  # calibrated P(PNEUMONIA)
    confidence: str | None = None
    reason: str | None = None
    warnings: list[str] = field(default_factory=list)
    raw_probability: float | None = None  # the model's own output, before calibration
    threshold: float | None = None  # the decision threshold, on the calibrated scale
    artifact: str | None = None
    sha256: str | None = None  # the artifact's, first 16 hex digits
    model_version: str | None = None
    guard: dict = field(default_factory=dict)  # the guard's scores (and the DICOM tags it read)
    ms: float = 0.0
    heatmap: np.ndarray | None = field(default=None, repr=False)  # explain(): (size, size) float32 in [0, 1]
    content_sha256: str | None = field(default=None, repr=False)  # of the input bytes, when the front end asked

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

    def csv_row(self) -> dict:
        d = self.to_dict()
        d["warnings"] = "; ".join(d["warnings"])
        d["guard"] = "; ".join(f"{k}={v}" for k, v in self.guard.items() if not isinstance(v, dict))
        return {k: ("" if d.get(k) is None else d[k]) for k in FIELDS}

    def text_line(self) -> str:
        if self.status == CLASSIFIED:
            conf = "" if self.confidence == CONFIDENT else f"  ({self.confidence})"
            return (f"{self.path}  {self.label:<9}  p={self.probability:.4f}{conf}  threshold={self.threshold:.4f}  "
                    f"{self.artifact}  {self.ms:.1f} ms")
        return f"{self.path}  {self.status.upper():<9}  {self.reason}"


def failure(path: str, reason: str, **kw) -> Result:
    return Result(path=path, status=FAILED, reason=reason, **kw)
