"""On the real chest X-ray data (skipped when it is absent; CI points EDGE_PNEUMO_DATA at it)."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from conftest import REPO
from typer.testing import CliRunner

from edge_pneumo.apps.cli import app
from edge_pneumo.device.manifest import load_manifest
from edge_pneumo.errors import EXIT_OK

pytestmark = pytest.mark.realdata
runner = CliRunner()
SHIPPED = REPO / "exported"


def _accuracy(rows):
    return float(np.mean([r["label"] == r["path"].split("/")[-2] for r in rows]))


def test_shipped_int8_onnx_through_infer_matches_the_manifest(real_data):
    manifest = load_manifest(SHIPPED)
    r = runner.invoke(
        app,
        [
            "infer",
            "--model",
            str(SHIPPED),
            "--artifact",
            "onnx_int8",
            "--dir",
            str(real_data / "test"),
            "--format",
            "json",
        ],
    )
    assert r.exit_code == EXIT_OK, r.stderr
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 624 and {row["artifact"] for row in rows} == {"onnx_int8"}
    assert {row["sha256"] for row in rows} == {manifest.artifacts["onnx_int8"].sha256[:16]}
    recorded = manifest.raw["source_model"]["test_metrics"]["accuracy"]
    assert abs(_accuracy(rows) - recorded) <= 0.01


def test_evaluate_reproduces_the_recorded_test_figures(real_data, tmp_path, monkeypatch):
    """The number the run record (and README) reports is what `evaluate` measures now. (This
    re-check chooses nothing; its look goes to a temporary log, not the shipped one.)"""
    pytest.importorskip("tensorflow")
    monkeypatch.setenv("EDGE_PNEUMO_LOOK_LOG", str(tmp_path / "looks.jsonl"))
    record = json.loads((SHIPPED / "pneumonia_cnn.record.json").read_text())
    r = runner.invoke(
        app, ["evaluate", "--model", str(SHIPPED / "pneumonia_cnn.keras"), "--data", str(real_data / "test"), "--json"]
    )
    assert r.exit_code == EXIT_OK, r.output
    m = json.loads(r.stdout)
    assert m["n"] == 624 and {"accuracy", "auc", "sensitivity", "specificity"} <= set(m)
    assert m["accuracy"] == pytest.approx(record["test"]["accuracy"], abs=1e-9)
    assert m["auc"] == pytest.approx(record["test"]["auc"], abs=1e-6)
    assert m["accuracy"] > 0.625  # clearly above the majority-class rate (390/624)
    assert json.loads((tmp_path / "looks.jsonl").read_text())["accuracy"] == m["accuracy"]


def test_manifest_contract_is_the_preprocessing_the_model_was_trained_with():
    manifest = load_manifest(SHIPPED)
    record = json.loads((SHIPPED / "pneumonia_cnn.record.json").read_text())
    assert manifest.preprocessing.to_dict() == record["preprocessing"]
    assert manifest.threshold == record["threshold"]
    for entry in manifest.artifacts.values():
        manifest.verify(entry)  # sha256 of every shipped artifact


def test_brief_training_on_a_subset_learns(real_data, tmp_path):
    """Three epochs on ~900 real images (threshold from a patient-wise validation part) must
    beat the majority-class rate on held-out test images."""
    pytest.importorskip("tensorflow")
    from edge_pneumo.device.preprocess import Preprocessing
    from edge_pneumo.lab.dataset import discover, find_split, load_images, patient_split, stratified_sample
    from edge_pneumo.lab.metrics import binary_report
    from edge_pneumo.training.fit import Recipe, fit, predict

    pre = Preprocessing(intensity="equalize")
    subset = stratified_sample(discover(find_split(real_data, "train")), 900, seed=0)
    train_s, val_s = patient_split(subset, 0.2, seed=0)
    train, val = load_images(train_s, pre), load_images(val_s, pre)
    test = load_images(random.Random(0).sample(discover(find_split(real_data, "test")), 300), pre)
    res = fit(train.x, train.y, Recipe(max_epochs=3), seed=0, x_val=val.x, y_val=val.y)
    m = binary_report(test.y, predict(res.model, test.x), res.threshold)
    majority = max(test.y.mean(), 1 - test.y.mean())
    assert m["auc"] > 0.85
    assert m["accuracy"] > majority + 0.05
