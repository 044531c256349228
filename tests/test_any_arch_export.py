"""One pipeline for any architecture: a `small` (ResNet-shaped, global-average-pooled) classifier
with no run record goes through `export --keras`, and the manifest, the runtime and Grad-CAM follow
its own layers; layer choices that break the head's form are refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
from typer.testing import CliRunner

from edge_pneumo.apps.cli import app
from edge_pneumo.device.explain import CamGeometry, gradcam_map, to_input_grid
from edge_pneumo.device.manifest import load_manifest
from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.device.runtime import open_backend
from edge_pneumo.errors import EXIT_FAILED

pytestmark = pytest.mark.slow
runner = CliRunner()
SIZE = 64  # the small architecture at 64 px: a 2 x 2 x 256 cam grid, quick on two cores


def _export_args(model, data, out, *layers: str) -> list[str]:
    return [
        "export", "--keras", str(model), "--data", str(data), "--out", str(out), "--formats", "device",
        "--calibration-images", "40", "--validation-images", "40", *layers,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def small_keras(tmp_path_factory, synthetic_data):
    """A `small`-architecture model trained for a few epochs on the synthetic images, saved with no run record."""
    pytest.importorskip("tensorflow")
    import keras

    from edge_pneumo.lab.dataset import discover, find_split, load_images
    from edge_pneumo.training.model import build_model

    keras.utils.set_random_seed(0)
    train = load_images(discover(find_split(synthetic_data, "train")), Preprocessing(size=SIZE))
    model = build_model("small", (SIZE, SIZE, 3))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    model.fit(train.x.astype(np.float32), train.y.astype(np.float32), epochs=4, batch_size=16, verbose=0)
    path = tmp_path_factory.mktemp("small") / "mine.keras"
    model.save(path)
    return path, model


@pytest.fixture(scope="module")
def small_export(small_keras, synthetic_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("small_exported")
    r = runner.invoke(
        app, _export_args(small_keras[0], synthetic_data, out, "--features-layer", "gap", "--cam-layer", "cam")
    )
    assert r.exit_code == 0, r.output
    return out


def test_manifest_describes_the_model_from_its_own_layers(small_export):
    m = load_manifest(small_export)
    model = m.raw["model"]
    assert model["arch"] == "custom" and model["input_size"] == SIZE
    assert (model["features_layer"], model["cam_layer"]) == ("gap", "cam")
    head = model["head"]
    assert head["kind"] == "pooled" and head["features"] == 256 and head["features_activation"] == "linear"
    assert head["check"]["max_abs_dp"] <= 1e-4 and head["check"]["images"] > 0
    derived = model["derived_at_export"]
    assert "no run record" in derived["why"] and "64" in derived["preprocessing"]
    c = m.raw["calibration"]
    assert c["rule_out"] < m.threshold < c["rule_in"] and "derived at export" in m.raw["threshold_rule"]
    assert m.raw["outputs"]["features"].startswith("(batch, 256): 'gap'")
    assert m.raw["outputs"]["conv"].startswith("(batch, 2, 2, 256): 'cam'")
    assert m.raw["cam"]["grid"] == [2, 2, 256] and m.raw["cam"]["scale"] == 32 and m.raw["cam"]["offset"] == 0
    assert m.raw["cam"]["feature_mask"] == "none"
    assert m.preprocessing == Preprocessing(size=SIZE)
    assert m.raw["model_version"].startswith("custom-")


def test_runtime_matches_keras_and_the_map_is_exactly_cam(small_keras, small_export, synthetic_data):
    from edge_pneumo.lab.dataset import discover, find_split, load_images

    x = load_images(discover(find_split(synthetic_data, "test")), Preprocessing(size=SIZE)).x
    keras_p = small_keras[1].predict(x.astype(np.float32), verbose=0)[:, 0]
    m = load_manifest(small_export)
    geometry = m.cam_geometry()
    for name, tol in (("onnx_float32", 1e-4), ("onnx_int8", 0.05), ("tflite_int8", 0.05)):
        backend = open_backend(small_export / m.artifacts[name].file)
        out = backend.run(x, ("probability", "features", "conv"))
        assert np.abs(out.probability - keras_p).max() <= tol, name
        channel_weights, w2 = m.gradcam_params(name)
        assert channel_weights.shape == (256, 256) and w2.shape == (256,)
        for conv, feats in zip(out.conv, out.features):
            heat = gradcam_map(conv, feats, channel_weights, w2, size=SIZE, geometry=geometry)
            assert heat.shape == (SIZE, SIZE) and 0.0 <= heat.min() and heat.max() <= 1.0
            cam = np.maximum(conv @ w2, 0.0)  # CAM: the output weights on the last activations
            if cam.max() > 0:
                cam = cam / cam.max()
            np.testing.assert_allclose(heat, to_input_grid(cam.astype(np.float32), SIZE, geometry), atol=1e-5)
            if cam.max() > 0:  # the hottest cell lands on its own quarter of the image
                i, j = np.unravel_index(np.argmax(cam), cam.shape)
                quarter = heat[i * 32 : (i + 1) * 32, j * 32 : (j + 1) * 32]
                assert quarter.mean() >= heat.mean()
    entries = {e.name: e.raw for e in m.artifacts.values()}
    assert entries["onnx_float32"]["gradcam_weights"] == "the float model's"
    assert entries["onnx_int8"]["gradcam_weights"] == "dequantised from the artifact"


def test_classifier_guards_and_explains_with_the_small_model(small_export, synthetic_data, tmp_path):
    """The whole device path on the new model: guard (pixels at its input size, its own features),
    decision, and a heatmap at its input size; a blank page is still refused."""
    import cv2

    from edge_pneumo import Classifier

    clf = Classifier.load(small_export, artifact="onnx_int8")
    paths = sorted((synthetic_data / "test" / "PNEUMONIA").glob("*.jpeg"))[:6]
    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((300, 300), 128, np.uint8))
    results = [clf.explain(p) for p in [*paths, blank]]
    classified = [r for r in results[:-1] if r.status == "classified"]
    assert classified, [r.reason for r in results]
    for r in classified:
        assert r.heatmap.shape == (SIZE, SIZE) and 0.0 <= r.probability <= 1.0
    assert results[-1].status == "rejected" and "blank" in results[-1].reason


def test_keras_export_refuses_layers_that_break_the_head(small_keras, synthetic_data, tmp_path):
    path = small_keras[0]
    r = runner.invoke(app, _export_args(path, synthetic_data, tmp_path / "a", "--features-layer", "gap"))
    assert r.exit_code == EXIT_FAILED and "pass both --features-layer and --cam-layer" in r.output
    r = runner.invoke(app, _export_args(path, synthetic_data, tmp_path / "b"))
    assert r.exit_code == EXIT_FAILED and "no run record says which layers" in r.output
    # the last block's second convolution: the residual shortcut joins after it
    r = runner.invoke(
        app, _export_args(path, synthetic_data, tmp_path / "c", "--features-layer", "gap", "--cam-layer", "s3b1_c2")
    )
    assert r.exit_code == EXIT_FAILED and "does not depend on 's3b1_c2' alone" in r.output, r.output
    # the stem: connected, but ReLUs and residual blocks lie between it and the features
    r = runner.invoke(
        app, _export_args(path, synthetic_data, tmp_path / "d", "--features-layer", "gap", "--cam-layer", "stem")
    )
    assert r.exit_code == EXIT_FAILED and "is not linear" in r.output, r.output
    assert not any((tmp_path / d / "manifest.json").exists() for d in "abcd")


def test_cam_geometry_defaults_to_the_seed():
    assert vars_of(CamGeometry.from_manifest({})) == (4.0, 3.0, True)
    g = CamGeometry.from_manifest({"cam": {"grid": [2, 2, 8], "scale": 32, "offset": 0, "feature_mask": "none"}})
    assert vars_of(g) == (32.0, 0.0, False)
    grid = to_input_grid(np.array([[0, 0], [0, 1]], np.float32), 64, g)
    assert grid.shape == (64, 64) and grid[48, 48] == 1.0 and grid[:16, :16].max() == 0.0
    # without the ReLU gate, a negative feature does not switch its channel off
    conv = np.ones((2, 2, 2), np.float32)
    w = np.eye(2, dtype=np.float32)
    assert not gradcam_map(conv, np.array([-1.0, -1.0]), w, np.ones(2, np.float32), 64).any()
    assert gradcam_map(conv, np.array([-1.0, -1.0]), w, np.ones(2, np.float32), 64, g).all()


def vars_of(g: CamGeometry) -> tuple:
    return g.scale, g.offset, g.relu_features


def test_record_without_arch_reads_the_seed_layers(tmp_path):
    from edge_pneumo.training.head import model_spec
    from edge_pneumo.training.keras_io import KerasModel

    km = KerasModel(None, tmp_path / "m.keras", {"threshold": 0.5}, Preprocessing(), 0.5)
    spec = model_spec(km)
    assert (spec.arch, spec.features_layer, spec.cam_layer) == ("seed", "dense", "pool2")
    arch = {"name": "small", "size": 128, "features_layer": "gap", "cam_layer": "cam", "description": "d"}
    km = KerasModel(None, tmp_path / "m.keras", {"arch": arch}, Preprocessing(size=128), 0.5)
    spec = model_spec(km)
    assert (spec.arch, spec.size, spec.features_layer, spec.layers_from) == ("small", 128, "gap", "run record")
    assert model_spec(km, "gap", "cam").arch == "small" and model_spec(km, "gap", "s3b1").arch == "custom"
    assert json.loads(json.dumps(spec.to_dict()))["input_size"] == 128


def _toy(head: str):
    """A tiny classifier with a cam layer "a" and a features layer "f" of the given head form."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(1)
    x = inp = keras.Input((16, 16, 3))
    x = layers.Rescaling(1 / 255)(x)
    x = layers.Conv2D(6, 3, activation="relu")(x)
    x = layers.MaxPooling2D(2, name="a")(x)
    if head == "dense":
        f = layers.Dense(5, activation="relu", name="f")(layers.Flatten()(x))
    elif head == "pooled":
        f = layers.GlobalAveragePooling2D(name="f")(x)
    else:  # a batch norm and a ReLU Dense after the pooling: linear, but no known pattern
        x = layers.BatchNormalization(beta_initializer="random_normal", moving_mean_initializer="random_normal")(x)
        f = layers.Dense(5, activation="relu", name="f")(layers.GlobalAveragePooling2D()(x))
    return keras.Model(inp, layers.Dense(1, activation="sigmoid")(f))


@pytest.mark.parametrize("form", ["dense", "pooled", "affine"])
def test_channel_weights_are_the_exact_grad_cam_weights(form):
    """alpha = G (w2 * gate(f)) equals the mean over positions of d logit / dA, by TensorFlow's own
    autograd, for each head form; the grid of a plain conv-pool chain sits on its receptive fields."""
    tf = pytest.importorskip("tensorflow")
    from edge_pneumo.training.head import Head, ModelSpec, cam_geometry, device_model

    model = _toy(form)
    spec = ModelSpec("toy", "", 16, "f", "a", "test")
    head = Head.read(model, spec, "toy")
    x = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3)).astype(np.float32)
    head.check(model, x, "toy")
    assert head.kind == form and head.grid == (7, 7, 6)
    _, f, a = (t.numpy() for t in device_model(model, spec)(x, training=False))
    rest = tf.keras.Model(model.get_layer("a").output, model.output)  # the model from the cam layer on
    a = tf.Variable(a)
    with tf.GradientTape() as tape:
        p = rest(a, training=False)
        z = tf.math.log(p) - tf.math.log(1 - p)
    grad = tape.gradient(z, a).numpy()  # d logit / dA, per image (images are independent)
    gate = (f > 0) if head.activation == "relu" else np.ones_like(f)
    alpha = (head.channel_weights @ (head.w2 * gate).T).T  # (n, c)
    np.testing.assert_allclose(alpha, grad.mean(axis=(1, 2)), rtol=2e-3, atol=1e-6)
    g = cam_geometry(model, head)
    assert (g["scale"], g["offset"]) == (2, 1)  # 3x3 valid conv + 2x2 pool: cell i centred on pixel 2i + 1.5


def test_a_nonlinear_path_is_refused():
    pytest.importorskip("tensorflow")
    import keras
    from keras import layers

    from edge_pneumo.errors import EdgePneumoError
    from edge_pneumo.training.head import Head, ModelSpec

    inp = keras.Input((16, 16, 3))
    a = layers.Conv2D(4, 3, activation="relu", name="a")(inp)
    f = layers.GlobalAveragePooling2D(name="f")(layers.Conv2D(4, 3, activation="relu")(a))
    model = keras.Model(inp, layers.Dense(1, activation="sigmoid")(f))
    head = Head.read(model, ModelSpec("toy", "", 16, "f", "a", "test"), "toy")
    x = np.random.default_rng(0).integers(0, 256, (6, 16, 16, 3)).astype(np.float32)
    with pytest.raises(EdgePneumoError, match="is not linear"):
        head.check(model, x, "toy")
