"""`edge-pneumo models`: which models this install ships, what each is, how it tested, how fast it runs here.

Reads each manifest.json (and the report.json `compare` wrote beside it) as plain JSON, and the device
profile `verify` writes: no runtime is imported and no model loaded, so it answers at once, even on a Pi.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from edge_pneumo.errors import ModelFileError

METRICS = ("accuracy", "auc", "sensitivity", "specificity")
DEFAULT_DESCRIPTION = {"arch": "seed", "description": "seed CNN"}  # manifests from before the "model" section


def model_rows(model: str | None = None, runtimes: dict | None = None) -> list[dict]:
    """One row per shipped tier, then `model` (a tier name or a path; None: $EDGE_PNEUMO_MODEL when it
    is a path) when it is another folder. `runtimes`: as device_profile.installed_runtimes (tests)."""
    from edge_pneumo.device.tiers import MODEL_ENV, is_tier_name, resolve_model, shipped_tiers

    tiers = shipped_tiers()
    try:
        default = resolve_model(None)
    except ModelFileError:
        default = None  # nothing shipped, or a bad $EDGE_PNEUMO_MODEL: list what there is all the same
    rows = [describe(name, folder, runtimes, is_default=_same(folder, default)) for name, folder in tiers.items()]
    env = os.environ.get(MODEL_ENV)
    extra = model if model is not None else (env if env and not is_tier_name(env) else None)
    if extra is not None:
        path = resolve_model(extra)
        folder = path.parent if path.is_file() else path
        if not any(_same(folder, f) for f in tiers.values()):
            rows.append(describe(str(extra), folder, runtimes, is_default=_same(path, default)))
    return rows


def describe(name: str, folder: Path, runtimes: dict | None = None, is_default: bool = False) -> dict:
    """What `models` says about one exported folder."""
    from edge_pneumo.device.device_profile import measured_figures

    path = folder / "manifest.json"
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(raw, dict):
            raise ValueError("not a JSON object")
    except FileNotFoundError:
        raise ModelFileError(f"{folder}: no manifest.json here; point --model at an exported/ folder") from None
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ModelFileError(f"{path}: not a readable manifest ({e})") from None
    section = raw.get("model") if isinstance(raw.get("model"), dict) else DEFAULT_DESCRIPTION
    pre = raw.get("preprocessing") or {}
    return {
        "name": name,
        "default": is_default,
        "folder": str(folder),
        "arch": section.get("arch") or section.get("name") or "?",
        "description": section.get("description") or "",
        "model_version": raw.get("model_version"),
        "input": {k: pre.get(k) for k in ("size", "channels", "intensity")},
        "threshold": raw.get("threshold"),
        "default_artifact": raw.get("default_artifact"),
        "artifacts": [_artifact(folder, a) for a in raw.get("artifacts", []) if isinstance(a, dict)],
        "test": test_figures(raw, folder),
        "this_device": measured_figures(raw, runtimes),
    }


def _artifact(folder: Path, a: dict) -> dict:
    file = str(a.get("file", ""))
    return {
        "name": a.get("name"),
        "file": file,
        "runtime": a.get("runtime"),
        "precision": a.get("precision"),
        "size_bytes": a.get("size_bytes"),
        "present": bool(file) and (folder / file).is_file(),
    }


def test_figures(raw: dict, folder: Path) -> dict | None:
    """The test-set figures the export kept (the float model's, from training's logged look), else those of
    `compare`'s report.json beside it (the default artifact's row); None: never evaluated."""
    metrics = (raw.get("source_model") or {}).get("test_metrics")
    if isinstance(metrics, dict) and any(k in metrics for k in METRICS):
        return _figures(metrics, "the float model on test/ (manifest: source_model.test_metrics)")
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
        rows = {r["name"]: r for r in report["rows"] if isinstance(r, dict) and isinstance(r.get("metrics"), dict)}
    except (OSError, ValueError, KeyError, TypeError):
        return None
    row = rows.get(raw.get("default_artifact")) or rows.get(report.get("reference")) or next(iter(rows.values()), None)
    if row is None:
        return None
    return _figures(row["metrics"], f"{row['name']} on {report.get('data', 'test images')} (report.json, compare)")


def _figures(metrics: dict, source: str) -> dict:
    out = {k: metrics[k] for k in METRICS if isinstance(metrics.get(k), (int, float))}
    out["n"] = metrics.get("n")
    out["source"] = source
    return out


def _same(a: Path | None, b: Path | None) -> bool:
    if a is None or b is None:
        return False
    try:
        return a.resolve() == b.resolve()
    except OSError:
        return False


def format_models(rows: list[dict]) -> str:
    """A table, one line per model, then each model's artifacts and where its figures come from."""
    head = ("model", "arch", "input", "threshold", "accuracy", "AUC", "sens.", "spec.", "ms/image here")
    table = [head]
    for r in rows:
        t, dev = r["test"] or {}, r["this_device"]
        here = "-" if not dev or dev["ms_per_image"] is None else f"{dev['ms_per_image']:.2f} ({dev['artifact']})"
        if dev and dev["stale"]:
            here += " stale"
        table.append(
            (
                r["name"] + (" *" if r["default"] else ""),
                str(r["arch"]),
                f"{r['input'].get('size')} px",
                _num(r["threshold"]),
                *(_num(t.get(k)) for k in METRICS),
                here,
            )
        )
    widths = [max(len(line[i]) for line in table) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in table]
    if any(r["default"] for r in rows):
        lines.append("* the default model (no --model)")
    for r in rows:
        lines += ["", f"{r['name']}: {r['description'] or r['arch']}  ({r['folder']}, {r['model_version']})"]
        for a in r["artifacts"]:
            size = "?" if not isinstance(a["size_bytes"], int) else f"{a['size_bytes'] / 1e6:.2f} MB"
            note = " (default)" if a["name"] == r["default_artifact"] else ""
            note += "" if a["present"] else " MISSING"
            lines.append(f"  {a['name']:<14} {a['file']:<28} {size:>9}{note}")
        t = r["test"]
        lines.append(f"  test: {t['source']}, {t.get('n')} images" if t else "  test: not evaluated")
        lines.append("  this device: " + _device_line(r))
    return "\n".join(lines)


def _device_line(r: dict) -> str:
    dev, again = r["this_device"], f"run `edge-pneumo verify --model {r['name']}`"
    if not dev or dev["ms_per_image"] is None:
        return f"not measured; {again}"
    if dev["stale"]:
        return f"{dev['artifact']} {dev['ms_per_image']:.2f} ms/image, no longer applies ({dev['stale']}); {again}"
    return f"{dev['artifact']} {dev['ms_per_image']:.2f} ms/image (median, measured by verify)"


def _num(x) -> str:
    return f"{x:.4f}" if isinstance(x, (int, float)) and not isinstance(x, bool) else "-"
