"""`edge-pneumo compare`: every artifact against the float model, one row each
(Ultralytics-style benchmark table): size, accuracy, AUC, agreement, latency, memory.

Images are decoded once, through the shared preprocessing, in this process; each model
then runs in its own worker process (compare_worker) so that load time and peak RSS are
its own and a failing artifact only fails its row.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edge_pneumo import jsonout
from edge_pneumo.device.artifact_formats import TOLERANCES, float32_reference
from edge_pneumo.device.manifest import load_manifest
from edge_pneumo.errors import (
    EXIT_OK,
    EXIT_PARTIAL,
    EdgePneumoError,
    IntegrityError,
    ModelFileError,
)
from edge_pneumo.lab.dataset import find_split
from edge_pneumo.lab.evaluate import load_labelled
from edge_pneumo.lab.looks import is_test_split, log_look_or_warn
from edge_pneumo.lab.metrics import agreement_stats, binary_report, effective_band, roc_curve

KERAS_ROW = "keras_float32"


@dataclass
class Row:
    name: str
    runtime: str
    precision: str
    file: str
    size_mb: float | None = None
    status: str = "ok"
    note: str = ""
    metrics: dict = field(default_factory=dict)
    probabilities: np.ndarray | None = None
    perf: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "probabilities"}
        return d


def _run_worker(kind: str, model: Path, images: Path, threads: int, runs: int, scratch: Path) -> dict:
    job = {
        "kind": kind,
        "model": str(model),
        "images": str(images),
        "threads": threads,
        "warmup": 5,
        "runs": runs,
        "result": str(scratch / f"{model.name}.{kind}.result.json"),
    }
    job_path = scratch / f"{model.name}.{kind}.job.json"
    job_path.write_text(json.dumps(job))
    proc = subprocess.run(
        [sys.executable, "-m", "edge_pneumo.lab.compare_worker", str(job_path)],
        capture_output=True,
        text=True,
        timeout=900,
    )
    result_path = Path(job["result"])
    if not result_path.exists():
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"worker exited with code {proc.returncode}: {tail[:200]}"}
    return json.loads(result_path.read_text())


def _keras_available() -> bool:
    from importlib.util import find_spec

    return find_spec("tensorflow") is not None and find_spec("keras") is not None


@dataclass(frozen=True)
class CompareOptions:
    """One `compare` run (the CLI's options)."""

    data: Path  # labelled images: DIR/test or DIR/{NORMAL,PNEUMONIA}
    models: Path  # the exported/ folder
    out: Path  # REPORT.md, report.json, report.png
    keras_model: Path | None = None  # the float Keras reference; default: the manifest's source model
    threads: int = 1  # per artifact, for latency
    latency_runs: int = 50
    figure: bool = True


def run_compare(opts: CompareOptions, log=print) -> int:
    """Every artifact (and the float Keras model, with TensorFlow) on a labelled set: the rows,
    the deployment checks and the trust sections, written to opts.out. Returns the exit code."""
    t_start = time.time()
    manifest = load_manifest(opts.models)
    threshold = manifest.threshold
    images = load_labelled(opts.data, manifest.preprocessing, skip_bad=True)
    if images.skipped:
        log(f"skipped {len(images.skipped)} unreadable image(s), e.g. {images.skipped[0]}")
    rows, keras_path = _rows_to_run(manifest, opts)
    tf_import_s = _run_rows(manifest, rows, keras_path, images, opts)
    for row in rows:
        if row.probabilities is not None:
            row.metrics = binary_report(images.y, row.probabilities, threshold)
    ref = _reference(rows)
    for row in rows:
        if row.probabilities is not None and ref is not None:
            row.metrics.update(agreement_stats(row.probabilities, ref.probabilities, threshold))
    report = {
        "data": str(opts.data),
        "images": int(len(images.y)),
        "skipped_images": len(images.skipped),
        "threshold": threshold,
        "reference": ref.name if ref else None,
        "threads": opts.threads,
        "latency_runs": opts.latency_runs,
        "seconds_excluding_tensorflow_import": round(time.time() - t_start - tf_import_s, 1),
        "rows": [r.to_dict() for r in rows],
        "checks": target_checks(rows, ref),
    }
    report.update(trust_sections(manifest, opts.models, images, rows, log))
    _log_look(opts, rows)
    _write_reports(report, manifest, rows, images.y, opts, log)
    ok = [r for r in rows if r.status == "ok"]
    if not ok:
        raise EdgePneumoError("no artifact could be compared; see the rows above")
    return EXIT_OK if len(ok) == len(rows) else EXIT_PARTIAL


def _rows_to_run(manifest, opts: CompareOptions) -> tuple[list[Row], Path]:
    """One row per artifact, after the float Keras model's when TensorFlow and the model are here."""
    rows: list[Row] = []
    keras_path = opts.keras_model or (
        opts.models / manifest.raw.get("source_model", {}).get("file", "pneumonia_cnn.keras")
    )
    if _keras_available() and keras_path.is_file():
        rows.append(Row(KERAS_ROW, "keras", "float32", keras_path.name, keras_path.stat().st_size / 1e6))
    for e in manifest.artifacts.values():
        rows.append(Row(e.name, e.runtime, e.precision, e.file))
    return rows, keras_path


def _run_rows(manifest, rows: list[Row], keras_path: Path, images, opts: CompareOptions) -> float:
    """Each row's model in its own worker process: probabilities and timings into the row, or
    why not (tampered, missing, no runtime, failed). Returns the seconds spent importing TensorFlow."""
    import typer

    tf_import_s = 0.0
    with tempfile.TemporaryDirectory(prefix="edge-pneumo-compare-") as tmp:
        scratch = Path(tmp)
        np.save(scratch / "images.npy", images.x)
        with typer.progressbar(
            rows, label="comparing", file=sys.stderr, show_pos=True, item_show_func=lambda r: r.name if r else ""
        ) as bar:
            for row in bar:
                kind, path = ("keras", keras_path) if row.name == KERAS_ROW else ("artifact", opts.models / row.file)
                if kind == "artifact" and not _ready_to_run(manifest, row, path):
                    continue
                result = _run_worker(kind, path, scratch / "images.npy", opts.threads, opts.latency_runs, scratch)
                tf_import_s += result.get("import_s", 0.0)
                if "error" in result:
                    row.status, row.note = "failed", result["error"]
                    continue
                row.probabilities = np.asarray(result["probabilities"], np.float32)
                lat = np.asarray(result["latency_ms"])
                row.perf = {
                    "load_ms": result["load_ms"],
                    "latency_ms_p50": float(np.percentile(lat, 50)),
                    "latency_ms_p95": float(np.percentile(lat, 95)),
                    "peak_rss_mb": result["peak_rss_mb"],
                }
    return tf_import_s


def _ready_to_run(manifest, row: Row, path: Path) -> bool:
    """The artifact's file matches the manifest and its runtime is installed; else the row says why."""
    try:
        manifest.verify(manifest.artifacts[row.name])
    except IntegrityError:
        row.status, row.note = "tampered", "sha256 does not match the manifest; not run"
        return False
    except ModelFileError:
        row.status, row.note = "missing", "file listed in the manifest is missing"
        return False
    row.size_mb = path.stat().st_size / 1e6
    if row.runtime == "tflite" and not _litert_available():
        row.status, row.note = "skipped", "needs LiteRT: pip install 'edge-pneumo[tflite]'"
        return False
    return True


def _log_look(opts: CompareOptions, rows: list[Row]) -> None:
    """A comparison on the test split is a look at its labels (lab.looks)."""
    if not is_test_split(find_split(opts.data, "test")):
        return
    figures = {r.name: {"accuracy": r.metrics.get("accuracy"), "auc": r.metrics.get("auc")} for r in rows if r.metrics}
    log_look_or_warn(opts.models, "compare", {"data": str(opts.data), "artifacts": figures})


def _write_reports(report: dict, manifest, rows: list[Row], y: np.ndarray, opts: CompareOptions, log=print) -> None:
    """report.json, REPORT.md and (with matplotlib) report.png into opts.out."""
    out = opts.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(jsonout.dumps(report, indent=2) + "\n")
    md = markdown_report(report, manifest, figure_name="report.png" if opts.figure else None)
    if opts.figure:
        try:
            write_figure(rows, y, report["threshold"], out / "report.png")
        except ImportError:
            log("no figure: matplotlib is not installed (pip install 'edge-pneumo[train]')")
            md = markdown_report(report, manifest, figure_name=None)
    (out / "REPORT.md").write_text(md)
    log(table(report))
    log(f"\nwrote {out / 'REPORT.md'}, {out / 'report.json'}" + (", report.png" if opts.figure else ""))


def trust_sections(manifest, models: Path, images, rows: list[Row], log=print) -> dict:
    """Calibration and confidence band, the input guard and the explanation, on this labelled set."""
    out: dict = {"calibration": _calibration_section(manifest, images.y, rows)}
    view = manifest.raw.get("view_check")
    if view and "held_out" in view:  # the view check's source-held-out results, as train-view recorded them
        out["view_check"] = {k: view[k] for k in ("refuse_below", "rule", "held_out")}
    tta_section = manifest.raw.get("tta")
    if tta_section:
        out["tta"] = _tta_rows(manifest, models, images, rows, tta_section, log)
    ran = [r.name for r in rows if r.probabilities is not None and r.name in manifest.artifacts]
    if not ran:
        return out
    out["guard"] = _guard_section(manifest, models, images, ran, log)
    out["explanation"] = _explanation_section(manifest, models, images, ran, log)
    return out


def _calibration_section(manifest, y: np.ndarray, rows: list[Row]) -> dict:
    """ECE before and after the manifest's temperature, and the band's figures, per artifact."""
    from edge_pneumo.lab.metrics import apply_temperature, band_report, expected_calibration_error

    cal = manifest.raw.get("calibration") or {}
    per_artifact = {}
    for r in rows:
        if r.probabilities is None:
            continue
        p = r.probabilities
        per_artifact[r.name] = {
            "ece": expected_calibration_error(y, p),
            "ece_calibrated": expected_calibration_error(y, apply_temperature(p, float(cal.get("temperature", 1.0)))),
            "band": band_report(
                y,
                p,
                manifest.threshold,
                cal.get("rule_out", manifest.threshold),
                cal.get("rule_in", manifest.threshold),
            ),
        }
    return {
        "temperature": cal.get("temperature"),
        "rule_out": cal.get("rule_out"),
        "rule_in": cal.get("rule_in"),
        "rule": cal.get("rule"),
        "selection": {k: cal.get(k) for k in ("ece_selection", "ece_selection_calibrated", "band_selection")},
        "this_set": per_artifact,
    }


def _guard_section(manifest, models: Path, images, ran: list[str], log=print) -> dict:
    """The guard, through the whole pipeline on the files, with the device's default artifact
    (or the first artifact that ran, when that one could not)."""
    from edge_pneumo.device.classifier import Classifier
    from edge_pneumo.device.device_profile import preferred_artifact
    from edge_pneumo.device.guard import OUT_OF_POPULATION

    name = preferred_artifact(manifest)
    clf = Classifier.load(models, artifact=name if name in ran else ran[0])
    results = list(clf.predict_many([str(s.path) for s in images.samples]))
    rejected = [{"path": r.path, "reason": r.reason} for r in results if r.status == "rejected"]
    unlike = OUT_OF_POPULATION.split("{")[0]
    warned = [r.path for r in results if r.status == "classified" and any(w.startswith(unlike) for w in r.warnings)]
    log(
        f"guard ({clf.entry.name}): {len(rejected)} of {len(results)} rejected, {len(warned)} classified with a warning"
    )
    return {"artifact": clf.entry.name, "images": len(results), "rejected": rejected, "warned": len(warned)}


def _explanation_section(manifest, models: Path, images, ran: list[str], log=print) -> dict:
    """Grad-CAM per artifact on the PNEUMONIA images: deletion test, location, randomised head,
    and agreement with the float32 reference's maps."""
    from edge_pneumo.device.runtime import open_backend
    from edge_pneumo.lab.explain_checks import (
        deletion_test,
        heat_location,
        map_agreement,
        maps_for,
        randomised_head_agreement,
    )

    x = images.x[np.flatnonzero(images.y == 1)]
    expl: dict = {}
    ref_entry = float32_reference(manifest.artifacts[n] for n in ran)
    ref_name = ref_entry.name if ref_entry else None
    maps = {}
    geometry = manifest.cam_geometry()
    for name in ran:
        backend = open_backend(models / manifest.artifacts[name].file, threads=2)
        weights = manifest.gradcam_params(name)
        maps[name], _ = maps_for(backend, x, *weights, geometry=geometry)
        run = backend.run(x[:200], ("probability", "features", "conv"))
        expl[name] = {
            "deletion": deletion_test(backend.predict, x, maps[name]),
            "location": heat_location(maps[name]),
            "randomised_head": randomised_head_agreement(
                run.conv, run.features, *weights, geometry=geometry, size=x.shape[1]
            ),
        }
        log(
            f"explanation ({name}): deletion ratio {expl[name]['deletion']['ratio']:.2f}, "
            f"heat in lung boxes {expl[name]['location']['heat_in_lung_boxes']:.2f}"
        )
    for name in ran:
        if ref_name and name != ref_name:
            expl[name]["vs_float32"] = map_agreement(maps[name], maps[ref_name])
    return {"images": int(len(x)), "reference": ref_name, "artifacts": expl}


def _tta_rows(manifest, models: Path, images, rows: list[Row], section: dict, log=print) -> dict:
    """Each artifact with flip TTA (`infer --tta`), at the TTA operating point, beside its plain figures."""
    from edge_pneumo.device import tta
    from edge_pneumo.device.runtime import open_backend
    from edge_pneumo.lab.metrics import binary_report

    out = {"threshold": section["threshold"], "combine": section.get("combine"), "artifacts": {}}
    for r in rows:
        if r.probabilities is None or r.name not in manifest.artifacts:
            continue
        backend = open_backend(models / manifest.artifacts[r.name].file, threads=2)
        p = tta.predict(backend.predict, images.x)
        m = binary_report(images.y, p, section["threshold"])
        plain = binary_report(images.y, r.probabilities, manifest.threshold)
        out["artifacts"][r.name] = {"tta": m, "plain": plain}
        log(
            f"flip TTA ({r.name}): accuracy {m['accuracy']:.4f} (plain {plain['accuracy']:.4f}), "
            f"AUC {m['auc']:.4f} (plain {plain['auc']:.4f})"
        )
    return out


def _litert_available() -> bool:
    from importlib.util import find_spec

    return find_spec("ai_edge_litert") is not None


def _reference(rows: list[Row]) -> Row | None:
    """The float Keras model when it ran, else the float32 artifact (artifact_formats.float32_reference)."""
    ran = [r for r in rows if r.probabilities is not None]
    keras = [r for r in ran if r.name == KERAS_ROW]
    return keras[0] if keras else float32_reference(ran)


def target_checks(rows: list[Row], ref: Row | None) -> list[dict]:
    """The deployment targets (artifact_formats.TOLERANCES: int8 within 1 pp accuracy / 0.01 AUC /
    98% agreement; float32 identical)."""
    checks = []
    if ref is None:
        return checks
    for r in rows:
        if r.probabilities is None or r is ref:
            continue
        target = TOLERANCES[r.precision if r.precision in TOLERANCES else "float16"].compare
        checks.append({"name": r.name, "rule": target.rule, "passed": bool(target.passed(r.metrics, ref.metrics))})
    return checks


COLUMNS = [
    ("format", lambda r: r["name"]),
    ("precision", lambda r: r["precision"]),
    ("size MB", lambda r: _f(r["size_mb"], 2)),
    ("accuracy", lambda r: _f(r["metrics"].get("accuracy"), 4)),
    ("AUC", lambda r: _f(r["metrics"].get("auc"), 4)),
    ("sens.", lambda r: _f(r["metrics"].get("sensitivity"), 4)),
    ("spec.", lambda r: _f(r["metrics"].get("specificity"), 4)),
    ("agree %", lambda r: _f(100 * r["metrics"]["agreement"], 2) if "agreement" in r["metrics"] else "-"),
    ("max|dp|", lambda r: _e(r["metrics"].get("max_abs_dp"))),
    ("mean|dp|", lambda r: _e(r["metrics"].get("mean_abs_dp"))),
    ("load ms", lambda r: _f(r["perf"].get("load_ms"), 1)),
    ("p50 ms", lambda r: _f(r["perf"].get("latency_ms_p50"), 3)),
    ("p95 ms", lambda r: _f(r["perf"].get("latency_ms_p95"), 3)),
    ("peak RSS MB", lambda r: _f(r["perf"].get("peak_rss_mb"), 0)),
    ("status", lambda r: r["status"] + (f": {r['note']}" if r["note"] else "")),
]


def _f(v, digits: int) -> str:
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{v:.{digits}f}"


def _e(v) -> str:
    return "-" if v is None else f"{v:.1e}"


def table(report: dict) -> str:
    cells = [[name for name, _ in COLUMNS]] + [[fn(r) for _, fn in COLUMNS] for r in report["rows"]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in cells)


def view_check_lines(section: dict | None) -> list[str]:
    """The view check's source-held-out results, from the manifest (`edge-pneumo train-view` wrote them)."""
    if not section or "held_out" not in section:
        return []
    lines = [
        "## View check (frontal chest or not), source-held-out",
        "",
        f"Each image scored by a model fitted without its fold (folds by dev-set repository, Kermany patient, "
        f"adult film); refused below {section['refuse_below']} ({section['rule']}).",
        "",
    ]
    return [*lines, *view_check_table(section), ""]


def view_check_table(section: dict, let_through: bool = False) -> list[str]:
    """The held-out table, one row per category (`let_through`: with the names of what passed)."""
    extra = (" let through |", "---|") if let_through else ("", "")
    lines = [
        "| category | images | view check alone | whole guard |" + extra[0],
        "|---|---:|---|---|" + extra[1],
    ]
    for name, c in section["held_out"].items():
        if c["positive"]:
            row = f"| {name} (frontal chest) | {c['n']} | {c['n'] - c['refused']} accepted | |"
            lines.append(row + (" |" if let_through else ""))
        else:
            row = f"| {name} | {c['n']} | {c['refused']} refused | {c['refused_by_guard']} refused |"
            lines.append(row + (f" {', '.join(c['let_through']) or '-'} |" if let_through else ""))
    return lines


def markdown_report(report: dict, manifest, figure_name: str | None) -> str:
    def cell(text: str) -> str:
        return text.replace("|", "\\|")

    header = "| " + " | ".join(cell(name) for name, _ in COLUMNS) + " |"
    sep = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(cell(fn(r)) for _, fn in COLUMNS) + " |" for r in report["rows"]]
    checks = [f"- {'PASS' if c['passed'] else 'FAIL'} `{c['name']}`: {c['rule']}" for c in report["checks"]]
    lines = [
        "# edge-pneumo: artifacts compared with the float model",
        "",
        f"Generated by `edge-pneumo compare` on {report['images']} labelled images from `{report['data']}` "
        f"at the manifest's threshold {report['threshold']:.4f}. Reference for agreement and |dp|: "
        f"`{report['reference']}`.",
        "",
        f"Latency: batch 1, {report['threads']} thread(s), median and 95th percentile of {report['latency_runs']} runs "
        "after 5 warm-up runs. Peak RSS: the whole worker process that loads the model and classifies all images "
        "(Python, runtime and the preprocessed images). Load time excludes TensorFlow's own import.",
        "",
        header,
        sep,
        *body,
        "",
        "## Deployment targets",
        "",
        *(checks or ["- no reference ran"]),
        "",
    ]
    if figure_name:
        lines += [f"![ROC curves and confusion matrices]({figure_name})", ""]
    lines += _trust_markdown(report)
    return "\n".join(lines)


def _effective_band(cal: dict, threshold: float | None) -> str:
    """Say which band the runner uses (`metrics.effective_band`) when a rule point lies on the
    far side of the threshold, or the table's "rule-in" reads wrong."""
    if threshold is None:
        return ""
    lo, hi = effective_band(threshold, cal["rule_out"], cal["rule_in"])
    if (lo, hi) == (cal["rule_out"], cal["rule_in"]):
        return ""
    return (
        f" The band in use is {lo:.4f} to {hi:.4f}: a rule point beyond the threshold {threshold:.4f} "
        "is moved to it, so no image is ruled in below the threshold or ruled out above it."
    )


def _trust_markdown(report: dict) -> list[str]:
    lines: list[str] = []
    cal = report.get("calibration")
    if cal and cal.get("temperature") is not None:
        sel = cal["selection"]
        lines += [
            "## Calibration and confidence band",
            "",
            f"Temperature {cal['temperature']:.3f}, rule-out below {cal['rule_out']:.4f}, rule-in from "
            f"{cal['rule_in']:.4f} (raw probabilities), all chosen at training time: {cal.get('rule', '')}."
            + _effective_band(cal, report.get("threshold")),
            "",
            "| set | artifact | ECE raw | ECE calibrated | decided automatically | rule-out sensitivity | "
            "rule-in specificity | PNEUMONIA among ruled-out | NORMAL among ruled-in | accuracy of decided |",
            "|---|---|---|---|---|---|---|---|---|---|",
        ]
        b = sel.get("band_selection") or {}
        if b:
            lines.append(
                f"| validation (selection) | training run | {_f(sel.get('ece_selection'), 3)} | "
                f"{_f(sel.get('ece_selection_calibrated'), 3)} | {_f(b.get('decided_share'), 3)} | "
                f"{_f(b.get('rule_out_sensitivity'), 4)} | {_f(b.get('rule_in_specificity'), 4)} | "
                f"{b.get('pneumonia_among_ruled_out')} | {b.get('normal_among_ruled_in')} | "
                f"{_f(b.get('accuracy_of_decided'), 4)} |"
            )
        for name, m in cal["this_set"].items():
            b = m["band"]
            lines.append(
                f"| this set ({report['images']}) | {name} | {_f(m['ece'], 3)} | {_f(m['ece_calibrated'], 3)} | "
                f"{_f(b['decided_share'], 3)} | {_f(b['rule_out_sensitivity'], 4)} | "
                f"{_f(b['rule_in_specificity'], 4)} | {b['pneumonia_among_ruled_out']} | "
                f"{b['normal_among_ruled_in']} | {_f(b['accuracy_of_decided'], 4)} |"
            )
        lines.append("")
    t = report.get("tta")
    if t and t.get("artifacts"):
        lines += [
            "## Flip TTA (`infer --tta`)",
            "",
            f"Each image and its mirror image, probabilities averaged ({t.get('combine') or 'mean'}), at the TTA "
            f"threshold {t['threshold']:.4f} that `train` chose on validation; twice the model time.",
            "",
            "| artifact | accuracy (plain) | AUC (plain) | sensitivity (plain) | specificity (plain) |",
            "|---|---|---|---|---|",
        ]
        for name, m in t["artifacts"].items():
            a, b = m["tta"], m["plain"]
            lines.append(
                f"| {name} | {a['accuracy']:.4f} ({b['accuracy']:.4f}) | {a['auc']:.4f} ({b['auc']:.4f}) | "
                f"{a['sensitivity']:.4f} ({b['sensitivity']:.4f}) | {a['specificity']:.4f} ({b['specificity']:.4f}) |"
            )
        lines.append("")
    g = report.get("guard")
    if g:
        lines += [
            "## Input guard on this set",
            "",
            f"With `{g['artifact']}`: {len(g['rejected'])} of {g['images']} images rejected, {g['warned']} "
            "classified with a warning that they are unlike the training population.",
            "",
        ]
        lines += [f"- `{r['path']}`: {r['reason']}" for r in g["rejected"][:20]]
        lines.append("")
    lines += view_check_lines(report.get("view_check"))
    e = report.get("explanation")
    if e and e.get("artifacts"):
        lines += [
            "## Explanation (Grad-CAM from each artifact's own activations)",
            "",
            f"On the {e['images']} PNEUMONIA images of this set. Deletion: mean drop of P(PNEUMONIA) when the "
            "top 15% of the map is hidden, against the same mask moved elsewhere. Randomised head: rank "
            "correlation with maps from random head weights, mean over 10 random heads (range of single heads; low is "
            "right). Agreement: rank correlation "
            f"with `{e['reference']}`'s maps.",
            "",
            "| artifact | deletion drop | moved drop | ratio | vs float32 (Spearman, mean / 5th pct) | "
            "randomised head (Spearman) | heat in lung boxes (area share) | heat in border (area share) |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for name, m in e["artifacts"].items():
            d, loc, rnd = m["deletion"], m["location"], m["randomised_head"]
            vs = m.get("vs_float32")
            lines.append(
                f"| {name} | {d['drop_salient']:.3f} | {d['drop_moved']:.3f} | {d['ratio']:.2f} | "
                f"{(_f(vs['spearman_mean'], 3) + ' / ' + _f(vs['spearman_p05'], 3)) if vs else '-'} | "
                f"{rnd['spearman_mean']:.3f} ({_f(rnd.get('spearman_draw_min'), 2)} to "
                f"{_f(rnd.get('spearman_draw_max'), 2)}) | "
                f"{loc['heat_in_lung_boxes']:.2f} ({loc['lung_box_share_of_area']:.2f}) | "
                f"{loc['heat_in_border']:.2f} ({loc['border_share_of_area']:.2f}) |"
            )
        lines.append("")
        first = next(iter(e["artifacts"].values()))["location"]
        lungs, border = first["heat_in_lung_boxes"], first["heat_in_border"]
        if lungs < first["lung_box_share_of_area"] or border > first["border_share_of_area"]:
            lines += [
                f"**Where the maps fall:** {lungs:.0%} of the heat lies inside rough lung boxes that cover "
                f"{first['lung_box_share_of_area']:.0%} of the image, and {border:.0%} in the outer border that covers "
                f"{first['border_share_of_area']:.0%}. The model leans on the body outline and the image borders, "
                "not only on the lungs (as CNNs trained on this dataset are known to): read its answers as a "
                "screening aid, and look at the heatmap.",
                "",
            ]
        else:
            lines += [
                f"**Where the maps fall:** {lungs:.0%} of the heat lies inside rough lung boxes that cover "
                f"{first['lung_box_share_of_area']:.0%} of the image; {border:.0%} in the outer border.",
                "",
            ]
    return lines


def write_figure(rows: list[Row], labels: np.ndarray, threshold: float, path: Path) -> None:
    """ROC curves of all artifacts in one panel, then a confusion matrix per artifact."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ran = [r for r in rows if r.probabilities is not None]
    n = len(ran)
    cols = min(4, max(1, n))
    grid_rows = 1 + (n + cols - 1) // cols
    fig = plt.figure(figsize=(4 * cols, 3.6 * grid_rows))
    ax = fig.add_subplot(grid_rows, 1, 1)
    for r in ran:
        fpr, tpr, _ = roc_curve(labels, r.probabilities)
        ax.plot(fpr, tpr, label=f"{r.name} (AUC {r.metrics['auc']:.4f})", lw=1.2)
    ax.plot([0, 1], [0, 1], "k:", lw=0.8)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title("ROC curves")
    ax.legend(fontsize=7, loc="lower right")
    for i, r in enumerate(ran):
        a = fig.add_subplot(grid_rows, cols, cols + i + 1)
        cm = np.asarray(r.metrics["confusion_matrix"])
        a.imshow(cm, cmap="Blues")
        for (y, x), v in np.ndenumerate(cm):
            a.text(x, y, str(v), ha="center", va="center", color="white" if v > cm.max() / 2 else "black")
        a.set_xticks([0, 1], ["NORMAL", "PNEUMONIA"], fontsize=7)
        a.set_yticks([0, 1], ["NORMAL", "PNEUMONIA"], fontsize=7)
        a.set_xlabel("predicted", fontsize=7)
        a.set_title(f"{r.name}\nacc {r.metrics['accuracy']:.3f} @ {threshold:.3f}", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
