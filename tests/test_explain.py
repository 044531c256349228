"""Grad-CAM from the deployed artifact: the map's shape and placement, and, on real data, that it
points at what the model uses (deletion test), differs from a randomised head's, and that the int8
artifact's maps follow the float model's."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import REPO

from edge_pneumo.device.explain import gradcam_map, overlay, to_input_grid
from edge_pneumo.lab.explain_checks import (
    deletion_test,
    heat_location,
    map_agreement,
    maps_for,
    randomised_head_agreement,
)


def test_a_hot_cell_lands_on_the_pixels_it_sees():
    cam = np.zeros((14, 14), np.float32)
    cam[0, 0] = 1.0
    grid = to_input_grid(cam, 64)
    assert grid.shape == (64, 64) and grid.dtype == np.float32
    assert grid[4, 4] > 0.7 and grid[12:, 12:].max() < 0.05  # cell 0 is centred on input pixel 4.5
    cam[0, 0], cam[13, 13] = 0.0, 1.0
    grid = to_input_grid(cam, 64)
    assert grid[56, 56] > 0.7 and grid[:50, :50].max() < 0.05


def test_gradcam_follows_the_head_weights():
    rng = np.random.default_rng(0)
    conv = rng.random((14, 14, 4)).astype(np.float32)
    conv[:, :, 0] += np.eye(14, dtype=np.float32) * 5  # channel 0: a diagonal
    features = np.ones(3, np.float32)
    weights = np.zeros((4, 3), np.float32)
    weights[0] = 1.0  # only channel 0 raises the logit
    hm = gradcam_map(conv, features, weights, np.ones(3, np.float32))
    assert hm.min() >= 0 and 0.8 < hm.max() <= 1.0
    assert hm[30, 30] > hm[30, 60] and hm[8, 8] > hm[8, 56]
    assert not gradcam_map(conv, np.zeros(3, np.float32), weights, np.ones(3, np.float32)).any()  # no active unit


def test_overlay_keeps_the_resolution():
    grey = np.tile(np.arange(300, dtype=np.uint8), (200, 1))
    out = overlay(grey, np.random.default_rng(0).random((64, 64)).astype(np.float32), "PNEUMONIA p=0.91")
    assert out.shape == (200, 300, 3) and out.dtype == np.uint8


@pytest.mark.realdata
def test_maps_point_at_what_the_deployed_model_uses(real_data):
    from edge_pneumo import Classifier
    from edge_pneumo.lab.dataset import discover, find_split, load_images

    clf = Classifier.load(artifact="onnx_int8")
    test = load_images(discover(find_split(real_data, "test")), clf.preprocessing)
    x = test.x[test.y == 1][:60]
    weights = clf.manifest.gradcam_params("onnx_int8")
    maps, _ = maps_for(clf.backend, x, *weights)
    d = deletion_test(clf.backend.predict, x, maps)
    assert d["images"] >= 30 and d["ratio"] >= 1.5, d
    run = clf.backend.run(x, ("probability", "features", "conv"))
    rnd = randomised_head_agreement(run.conv, run.features, *weights)
    assert rnd["draws"] == 10 and rnd["spearman_mean"] < 0.3, rnd  # maps do not survive random heads, on average
    ref = Classifier.load(artifact="onnx_float32")
    ref_maps, _ = maps_for(ref.backend, x, *ref.manifest.gradcam_params("onnx_float32"))
    assert map_agreement(maps, ref_maps)["spearman_mean"] > 0.8
    # Where the heat lies: a uniform map scores exactly each region's share of the area, and the
    # deployed maps score what `compare` recorded for this artifact (exported/report.json, all 390
    # PNEUMONIA test images; these are its first 60).
    even = heat_location(np.ones_like(maps))
    assert even["heat_in_lung_boxes"] == pytest.approx(even["lung_box_share_of_area"])
    assert even["heat_in_border"] == pytest.approx(even["border_share_of_area"])
    recorded = json.loads((REPO / "exported" / "report.json").read_text())["explanation"]["artifacts"]["onnx_int8"]
    loc = heat_location(maps)
    for key in ("heat_in_lung_boxes", "heat_in_border"):
        assert loc[key] == pytest.approx(recorded["location"][key], abs=0.02), key


@pytest.mark.realdata
def test_heatmap_pngs_from_the_cli(real_data, tmp_path):
    from typer.testing import CliRunner

    from edge_pneumo.apps.cli import app

    imgs = sorted((real_data / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
    r = CliRunner().invoke(app, ["infer", "--heatmap", str(tmp_path / "maps"), *map(str, imgs)])
    assert r.exit_code == 0, r.output
    import cv2

    for img in imgs:
        png = cv2.imread(str(tmp_path / "maps" / f"{img.stem}.heatmap.png"))
        assert png is not None and png.shape[:2] == cv2.imread(str(img)).shape[:2]
