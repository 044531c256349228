"""JSON that every reader parses: NaN and infinities become null.

A metric with nothing to divide by (precision with no positive predictions) is NaN,
which Python's json writes as a bare `NaN` that JavaScript, jq and most other
readers reject. Everything the project writes for others goes through `dumps`.
"""

from __future__ import annotations

import json
import math


def finite(obj):
    """A copy of obj with non-finite floats replaced by None."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


_ROW_ENCODER = json.JSONEncoder(allow_nan=False)  # json.dumps(obj, allow_nan=False), without a new encoder per row


def dumps(obj, **kwargs) -> str:
    try:  # nearly always finite already: one pass, no copy (a folder run writes a row per image)
        return json.dumps(obj, allow_nan=False, **kwargs) if kwargs else _ROW_ENCODER.encode(obj)
    except ValueError:
        return json.dumps(finite(obj), allow_nan=False, **kwargs)
