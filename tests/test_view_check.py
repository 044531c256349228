"""The view check (frontal chest radiograph or not): its export, its place in the guard, `verify`,
and on real data the non-chest development set, the adult films and the test split.

The development set (`../shared/data/non_cxr/`) is what the shipped view model was fitted on:
these tests check the shipped behaviour on it, and that no listed image is missing. The
source-held-out figures (models fitted without the image's repository) are in the manifest's
`view_check.held_out` and in bench/RESULTS_guard.md.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter

import numpy as np
import pytest
from conftest import REPO
from typer.testing import CliRunner

from edge_pneumo import Classifier
from edge_pneumo.apps.cli import app
from edge_pneumo.device.manifest import load_manifest
from edge_pneumo.device.view_check import SECTION, ViewCheck
from edge_pneumo.errors import IntegrityError

runner = CliRunner()
SHIPPED = REPO / "exported"
DEV_SET_SIZE = 225
OTHER_BODY_PARTS = ("hand", "wrist", "forearm", "knee", "pelvis_hip", "skull", "spine", "dental", "photo_of_film")


def _shipped_has_view() -> bool:
    return SECTION in json.loads((SHIPPED / "manifest.json").read_text())


needs_view = pytest.mark.skipif(not _shipped_has_view(), reason="the shipped export has no view check")


def test_an_export_without_the_section_runs_without_the_check(tiny_export):
    clf = Classifier.load(tiny_export)
    assert SECTION not in clf.manifest.raw and clf.view_check is None


@pytest.mark.slow
def test_export_writes_float_and_int8_onnx_that_reproduce_keras(tiny_export, tmp_path):
    """An untrained view CNN through the export path, into a copy of the tiny export: the ONNX
    float model equals Keras, the int8 one is checked, and the folder's guard runs it."""
    pytest.importorskip("tensorflow")
    import cv2
    from conftest import synthetic_xray

    from edge_pneumo.device.probe_inputs import verify_inputs
    from edge_pneumo.device.view_check import verify_rows
    from edge_pneumo.training import view_fit as vf
    from edge_pneumo.training.view_train import ViewConfig, export_view

    folder = tmp_path / "exported"
    shutil.copytree(tiny_export, folder)
    m = load_manifest(folder)
    rng = np.random.default_rng(0)
    clean = rng.integers(0, 256, (40, 64, 64), dtype=np.uint8)
    pools = vf.Pools(clean, np.arange(40), clean)
    model = vf.build_model(64)
    keras_logits = vf.predict_logits(model, clean)
    cfg = ViewConfig(data=tmp_path, non_cxr=tmp_path, adult=tmp_path, out=folder)
    probe = verify_inputs(m.preprocessing)[..., 0]
    limit = float(np.median(keras_logits)) - 10  # far from every input: agreement is about the export, not the limit
    entries = export_view(model, 64, pools, probe, keras_logits, limit, folder, cfg)
    assert [e["name"] for e in entries] == ["view_float32", "view_int8", "view_float32_tflite"]
    assert all(e["validation"]["passed"] for e in entries)
    assert entries[0]["validation"]["max_abs_dlogit"] <= 1e-3
    m.raw[SECTION] = {
        "refuse_below": limit,
        "default_artifact": "view_int8",
        "input": {"size": 64},
        "artifacts": entries,
    }
    (folder / "manifest.json").write_text(json.dumps(m.raw))
    m = load_manifest(folder)
    assert [r["status"] for r in verify_rows(m, verify_inputs(m.preprocessing))] == ["ok", "ok", "ok"]
    assert Classifier.load(folder, artifact="tflite_int8").view_check.name == "view_float32_tflite"  # one runtime
    assert Classifier.load(folder, artifact="onnx_int8").view_check.name == "view_float32"
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), synthetic_xray(rng, 0, 96))
    r = Classifier.load(folder).predict(img)
    assert r.status == "classified" and "view" in r.guard, r
    m.raw[SECTION]["refuse_below"] = 1e9  # nothing is a frontal chest now
    (folder / "manifest.json").write_text(json.dumps(m.raw))
    r = Classifier.load(folder).predict(img)
    assert r.status == "rejected" and r.guard["check"] == "view"
    assert "a radiograph, but not a frontal chest view" in r.reason


@needs_view
def test_the_shipped_view_check_loads_and_is_independent_of_the_pneumonia_artifacts():
    m = load_manifest(SHIPPED)
    section = m.raw[SECTION]
    files = {e["file"] for e in section["artifacts"]}
    assert files.isdisjoint(e.file for e in m.artifacts.values())
    assert section["rule"] and section["refuse_below"] == pytest.approx(float(section["refuse_below"]))
    for e in section["artifacts"]:
        assert e["validation"]["passed"] and e["size_bytes"] < 100_000
    view = ViewCheck.from_manifest(m)
    assert view is not None and view.name == section["default_artifact"]
    for name in [e["name"] for e in section["artifacts"]]:  # each reproduces its recorded outputs on the probe inputs
        from edge_pneumo.device.probe_inputs import verify_inputs

        got = ViewCheck.from_manifest(m, artifact=name).scores(verify_inputs(m.preprocessing))
        entry = next(e for e in section["artifacts"] if e["name"] == name)
        np.testing.assert_allclose(got, entry["verify_outputs"], atol=0.05 * (1 + np.abs(got).max()))


@needs_view
def test_verify_checks_the_view_files_and_catches_a_changed_one(tmp_path):
    folder = tmp_path / "exported"
    shutil.copytree(SHIPPED, folder, ignore=shutil.ignore_patterns("*.keras", "*.png", "*.jsonl"))
    r = runner.invoke(app, ["verify", str(folder), "--json", "--no-profile", "--runs", "1"])
    report = json.loads(r.stdout)
    views = [a for a in report["artifacts"] if a["name"].startswith("view_")]
    assert {a["name"] for a in views} == {e["name"] for e in load_manifest(folder).raw[SECTION]["artifacts"]}
    assert all(a["status"] == "ok" for a in views), views
    section = load_manifest(folder).raw[SECTION]
    target = folder / next(e["file"] for e in section["artifacts"] if e["name"] == section["default_artifact"])
    data = bytearray(target.read_bytes())
    data[-10] ^= 0xFF
    target.write_bytes(bytes(data))
    r = runner.invoke(app, ["verify", str(folder), "--json", "--no-profile", "--runs", "1"])
    report = json.loads(r.stdout)
    assert not report["passed"]
    assert any(a["status"] == "FAILED" and a["name"].startswith("view_") for a in report["artifacts"])
    with pytest.raises(IntegrityError):
        Classifier.load(folder, artifact="onnx_int8")  # an ONNX pneumonia artifact: the ONNX view file


@needs_view
def test_a_manifest_without_the_section_still_loads(tmp_path):
    folder = tmp_path / "exported"
    shutil.copytree(SHIPPED, folder, ignore=shutil.ignore_patterns("*.keras", "*.png", "*.jsonl", "view_*"))
    raw = json.loads((folder / "manifest.json").read_text())
    del raw[SECTION]
    (folder / "manifest.json").write_text(json.dumps(raw))
    clf = Classifier.load(folder)
    assert clf.view_check is None and clf.guard is not None


# --- real data ---------------------------------------------------------------------------


def _dev_rows(real_data, **extra) -> tuple[list[dict], list[dict]]:
    from edge_pneumo.training.view_data import dev_set

    non_cxr = real_data.parent / "non_cxr"  # beside the chest_xray folder, as in ../shared/data/
    if not non_cxr.is_dir():
        pytest.skip(f"non-chest development set not found ({non_cxr})")
    images = dev_set(non_cxr)  # raises when a listed file is missing: the suite fails, never shrinks
    assert len(images) == DEV_SET_SIZE
    clf = Classifier.load(SHIPPED, **extra)
    rows = [r.to_dict() for r in clf.predict_many([v.path for v in images])]
    return [{"category": v.category} for v in images], rows


@needs_view
@pytest.mark.realdata
def test_the_dev_set_is_refused_by_category(real_data):
    pytest.importorskip("pydicom")
    cats, rows = _dev_rows(real_data)
    classified = Counter(c["category"] for c, r in zip(cats, rows) if r["status"] == "classified")
    total = Counter(c["category"] for c in cats)
    assert not any(r["status"] == "failed" for r in rows), [r["path"] for r in rows if r["status"] == "failed"]
    body = sum(total[c] for c in (*OTHER_BODY_PARTS, "lateral_chest"))
    through = sum(classified[c] for c in (*OTHER_BODY_PARTS, "lateral_chest"))
    assert through <= 0.03 * body, classified
    from edge_pneumo.training.view_data import OTHER_MODALITIES

    assert not any(classified[c] for c in OTHER_MODALITIES), classified
    views = [r for r in rows if r["guard"].get("check") == "view"]
    assert views and all("a radiograph, but not a frontal chest view" in r["reason"] for r in views)
    assert all("view" in r["guard"] for r in rows if r["guard"].get("check") in ("view", "features", None))


@needs_view
@pytest.mark.realdata
def test_the_test_split_and_the_adult_films_pass_the_view_check(real_data):
    """The view check alone: <= 1% of the test split below its limit, no adult film."""
    m = load_manifest(SHIPPED)
    clf = Classifier.load(SHIPPED)
    paths = sorted((real_data / "test").glob("*/*.jpeg"))
    assert len(paths) == 624
    rows = list(clf.predict_many(paths))
    refused_by_view = [r.path for r in rows if r.guard.get("check") == "view"]
    assert len(refused_by_view) <= 6, refused_by_view
    assert all("view" in r.guard for r in rows if r.status == "classified")
    adult = real_data.parent / "adult_cxr"
    if adult.is_dir():
        films = sorted(p for p in adult.iterdir() if p.suffix.lower() in (".png", ".jpg", ".dcm"))
        pytest.importorskip("pydicom")
        for r in clf.predict_many(films):
            assert r.status == "classified", (r.path, r.reason)
            assert r.guard["view"] >= m.raw[SECTION]["refuse_below"]


def test_a_re_export_keeps_the_section_while_its_files_are_there(tmp_path):
    from edge_pneumo.training.export import _keep_view_check

    pre64 = {"size": 64, "intensity": "clahe"}
    section = {"refuse_below": 1.0, "artifacts": [{"name": "view_float32", "file": "view_float32.onnx"}]}
    old = {"schema_version": 2, "preprocessing": pre64, SECTION: section}
    (tmp_path / "manifest.json").write_text(json.dumps(old))
    fresh: dict = {"schema_version": 2, "preprocessing": pre64}
    _keep_view_check(tmp_path, fresh, log=lambda m: None)
    assert SECTION not in fresh  # its file is missing: nothing to keep
    (tmp_path / "view_float32.onnx").write_bytes(b"onnx")
    _keep_view_check(tmp_path, fresh, log=lambda m: None)
    assert fresh[SECTION] == section
    # A re-export at another input size: the check read the model's input, which is no longer its input.
    bigger: dict = {"schema_version": 2, "preprocessing": {**pre64, "size": 128}}
    said: list[str] = []
    _keep_view_check(tmp_path, bigger, log=said.append)
    assert SECTION not in bigger and "another preprocessing" in said[0]
    # ...unless the section carries its own preprocessing (export --view-check-from): then it is kept.
    own = {**section, "input": {"size": 64, "preprocessing": pre64}}
    (tmp_path / "manifest.json").write_text(json.dumps({**old, SECTION: own}))
    _keep_view_check(tmp_path, bigger, log=said.append)
    assert bigger[SECTION] == own


@needs_view
@pytest.mark.realdata
def test_the_small_tier_sees_the_view_check_s_own_input_so_its_scores_equal_the_seed_tier_s(real_data):
    """The 128 px tier carries the view check with the 64 px preprocessing it was fitted on
    (`export --view-check-from`): every image gets the same view score through either tier."""
    from edge_pneumo.device.tiers import shipped_tiers

    tiers = shipped_tiers()
    if "small" not in tiers:
        pytest.skip("the small tier is not shipped in this checkout")
    small = load_manifest(tiers["small"])
    assert small.preprocessing.size != 64 and small.raw[SECTION]["input"]["preprocessing"]["size"] == 64
    paths = sorted((real_data / "test").glob("*/*.jpeg"))[::40]
    paths += sorted((real_data.parent / "adult_cxr").glob("*.png"))  # other sizes, and no resize shortcut
    seed_rows = Classifier.load(SHIPPED, artifact="onnx_int8").predict_many(paths)
    small_rows = Classifier.load(tiers["small"], artifact="onnx_int8").predict_many(paths)
    pairs = [(a.guard.get("view"), b.guard.get("view")) for a, b in zip(seed_rows, small_rows)]
    assert len(pairs) >= 16 and all(a is not None for a, _ in pairs)
    assert all(a == b for a, b in pairs), pairs
