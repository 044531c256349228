"""Which artifact this device runs by default: the fastest one it measured.

`edge-pneumo verify` times every artifact the device can run and writes the fastest to a
small device profile, beside the user's configuration (never inside the installed package):
$EDGE_PNEUMO_PROFILE, else $XDG_CONFIG_HOME/edge-pneumo/device_profile.json (~/.config/...).
Without a profile: int8 TFLite when LiteRT is importable (its XNNPACK kernels are the
faster ones on ARM and x86), else int8 ONNX. `--artifact` always overrides.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

PROFILE_ENV = "EDGE_PNEUMO_PROFILE"


def profile_path() -> Path:
    env = os.environ.get(PROFILE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "edge-pneumo" / "device_profile.json"


def read_profile() -> dict:
    try:
        return json.loads(profile_path().read_text())
    except (OSError, ValueError):
        return {}


def preferred_artifact(manifest) -> str:
    """The profile's choice for this model (matched by the model version), else the runtime rule."""
    prof = read_profile().get("models", {}).get(str(manifest.raw.get("model_version", "")), {})
    name = prof.get("fastest")
    if name in manifest.artifacts:
        return name
    if "tflite_int8" in manifest.artifacts and _litert_importable():
        return "tflite_int8"
    return manifest.default_artifact


def _litert_importable() -> bool:
    """Import it rather than look it up: when it is there, the backend needs the module anyway."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def write_profile(manifest, fastest: str, timings: dict) -> Path:
    """Record this device's fastest artifact for the model (atomically)."""
    path = profile_path()
    data = read_profile()
    models = data.setdefault("models", {})
    models[str(manifest.raw.get("model_version", ""))] = {
        "fastest": fastest,
        "latency_ms_p50": timings,
        "folder": str(manifest.folder),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path
