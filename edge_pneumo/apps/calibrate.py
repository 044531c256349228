"""The body of `edge-pneumo calibrate SITE --out site.json`: fit the device to one site's labelled images.

Runs on the device with the base install (numpy + the runtime): the deployed artifact scores the site's
images through the same decode path and guard as `infer` (lab/site_fit.py does the fitting), then the
site file is written atomically. Nothing is written when an image cannot be read, a label cannot be
parsed or a class has too few images; the site file holds aggregates only.
"""

from __future__ import annotations

import csv
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_pneumo.decoders.decode import IMAGE_SUFFIXES
from edge_pneumo.device.result import CLASSIFIED, FAILED
from edge_pneumo.device.site import KIND, SCHEMA_VERSION, band_promises, write_site
from edge_pneumo.errors import DatasetError
from edge_pneumo.lab.dataset import CLASS_NAMES, patient_id
from edge_pneumo.lab.looks import is_test_split, log_look_or_warn
from edge_pneumo.lab.site_fit import MIN_PER_CLASS, SiteData, SiteOptions, cross_fit_report, fit_site

_LABELS = {"normal": 0, "0": 0, "pneumonia": 1, "1": 1}
BOOTSTRAP_WINDOW, BOOTSTRAP_DRAWS = 500, 2000


def site_images(site: Path | None, labels_csv: Path | None) -> list[tuple[str, int, str]]:
    """(path, label, patient key) per image, from SITE/{NORMAL,PNEUMONIA}/ or a CSV of path,label[,patient].

    Without a patient column the key is parsed from the file name (Kermany names), else the file itself."""
    if labels_csv is not None:
        return _from_csv(labels_csv)
    if site is None:
        raise DatasetError("give a SITE folder (with NORMAL/ and PNEUMONIA/ inside) or --labels CSV")
    if not site.is_dir():
        raise DatasetError(f"{site}: no such folder" if not site.exists() else f"{site}: not a folder")
    out = []
    for label, name in enumerate(CLASS_NAMES):
        folder = site / name
        if not folder.is_dir():
            raise DatasetError(
                f"{folder}: class folder missing; a SITE folder holds NORMAL/ and PNEUMONIA/ (or pass --labels CSV)"
            )
        files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        out.extend((str(p), label, patient_id(p.name)) for p in files)
    return out


def _from_csv(path: Path) -> list[tuple[str, int, str]]:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as e:
        raise DatasetError(f"{path}: cannot read the labels file ({e.strerror or e})") from None
    rows = list(csv.reader(text.splitlines()))
    if rows and rows[0] and rows[0][0].strip().lower() == "path":
        rows = rows[1:]
    out = []
    for n, row in enumerate(rows, start=2 if text.lower().startswith("path") else 1):
        if not row or not "".join(row).strip():
            continue
        if len(row) < 2:
            raise DatasetError(f"{path}, line {n}: expected path,label[,patient], found {','.join(row)!r}")
        label = _LABELS.get(row[1].strip().lower())
        if label is None:
            raise DatasetError(
                f"{path}, line {n}: label {row[1].strip()!r} is neither NORMAL nor PNEUMONIA (nor 0/1) "
                f"for {row[0].strip()}"
            )
        image = Path(row[0].strip())
        image = image if image.is_absolute() else path.parent / image
        patient = row[2].strip() if len(row) > 2 and row[2].strip() else patient_id(image.name)
        out.append((str(image), label, patient))
    return out


def run_calibrate(
    site: Path | None,
    out: Path,
    labels_csv: Path | None = None,
    model: str | Path | None = None,
    artifact: str | None = None,
    opts: SiteOptions = SiteOptions(),
    name: str | None = None,
    threads: int | None = None,
    log=print,
) -> dict:
    """Score, check, fit, report, write; returns the site file's content."""
    from edge_pneumo.device.classifier import Calibration, Classifier

    started = time.perf_counter()
    items = site_images(site, labels_csv)
    _check_counts(items, "image(s)", site or labels_csv)
    clf = Classifier.load(model, artifact=artifact, threads=threads)
    clf.keep_features = True
    results = list(clf.predict_many([p for p, _, _ in items]))
    failed = [r for r in results if r.status == FAILED]
    if failed:
        more = f" (and {len(failed) - 1} more)" if len(failed) > 1 else ""
        raise DatasetError(f"{failed[0].reason}{more}; fix or remove it: no site file written")
    kept = [(r, lab, pat) for r, (_, lab, pat) in zip(results, items) if r.status == CLASSIFIED]
    rejected = len(results) - len(kept)
    for r in results:
        if r.status != CLASSIFIED:
            log(f"rejected by the input guard, left out of the fit: {r.path}: {r.reason}")
    _check_counts([(None, lab, None) for _, lab, _ in kept], "image(s) the guard accepted", site or labels_csv)
    d = SiteData(
        np.array([lab for _, lab, _ in kept]),
        np.array([r.raw_probability for r, _, _ in kept], np.float64),
        np.stack([r.features for r, _, _ in kept]).astype(np.float64),
        np.array([pat for _, _, pat in kept]),
    )
    fit = fit_site(d, opts)
    shipped = Calibration.from_manifest(clf.manifest)
    report = cross_fit_report(d, opts, (shipped.threshold, shipped.rule_out, shipped.rule_in))
    created = datetime.now(timezone.utc).isoformat(timespec="seconds")
    content = {
        "kind": KIND,
        "schema_version": SCHEMA_VERSION,
        "id": f"site {name or 'calibration'} {created[:10]}",
        "created": created,
        "command": " ".join(["edge-pneumo", *map(shlex.quote, sys.argv[1:])]) if sys.argv else "",
        "artifact": {"name": clf.entry.name, "sha256": clf.entry.sha256},
        "model_version": clf.model_version,
        "tta": False,
        "counts": {
            "NORMAL": int((d.y == 0).sum()),
            "PNEUMONIA": int((d.y == 1).sum()),
            "patients": int(len(set(d.patients.tolist()))),
            "rejected_by_guard": rejected,
        },
        "calibration": fit.calibration(opts),
        "head": None
        if fit.head is None
        else fit.head.to_dict(
            l2=fit.l2,
            rule="logistic regression on standardised Dense(128) features + the "
            "shipped logit, L2 pull toward the shipped head, l2 chosen by out-of-fold log-loss",
        ),
        "population": population(results, clf, fit),
        "report": report,
        "seconds": None,
    }
    content["seconds"] = round(time.perf_counter() - started, 2)
    write_site(out, content)
    if site is not None and is_test_split(site):  # calibrating on the test split reads its labels: a look
        figures = {k: report["site"][k] for k in ("accuracy", "decided_share", "error_among_decided")}
        log_look_or_warn(clf.manifest.folder, "calibrate", figures)
    return content


def _check_counts(items, what: str, where) -> None:
    for label, cls in enumerate(CLASS_NAMES):
        n = sum(1 for _, lab, _ in items if lab == label)
        if n < MIN_PER_CLASS:
            raise DatasetError(
                f"{where}: {n} {cls} {what}, a site needs at least {MIN_PER_CLASS} of each class to calibrate; "
                "no site file written"
            )


def population(results, clf, fit) -> dict:
    """The site's images as the guard and the fitted calibration see them, in aggregates only: per
    statistic its mean over the site's images, its per-image SD, and the 0.5 / 99.5 percentiles of
    its mean over a window of 500 images (bootstrap): the limits a drift watch compares a window with."""
    from edge_pneumo.device.classifier import Calibration
    from edge_pneumo.device.guard import OUT_OF_POPULATION

    warned_text = OUT_OF_POPULATION.split("{")[0]
    cal = Calibration(fit.threshold, fit.temperature, fit.rule_out, fit.rule_in, head=fit.head)
    per_image = {"rejected": [], "out_of_population_warning": [], "feature_distance": []}
    decided = {"indeterminate": [], "positive": []}
    for r in results:
        per_image["rejected"].append(float(r.status != CLASSIFIED))
        per_image["out_of_population_warning"].append(float(any(w.startswith(warned_text) for w in r.warnings)))
        if "features" in r.guard:
            per_image["feature_distance"].append(float(r.guard["features"]))
        if r.status == CLASSIFIED:
            s = float(cal.scores(np.array([r.raw_probability]), r.features[None, :])[0])
            decided["indeterminate"].append(float(cal.decision(s) == "indeterminate"))
            decided["positive"].append(float(s >= cal.threshold))
    rng = np.random.default_rng(0)
    stats = {}
    for key, values in {**per_image, **decided}.items():
        v = np.asarray(values, np.float64)
        if not len(v):
            continue
        means = v[rng.integers(0, len(v), (BOOTSTRAP_DRAWS, BOOTSTRAP_WINDOW))].mean(axis=1)
        stats[key] = {
            "mean": float(v.mean()),
            "sd": float(v.std()),
            "window": BOOTSTRAP_WINDOW,
            "window_limits": [float(np.percentile(means, 0.5)), float(np.percentile(means, 99.5))],
        }
    fd = np.asarray(per_image["feature_distance"])
    if len(fd):
        stats["feature_distance"]["percentiles"] = {
            str(q): float(np.percentile(fd, q)) for q in (5, 25, 50, 75, 95, 99)
        }
    return {
        "n": len(results),
        "statistics": stats,
        "rule": "rejected, out_of_population_warning, feature_distance: the input guard on every site image; "
        "indeterminate, positive: the site calibration on the images the guard accepted (in-sample); "
        f"window_limits: 0.5 and 99.5 percentiles of the mean over {BOOTSTRAP_WINDOW} images drawn with "
        f"replacement, {BOOTSTRAP_DRAWS} draws",
    }


def format_report(content: dict) -> str:
    """The cross-fitted report, before -> after, for people."""
    r = content["report"]
    c = content["calibration"]
    counts = content["counts"]
    cols = [("before", "shipped"), ("site", "site")] + ([("site_head", "site + head")] if "site_head" in r else [])
    keys = [
        ("accuracy", "accuracy"),
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("decided_share", "decided share"),
        ("error_among_decided", "error among decided"),
        ("pneumonias_ruled_out", "pneumonias ruled out"),
        ("normals_ruled_in", "normals ruled in"),
    ]
    lines = [
        f"site: {counts['NORMAL']} NORMAL + {counts['PNEUMONIA']} PNEUMONIA images ({counts['patients']} patients), "
        f"{counts['rejected_by_guard']} rejected by the guard; artifact {content['artifact']['name']}",
        f"fitted: threshold {c['threshold']:.4f}, band [{c['rule_out']:.4f}, {c['rule_in']:.4f}), "
        f"temperature {c['temperature']:.3f}" + (" (on the site head's scores)" if content["head"] else ""),
        *filter(None, [band_promises(c.get("band_ranks"))]),
        f"what it buys, by {r['folds']}-fold patient-grouped cross-fitting (no image scored by a fit that saw it):",
        f"  {'':<22}" + "".join(f"{label:>14}" for _, label in cols),
    ]
    for key, label in keys:
        lines.append(f"  {label:<22}" + "".join(f"{r[k][key]:>14.3f}" for k, _ in cols))
    return "\n".join(lines)
