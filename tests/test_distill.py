"""Distillation: the teacher's soft-label file, and the student's targets made from it."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_pneumo.cli import app
from edge_pneumo.errors import EXIT_FAILED, EXIT_OK
from edge_pneumo.metrics import apply_temperature

runner = CliRunner()


def test_targets_mix_labels_and_a_softened_teacher():
    pytest.importorskip("keras")
    from edge_pneumo.training.fit import Recipe, targets

    y, teacher = np.array([0, 1, 1]), np.array([0.01, 0.99, 0.3])
    assert np.array_equal(targets(y, Recipe(), teacher), y.astype(np.float32))  # alpha 1: the labels
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
    r = runner.invoke(app, ["teacher", "--data", str(synthetic_data), "--out", str(soft), "--size", "32", "--width", "8",
                            "--epochs", "1", "--holdout-family", "none"])
    assert r.exit_code == EXIT_OK, r.output
    doc = json.loads(soft.read_text())
    train_images = sorted(p.relative_to(synthetic_data / "train").as_posix() for p in (synthetic_data / "train").rglob("*.jpeg"))
    assert sorted(doc["labels"]) == train_images
    assert all(0.0 <= v["p"] <= 1.0 and len(v["sha256"]) == 16 for v in doc["labels"].values())
    rec = doc["record"]
    assert rec["test_looked_at"] is False and rec["seeds"] == [0] and rec["split"]["holdout_family"] is None
    assert rec["split"]["fit_images"] + rec["split"]["selection_images"] == len(train_images)

    out = tmp_path / "student"
    r = runner.invoke(app, ["train", "--data", str(synthetic_data), "--out", str(out), "--epochs", "1", "--no-refit",
                            "--intensity", "none", "--teacher", str(soft), "--teacher-temperature", "2"])
    assert r.exit_code == EXIT_OK, r.output
    record = json.loads((out / "pneumonia_cnn.record.json").read_text())
    assert record["recipe"]["distill_alpha"] == 0.5 and record["recipe"]["teacher_temperature"] == 2.0
    assert record["teacher"]["file"] == str(soft) and record["teacher"]["record"] == rec
    assert record["tta"]["threshold"] is not None and "tta_auc" in record["test_evaluations"][-1]
    assert record["split"]["split_seed"] == rec["split"]["split_seed"] == 0

    # another weight seed keeps the teacher's split; another split seed is refused (it would leak)
    r = runner.invoke(app, ["train", "--data", str(synthetic_data), "--out", str(tmp_path / "s1"), "--epochs", "1",
                            "--no-refit", "--intensity", "none", "--teacher", str(soft), "--seed", "3"])
    assert r.exit_code == EXIT_OK, r.output
    seeded = json.loads((tmp_path / "s1" / "pneumonia_cnn.record.json").read_text())
    assert seeded["seed"] == 3 and seeded["split"]["split_seed"] == 0
    r = runner.invoke(app, ["train", "--data", str(synthetic_data), "--out", str(tmp_path / "s4"), "--epochs", "1",
                            "--teacher", str(soft), "--split-seed", "1"])
    assert r.exit_code == EXIT_FAILED and "use --split-seed 0" in r.output, r.output

    # a training image that changed after the teacher labelled it: one clear line, no training
    victim = synthetic_data / "train" / train_images[0]
    doc["labels"][train_images[0]]["sha256"] = "0" * 16
    soft.write_text(json.dumps(doc))
    r = runner.invoke(app, ["train", "--data", str(synthetic_data), "--out", str(tmp_path / "s2"), "--epochs", "1",
                            "--teacher", str(soft)])
    assert r.exit_code == EXIT_FAILED and "has changed since the teacher labelled it" in r.output, r.output
    assert victim.exists() and not (tmp_path / "s2" / "pneumonia_cnn.keras").exists()
    r = runner.invoke(app, ["train", "--data", str(synthetic_data), "--out", str(tmp_path / "s3"), "--teacher",
                            str(tmp_path / "missing.json")])
    assert r.exit_code == EXIT_FAILED and "soft-label file not found" in r.output
