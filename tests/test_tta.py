"""Flip test-time augmentation: the runner averages the image and its mirror, with the
operating point train chose for it on validation; the guard and heatmap see the image as it came."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_pneumo.apps.cli import app
from edge_pneumo.decoders.decode import read_grey
from edge_pneumo.device import tta
from edge_pneumo.device.classifier import Classifier
from edge_pneumo.device.manifest import load_manifest
from edge_pneumo.errors import EXIT_FAILED, ModelFileError

runner = CliRunner()


def test_mirrors_follow_the_batch_and_combine_averages_the_pairs():
    batch = np.arange(2 * 3 * 4 * 3, dtype=np.uint8).reshape(2, 3, 4, 3)
    both = tta.with_mirrors(batch)
    assert both.shape == (4, 3, 4, 3)
    assert np.array_equal(both[:2], batch) and np.array_equal(both[2:, :, ::-1], batch)
    assert np.allclose(tta.combine(np.array([0.2, 0.9, 0.4, 0.5]), 2), [0.3, 0.7])


def _one_image(synthetic_data):
    return sorted((synthetic_data / "test" / "PNEUMONIA").glob("*.jpeg"))[0]


def test_tta_probability_is_the_mean_over_the_image_and_its_mirror(tiny_export, synthetic_data):
    path = _one_image(synthetic_data)
    plain = Classifier.load(tiny_export, artifact="onnx_float32")
    flip = Classifier.load(tiny_export, artifact="onnx_float32", tta=True)
    x = plain.preprocessing.finish(plain.preprocessing.resize(read_grey(path).pixels))[None]
    expected = 0.5 * (plain.predict_array(x)[0] + plain.predict_array(x[:, :, ::-1])[0])
    r, r0 = flip.predict(path), plain.predict(path)
    assert r.status == "classified" and r.tta == "flip" and r0.tta is None
    assert r.raw_probability == pytest.approx(float(expected), abs=1e-6)
    # its own operating point, from the manifest's tta section, chosen by train on validation
    section = load_manifest(tiny_export).raw["tta"]
    assert flip.calibration.threshold == section["threshold"] and flip.calibration.temperature == section["temperature"]
    assert r.label == ("PNEUMONIA" if r.raw_probability >= section["threshold"] else "NORMAL")
    # the feature guard looks at the image as it came, not at the mirror
    assert r.guard["features"] == r0.guard["features"]
    assert r.to_dict()["tta"] == "flip" and "+flip TTA" in r.text_line()


def test_tta_heatmap_and_many_images_keep_their_order(tiny_export, synthetic_data):
    paths = sorted((synthetic_data / "test").rglob("*.jpeg"))[:10]
    flip = Classifier.load(tiny_export, artifact="onnx_int8", tta=True)
    one_by_one = [flip.predict(p).raw_probability for p in paths]
    batched = [r.raw_probability for r in flip.predict_many(paths, batch_size=4)]
    assert np.allclose(one_by_one, batched, atol=1e-6)
    r = flip.explain(paths[0])
    assert r.heatmap is not None and r.heatmap.shape == (64, 64)


def test_an_export_without_a_tta_operating_point_says_so(exported_copy, synthetic_data):
    manifest_path = exported_copy / "manifest.json"
    raw = json.loads(manifest_path.read_text())
    del raw["tta"]
    manifest_path.write_text(json.dumps(raw))
    with pytest.raises(ModelFileError, match="no operating point for flip TTA"):
        Classifier.load(exported_copy, tta=True)
    r = runner.invoke(app, ["infer", "--model", str(exported_copy), "--tta", str(_one_image(synthetic_data))])
    assert r.exit_code == EXIT_FAILED and "no operating point for flip TTA" in r.stderr and "Traceback" not in r.output
    assert Classifier.load(exported_copy).predict(_one_image(synthetic_data)).status == "classified"


def test_infer_tta_through_the_cli(tiny_export, synthetic_data):
    r = runner.invoke(
        app, ["infer", "--model", str(tiny_export), "--tta", "-f", "json", "--dir", str(synthetic_data / "test")]
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines()]
    assert len(rows) == 32 and {row["tta"] for row in rows} == {"flip"}


def test_watch_once_with_tta_records_flip_rows(tiny_export, synthetic_data, tmp_path):
    out = tmp_path / "results.jsonl"
    r = runner.invoke(
        app,
        [
            "watch",
            str(synthetic_data / "test" / "NORMAL"),
            "--once",
            "--poll",
            "--stable-seconds",
            "0",
            "--model",
            str(tiny_export),
            "--tta",
            "--output",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 16 and {row["tta"] for row in rows} == {"flip"}
