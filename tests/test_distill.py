"""Distillation: the teacher's soft-label file, and the student's targets made from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_pneumo.apps.cli import app
from edge_pneumo.errors import EXIT_FAILED, EXIT_OK
from edge_pneumo.lab.metrics import apply_temperature

runner = CliRunner()


def test_targets_mix_labels_and_a_softened_teacher():
    pytest.importorskip("keras")
    from edge_pneumo.training.fit import Recipe, targets

    y, teacher = np.array([0, 1, 1]), np.array([0.01, 0.99, 0.3])
    assert np.array_equal(targets(y, Recipe(distill_alpha=1.0), teacher), y.astype(np.float32))  # alpha 1: the labels
    assert np.array_equal(targets(y, Recipe(distill_alpha=0.5), None), y.astype(np.float32))
    assert np.allclose(targets(y, Recipe(distill_alpha=0.5), teacher), 0.5 * y + 0.5 * teacher)
    soft = targets(y, Recipe(distill_alpha=0.25, teacher_temperature=2.0), teacher)
    assert np.allclose(soft, 0.25 * y + 0.75 * apply_temperature(teacher, 2.0), atol=1e-6)
    assert soft[0] > targets(y, Recipe(distill_alpha=0.25), teacher)[0]  # softened: a confident 0.01 moves up
    with pytest.raises(ValueError):
        Recipe(teacher_temperature=0.0)


@pytest.mark.slow
def test_teacher_file_drives_a_reproducible_student(synthetic_data, tmp_path):
    pytest.importorskip("tensorflow")
    soft = tmp_path / "soft.json"
    r = runner.invoke(
        app,
        [
            "teacher",
            "--data",
            str(synthetic_data),
            "--out",
            str(soft),
            "--size",
            "32",
            "--width",
            "8",
            "--epochs",
            "1",
            "--holdout-family",
            "none",
        ],
    )
    assert r.exit_code == EXIT_OK, r.output
    doc = json.loads(soft.read_text())
    train_images = sorted(
        p.relative_to(synthetic_data / "train").as_posix() for p in (synthetic_data / "train").rglob("*.jpeg")
    )
    assert sorted(doc["labels"]) == train_images
    assert all(0.0 <= v["p"] <= 1.0 and len(v["sha256"]) == 16 for v in doc["labels"].values())
    rec = doc["record"]
    assert rec["test_looked_at"] is False and rec["seeds"] == [0] and rec["split"]["holdout_family"] is None
    assert rec["split"]["fit_images"] + rec["split"]["selection_images"] == len(train_images)

    out = tmp_path / "student"
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(synthetic_data),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--no-refit",
            "--intensity",
            "none",
            "--teacher",
            str(soft),
            "--teacher-temperature",
            "2",
        ],
    )
    assert r.exit_code == EXIT_OK, r.output
    record = json.loads((out / "pneumonia_cnn.record.json").read_text())
    assert record["recipe"]["distill_alpha"] == 0.5 and record["recipe"]["teacher_temperature"] == 2.0
    assert record["teacher"]["file"] == str(soft) and record["teacher"]["record"] == rec
    assert record["tta"]["threshold"] is not None and "tta_auc" in record["test_evaluations"][-1]
    assert record["split"]["split_seed"] == rec["split"]["split_seed"] == 0

    # another weight seed keeps the teacher's split; another split seed is refused (it would leak)
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(synthetic_data),
            "--out",
            str(tmp_path / "s1"),
            "--epochs",
            "1",
            "--no-refit",
            "--intensity",
            "none",
            "--teacher",
            str(soft),
            "--seed",
            "3",
            "--threshold-tolerance",
            "se",
        ],
    )
    assert r.exit_code == EXIT_OK, r.output
    seeded = json.loads((tmp_path / "s1" / "pneumonia_cnn.record.json").read_text())
    assert seeded["seed"] == 3 and seeded["split"]["split_seed"] == 0
    assert seeded["recipe"]["threshold_tolerance"] == "se" and "one standard error" in seeded["threshold_rule"]
    scores = seeded["selection_scores"]  # the validation run's scores: a new threshold rule needs no retraining
    assert (
        len(scores["label"])
        == len(scores["probability"])
        == len(scores["shift_set"])
        == rec["split"]["selection_images"]
    )
    r = runner.invoke(
        app, ["train", "--data", str(synthetic_data), "--out", str(tmp_path / "s5"), "--threshold-tolerance", "lots"]
    )
    assert r.exit_code == 2 and "must be a number or 'se'" in r.output, r.output
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(synthetic_data),
            "--out",
            str(tmp_path / "s4"),
            "--epochs",
            "1",
            "--teacher",
            str(soft),
            "--split-seed",
            "1",
        ],
    )
    assert r.exit_code == EXIT_FAILED and "use --split-seed 0" in r.output, r.output

    # a training image that changed after the teacher labelled it: one clear line, no training
    victim = synthetic_data / "train" / train_images[0]
    doc["labels"][train_images[0]]["sha256"] = "0" * 16
    soft.write_text(json.dumps(doc))
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(synthetic_data),
            "--out",
            str(tmp_path / "s2"),
            "--epochs",
            "1",
            "--teacher",
            str(soft),
        ],
    )
    assert r.exit_code == EXIT_FAILED and "has changed since the teacher labelled it" in r.output, r.output
    assert victim.exists() and not (tmp_path / "s2" / "pneumonia_cnn.keras").exists()
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(synthetic_data),
            "--out",
            str(tmp_path / "s3"),
            "--teacher",
            str(tmp_path / "missing.json"),
        ],
    )
    assert r.exit_code == EXIT_FAILED and "soft-label file not found" in r.output


def test_patient_folds_keep_each_patient_in_one_fold():
    from pathlib import Path

    from edge_pneumo.lab.dataset import Sample, patient_folds

    samples = [
        Sample(Path(f"{p}_{i}.jpeg"), label, p)
        for label, patients in ((0, "abcdef"), (1, "ghijklmnop"))
        for p in patients
        for i in range(1 + ord(p) % 3)
    ]
    folds = patient_folds(samples, 3, seed=0)
    assert folds == patient_folds(samples, 3, seed=0) and set(folds) == {0, 1, 2}
    by_patient = {}
    for s, f in zip(samples, folds):
        assert by_patient.setdefault(s.patient, f) == f  # one patient, one fold
    for label in (0, 1):  # each class spread over the folds
        assert len({f for s, f in zip(samples, folds) if s.label == label}) == 3
    with pytest.raises(ValueError):
        patient_folds(samples, 1, seed=0)


@pytest.mark.slow
def test_out_of_fold_teacher_labels_each_fit_image_with_a_teacher_that_never_saw_it(synthetic_data, tmp_path):
    pytest.importorskip("tensorflow")
    import keras

    from edge_pneumo.device.preprocess import Preprocessing
    from edge_pneumo.lab.dataset import discover, load_images, patient_folds, selection_split
    from edge_pneumo.training.fit import predict

    soft = tmp_path / "oof.json"
    r = runner.invoke(
        app,
        [
            "teacher",
            "--data",
            str(synthetic_data),
            "--out",
            str(soft),
            "--size",
            "32",
            "--width",
            "8",
            "--epochs",
            "1",
            "--holdout-family",
            "none",
            "--folds",
            "2",
            "--save-models",
        ],
    )
    assert r.exit_code == EXIT_OK, r.output
    doc = json.loads(soft.read_text())
    rec = doc["record"]
    assert rec["folds"] == 2 and rec["out_of_fold"]["n"] == rec["split"]["fit_images"]
    assert [m["fold"] for m in rec["members"]] == [0, 1]
    assert sum(m["fit_images"] for m in rec["members"]) == rec["split"]["fit_images"]  # k-1 = 1 fold each

    split_dir = synthetic_data / "train"
    fit_s, sel_s = selection_split(discover(split_dir), 0.15, 0, None)
    folds = patient_folds(fit_s, 2, 0)
    imgs = load_images(fit_s + sel_s, Preprocessing(size=32, intensity="clahe"))
    p = [predict(keras.models.load_model(tmp_path / f"oof.seed0.fold{k}.keras", compile=False), imgs.x) for k in (0, 1)]
    got = np.array([doc["labels"][s.path.relative_to(split_dir).as_posix()]["p"] for s in imgs.samples])
    n_fit = len(fit_s)
    held_out_p = np.where(np.array(folds) == 0, p[0][:n_fit], p[1][:n_fit])
    assert np.allclose(got[:n_fit], held_out_p, atol=1e-5)  # each fit image: the fold teacher that did not fit it
    assert np.allclose(got[n_fit:], (p[0][n_fit:] + p[1][n_fit:]) / 2, atol=1e-5)  # selection: the mean


@pytest.mark.slow
def test_threshold_tie_broken_by_acquisition_shifts_is_recorded_and_reproducible(synthetic_data, tmp_path):
    pytest.importorskip("tensorflow")
    from edge_pneumo.lab.metrics import best_threshold
    from edge_pneumo.training.shifts import SHIFTS

    out = tmp_path / "robust"
    r = runner.invoke(
        app,
        [
            "train",
            "--data",
            str(synthetic_data),
            "--out",
            str(out),
            "--epochs",
            "3",
            "--patience",
            "3",
            "--no-refit",
            "--intensity",
            "none",
            "--threshold-tolerance",
            "0.2",
            "--threshold-tiebreak",
            "shifts",
        ],
    )
    assert r.exit_code == EXIT_OK, r.output
    record = json.loads((out / "pneumonia_cnn.record.json").read_text())
    robust = record["threshold_robustness"]
    assert record["recipe"]["patience"] == 3 and len(record["history"]["validation_run"]) == 3  # the whole schedule
    assert record["threshold"] == robust["threshold"] and "acquisition shifts" in record["threshold_rule"]
    assert record["test"]["threshold"] == record["threshold"]  # test is scored at the threshold that ships
    assert set(robust["shifted_j"]) == set(SHIFTS)
    assert robust["mean_shifted_balanced_accuracy"] >= robust["mean_shifted_balanced_accuracy_half"]
    # the recorded scores choose the same two thresholds again, without the model
    s = record["selection_scores"]
    on = np.array(s["shift_set"], bool)
    y, p = np.array(s["label"])[on], np.array(s["probability"])[on]
    shifted = [np.array(v) for v in s["shifted_shift_set"].values()]
    assert all(len(v) == on.sum() for v in shifted)
    assert best_threshold(y, p, 0.2) == pytest.approx(robust["threshold_nearest_half"], abs=1e-5)
    assert best_threshold(y, p, 0.2, shifted=shifted) == pytest.approx(robust["threshold"], abs=1e-5)
    r = runner.invoke(
        app, ["train", "--data", str(synthetic_data), "--out", str(tmp_path / "x"), "--threshold-tiebreak", "coin"]
    )
    assert r.exit_code == 2 and "tie-break must be one of half, shifts" in r.output, r.output


def _soft_label_file(path, data, probs, split_seed=0, holdout=None, model="t"):
    """A soft-label file as `edge-pneumo teacher` writes it, with given probabilities (no training)."""
    from edge_pneumo.lab.dataset import discover
    from edge_pneumo.training.teacher import SOFT_LABELS_SCHEMA, content_hash, sample_key

    split_dir = data / "train"
    samples = discover(split_dir)
    labels = {sample_key(s, split_dir): {"p": float(q), "sha256": content_hash(s.path)} for s, q in zip(samples, probs)}
    record = {
        "model": model,
        "split": {"split_seed": split_seed, "val_fraction": 0.15, "holdout_family": holdout},
        "selection": {"auc": 0.9},
        "soft_labels_on_fit_images": "in sample",
    }
    path.write_text(json.dumps({"schema": SOFT_LABELS_SCHEMA, "record": record, "labels": labels}))
    return list(labels)


def test_merged_teachers_are_the_mean_of_their_members_and_refuse_other_splits(synthetic_data, tmp_path):
    from edge_pneumo.lab.dataset import discover
    from edge_pneumo.training.teacher import load_soft_labels

    rng = np.random.default_rng(0)
    n = len(discover(synthetic_data / "train"))
    a, b = rng.uniform(size=n), rng.uniform(size=n)
    keys = _soft_label_file(tmp_path / "a.json", synthetic_data, a, model="wide")
    _soft_label_file(tmp_path / "b.json", synthetic_data, b, model="oof")
    out = tmp_path / "ens.json"
    r = runner.invoke(
        app,
        [
            "merge-teachers",
            str(tmp_path / "a.json"),
            str(tmp_path / "b.json"),
            "--data",
            str(synthetic_data),
            "--out",
            str(out),
        ],
    )
    assert r.exit_code == EXIT_OK, r.output
    merged = load_soft_labels(out)
    got = np.array([merged.labels[k]["p"] for k in keys])
    assert np.allclose(got, (a + b) / 2, atol=1e-6)
    assert [m["record"]["model"] for m in merged.record["members"]] == ["wide", "oof"]
    assert merged.record["split"]["split_seed"] == 0 and 0 < merged.record["selection"]["n"] < n

    _soft_label_file(tmp_path / "c.json", synthetic_data, b, split_seed=1)  # another split: its fit part overlaps
    r = runner.invoke(
        app,
        [
            "merge-teachers",
            str(tmp_path / "a.json"),
            str(tmp_path / "c.json"),
            "--data",
            str(synthetic_data),
            "--out",
            str(tmp_path / "bad.json"),
        ],
    )
    assert r.exit_code == EXIT_FAILED and "different splits" in r.output and not (tmp_path / "bad.json").exists()

    doc = json.loads((tmp_path / "b.json").read_text())
    doc["labels"][keys[0]]["sha256"] = "0" * 16  # another copy of the data
    (tmp_path / "d.json").write_text(json.dumps(doc))
    r = runner.invoke(
        app,
        [
            "merge-teachers",
            str(tmp_path / "a.json"),
            str(tmp_path / "d.json"),
            "--data",
            str(synthetic_data),
            "--out",
            str(tmp_path / "bad.json"),
        ],
    )
    assert r.exit_code == EXIT_FAILED and keys[0] in r.output
    r = runner.invoke(
        app,
        [
            "merge-teachers",
            str(tmp_path / "a.json"),
            "--data",
            str(synthetic_data),
            "--out",
            str(tmp_path / "bad.json"),
        ],
    )
    assert r.exit_code == EXIT_FAILED and "at least two" in r.output
