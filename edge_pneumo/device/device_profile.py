"""Which artifact this device runs by default: the fastest one it measured.

`edge-pneumo verify` times every artifact the device can run and writes the fastest to a
small device profile, beside the user's configuration (never inside the installed package):
$EDGE_PNEUMO_PROFILE, else $XDG_CONFIG_HOME/edge-pneumo/device_profile.json (~/.config/...).
Without a profile: int8 TFLite when LiteRT is importable (its XNNPACK kernels are the
faster ones on ARM and x86), else int8 ONNX. `--artifact` always overrides.

One entry per model, keyed by its identity (`model_key`: the manifest's model_version, which
holds the source model's sha256), so verifying `small` leaves seed's choice alone and the other
way round. A file of the older single-model shape (the entry's fields at the top level) is read
as that one model's entry and moved under "models" by the next `verify`.

A profile records what it was measured with: the machine, each runtime's installed version
(None: absent) and every artifact's sha256. Where any of these differ (LiteRT installed after
`verify` ran, a new onnxruntime, a re-made artifact) its choice is stale: the rule above
decides instead, and says so once per process on stderr, until `verify` refreshes it.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

PROFILE_ENV = "EDGE_PNEUMO_PROFILE"
LEGACY_FIELDS = ("fastest", "latency_ms_p50", "folder", "measured_with", "model_version")  # single-model shape
RUNTIME_MODULES = ("onnxruntime", "ai_edge_litert")  # what runs .onnx / .tflite
_said: set[str] = set()  # stale-profile notes already printed in this process


def profile_path() -> Path:
    env = os.environ.get(PROFILE_ENV)
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "edge-pneumo" / "device_profile.json"


def read_profile() -> dict:
    """The profile as {"models": {key: entry}, ...}; {} when absent or unreadable (then the rule decides)."""
    try:
        data = json.loads(profile_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict):
        return {}
    models = data.get("models")
    models = {k: v for k, v in models.items() if isinstance(v, dict)} if isinstance(models, dict) else {}
    if "fastest" in data:  # the single-model shape: one entry at the top level
        legacy = {k: data.pop(k) for k in LEGACY_FIELDS if k in data}
        models.setdefault(str(legacy.get("model_version", "")), legacy)
    data["models"] = models
    return data


def model_key(raw: dict) -> str:
    """A model's identity in the profile: its model_version (it ends with the source model's sha256
    prefix), else the source model's sha256, else "" (a hand-made manifest)."""
    version = raw.get("model_version")
    if version:
        return str(version)
    sha = (raw.get("source_model") or {}).get("sha256")
    return f"sha256:{sha}" if sha else ""


def profile_entry(raw: dict) -> dict:
    """This model's entry in the profile ({} when `verify` never measured it here)."""
    return read_profile().get("models", {}).get(model_key(raw), {})


def measured_figures(raw: dict, runtimes: dict[str, str | None] | None = None) -> dict | None:
    """What `verify` measured for this model here, for `edge-pneumo models`: the fastest artifact, its
    median ms per image, and why it no longer applies (None: it does); None when never measured.
    From the manifest's JSON alone: no model is loaded, no runtime imported."""
    entry = profile_entry(raw)
    fastest = entry.get("fastest")
    if not isinstance(fastest, str) or not fastest:
        return None
    shas = {a["name"]: a.get("sha256") for a in raw.get("artifacts") or [] if isinstance(a, dict) and "name" in a}
    here = _measured_with(shas, installed_runtimes() if runtimes is None else runtimes)
    ms = (entry.get("latency_ms_p50") or {}).get(fastest)
    return {
        "artifact": fastest,
        "ms_per_image": float(ms) if isinstance(ms, (int, float)) else None,
        "stale": stale_because(entry.get("measured_with"), here),
    }


def installed_runtimes() -> dict[str, str | None]:
    """Each runtime's installed version, None where absent: found from its dist-info folder,
    without importing it (importing onnxruntime costs ~100 ms; importlib.metadata ~50 ms)."""
    from importlib.util import find_spec

    found: dict[str, str | None] = {}
    for module in RUNTIME_MODULES:
        try:
            spec = find_spec(module)
        except (ImportError, ValueError):
            spec = None
        found[module] = None if spec is None or not spec.origin else _dist_version(module, spec.origin)
    return found


def _dist_version(module: str, origin: str) -> str:
    """'1.32.0', or '1.20.0 (onnxruntime_gpu)' for another build of the same module; 'installed'
    when no dist-info says (a system package, a source tree)."""
    site = os.path.dirname(os.path.dirname(origin))
    try:
        names = sorted(e.name for e in os.scandir(site) if e.name.endswith((".dist-info", ".egg-info")))
    except OSError:
        return "installed"
    for name in names:
        dist, _, version = name.rsplit(".", 1)[0].partition("-")
        dist = dist.lower().replace("-", "_").replace(".", "_")
        if dist == module or dist.startswith(module + "_"):
            version = version.split("-")[0] or "installed"
            return version if dist == module else f"{version} ({dist})"
    return "installed"


def measured_with(manifest, runtimes: dict[str, str | None]) -> dict:
    """What a timing depends on: the machine, the runtimes and the exact artifacts."""
    return _measured_with({name: e.sha256 for name, e in manifest.artifacts.items()}, runtimes)


def _measured_with(artifact_shas: dict, runtimes: dict[str, str | None]) -> dict:
    return {
        "machine": os.uname().machine if hasattr(os, "uname") else sys.platform,
        "runtimes": {m: runtimes.get(m) for m in RUNTIME_MODULES},
        "artifacts": dict(sorted(artifact_shas.items())),
    }


def stale_because(recorded: dict | None, here: dict) -> str | None:
    """Why a profile measured with `recorded` does not apply `here` (None: it applies)."""
    if not isinstance(recorded, dict):
        return "it does not say what it was measured with (written by an older version)"
    if recorded.get("machine") != here["machine"]:
        return f"it was measured on {recorded.get('machine')}, this is {here['machine']}"
    was = recorded.get("runtimes") or {}
    for m, now in here["runtimes"].items():
        if was.get(m) != now:
            return f"it was measured with {m} {was.get(m) or 'absent'}, here {now or 'absent'}"
    was = recorded.get("artifacts") or {}
    for name, sha in here["artifacts"].items():
        if was.get(name) != sha:
            return f"{name} has changed since it was measured (sha256 {sha[:12]}, was {str(was.get(name))[:12]})"
    if set(was) != set(here["artifacts"]):
        return "the model's artifacts have changed since it was measured"
    return None


def preferred_artifact(manifest, runtimes: dict[str, str | None] | None = None) -> str:
    """The profile's choice for this model (matched by `model_key`) where it was measured with this
    environment, else the rule. `runtimes`: {module: version or None}, default the installed ones."""
    detected = runtimes is None
    runtimes = installed_runtimes() if detected else runtimes
    prof = profile_entry(manifest.raw)
    name = prof.get("fastest")
    if isinstance(name, str) and name in manifest.artifacts:
        why = stale_because(prof.get("measured_with"), measured_with(manifest, runtimes))
        if why is None:
            return name
        choice = rule_choice(manifest, runtimes, check_import=detected)
        _say_once(
            f"note: device profile {profile_path()} not used: {why}; running {choice} (the rule without a "
            "profile); `edge-pneumo verify` refreshes it"
        )
        return choice
    return rule_choice(manifest, runtimes, check_import=detected)


def rule_choice(manifest, runtimes: dict[str, str | None], check_import: bool = False) -> str:
    """Without a (valid) profile: int8 TFLite where LiteRT is installed, else the manifest's default."""
    if "tflite_int8" in manifest.artifacts and runtimes.get("ai_edge_litert"):
        if not check_import or _litert_importable():
            return "tflite_int8"
    return manifest.default_artifact


def _say_once(line: str) -> None:
    if line not in _said:
        _said.add(line)
        print(line, file=sys.stderr)


def _litert_importable() -> bool:
    """Import it rather than trust its dist-info: when it is there, the backend needs the module anyway."""
    try:
        import ai_edge_litert.interpreter  # noqa: F401
    except ImportError:
        return False
    return True


def write_profile(manifest, fastest: str, timings: dict, runtimes: dict[str, str | None] | None = None) -> Path:
    """Record this device's fastest artifact for the model, and what it was measured with (atomically);
    the other models' entries stay as they are."""
    path = profile_path()
    data = read_profile() or {"models": {}}
    models = data["models"]
    models[model_key(manifest.raw)] = {
        "fastest": fastest,
        "latency_ms_p50": timings,
        "folder": str(manifest.folder),
        "measured_with": measured_with(manifest, installed_runtimes() if runtimes is None else runtimes),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=2) + "\n")
    os.replace(tmp, path)
    return path
