"""One table of per-precision tolerances and one rule for the float32 reference, read by export,
verify and compare alike (device/artifact_formats.py)."""

from __future__ import annotations

import json

import numpy as np

from edge_pneumo.apps.verify import reference_artifact, verify_folder
from edge_pneumo.device.artifact_formats import FORMATS, TOLERANCES, float32_reference
from edge_pneumo.device.manifest import load_manifest
from edge_pneumo.lab.compare import Row, target_checks


def test_every_format_reads_its_budget_from_the_table():
    for f in FORMATS.values():
        assert f.budget is TOLERANCES[f.precision].budget, f.name


def test_the_reference_is_float32_onnx_first_then_tflite():
    rows = [Row("q", "onnx", "int8", "q"), Row("t", "tflite", "float32", "t"), Row("o", "onnx", "float32", "o")]
    assert float32_reference(rows).name == "o"
    assert float32_reference(rows[:2]).name == "t"
    assert float32_reference(rows[:1]) is None
    assert float32_reference(FORMATS.values()).name == "onnx_float32"


def test_verify_and_compare_pick_the_same_reference_from_the_shipped_manifest():
    from edge_pneumo.device.manifest import default_model_folder

    manifest = load_manifest(default_model_folder())
    assert reference_artifact(manifest) == float32_reference(manifest.artifacts.values()).name == "onnx_float32"


def test_compare_targets_are_the_tables_limits():
    """At each precision's limit a row passes; just past it, it fails."""
    ref = Row("ref", "onnx", "float32", "f", metrics={"accuracy": 0.9, "auc": 0.95}, probabilities=np.zeros(1))
    at, past = {}, {}
    for precision in ("int8", "float16", "float32"):
        t = TOLERANCES[precision].compare
        edge = {
            "agreement": t.min_agreement,
            "max_abs_dp": t.max_abs_dp or 0.0,
            "accuracy": 0.9 - (t.max_accuracy_gap or 0.0) + 1e-9,  # at the gap, less float rounding
            "auc": 0.95,
        }
        at[precision] = Row(f"at_{precision}", "tflite", precision, "x", metrics=edge, probabilities=np.zeros(1))
        worse = dict(edge, agreement=t.min_agreement - 0.001)
        past[precision] = Row(f"past_{precision}", "tflite", precision, "x", metrics=worse, probabilities=np.zeros(1))
    checks = {c["name"]: c for c in target_checks([ref, *at.values(), *past.values()], ref)}
    assert all(checks[f"at_{p}"]["passed"] for p in at) and not any(checks[f"past_{p}"]["passed"] for p in past)
    assert checks["at_int8"]["rule"] == TOLERANCES["int8"].compare.rule


def test_verify_fails_an_artifact_just_past_its_reproduction_limit(exported_copy):
    """Recorded outputs shifted by the table's limit pass; shifted by twice it, verify fails the artifact."""
    path = exported_copy / "manifest.json"
    original = json.loads(path.read_text())
    for factor, expected in ((0.5, "ok"), (2.0, "FAILED")):
        m = json.loads(json.dumps(original))
        for a in m["artifacts"]:
            if a["name"] == "onnx_int8":
                tol = TOLERANCES[a["precision"]].reproduce
                a["verify_outputs"] = [v + factor * tol for v in a["verify_outputs"]]
        path.write_text(json.dumps(m))
        rows = {r["name"]: r for r in verify_folder(exported_copy, runs=1, write_profile=False)["artifacts"]}
        assert rows["onnx_int8"]["status"] == expected, rows["onnx_int8"]
