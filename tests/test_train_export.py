"""Training and export on a tiny synthetic dataset: records, artifacts, budgets enforced."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_pneumo.apps.cli import app
from edge_pneumo.device.artifact_formats import FORMATS
from edge_pneumo.device.manifest import load_manifest, sha256_of
from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.device.runtime import open_backend
from edge_pneumo.errors import EXIT_FAILED, EXIT_VALIDATION

pytestmark = pytest.mark.slow
runner = CliRunner()


def test_model_shape_is_the_seed_architecture():
    pytest.importorskip("tensorflow")
    from edge_pneumo.training.model import build_seed_model

    m = build_seed_model()
    assert m.input_shape == (None, 64, 64, 3) and m.output_shape == (None, 1)
    kinds = [type(layer).__name__ for layer in m.layers[1:]]
    assert kinds == [
        "Rescaling",
        "Conv2D",
        "MaxPooling2D",
        "Conv2D",
        "MaxPooling2D",
        "Dropout",
        "Flatten",
        "Dense",
        "Dense",
    ]
    assert m.count_params() == 1_625_281


def test_run_record_states_the_contract(tiny_export):
    record = json.loads((tiny_export / "pneumonia_cnn.record.json").read_text())
    assert record["preprocessing"] == Preprocessing(intensity="none").to_dict()
    assert record["split"]["train_patients"] > 0 and record["split"]["val_patients"] > 0
    assert 0.0 < record["threshold"] < 1.0
    assert len(record["history"]["validation_run"]) >= 1
    assert {"accuracy", "auc", "sensitivity", "specificity", "n"} <= set(record["test"])
    assert record["test_evaluations"][-1]["accuracy"] == record["test"]["accuracy"]
    assert {"tensorflow", "keras", "numpy"} <= set(record["versions"])
    for c, t in (
        (record["calibration"], record["threshold"]),
        (record["tta"]["calibration"], record["tta"]["threshold"]),
    ):
        assert c["rule_out"] < t < c["rule_in"]  # an ordered band, always
        assert c["population_images"] == 12 * int(sum(record["selection_scores"]["shift_set"]))  # + 11 shifted copies


def test_every_format_is_exported_validated_and_described(tiny_export):
    m = load_manifest(tiny_export)
    assert set(m.artifacts) == set(FORMATS)
    for name, entry in m.artifacts.items():
        path = tiny_export / entry.file
        assert sha256_of(path) == entry.sha256 and path.stat().st_size == entry.size_bytes
        v = entry.raw["validation"]
        assert v["passed"] and v["n"] > 0 and 0.0 <= v["agreement"] <= 1.0
        budget = FORMATS[name].budget
        if budget.max_abs_dp is not None:
            assert v["max_abs_dp"] <= budget.max_abs_dp
        if budget.min_agreement is not None:
            assert v["agreement"] >= budget.min_agreement
    # full-integer TFLite takes raw uint8 pixels; its scale and zero point are recorded from the model
    q = m.artifacts["tflite_int8"].raw["input"]
    assert q["dtype"] == "uint8" and q["quantization"]["zero_point"] == 0 and q["quantization"]["scale"] > 0
    assert m.preprocessing == Preprocessing(intensity="none")
    assert m.raw["source_model"]["sha256"] == sha256_of(tiny_export / "pneumonia_cnn.keras")


def test_artifacts_run_and_match_each_other(tiny_export, synthetic_data):
    from edge_pneumo.lab.dataset import discover, find_split, load_images

    x = load_images(discover(find_split(synthetic_data, "test")), Preprocessing(intensity="none")).x
    ref = open_backend(tiny_export / FORMATS["onnx_float32"].file).predict(x)
    assert ref.shape == (len(x),) and np.all((ref >= 0) & (ref <= 1))
    for f in FORMATS.values():
        p = open_backend(tiny_export / f.file).predict(x)
        tol = 1e-4 if f.precision == "float32" else 0.05
        assert np.abs(p - ref).max() <= tol, f.name


def test_impossible_budget_fails_loudly_and_writes_nothing(exported_copy, synthetic_data):
    before = {p.name: p.stat().st_mtime_ns for p in exported_copy.iterdir()}
    r = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(exported_copy / "pneumonia_cnn.keras"),
            "--data",
            str(synthetic_data),
            "--out",
            str(exported_copy),
            "--formats",
            "onnx_float32,onnx_int8",
            "--budget-scale",
            "0",
            "--calibration-images",
            "40",
            "--validation-images",
            "40",
        ],
    )
    assert r.exit_code == EXIT_VALIDATION, r.output
    assert "export refused" in r.output and "onnx_int8" in r.output
    after = {p.name: p.stat().st_mtime_ns for p in exported_copy.iterdir()}
    assert after == before  # no half-written file, manifest untouched


def test_export_refuses_a_degenerate_band(exported_copy, synthetic_data):
    rp = exported_copy / "pneumonia_cnn.record.json"
    record = json.loads(rp.read_text())
    record["calibration"]["rule_in"] = record["threshold"] / 2  # rule-in below the threshold: contradicting
    rp.write_text(json.dumps(record))
    before = (exported_copy / "manifest.json").read_bytes()
    r = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(exported_copy / "pneumonia_cnn.keras"),
            "--data",
            str(synthetic_data),
            "--out",
            str(exported_copy),
            "--formats",
            "onnx_float32",
        ],
    )
    assert r.exit_code == EXIT_FAILED and "band is degenerate" in r.output and "rule-in point" in r.output
    assert (exported_copy / "manifest.json").read_bytes() == before


def test_export_bad_inputs_are_one_line_errors(exported_copy, synthetic_data, tmp_path):
    not_keras = tmp_path / "model.keras"
    not_keras.write_text("nope")
    r = runner.invoke(app, ["export", "--model", str(not_keras), "--data", str(synthetic_data), "--out", str(tmp_path)])
    assert r.exit_code == EXIT_FAILED and "not a loadable Keras model" in r.output
    r = runner.invoke(app, ["export", "--model", str(exported_copy / "pneumonia_cnn.keras"), "--formats", "onnx_int4"])
    assert r.exit_code == 2 and "unknown format 'onnx_int4'" in r.output
    r = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(exported_copy / "pneumonia_cnn.keras"),
            "--data",
            str(synthetic_data),
            "--out",
            str(tmp_path / "o"),
            "--formats",
            "onnx_int8",
            "--calibration-images",
            "10",
        ],
    )
    assert r.exit_code == EXIT_FAILED and "calibration images" in r.output
    assert not list((tmp_path / "o").glob("*.onnx"))


def test_train_rejects_a_bad_data_folder(tmp_path):
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "o")])
    assert r.exit_code == EXIT_FAILED and "data folder not found" in r.output
    (tmp_path / "d" / "train" / "NORMAL").mkdir(parents=True)
    (tmp_path / "d" / "train" / "PNEUMONIA").mkdir(parents=True)
    r = runner.invoke(app, ["train", "--data", str(tmp_path / "d"), "--out", str(tmp_path / "o")])
    assert r.exit_code == EXIT_FAILED and "no images in this class folder" in r.output
    assert "Traceback" not in r.output


def test_export_is_deterministic(tiny_export, synthetic_data, tmp_path):
    """Exporting the same model again gives byte-identical artifacts (and so the same figures)."""
    import shutil

    out = tmp_path / "again"
    out.mkdir()
    for f in ("pneumonia_cnn.keras", "pneumonia_cnn.record.json"):
        shutil.copy(tiny_export / f, out / f)
    r = runner.invoke(
        app,
        [
            "export",
            "--model",
            str(out / "pneumonia_cnn.keras"),
            "--data",
            str(synthetic_data),
            "--out",
            str(out),
            "--formats",
            "device",
            "--calibration-images",
            "40",
            "--validation-images",
            "40",
        ],
    )
    assert r.exit_code == 0, r.output
    first, again = load_manifest(tiny_export), load_manifest(out)
    assert set(again.artifacts) == {"onnx_float32", "onnx_int8", "tflite_int8"}
    for name, entry in again.artifacts.items():
        assert entry.sha256 == first.artifacts[name].sha256, name
        assert entry.raw["validation"] == first.artifacts[name].raw["validation"]


def _update(folder, data, *extra):
    return runner.invoke(
        app,
        [
            "export",
            "--model",
            str(folder / "pneumonia_cnn.keras"),
            "--data",
            str(data),
            "--out",
            str(folder),
            "--formats",
            "onnx_int8",
            "--update",
            "--calibration-images",
            "40",
            "--validation-images",
            "40",
            *extra,
        ],
    )


def test_update_remakes_one_format_and_keeps_the_rest_byte_for_byte(exported_copy, synthetic_data):
    from edge_pneumo.apps.verify import verify_folder

    before = {p.name: sha256_of(p) for p in exported_copy.iterdir() if p.is_file()}
    old = json.loads((exported_copy / "manifest.json").read_text())
    old_params = load_manifest(exported_copy).params()
    (exported_copy / "pneumonia_int8.onnx").unlink()  # so it must be made again
    r = _update(exported_copy, synthetic_data)
    assert r.exit_code == 0, r.output
    assert "remade onnx_int8" in r.output
    after = {p.name: sha256_of(p) for p in exported_copy.iterdir() if p.is_file()}
    assert not [p for p in exported_copy.iterdir() if p.name.startswith(".")]  # no scratch left
    changed = {n for n in before if after.get(n) != before[n]}
    # same model, images and settings: the int8 file and its parameters come back byte-identical
    assert changed == {"manifest.json"}
    new = json.loads((exported_copy / "manifest.json").read_text())
    for o, n in zip(old["artifacts"], new["artifacts"], strict=True):
        if o["name"] == "onnx_int8":
            assert "remade" in n and {k: v for k, v in n.items() if k != "remade"} == o
        else:
            assert n == o
    assert {k: v for k, v in new.items() if k != "artifacts"} == {k: v for k, v in old.items() if k != "artifacts"}
    new_params = load_manifest(exported_copy).params()
    assert set(new_params) == set(old_params)
    for k, a in old_params.items():
        assert np.array_equal(a, new_params[k]), k
    assert verify_folder(exported_copy, runs=1)["passed"]


def test_update_refuses_what_it_cannot_merge_and_leaves_the_folder_as_it_was(exported_copy, synthetic_data, tmp_path):
    before = {p.name: sha256_of(p) for p in exported_copy.iterdir() if p.is_file()}
    r = _update(exported_copy, synthetic_data, "--formats", "onnx_float32", "--budget-scale", "0")
    assert r.exit_code == EXIT_VALIDATION and "export refused" in r.output
    manifest = json.loads((exported_copy / "manifest.json").read_text())
    manifest["source_model"]["sha256"] = "0" * 64
    (exported_copy / "manifest.json").write_text(json.dumps(manifest))
    before["manifest.json"] = sha256_of(exported_copy / "manifest.json")
    r = _update(exported_copy, synthetic_data)
    assert r.exit_code == EXIT_FAILED and "another model" in r.output
    assert {p.name: sha256_of(p) for p in exported_copy.iterdir()} == before
    empty = tmp_path / "empty"
    empty.mkdir()
    for f in ("pneumonia_cnn.keras", "pneumonia_cnn.record.json"):
        (empty / f).write_bytes((exported_copy / f).read_bytes())
    r = _update(empty, synthetic_data)
    assert r.exit_code == EXIT_FAILED and "no manifest.json" in r.output


def test_seed_manifest_keeps_its_grad_cam_numbers_and_geometry(tiny_export):
    """The seed read through the generic head: its channel weights are still the Dense kernel's spatial
    mean (bit for bit), its grid sits where it always did (scale 4, offset 3), and the int8 files
    explain from their own dequantised weights."""
    import keras

    from edge_pneumo.training.head import gradcam_channel_weights

    m = load_manifest(tiny_export)
    model = keras.models.load_model(tiny_export / "pneumonia_cnn.keras", compile=False)
    w1, w2 = model.get_layer("dense").get_weights()[0], model.get_layer("pneumonia").get_weights()[0][:, 0]
    channel_weights, head_w2 = m.gradcam_params("onnx_float32")
    assert np.array_equal(channel_weights, gradcam_channel_weights(w1)) and np.array_equal(head_w2, w2)
    assert {k: m.raw["cam"][k] for k in ("grid", "scale", "offset", "feature_mask")} == {
        "grid": [14, 14, 64], "scale": 4, "offset": 3, "feature_mask": "relu"
    }  # fmt: skip
    g = m.cam_geometry()
    assert (g.scale, g.offset, g.relu_features) == (4.0, 3.0, True)
    model_section = m.raw["model"]
    assert model_section["arch"] == "seed" and model_section["layers_from"] == "run record"
    assert model_section["head"]["kind"] == "dense" and model_section["head"]["features_activation"] == "relu"
    assert m.raw["outputs"]["conv"].startswith("(batch, 14, 14, 64)")
    for name in ("onnx_int8", "tflite_int8"):
        assert m.artifacts[name].raw["gradcam_weights"] == "dequantised from the artifact", name
        q_weights, q_w2 = m.gradcam_params(name)
        assert not np.array_equal(q_w2, w2) and np.abs(q_w2 - w2).max() < 0.05 * np.abs(w2).max()
