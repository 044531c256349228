"""`edge-pneumo teacher`: train a larger CNN once and save its soft labels for distillation.

The deployed model stays the seed CNN (64 px, same layers, same artifacts). A larger CNN at
a higher resolution ranks images better; its probabilities on every training image, mixed
with the labels, are the seed CNN's training targets (`edge-pneumo train --teacher FILE`).

The teacher is fitted on the same `fit` part as the student's validation run
(`data.selection_split`) and chooses its epoch on the same `selection` part, so nothing the
student later selects on has been seen by its teacher. The file it writes holds one
probability per training image, keyed by path and content hash, with the teacher's own
record (command, seeds, recipe, selection metrics): the student run is reproducible
without retraining the teacher.

`merge_soft_labels` averages several such files into one (an ensemble of teachers trained
apart, e.g. a wide one and an out-of-fold one), refusing files made on different splits or
different copies of the data.

With `folds` = k > 1 the soft labels are out-of-fold: the fit part is cut patient-wise into k
folds, one teacher per fold is fitted on the other k-1, and each fit image gets the probability
of the teacher that never saw it (selection images: the mean of all k). A teacher hands the
images it was fitted on back as near-hard labels; out of fold, its doubts reach the student.
"""

from __future__ import annotations

import hashlib
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_pneumo import jsonout
from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.errors import DatasetError
from edge_pneumo.lab.dataset import Sample, discover, find_split, load_images, patient_folds, selection_split
from edge_pneumo.lab.metrics import binary_report
from edge_pneumo.training.config import TeacherConfig
from edge_pneumo.training.fit import fit, predict

SOFT_LABELS_SCHEMA = 1


def sample_key(s: Sample, split_dir: Path) -> str:
    """A training image's key in the soft-label file: its path inside train/, with '/'."""
    return s.path.relative_to(split_dir).as_posix()


def content_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def run_teacher(cfg: TeacherConfig, log: Callable[[str], None] = print) -> dict:
    """Train the teacher (one model per seed, probabilities averaged) and write the soft labels."""
    from edge_pneumo.training.keras_io import versions
    from edge_pneumo.training.model import build_teacher_model

    started = time.time()
    split_dir = find_split(cfg.data, "train")
    samples = discover(split_dir)
    fit_s, sel_s = selection_split(samples, cfg.val_fraction, cfg.split_seed, cfg.holdout_family)
    pre = Preprocessing(size=cfg.size, intensity=cfg.intensity)
    log(
        f"teacher: {len(fit_s)} fit / {len(sel_s)} selection images at {cfg.size} px (held-out family: "
        f"{cfg.holdout_family})"
    )
    full = load_images(samples, pre)
    sel_set = set(sel_s)
    in_sel = np.array([s in sel_set for s in full.samples])
    x_sel, y_sel = full.x[in_sel], full.y[in_sel]

    fold = np.full(len(full.samples), -1)
    if cfg.folds > 1:
        fit_idx = np.flatnonzero(~in_sel)
        fold[fit_idx] = patient_folds([full.samples[i] for i in fit_idx], cfg.folds, cfg.split_seed)
    members, probs = [], []
    for seed in cfg.seeds:
        p_seed = np.zeros(len(full.samples))
        for k in range(max(1, cfg.folds)):
            t0 = time.time()
            tag = f"seed {seed}" + (f", fold {k + 1}/{cfg.folds}" if cfg.folds > 1 else "")
            fits = ~in_sel & (fold != k) if cfg.folds > 1 else ~in_sel

            def show(r, tag=tag, t0=t0):
                log(
                    f"[teacher {tag}] epoch {r['epoch']:>2}  loss {r['loss']:.4f}  "
                    f"selection AUC {r.get('val_auc', float('nan')):.4f}  ({time.time() - t0:.0f} s)"
                )

            res = fit(
                full.x[fits],
                full.y[fits],
                cfg.recipe,
                seed,
                x_sel,
                y_sel,
                on_epoch=show,
                build=lambda shape: build_teacher_model(shape, cfg.width),
            )
            p = predict(res.model, full.x, batch_size=64)
            if cfg.folds > 1:
                held = fold == k
                p_seed[held] = p[held]
                p_seed[in_sel] += p[in_sel] / cfg.folds
            else:
                p_seed = p
            member = {
                "seed": seed,
                "best_epoch": res.best_epoch,
                "fit_images": int(fits.sum()),
                "seconds": round(time.time() - t0, 1),
                "selection": binary_report(y_sel, p[in_sel], 0.5),
            }
            if cfg.folds > 1:
                held = fold == k
                member.update(fold=k, out_of_fold=binary_report(full.y[held], p[held], 0.5))
            members.append(member)
            log(
                f"[teacher {tag}] best epoch {res.best_epoch}, selection AUC {member['selection']['auc']:.4f}"
                + (f", out-of-fold AUC {member['out_of_fold']['auc']:.4f}" if cfg.folds > 1 else "")
            )
            if cfg.save_models:
                suffix = f".seed{seed}" + (f".fold{k}" if cfg.folds > 1 else "")
                res.model.save(cfg.out.with_name(f"{cfg.out.stem}{suffix}.keras"))
        probs.append(p_seed)
    mean = np.mean(probs, axis=0)
    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["edge-pneumo", *sys.argv[1:]]) if sys.argv else "",
        "model": (
            f"ResNet-18-shaped CNN, width {cfg.width}, {cfg.size} px "
            "(edge_pneumo.training.model.build_teacher_model)"
        ),
        "seeds": list(cfg.seeds),
        "preprocessing": pre.to_dict(),
        "recipe": cfg.recipe.to_dict(),
        "split": {
            "split_seed": cfg.split_seed,
            "val_fraction": cfg.val_fraction,
            "holdout_family": cfg.holdout_family,
            "fit_images": int((~in_sel).sum()),
            "selection_images": int(in_sel.sum()),
        },
        "folds": cfg.folds,
        "soft_labels_on_fit_images": (
            "out of fold: each from the teacher(s) that never saw it"
            if cfg.folds > 1
            else "in sample: from the teacher(s) fitted on them"
        ),
        "members": members,
        "selection": binary_report(y_sel, mean[in_sel], 0.5),
        "out_of_fold": binary_report(full.y[~in_sel], mean[~in_sel], 0.5) if cfg.folds > 1 else None,
        "test_looked_at": False,
        "versions": versions(),
        "seconds": round(time.time() - started, 1),
    }
    labels = {
        sample_key(s, split_dir): {"p": round(float(q), 6), "sha256": content_hash(s.path)}
        for s, q in zip(full.samples, mean)
    }
    save_soft_labels(cfg.out, record, labels)
    log(
        f"teacher: selection AUC {record['selection']['auc']:.4f} ({len(cfg.seeds)} seed(s)); wrote {cfg.out} "
        f"({record['seconds']:.0f} s)"
    )
    return record


@dataclass
class SoftLabels:
    path: Path
    record: dict
    labels: dict[str, dict]

    def for_samples(self, samples: list[Sample], split_dir: Path, check_hashes: bool = True) -> np.ndarray:
        """The teacher's probability for each sample, in order; DatasetError if any is missing or changed."""
        out = np.empty(len(samples), np.float32)
        for i, s in enumerate(samples):
            key = sample_key(s, split_dir)
            entry = self.labels.get(key)
            if entry is None:
                raise DatasetError(
                    f"{self.path}: no soft label for {key}; the teacher was trained on another copy of the data"
                )
            if check_hashes and content_hash(s.path) != entry["sha256"]:
                raise DatasetError(f"{self.path}: {key} has changed since the teacher labelled it (sha256 differs)")
            out[i] = entry["p"]
        return out


def save_soft_labels(out: Path, record: dict, labels: dict[str, dict]) -> None:
    """Write a soft-label file whole or not at all (a temporary file, then an atomic rename)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(jsonout.dumps({"schema": SOFT_LABELS_SCHEMA, "record": record, "labels": labels}) + "\n")
    tmp.replace(out)


def load_soft_labels(path: str | Path) -> SoftLabels:
    path = Path(path)
    try:
        raw = json.loads(path.read_text())
        if raw.get("schema") != SOFT_LABELS_SCHEMA:
            raise ValueError(f"schema {raw.get('schema')!r}, expected {SOFT_LABELS_SCHEMA}")
        return SoftLabels(path, raw["record"], raw["labels"])
    except FileNotFoundError:
        raise DatasetError(f"{path}: soft-label file not found; make one with `edge-pneumo teacher`") from None
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise DatasetError(f"{path}: not a soft-label file ({e})") from None


def merge_soft_labels(paths: list[Path], data: Path, out: Path, log: Callable[[str], None] = print) -> dict:
    """Average several teachers' soft labels into one file (an ensemble teacher), with a record
    that keeps every member's. All members must be made on the same patient split (else some of
    the student's validation images were fitted by one of them) and the same images."""
    if len(paths) < 2:
        raise DatasetError("give at least two soft-label files to merge")
    members = [load_soft_labels(p) for p in paths]
    splits = [
        {k: (m.record.get("split") or {}).get(k) for k in ("split_seed", "val_fraction", "holdout_family")}
        for m in members
    ]
    if any(sp != splits[0] for sp in splits[1:]):
        raise DatasetError(
            "the teachers were fitted on different splits ("
            + "; ".join(f"{m.path}: {sp}" for m, sp in zip(members, splits))
            + "); merge only files of one split"
        )
    split = splits[0]
    split_dir = find_split(data, "train")
    samples = discover(split_dir)
    keys = [sample_key(s, split_dir) for s in samples]
    first = members[0].labels
    for m in members:
        for key in keys:
            entry = m.labels.get(key)
            if entry is None or key not in first or entry["sha256"] != first[key]["sha256"]:
                raise DatasetError(
                    f"{m.path}: {key} is missing or differs from {members[0].path}'s copy; "
                    "the teachers labelled different copies of the data"
                )
    p = np.mean([[m.labels[k]["p"] for k in keys] for m in members], axis=0)
    y = np.array([s.label for s in samples])
    _, sel_s = selection_split(samples, float(split["val_fraction"]), int(split["split_seed"]), split["holdout_family"])
    sel = set(sel_s)
    in_sel = np.array([s in sel for s in samples])
    record = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["edge-pneumo", *sys.argv[1:]]) if sys.argv else "",
        "model": "ensemble (mean probability) of " + "; ".join(str(m.record.get("model", m.path)) for m in members),
        "split": {**(members[0].record.get("split") or {}), **split},
        "soft_labels_on_fit_images": "mean of: "
        + "; ".join(str(m.record.get("soft_labels_on_fit_images", "?")) for m in members),
        "members": [{"file": str(m.path), "record": m.record} for m in members],
        "selection": binary_report(y[in_sel], p[in_sel], 0.5),
        "test_looked_at": False,
    }
    labels = {k: {"p": round(float(q), 6), "sha256": first[k]["sha256"]} for k, q in zip(keys, p)}
    save_soft_labels(out, record, labels)
    member_aucs = ", ".join(f"{(m.record.get('selection') or {}).get('auc', float('nan')):.4f}" for m in members)
    log(
        f"merged {len(members)} teachers: selection AUC {record['selection']['auc']:.4f} (members: {member_aucs}); "
        f"wrote {out}"
    )
    return record
