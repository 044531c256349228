"""`verify` (device self-check) and `compare` (the report) on the tiny export."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_pneumo.apps.cli import app
from edge_pneumo.apps.verify import verify_folder, verify_inputs
from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL
from edge_pneumo.lab.compare import Row, target_checks
from edge_pneumo.lab.looks import TEST_LOG
from edge_pneumo.lab.metrics import agreement_stats

runner = CliRunner()


def test_verify_inputs_are_deterministic():
    a, b = verify_inputs(Preprocessing()), verify_inputs(Preprocessing())
    assert a.dtype == np.uint8 and a.shape == (24, 64, 64, 3) and np.array_equal(a, b)
    assert a.min() == 0 and a.max() > 200  # they span the pixel range


def test_verify_passes_on_a_fresh_export(tiny_export):
    report = verify_folder(tiny_export, runs=3)
    assert report["passed"]
    rows = {r["name"]: r for r in report["artifacts"]}
    assert rows["onnx_int8"]["status"] == "ok" and rows["onnx_int8"]["max_drift_from_export"] <= 2 / 255
    assert rows["onnx_float32"]["max_drift_from_export"] <= 1e-4
    assert report["device"]["cores"] >= 1 and report["device"]["versions"]["onnxruntime"]
    r = runner.invoke(app, ["verify", str(tiny_export), "--runs", "2"])
    assert r.exit_code == EXIT_OK and "PASSED" in r.stdout and "onnx_int8" in r.stdout


def test_verify_fails_on_tampered_or_changed_artifacts(exported_copy):
    onnx = exported_copy / "pneumonia_int8.onnx"
    onnx.write_bytes(onnx.read_bytes() + b"\0")
    manifest = json.loads((exported_copy / "manifest.json").read_text())
    for a in manifest["artifacts"]:  # recorded outputs that the artifact cannot reproduce
        if a["name"] == "onnx_float32":
            a["verify_outputs"] = [min(1.0, p + 0.2) for p in a["verify_outputs"]]
    (exported_copy / "manifest.json").write_text(json.dumps(manifest))
    r = runner.invoke(app, ["verify", str(exported_copy), "--runs", "2", "--json"])
    assert r.exit_code == EXIT_FAILED
    rows = {row["name"]: row for row in json.loads(r.stdout)["artifacts"]}
    assert rows["onnx_int8"]["status"] == "FAILED" and "sha256" in rows["onnx_int8"]["notes"][0]
    assert (
        rows["onnx_float32"]["status"] == "FAILED" and "differ from those recorded" in rows["onnx_float32"]["notes"][0]
    )
    assert rows["tflite_int8"]["status"] in ("ok", "skipped")


def test_agreement_and_checks_by_hand():
    ref = np.array([0.1, 0.6, 0.9, 0.4])
    s = agreement_stats(np.array([0.1, 0.4, 0.95, 0.4]), ref, 0.5)
    assert (
        s["agreement"] == 0.75 and s["max_abs_dp"] == pytest.approx(0.2) and s["mean_abs_dp"] == pytest.approx(0.0625)
    )
    reference = Row("ref", "onnx", "float32", "f", metrics={"accuracy": 0.9, "auc": 0.95}, probabilities=ref)
    good = Row(
        "q", "onnx", "int8", "q", metrics={"accuracy": 0.895, "auc": 0.948, "agreement": 0.99}, probabilities=ref
    )
    bad = Row("b", "tflite", "int8", "b", metrics={"accuracy": 0.87, "auc": 0.95, "agreement": 0.99}, probabilities=ref)
    checks = {c["name"]: c["passed"] for c in target_checks([reference, good, bad], reference)}
    assert checks == {"q": True, "b": False}


def test_compare_reports_every_row_and_survives_bad_artifacts(exported_copy, synthetic_data, tmp_path):
    (exported_copy / "pneumonia_dynamic_int8.onnx").unlink()
    t = exported_copy / "pneumonia_float16.tflite"
    t.write_bytes(t.read_bytes()[:-4] + b"abcd")
    out = tmp_path / "reports"
    looks_before = (exported_copy / TEST_LOG).read_text().splitlines()
    r = runner.invoke(
        app,
        [
            "compare",
            "--data",
            str(synthetic_data),
            "--models",
            str(exported_copy),
            "--out",
            str(out),
            "--latency-runs",
            "5",
        ],
    )
    assert r.exit_code == EXIT_PARTIAL, r.output
    report = json.loads((out / "report.json").read_text())
    rows = {row["name"]: row for row in report["rows"]}
    assert rows["onnx_dynamic_int8"]["status"] == "missing"
    assert rows["tflite_float16"]["status"] == "tampered"
    assert report["reference"] == "keras_float32"
    assert rows["keras_float32"]["metrics"]["agreement"] == 1.0
    n = report["images"]
    for name in ("onnx_float32", "onnx_int8", "tflite_int8"):
        row = rows[name]
        assert row["status"] == "ok" and row["metrics"]["n"] == n
        assert sum(map(sum, row["metrics"]["confusion_matrix"])) == n
        assert row["perf"]["latency_ms_p95"] >= row["perf"]["latency_ms_p50"] > 0 and row["perf"]["peak_rss_mb"] > 10
        assert row["size_mb"] > 1
    assert rows["onnx_float32"]["metrics"]["max_abs_dp"] <= 1e-4
    # flip TTA per artifact, at its own threshold, beside the plain figures of the same row
    tta = report["tta"]["artifacts"]
    assert set(tta) >= {"onnx_float32", "onnx_int8", "tflite_int8"} and "tflite_float16" not in tta
    for name, m in tta.items():
        assert m["tta"]["n"] == n and m["tta"]["threshold"] == report["tta"]["threshold"]
        assert m["plain"]["accuracy"] == pytest.approx(rows[name]["metrics"]["accuracy"], abs=1e-9)
    md = (out / "REPORT.md").read_text()
    assert "| onnx_int8 |" in md and "tampered" in md and "missing" in md and "## Flip TTA" in md
    assert (out / "report.png").stat().st_size > 10_000
    # it read the test split's labels: one more look in the model folder's log, with its figures
    looks = (exported_copy / TEST_LOG).read_text().splitlines()
    assert looks[: len(looks_before)] == looks_before and len(looks) == len(looks_before) + 1
    look = json.loads(looks[-1])
    assert look["by"] == "compare" and look["artifacts"]["onnx_int8"]["auc"] == rows["onnx_int8"]["metrics"]["auc"]


def test_manifest_and_reports_never_hold_nan(tmp_path):
    """A metric with nothing to divide by is NaN; readers other than Python reject a bare NaN."""
    from edge_pneumo.device.manifest import write_manifest
    from edge_pneumo.jsonout import dumps

    def strict(text):
        return json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))

    data = {"precision": float("nan"), "nested": [1.5, float("inf"), {"x": -float("inf")}], "ok": 0.25}
    expected = {"precision": None, "nested": [1.5, None, {"x": None}], "ok": 0.25}
    assert strict(dumps(data)) == expected
    assert strict(write_manifest(tmp_path, data).read_text()) == expected


def test_the_shipped_model_is_found_from_any_folder(tmp_path, monkeypatch):
    """`pip install -e .` or `pip install .`, then `edge-pneumo infer x.jpeg` from another folder."""
    from edge_pneumo.device.manifest import MANIFEST_NAME, default_model_folder, load_manifest

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDGE_PNEUMO_MODEL", raising=False)
    folder = default_model_folder()
    assert (folder / MANIFEST_NAME).is_file()
    assert load_manifest(folder).default_artifact in load_manifest(folder).artifacts


def test_verify_checks_the_guard_and_records_the_fastest_artifact(exported_copy, tmp_path, monkeypatch):
    from edge_pneumo.device.device_profile import preferred_artifact, read_profile
    from edge_pneumo.device.manifest import load_manifest

    monkeypatch.setenv("EDGE_PNEUMO_PROFILE", str(tmp_path / "profile.json"))
    report = verify_folder(exported_copy, runs=3)
    assert report["passed"] and report["fastest"] in {r["name"] for r in report["artifacts"]}
    guard = [r for r in report["artifacts"] if r["name"] == "guard parameters"][0]
    assert guard["status"] == "ok"
    assert all(r["guard_drift"] <= 0.05 for r in report["artifacts"] if "guard_drift" in r)
    manifest = load_manifest(exported_copy)
    assert read_profile()["models"][manifest.raw["model_version"]]["fastest"] == report["fastest"]
    assert preferred_artifact(manifest) == report["fastest"]  # infer's default from now on
    # a changed parameter file fails the check (and the classifier refuses it)
    params = exported_copy / manifest.raw["params_file"]["file"]
    params.write_bytes(params.read_bytes()[:-10] + b"0123456789")
    report = verify_folder(exported_copy, runs=3, write_profile=False)
    assert not report["passed"]
    guard = [r for r in report["artifacts"] if r["name"] == "guard parameters"][0]
    assert guard["status"] == "FAILED" and "sha256" in guard["notes"][0]
    r = runner.invoke(app, ["infer", "--model", str(exported_copy), str(params)])
    assert r.exit_code == EXIT_FAILED and "sha256" in r.stderr


def test_without_a_profile_litert_is_preferred_when_installed(exported_copy, tmp_path, monkeypatch):
    from importlib.util import find_spec

    from edge_pneumo.device.device_profile import preferred_artifact
    from edge_pneumo.device.manifest import load_manifest

    monkeypatch.setenv("EDGE_PNEUMO_PROFILE", str(tmp_path / "none.json"))
    expected = "tflite_int8" if find_spec("ai_edge_litert") is not None else "onnx_int8"
    assert preferred_artifact(load_manifest(exported_copy)) == expected


def test_report_states_the_band_the_runner_uses_when_a_rule_point_crosses_the_threshold():
    from edge_pneumo.device.classifier import INDETERMINATE, Calibration
    from edge_pneumo.lab.compare import _effective_band

    crossed = {"rule_out": 0.098, "rule_in": 0.111}  # the shipped model's shape: rule-in below the threshold
    text = _effective_band(crossed, 0.306)
    assert "0.0980 to 0.3060" in text
    cal = Calibration(0.306, 1.0, 0.098, 0.111)
    assert cal.confidence(0.2) == INDETERMINATE  # the runner agrees: 0.2 < threshold is not ruled in
    assert cal.confidence(0.05) != INDETERMINATE and cal.confidence(0.31) != INDETERMINATE
    assert _effective_band({"rule_out": 0.1, "rule_in": 0.6}, 0.4) == ""
