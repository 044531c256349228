"""`edge-pneumo train`: choose epochs and threshold on a patient-wise validation split,
refit on the whole train split, evaluate on test, save the model and its run record."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from edge_pneumo import jsonout
from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.errors import DatasetError
from edge_pneumo.lab.dataset import CLASS_NAMES, discover, find_split, image_family, load_images, selection_split
from edge_pneumo.lab.looks import append_look
from edge_pneumo.lab.metrics import (
    apply_temperature,
    band_report,
    best_threshold,
    binary_report,
    expected_calibration_error,
    hardest_population_calibration,
    youden,
)
from edge_pneumo.training.config import ARCHES, ONE_SE, TrainConfig
from edge_pneumo.training.fit import fit, predict
from edge_pneumo.training.keras_io import MODEL_NAME, record_path, save_model, versions


@dataclass
class _Split:
    """The training images, loaded, and which of them the operating point is chosen on."""

    preprocessing: Preprocessing
    split_dir: Path
    split_seed: int
    train_s: list
    val_s: list
    full: object  # dataset.LoadedImages: x, y, samples, skipped
    in_val: np.ndarray  # per image of `full`: in the selection part
    shift_family: str | None
    has_family: bool
    shift_set: np.ndarray  # per selection image: on the images the threshold is chosen on
    plain_val: np.ndarray  # per selection image: in plain validation (not the held-out batch)
    soft: object | None  # teacher.SoftLabels
    teacher_p: np.ndarray | None  # the teacher's probability per image of `full`

    @property
    def x_tr(self):
        return self.full.x[~self.in_val]

    @property
    def y_tr(self):
        return self.full.y[~self.in_val]

    @property
    def x_va(self):
        return self.full.x[self.in_val]

    @property
    def y_va(self):
        return self.full.y[self.in_val]


@dataclass
class _Selection:
    """What the validation run chose: the model, its threshold, calibration and flip-TTA point."""

    chosen: object  # fit.FitResult
    p_va: np.ndarray
    threshold: float
    robustness: dict | None
    validation: dict  # binary_report on all selection images at the threshold
    calibration: dict
    selection_figures: dict
    where: str  # the images the threshold was chosen on, in words
    tta: dict


def run_training(cfg: TrainConfig, log: Callable[[str], None] = print) -> dict:
    """Train, evaluate and save; returns the run record (also written beside the model)."""
    started = time.time()
    if cfg.teacher is None:
        cfg = replace(cfg, recipe=cfg.recipe.without_teacher())
    split = _load_split(cfg, log)
    sel = _select(cfg, split, log)
    final, final_history = sel.chosen, None
    if cfg.refit_full:
        final = fit(
            split.full.x,
            split.full.y,
            cfg.recipe,
            cfg.seed,
            epochs=sel.chosen.best_epoch,
            threshold=sel.threshold,
            on_epoch=_epoch_line("full-train refit", log),
            teacher=split.teacher_p,
            build=_builder(cfg.arch),
        )
        final_history = final.history
    record = _run_record(cfg, split, sel, final_history)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.evaluate_test:
        _evaluate_test(cfg, split.preprocessing, final.model, sel, record, log)
    record["seconds"] = round(time.time() - started, 1)
    save_model(final.model, cfg.out / MODEL_NAME, cfg.arch)
    rp = record_path(cfg.out / MODEL_NAME)
    tmp = rp.with_suffix(".tmp")
    tmp.write_text(jsonout.dumps(record, indent=2) + "\n")
    tmp.replace(rp)
    log(f"wrote {cfg.out / MODEL_NAME} and {rp} ({record['seconds']:.0f} s)")
    return record


def _builder(arch: str) -> Callable:
    """The `fit` builder of one architecture (config.ARCHES)."""

    def build(input_shape):
        from edge_pneumo.training.model import build_model

        return build_model(arch, input_shape)

    return build


def _load_split(cfg: TrainConfig, log: Callable[[str], None]) -> _Split:
    """train/ split patient-wise into fit and selection parts, loaded, with the teacher's labels."""
    preprocessing = Preprocessing(size=ARCHES[cfg.arch].size, intensity=cfg.intensity)
    split_dir = find_split(cfg.data, "train")
    samples = discover(split_dir)
    soft = None
    if cfg.teacher is not None:
        from edge_pneumo.training.teacher import load_soft_labels

        soft = load_soft_labels(cfg.teacher)
    split_seed = _split_seed(cfg, soft)
    train_s, val_s = selection_split(samples, cfg.val_fraction, split_seed, cfg.holdout_family)
    held = [s for s in val_s if cfg.holdout_family and image_family(s.path.name) == cfg.holdout_family]
    log(
        f"train/: {len(samples)} images; patient-wise split (seed {split_seed}): {len(train_s)} fit, "
        f"{len(val_s)} selection images"
        + (
            f" (incl. all {len(held)} {cfg.holdout_family} images, held out as an unseen acquisition batch)"
            if held
            else ""
        )
    )
    full = load_images(samples, preprocessing, skip_bad=cfg.skip_bad)
    if full.skipped:
        log(
            f"skipped {len(full.skipped)} unusable file(s): {full.skipped[0]}"
            + (" ..." if len(full.skipped) > 1 else "")
        )
    val_set = set(val_s)
    in_val = np.array([s in val_set for s in full.samples])
    if in_val.all() or not in_val.any():
        raise DatasetError("the validation split is empty or takes everything; add images or change --val-fraction")
    y_va = full.y[in_val]
    # The shift-aware operating point: PNEUMONIA from validation, NORMAL from the harder acquisition
    # batch only (test/'s normals are mostly that batch, 165 of 234; validation's other normals are easy).
    family = np.array([image_family(s.path.name) for s in full.samples])[in_val]
    shift_family = cfg.threshold_family or cfg.holdout_family
    has_family = bool(shift_family) and bool(((family == shift_family) & (y_va == 0)).any())
    shift_set = ((family == shift_family) & (y_va == 0)) | (y_va == 1) if has_family else np.ones(len(y_va), bool)
    plain_val = (family != cfg.holdout_family) if cfg.holdout_family and has_family else np.ones(len(y_va), bool)
    teacher_p = None
    if soft is not None:
        teacher_p = soft.for_samples(full.samples, split_dir)
        log(
            f"teacher: {cfg.teacher} ({soft.record.get('model', '')}; selection AUC "
            f"{soft.record.get('selection', {}).get('auc', float('nan')):.4f}); "
            f"targets = {cfg.recipe.distill_alpha} x label + {1 - cfg.recipe.distill_alpha:.2f} x teacher"
            + (f" (softened, T = {cfg.recipe.teacher_temperature})" if cfg.recipe.teacher_temperature != 1.0 else "")
        )
    return _Split(
        preprocessing, split_dir, split_seed, train_s, val_s, full, in_val,
        shift_family, has_family, shift_set, plain_val, soft, teacher_p,
    )  # fmt: skip


def _epoch_line(stage: str, log: Callable[[str], None]) -> Callable[[dict], None]:
    def show(r):
        extra = f"  val_auc {r['val_auc']:.4f}  val_acc@0.5 {r['val_accuracy']:.4f}" if "val_auc" in r else ""
        log(f"[{stage}] epoch {r['epoch']:>2}  loss {r['loss']:.4f}  acc {r['accuracy']:.4f}{extra}")

    return show


def _select(cfg: TrainConfig, split: _Split, log: Callable[[str], None]) -> _Selection:
    """The validation run: fit on the fit part, choose epoch, threshold, calibration and TTA point."""
    y_va, shift_set, plain_val = split.y_va, split.shift_set, split.plain_val
    chosen = fit(
        split.x_tr,
        split.y_tr,
        cfg.recipe,
        cfg.seed,
        split.x_va,
        y_va,
        on_epoch=_epoch_line("validation run", log),
        teacher=None if split.teacher_p is None else split.teacher_p[~split.in_val],
        threshold_on=shift_set,
        build=_builder(cfg.arch),
    )
    vm = chosen.val_metrics
    p_va = predict(chosen.model, split.x_va)
    threshold, robustness = chosen.threshold, None
    # The hardest population train/ offers: the images the threshold is chosen on, and their copies
    # under every acquisition shift. The threshold's tie-break and the temperature and band use it.
    from edge_pneumo.training.shifts import shifted_sets

    on_shift = [split.full.samples[i] for i in np.flatnonzero(split.in_val)[shift_set]]
    shifted_x = shifted_sets([str(s.path) for s in on_shift], split.preprocessing)
    shifted_p = {name: predict(chosen.model, x) for name, x in shifted_x.items()}
    if cfg.threshold_tiebreak == "shifts":
        robustness = shift_robust_threshold(
            chosen.model,
            on_shift,
            y_va[shift_set],
            p_va[shift_set],
            split.preprocessing,
            cfg.recipe.threshold_tolerance,
            shifted=shifted_p,
        )
        threshold = robustness["threshold"]
        vm = binary_report(y_va, p_va, threshold)
        log(
            f"threshold tie broken by robustness to {len(robustness['shifted_j'])} acquisition shifts: "
            f"{threshold:.4f} (nearest 0.5: {robustness['threshold_nearest_half']:.4f}); "
            f"mean shifted balanced accuracy {robustness['mean_shifted_balanced_accuracy']:.4f} "
            f"(nearest 0.5: {robustness['mean_shifted_balanced_accuracy_half']:.4f})"
        )
    calibration = _calibration(y_va, p_va, shift_set, threshold, cfg, shifted_p)
    shift_family, held_out = split.shift_family, "held out of fitting" if cfg.holdout_family else "validation patients"
    selection_figures = {
        "validation": binary_report(y_va[plain_val], p_va[plain_val], threshold),
        "shift_set": (binary_report(y_va[shift_set], p_va[shift_set], threshold) if split.has_family else None),
        "shift_set_is": f"{shift_family} normals ({held_out}) + validation pneumonia",
    }
    where = (
        f"{'held-out' if cfg.holdout_family else 'validation'} {shift_family} normals + validation pneumonia"
        if split.has_family
        else "validation"
    )
    log(
        f"validation run: best epoch {chosen.best_epoch}, threshold {threshold:.4f} "
        f"(max balanced accuracy on {where}); "
        f"selection accuracy {vm['accuracy']:.4f}, AUC {vm['auc']:.4f}; temperature {calibration['temperature']:.3f}, "
        f"band [{calibration['rule_out']:.4f}, {calibration['rule_in']:.4f})"
    )
    tta = _tta_operating_point(
        y_va,
        predict(chosen.model, split.x_va, tta=True),
        shift_set,
        plain_val,
        cfg,
        {name: predict(chosen.model, x, tta=True) for name, x in shifted_x.items()},
    )
    log(
        f"flip TTA: threshold {tta['threshold']:.4f}, "
        f"selection AUC {tta['selection_figures']['validation']['auc']:.4f}, "
        f"temperature {tta['calibration']['temperature']:.3f}"
    )
    return _Selection(chosen, p_va, threshold, robustness, vm, calibration, selection_figures, where, tta)


def _threshold_rule(cfg: TrainConfig, sel: _Selection) -> str:
    tolerance = cfg.recipe.threshold_tolerance
    return (
        f"max balanced accuracy on {sel.where} (validation run), ties within "
        + ("one standard error of it" if tolerance == ONE_SE else str(tolerance))
        + " broken "
        + (
            "by the best mean balanced accuracy over the same images under acquisition shifts, then "
            if sel.robustness
            else ""
        )
        + "toward 0.5"
    )


def _run_record(cfg: TrainConfig, split: _Split, sel: _Selection, final_history: list | None) -> dict:
    """The run record written beside the model (test figures are added by _evaluate_test)."""
    robustness, y_va, in_val = sel.robustness, split.y_va, split.in_val
    return {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(["edge-pneumo", *sys.argv[1:]]) if sys.argv else "",
        "seed": cfg.seed,
        "model_file": MODEL_NAME,
        "arch": asdict(ARCHES[cfg.arch]),
        "class_names": list(CLASS_NAMES),
        "threshold": sel.threshold,
        "threshold_rule": _threshold_rule(cfg, sel),
        "threshold_robustness": None if robustness is None else {k: v for k, v in robustness.items() if k != "scores"},
        "calibration": sel.calibration,
        "selection_figures": sel.selection_figures,
        # The validation run's scores, so a new threshold or band rule can be checked without retraining.
        "selection_scores": {
            "label": y_va.astype(int).tolist(),
            "shift_set": split.shift_set.astype(int).tolist(),
            "probability": [round(float(v), 6) for v in sel.p_va],
            "shifted_shift_set": None if robustness is None else robustness["scores"],
        },
        "tta": sel.tta,
        "teacher": None if cfg.teacher is None else {"file": str(cfg.teacher), "record": split.soft.record},
        "preprocessing": split.preprocessing.to_dict(),
        "recipe": cfg.recipe.to_dict(),
        "split": {
            "split_seed": split.split_seed,
            "val_fraction": cfg.val_fraction,
            "holdout_family": cfg.holdout_family,
            "threshold_family": split.shift_family if split.has_family else None,
            "train_images": int((~in_val).sum()),
            "val_images": int(in_val.sum()),
            "train_patients": len({s.patient for s in split.train_s}),
            "val_patients": len({s.patient for s in split.val_s}),
            "skipped_files": split.full.skipped,
        },
        "best_epoch": sel.chosen.best_epoch,
        "refit_on_full_train": cfg.refit_full,
        "history": {"validation_run": sel.chosen.history, "full_train_refit": final_history},
        "validation": sel.validation,
        "versions": versions(),
    }


def _evaluate_test(
    cfg: TrainConfig, preprocessing: Preprocessing, model, sel: _Selection, record: dict, log: Callable[[str], None]
) -> None:
    """Score test/ at the chosen operating points (plain and flip TTA) into the record, and log the look."""
    try:
        test_dir = find_split(cfg.data, "test")
    except DatasetError:
        return
    if test_dir == Path(cfg.data) / "train":
        return
    threshold, calibration, tta = sel.threshold, sel.calibration, sel.tta
    test = load_images(discover(test_dir), preprocessing, skip_bad=cfg.skip_bad)
    p_test = predict(model, test.x)
    tm = binary_report(test.y, p_test, threshold)
    tm["ece"] = expected_calibration_error(test.y, p_test)
    tm["ece_calibrated"] = expected_calibration_error(test.y, apply_temperature(p_test, calibration["temperature"]))
    tm["band"] = band_report(test.y, p_test, threshold, calibration["rule_out"], calibration["rule_in"])
    log(
        f"test ({tm['n']} images, threshold {tm['threshold']:.4f}): accuracy {tm['accuracy']:.4f}  "
        f"AUC {tm['auc']:.4f}  sensitivity {tm['sensitivity']:.4f}  specificity {tm['specificity']:.4f}  "
        f"ECE {tm['ece']:.3f} -> {tm['ece_calibrated']:.3f}  decided {tm['band']['decided_share']:.3f}"
    )
    p_tta = predict(model, test.x, tta=True)
    tm["tta"] = binary_report(test.y, p_tta, tta["threshold"])
    tm["tta"]["band"] = band_report(
        test.y, p_tta, tta["threshold"], tta["calibration"]["rule_out"], tta["calibration"]["rule_in"]
    )
    log(
        f"test with flip TTA (threshold {tta['threshold']:.4f}): accuracy {tm['tta']['accuracy']:.4f}  "
        f"AUC {tm['tta']['auc']:.4f}"
    )
    record["test"] = tm
    record["test_evaluations"] = _log_test_look(cfg.out, record, tm)


def shift_robust_threshold(
    model,
    samples: list,
    y: np.ndarray,
    p: np.ndarray,
    preprocessing: Preprocessing,
    tolerance: float | str,
    shifted: dict | None = None,
) -> dict:
    """The threshold among the equally good ones (within `tolerance` of the best balanced accuracy
    on these images) that best survives acquisition shifts of the same images (`shifts.SHIFTS`),
    beside the one the plain rule picks (nearest 0.5). The shifts stand in for the unseen scanner
    batch a deployed model meets; they are made from the validation images alone. `shifted`: the
    model's scores of those copies, when the caller has them already."""
    from edge_pneumo.training.shifts import shifted_sets

    if shifted is None:
        shifted = {
            name: predict(model, x) for name, x in shifted_sets([str(s.path) for s in samples], preprocessing).items()
        }
    robust = best_threshold(y, p, tolerance, shifted=list(shifted.values()))
    half = best_threshold(y, p, tolerance)
    # J of each shifted copy (rows) at the two thresholds (columns); balanced accuracy = (J + 1) / 2
    j = np.array([youden(y, q, np.array([robust, half]))[0] for q in shifted.values()])
    return {
        "threshold": robust,
        "threshold_nearest_half": half,
        "shifted_j": {name: round(float(v), 4) for name, v in zip(shifted, j[:, 0])},
        "mean_shifted_balanced_accuracy": float((j[:, 0].mean() + 1) / 2),
        "mean_shifted_balanced_accuracy_half": float((j[:, 1].mean() + 1) / 2),
        "scores": {name: [round(float(v), 6) for v in q] for name, q in shifted.items()},
    }


def _split_seed(cfg: TrainConfig, soft) -> int:
    """The patient split's seed. With a teacher it must be the teacher's own: a teacher fitted on
    another split has seen part of this run's validation images, and its soft labels would carry
    them into the student (validation figures too good, and the selection rule misled)."""
    teacher_seed = None
    if soft is not None:
        split = soft.record.get("split") or {}
        teacher_seed = split.get("split_seed")
        if (
            teacher_seed is not None
            and abs(float(split.get("val_fraction", cfg.val_fraction)) - cfg.val_fraction) > 1e-9
        ):
            raise DatasetError(
                f"{cfg.teacher}: the teacher was fitted with --val-fraction {split['val_fraction']}; "
                f"train the student with the same (not {cfg.val_fraction})"
            )
    if cfg.split_seed is None:
        return int(teacher_seed) if teacher_seed is not None else cfg.seed
    if teacher_seed is not None and int(teacher_seed) != cfg.split_seed:
        raise DatasetError(
            f"{cfg.teacher}: the teacher was fitted on the patient split of seed {teacher_seed}, which "
            f"overlaps this run's validation split (seed {cfg.split_seed}); use --split-seed {teacher_seed}"
        )
    return cfg.split_seed


def _calibration(
    y: np.ndarray, p: np.ndarray, shift_set: np.ndarray, threshold: float, cfg: TrainConfig, shifted: dict
) -> dict:
    """Temperature and confidence band, fitted on the hardest population train/ offers (the images
    the threshold was chosen on, pooled with their copies under every acquisition shift; `shifted`:
    the scores of those copies) by the validation-run model, which never trained on them, and
    applied unchanged to the refit model, like the threshold. The band always comes out ordered,
    rule_out < threshold < rule_in (lab/metrics.hardest_population_calibration)."""
    c = hardest_population_calibration(
        y[shift_set], p[shift_set], shifted, threshold, cfg.rule_out_sensitivity, cfg.rule_in_specificity
    )
    c["ece_selection"] = expected_calibration_error(y, p)
    c["ece_selection_calibrated"] = expected_calibration_error(y, apply_temperature(p, c["temperature"]))
    c["band_selection"] = band_report(y[shift_set], p[shift_set], threshold, c["rule_out"], c["rule_in"])
    return c


def _tta_operating_point(
    y: np.ndarray, p: np.ndarray, shift_set: np.ndarray, plain_val: np.ndarray, cfg: TrainConfig, shifted: dict
) -> dict:
    """Flip TTA's own threshold, temperature and band, by the same rules on the same validation
    images: averaged probabilities are less extreme, so the plain operating point does not fit them."""
    from edge_pneumo.device import tta as flip_tta

    threshold = best_threshold(y[shift_set], p[shift_set], cfg.recipe.threshold_tolerance)
    return {
        "views": flip_tta.NAME,
        "combine": flip_tta.DESCRIPTION,
        "threshold": threshold,
        "calibration": _calibration(y, p, shift_set, threshold, cfg, shifted),
        "selection_figures": {
            "validation": binary_report(y[plain_val], p[plain_val], threshold),
            "shift_set": binary_report(y[shift_set], p[shift_set], threshold),
        },
    }


def _log_test_look(out: Path, record: dict, tm: dict) -> list[dict]:
    """Every look at the test split is logged (lab.looks), so the reported number says how often test was seen."""
    entry = {
        "created": record["created"],
        "command": record["command"],
        "seed": record["seed"],
        "recipe": record["recipe"],
        "intensity": record["preprocessing"]["intensity"],
        "teacher": (record.get("teacher") or {}).get("file"),
        "threshold": tm["threshold"],
        "accuracy": tm["accuracy"],
        "auc": tm["auc"],
    }
    if "tta" in tm:
        entry.update(tta_threshold=tm["tta"]["threshold"], tta_accuracy=tm["tta"]["accuracy"], tta_auc=tm["tta"]["auc"])
    return append_look(out, entry)
