"""`edge-pneumo verify`: the self-check a user runs right after installing on a device.

No dataset needed: a fixed set of synthetic inputs, generated the same way on every
machine, goes through every artifact. Each artifact must reproduce the outputs recorded
for it at export time (so a broken runtime build shows up), and agree with the float32
reference within the manifest's budgets.
"""

from __future__ import annotations

import os
import platform
import time
from pathlib import Path

import numpy as np

from edge_pneumo.device.artifact_formats import TOLERANCES, VERIFY_BUDGET_FACTOR, float32_reference
from edge_pneumo.device.manifest import Manifest, load_manifest
from edge_pneumo.device.probe_inputs import VERIFY_IMAGES, VERIFY_SEED, verify_inputs  # noqa: F401
from edge_pneumo.device.runtime import open_backend
from edge_pneumo.device.tiers import resolve_model
from edge_pneumo.errors import EdgePneumoError, MissingRuntimeError
from edge_pneumo.lab.metrics import agreement_stats

GUARD_TOLERANCE = 0.05  # relative drift of the guard's feature distances from export


def reference_artifact(manifest: Manifest) -> str | None:
    """The name of the float32 artifact others are compared with (artifact_formats.float32_reference)."""
    ref = float32_reference(manifest.artifacts.values())
    return ref.name if ref else None


def device_info() -> dict:
    info = {
        "machine": platform.machine(),
        "system": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "cores": os.cpu_count(),
        "cpu": _cpu_name(),
    }
    versions = {}
    for mod in ("numpy", "cv2", "onnxruntime", "ai_edge_litert"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError:
            versions[mod] = None
        except AttributeError:
            versions[mod] = "installed"
    info["versions"] = versions
    return info


def _cpu_name() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return platform.processor() or "unknown"
    for key in ("model name", "Model", "Hardware", "CPU part"):
        for line in text.splitlines():
            if line.split(":")[0].strip() == key:
                return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def verify_folder(
    folder: str | os.PathLike | None = None,
    runs: int = 20,
    write_profile: bool = True,
    site: str | os.PathLike | None = None,
) -> dict:
    """Check every artifact of an exported folder, and the guard's parameters; record this
    device's fastest artifact in its profile. With `site`, check that the site file was made for
    an artifact of this folder (its sha256), and show it. The report says what passed and why not."""
    manifest = load_manifest(resolve_model(folder or None))
    x = verify_inputs(manifest.preprocessing)
    ref_name = reference_artifact(manifest)
    guard_row, arrays = _check_guard(manifest)
    rows, outputs = [], {}
    for name, entry in manifest.artifacts.items():
        row, probs = _check_artifact(manifest, entry, x, runs, arrays)
        rows.append(row)
        if probs is not None:
            outputs[name] = probs
    _compare_with_reference(manifest, rows, outputs, ref_name)
    from edge_pneumo.device.view_check import verify_rows

    view_rows = verify_rows(manifest, x)  # the view check's files (manifest section view_check), if any
    site_row = None if site is None else check_site(manifest, site)
    passed = (
        all(r["status"] != "FAILED" for r in rows + view_rows)
        and any(r["status"] == "ok" for r in rows)
        and guard_row["status"] == "ok"
        and (site_row is None or site_row["status"] == "ok")
    )
    ok = [r for r in rows if r["status"] == "ok"]
    fastest = min(ok, key=lambda r: r["load_ms"] + r["latency_ms_p50"])["name"] if ok else None
    report = {
        "folder": str(manifest.folder),
        "reference": ref_name,
        "inputs": len(x),
        "device": device_info(),
        "artifacts": rows + [guard_row] + view_rows,
        "passed": passed,
        "fastest": fastest,
        "profile": None,
        "site": site_row,
    }
    if passed and fastest and write_profile:
        from edge_pneumo.device.device_profile import write_profile as save

        try:
            report["profile"] = str(save(manifest, fastest, {r["name"]: r["latency_ms_p50"] for r in ok}))
        except OSError as e:
            report["profile_error"] = f"could not write the device profile ({e.strerror or e})"
    return report


def check_site(manifest, site: str | os.PathLike) -> dict:
    """The site file's summary and whether it fits an artifact of this folder (status ok / FAILED)."""
    from edge_pneumo.device.site import load_site

    try:
        sf = load_site(site)
        entry = manifest.artifacts.get(sf.artifact_name)
        if entry is None:
            raise EdgePneumoError(
                f"{sf.path}: made for artifact {sf.artifact_name}, which this folder does not have "
                f"({', '.join(manifest.artifacts)})"
            )
        sf.check_artifact(entry.name, entry.sha256)
    except EdgePneumoError as e:
        return {"file": str(site), "status": "FAILED", "notes": [str(e)]}
    return {**sf.summary(), "status": "ok", "notes": []}


def _check_guard(manifest: Manifest) -> tuple[dict, dict | None]:
    """The guard's parameters load for every artifact: (its report row, the arrays or None)."""
    row = {
        "name": "guard parameters",
        "file": manifest.raw.get("params_file", {}).get("file", "-"),
        "runtime": "-",
        "precision": "-",
        "status": "ok",
        "notes": [],
    }
    try:
        arrays = manifest.params(verify=True)
        from edge_pneumo.device.guard import Guard

        for name in manifest.artifacts:
            Guard.from_manifest(manifest.raw["guard"], arrays, name)
            manifest.gradcam_params(name)
        manifest.cam_geometry()
    except EdgePneumoError as e:
        row["status"], arrays = "FAILED", None
        row["notes"].append(str(e))
    except (KeyError, TypeError, ValueError) as e:
        row["status"], arrays = "FAILED", None
        row["notes"].append(f"guard section or parameters incomplete ({type(e).__name__}: {e}); re-export")
    return row, arrays


def _check_artifact(manifest: Manifest, entry, x: np.ndarray, runs: int, arrays: dict | None):
    """One artifact: load, run the fixed inputs, time it, compare with what export recorded.
    Returns (its report row, its probabilities or None when it did not run)."""
    row = {"name": entry.name, "file": entry.file, "runtime": entry.runtime, "precision": entry.precision}
    row.update(status="ok", notes=[])
    try:
        manifest.verify(entry)
        t0 = time.perf_counter()
        backend = open_backend(entry.path(manifest.folder), threads=1)
        row["load_ms"] = round(1000 * (time.perf_counter() - t0), 2)
        run = backend.run(x)
        times = []
        for i in range(runs):
            t0 = time.perf_counter()
            backend.predict(x[i % len(x)][None])
            times.append(time.perf_counter() - t0)
        row["latency_ms_p50"] = round(1000 * float(np.median(times)), 3)
    except MissingRuntimeError as e:
        row["status"] = "skipped"
        row["notes"].append(str(e).split(": ", 1)[-1])
        return row, None
    except EdgePneumoError as e:
        row["status"] = "FAILED"
        row["notes"].append(str(e))
        return row, None
    probs = run.probability
    recorded = entry.raw.get("verify_outputs")
    if recorded is not None:
        tol = TOLERANCES[entry.precision].reproduce if entry.precision in TOLERANCES else 1e-4
        drift = float(np.max(np.abs(probs - np.asarray(recorded, np.float32))))
        row["max_drift_from_export"] = drift
        if drift > tol:
            row["status"] = "FAILED"
            row["notes"].append(
                f"outputs differ from those recorded at export by {drift:.2e} (> {tol:.1e}): broken runtime build?"
            )
    recorded_d = entry.raw.get("verify_feature_distances")
    if arrays is not None and recorded_d is not None and run.features is not None:
        from edge_pneumo.device.guard import feature_distance

        name = entry.name
        d = feature_distance(run.features, arrays[f"{name}/feature_mean"], arrays[f"{name}/feature_whitening"])
        gap = float(np.max(np.abs(d - np.asarray(recorded_d)) / (1.0 + np.abs(np.asarray(recorded_d)))))
        row["guard_drift"] = gap
        if gap > GUARD_TOLERANCE:
            row["status"] = "FAILED"
            row["notes"].append(f"guard feature distances differ from export by {gap:.1%} (> {GUARD_TOLERANCE:.0%})")
    return row, probs


def _compare_with_reference(manifest: Manifest, rows: list[dict], outputs: dict, ref_name: str | None) -> None:
    """Each artifact that ran against the float32 reference: within VERIFY_BUDGET_FACTOR x its export budget."""
    ref = outputs.get(ref_name) if ref_name else None
    for row in rows:
        if row["status"] != "ok" or ref is None or row["name"] == ref_name:
            continue
        budget = manifest.artifacts[row["name"]].raw.get("validation", {}).get("budget", {})
        stats = agreement_stats(outputs[row["name"]], ref, manifest.threshold)
        dp = stats["max_abs_dp"]
        row.update(max_abs_dp_vs_reference=dp, agreement_vs_reference=stats["agreement"])
        if budget.get("max_abs_dp") is not None and dp > budget["max_abs_dp"] * VERIFY_BUDGET_FACTOR:
            row["status"] = "FAILED"
            row["notes"].append(f"max|dp| {dp:.2e} vs {ref_name} exceeds {VERIFY_BUDGET_FACTOR}x its export budget")


def format_verify_report(report: dict) -> str:
    d = report["device"]
    v = ", ".join(f"{k} {val}" for k, val in d["versions"].items() if val)
    lines = [
        f"device   {d['cpu']} ({d['machine']}, {d['cores']} cores), {d['system']}, Python {d['python']}",
        f"runtime  {v}",
        f"model    {report['folder']}  ({report['inputs']} fixed inputs, reference {report['reference']})",
        "",
        f"{'artifact':<20} {'status':<8} {'load ms':>8} {'ms/img':>8} {'drift':>9} {'|dp| ref':>9}  notes",
    ]
    for r in report["artifacts"]:
        drift = f"{r['max_drift_from_export']:.1e}" if "max_drift_from_export" in r else "-"
        dp = f"{r['max_abs_dp_vs_reference']:.1e}" if "max_abs_dp_vs_reference" in r else "-"
        lines.append(
            f"{r['name']:<20} {r['status']:<8} {r.get('load_ms', '-'):>8} {r.get('latency_ms_p50', '-'):>8} "
            f"{drift:>9} {dp:>9}  {'; '.join(r['notes'])}"
        )
    if report.get("fastest"):
        lines += [
            "",
            f"fastest here: {report['fastest']} (load + one image)"
            + (f"; recorded in {report['profile']}, the default for infer and serve" if report.get("profile") else ""),
        ]
    site = report.get("site")
    if site is not None:
        if site["status"] == "ok":
            c = site["counts"] or {}
            lines += [
                "",
                f"site     {site['id']} ({site['file']}, sha256 {site['sha256']}): ok for {site['artifact']}; "
                f"{c.get('NORMAL', '?')} NORMAL + {c.get('PNEUMONIA', '?')} PNEUMONIA images, made {site['created']}",
                f"         threshold {site['threshold']:.4f}, band [{site['rule_out']:.4f}, {site['rule_in']:.4f}), "
                f"temperature {site['temperature']:.3f}" + (", with a site head" if site["head"] else ""),
                *([f"         {site['band_promises']}"] if site.get("band_promises") else []),
            ]
        else:
            lines += ["", f"site     FAILED: {'; '.join(site['notes'])}"]
    lines += [
        "",
        "PASSED: this device runs the shipped model as exported, guard included."
        if report["passed"]
        else "FAILED: see the notes above.",
    ]
    return "\n".join(lines)
