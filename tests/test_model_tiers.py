"""`--model seed|small|PATH` and `edge-pneumo models`, on a stand-in `small` tier made in the test.

The stand-in is the shipped exported/ copied twice (seed, and small/ with an edited manifest: its own
model section, version and input size), so these tests run before the real small export exists and
keep meaning the same after it does (the resolver is pointed at the stand-in only).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from edge_pneumo.apps.cli import app
from edge_pneumo.apps.model_list import format_models, model_rows
from edge_pneumo.device import device_profile as dp
from edge_pneumo.device import tiers
from edge_pneumo.device.manifest import load_manifest
from edge_pneumo.device.tiers import MODEL_ENV, resolve_model, shipped_tiers
from edge_pneumo.errors import ModelFileError

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "exported"
BASE = {"onnxruntime": "1.32.0", "ai_edge_litert": None}
# What the device needs (manifest, artifacts, parameters); not the Keras model, records or reports.
SKIP_NAMES = ("*.keras", "*.record.json", "teacher_soft_labels.json", "test_evaluations.jsonl", "*.png", "REPORT.md")


def make_root(root: Path, small: bool = True) -> Path:
    """root/exported (seed) and, with `small`, root/exported/small: a stand-in of the two shipped tiers."""
    exported = root / "exported"
    shutil.copytree(SHIPPED, exported, ignore=shutil.ignore_patterns("small", "report.json", *SKIP_NAMES))
    if small:
        dst = exported / "small"
        shutil.copytree(SHIPPED, dst, ignore=shutil.ignore_patterns("small", "report.json", *SKIP_NAMES))
        raw = json.loads((dst / "manifest.json").read_text())
        raw["model_version"] = "small-cnn-2026-11-29-standin"
        raw["model"] = {"arch": "small", "description": "ResNet-18-shaped CNN, width 32, 128 px (stand-in)"}
        raw["preprocessing"]["size"] = 128  # shown only: `models` reads it, nothing here runs it
        del raw["source_model"]["test_metrics"]
        (dst / "manifest.json").write_text(json.dumps(raw))
    return exported


@pytest.fixture
def stand_in(tmp_path, monkeypatch):
    """A working folder whose ./exported holds both tiers; the resolver looks nowhere else."""
    exported = make_root(tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setattr(tiers, "shipped_roots", lambda: iter([Path("exported")]))
    monkeypatch.setenv(dp.PROFILE_ENV, str(tmp_path / "profile.json"))
    return exported


# -- the resolver ----------------------------------------------------------------------------


def test_tier_names_mean_the_shipped_folders(stand_in):
    assert resolve_model("seed") == Path("exported")
    assert resolve_model("small") == Path("exported/small")
    assert resolve_model("Small") == Path("exported/small")
    assert resolve_model(None) == Path("exported")  # the default: seed
    assert shipped_tiers() == {"seed": Path("exported"), "small": Path("exported/small")}


def test_the_environment_names_a_tier_or_a_path(stand_in, monkeypatch):
    monkeypatch.setenv(MODEL_ENV, "small")
    assert resolve_model(None) == Path("exported/small")
    assert resolve_model("seed") == Path("exported")  # --model wins over the environment
    monkeypatch.setenv(MODEL_ENV, str(stand_in / "pneumonia_int8.tflite"))
    assert resolve_model(None) == stand_in / "pneumonia_int8.tflite"
    monkeypatch.setenv(MODEL_ENV, "smal")
    with pytest.raises(ModelFileError, match=r"^\$EDGE_PNEUMO_MODEL smal: .*shipped: seed, small"):
        resolve_model(None)


def test_paths_work_as_before(stand_in, tmp_path):
    assert resolve_model(str(stand_in / "small")) == stand_in / "small"
    assert resolve_model(stand_in / "pneumonia_int8.onnx") == stand_in / "pneumonia_int8.onnx"
    (tmp_path / "small").mkdir()  # a folder that happens to carry a tier's name: ./small is the folder
    assert resolve_model("./small") == Path("small")
    assert resolve_model("absent/folder") == Path("absent/folder")  # Classifier.load says "no such model file"
    assert resolve_model("gone.onnx") == Path("gone.onnx")


def test_an_unknown_or_unshipped_name_is_one_line_naming_the_shipped_tiers(stand_in):
    with pytest.raises(ModelFileError) as e:
        resolve_model("smal")
    assert "--model smal" in str(e.value) and "shipped: seed, small" in str(e.value) and "\n" not in str(e.value)
    shutil.rmtree(stand_in / "small")
    with pytest.raises(ModelFileError) as e:
        resolve_model("small")
    assert str(e.value) == (
        "--model small: not shipped with this install (no exported/small/manifest.json); shipped: seed"
    )


def test_nothing_shipped_says_how_to_give_a_model(tmp_path, monkeypatch):
    monkeypatch.delenv(MODEL_ENV, raising=False)
    monkeypatch.setattr(tiers, "shipped_roots", lambda: iter([tmp_path / "exported"]))
    with pytest.raises(ModelFileError, match="no shipped model found: pass --model"):
        resolve_model(None)


def test_shipped_roots_start_with_the_working_folder_then_the_package():
    roots = list(tiers.shipped_roots())
    assert roots[0] == Path("exported")
    assert roots[1] == REPO / "edge_pneumo" / "exported"  # the wheel's copy
    assert roots[-1] == REPO / "exported"  # an editable checkout run from elsewhere


def test_front_ends_fail_in_one_line_on_an_unknown_name(stand_in, capsys):
    from edge_pneumo.apps.entry import main

    with pytest.raises(SystemExit) as e:  # infer's fast path
        main(["infer", "--model", "smal", "x.jpeg"])
    err = capsys.readouterr().err
    assert e.value.code == 3 and err.count("\n") == 1 and "shipped: seed, small" in err, err
    runner = CliRunner()
    commands = (
        ["verify", "--model", "smal"],
        ["models", "-m", "smal"],
        ["compare", "--model", "smal"],
        ["evaluate", "--model", "smal"],
        ["watch", str(stand_in), "--once", "--model", "smal", "-o", str(stand_in.parent / "r.jsonl")],
        ["batch", str(stand_in), "-o", str(stand_in.parent / "b.jsonl"), "--model", "smal"],
    )
    for args in commands:
        r = runner.invoke(app, args)
        assert r.exit_code == 3, (args, r.output)
        assert "shipped: seed, small" in r.output and "Traceback" not in r.output, (args, r.output)


def test_infer_runs_the_small_tier_by_name(stand_in, tmp_path):
    import cv2
    import numpy as np
    from conftest import synthetic_xray

    manifest = stand_in / "small" / "manifest.json"
    raw = json.loads(manifest.read_text())
    raw["preprocessing"]["size"] = 64  # what the stand-in's artifacts (seed's) read
    manifest.write_text(json.dumps(raw))
    img = tmp_path / "x.png"
    cv2.imwrite(str(img), synthetic_xray(np.random.default_rng(0), 1, 256))
    r = CliRunner().invoke(app, ["infer", "--model", "small", "--format", "json", str(img)])
    assert r.exit_code == 0, r.output
    row = json.loads(r.stdout.splitlines()[0])
    assert row["model_version"] == "small-cnn-2026-11-29-standin"


def test_verify_takes_model_or_its_old_positional_folder(stand_in):
    r = CliRunner().invoke(app, ["verify", "seed", "--model", "small"])
    assert r.exit_code == 2 and "give one" in r.output


# -- edge-pneumo models ----------------------------------------------------------------------


def test_models_lists_tiers_with_figures_sizes_and_this_devices_time(stand_in):
    seed = load_manifest(stand_in)
    dp.write_profile(seed, "onnx_int8", {"onnx_int8": 0.85, "tflite_int8": 0.9}, runtimes=BASE)
    rows = model_rows(runtimes=BASE)
    assert [r["name"] for r in rows] == ["seed", "small"]
    s, m = rows
    assert s["default"] and not m["default"]
    assert (s["arch"], s["description"], s["input"]["size"]) == ("seed", "seed CNN", 64)
    assert (m["arch"], m["input"]["size"]) == ("small", 128) and m["description"].startswith("ResNet-18")
    assert s["test"]["auc"] == pytest.approx(seed.raw["source_model"]["test_metrics"]["auc"])
    assert m["test"] is None
    assert s["this_device"] == {"artifact": "onnx_int8", "ms_per_image": 0.85, "stale": None}
    assert m["this_device"] is None  # verifying seed says nothing about small
    assert {a["name"]: a["size_bytes"] for a in s["artifacts"]}["tflite_int8"] == (
        stand_in / "pneumonia_int8.tflite"
    ).stat().st_size
    text = format_models(rows)
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["model", "arch"]
    assert lines[1].split()[:4] == ["seed", "*", "seed", "64"] and "0.85 (onnx_int8)" in lines[1]
    assert lines[2].split()[:3] == ["small", "small", "128"]
    assert "  test: not evaluated" in lines
    assert "this device: not measured; run `edge-pneumo verify --model small`" in text
    assert "pneumonia_int8.tflite" in text and "1.64 MB" in text


def test_models_json_and_a_third_folder(stand_in, tmp_path):
    other = tmp_path / "site_model"
    shutil.copytree(stand_in / "small", other)
    (other / "pneumonia_int8.onnx").unlink()
    report = {"reference": "keras_float32", "data": "test/", "rows": [
        {"name": "onnx_int8", "metrics": {"n": 10, "accuracy": 0.9, "auc": 0.95}},
    ]}  # fmt: skip
    (other / "report.json").write_text(json.dumps(report))
    r = CliRunner().invoke(app, ["models", "--format", "json", "--model", str(other)])
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)["models"]
    assert [x["name"] for x in rows] == ["seed", "small", str(other)]
    third = rows[2]
    assert third["test"]["accuracy"] == 0.9 and "report.json" in third["test"]["source"]
    assert {a["name"]: a["present"] for a in third["artifacts"]}["onnx_int8"] is False
    r = CliRunner().invoke(app, ["models", "--model", "small"])  # a tier: listed once
    assert r.exit_code == 0 and r.stdout.count("small:") == 1, r.output
    r = CliRunner().invoke(app, ["models", "--model", str(other)])
    assert "MISSING" in r.stdout


def test_models_loads_no_model_and_no_runtime(stand_in):
    code = (
        "import sys\n"
        "from edge_pneumo.apps.entry import main\n"
        "try:\n    main(['models'])\nexcept SystemExit as e:\n    assert not e.code, e.code\n"
        "heavy = sorted(m for m in ('onnxruntime', 'ai_edge_litert', 'cv2', 'numpy') if m in sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=stand_in.parent,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines()[0].startswith("model")
