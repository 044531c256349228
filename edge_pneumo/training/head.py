"""What export reads from a Keras classifier: the layers the device uses, the head's form, and where
the Grad-CAM grid sits on the input, found from the model and checked on images rather than assumed
from layer names.

The device explains any head of the form P = sigmoid(w2 . f + b), f = act(L(A)), with A the cam
layer's activations (h, w, c), L linear (Flatten + Dense, global average pooling, a batch norm...)
and act ReLU or nothing. Grad-CAM's channel weights are then exact:
G[c, k] = mean over positions of dL_k / dA[i, j, c] = (L(E_c) - L(0))[k] / (h w), E_c being the
grid that is 1 on channel c and 0 elsewhere. For the seed CNN (Flatten -> Dense(128, ReLU)) that
is the Dense kernel's spatial mean per channel; for global average pooling it is I / (h w), and
the map is exactly CAM. `Head.read` refuses layer choices that break the form before any image
is loaded where it can, and `Head.check` on the float model's outputs for validation images.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import numpy as np

from edge_pneumo.errors import EdgePneumoError

SEED_LAYERS = {"features_layer": "dense", "cam_layer": "pool2"}  # run records from before "arch"
PROBABILITY_TOLERANCE = 1e-4  # |sigmoid(w2 . f + b) - P| on the validation images
LINEAR_TOLERANCE = 1e-3  # relative to the largest |L(A)|: affinity and the probed-vs-analytic weights
MERGES = {"Add", "Subtract", "Multiply", "Average", "Maximum", "Minimum", "Concatenate", "Dot"}
KINDS = {  # features before their activation, per head kind
    "dense": "Dense(Flatten(cam))",
    "pooled": "GlobalAveragePooling(cam)",
    "affine": "L(cam) with L linear (checked at export)",
}


@dataclass(frozen=True)
class ModelSpec:
    """The model as the manifest's "model" section describes it: the layers the device reads, by name."""

    arch: str
    description: str
    size: int
    features_layer: str
    cam_layer: str
    layers_from: str  # where the names came from: the run record, its absence (the seed's), or the user

    def to_dict(self) -> dict:
        d = asdict(self)
        d["input_size"] = d.pop("size")
        return d


def model_spec(km, features_layer: str | None = None, cam_layer: str | None = None) -> ModelSpec:
    """The layers to read: `--features-layer/--cam-layer`, else the run record's "arch", else the seed's."""
    arch = km.record.get("arch") or {}
    size = km.preprocessing.size
    if features_layer or cam_layer:
        if not (features_layer and cam_layer):
            raise EdgePneumoError("pass both --features-layer and --cam-layer (or neither, to use the run record's)")
        same = arch and (arch.get("features_layer"), arch.get("cam_layer")) == (features_layer, cam_layer)
        name = arch["name"] if same else "custom"
        what = arch.get("description", "") if same else f"a Keras binary classifier ({km.path.name})"
        return ModelSpec(name, what, size, features_layer, cam_layer, "--features-layer / --cam-layer")
    if arch:
        return ModelSpec(
            arch["name"], arch.get("description", ""), size, arch["features_layer"], arch["cam_layer"], "run record"
        )
    if km.derived:
        raise EdgePneumoError(
            f"{km.path}: no run record says which layers the device reads; pass --features-layer NAME (the "
            "vector the input guard measures, read by the sigmoid output) and --cam-layer NAME (the (h, w, c) "
            "activations Grad-CAM weighs)"
        )
    from edge_pneumo.training.config import ARCHES

    seed = ARCHES["seed"]
    return ModelSpec(
        "seed", seed.description, size, **SEED_LAYERS, layers_from="run record without 'arch': the seed CNN's"
    )


def device_model(model, spec: ModelSpec):
    """The deployed graph: the trained model with two more outputs, the features (for the input guard)
    and the cam layer's activations (for Grad-CAM). The probability is unchanged; the extra outputs
    are tensors the model computes anyway."""
    import keras

    return keras.Model(
        model.input,
        [model.output, model.get_layer(spec.features_layer).output, model.get_layer(spec.cam_layer).output],
        name=f"{spec.arch}_device",
    )


@dataclass
class Head:
    """The head P = sigmoid(w2 . f + b), f = act(L(cam)) of one model, and its Grad-CAM weights."""

    spec: ModelSpec
    kind: str  # a key of KINDS
    activation: str  # "relu" or "linear"
    grid: tuple[int, int, int]  # the cam layer's (h, w, c)
    w2: np.ndarray  # (k,)
    b: float
    w1: np.ndarray | None  # "dense": the features Dense's kernel (h * w * c, k)
    channel_weights: np.ndarray | None = None  # G (c, k), float model; set by `check`
    checked: dict = field(default_factory=dict)

    @property
    def k(self) -> int:
        return int(self.w2.shape[0])

    @classmethod
    def read(cls, model, spec: ModelSpec, source: str = "") -> Head:
        """The head's structure, from the model alone; EdgePneumoError when the layers cannot be one."""
        cam, feats = _layer(model, spec.cam_layer, source), _layer(model, spec.features_layer, source)
        grid, k = tuple(cam.output.shape[1:]), feats.output.shape[1:]
        if len(grid) != 3 or None in grid:
            raise EdgePneumoError(f"{source}: --cam-layer '{spec.cam_layer}' outputs {grid}, not an (h, w, c) grid")
        if len(k) != 1:
            raise EdgePneumoError(f"{source}: --features-layer '{spec.features_layer}' outputs {k}, not a vector")
        out = model.layers[-1]
        kernel = getattr(out, "kernel", None)
        if getattr(getattr(out, "activation", None), "__name__", "") != "sigmoid" or kernel is None:
            raise EdgePneumoError(f"{source}: the output layer '{out.name}' is not a Dense(1, sigmoid)")
        if tuple(kernel.shape) != (k[0], 1):
            raise EdgePneumoError(
                f"{source}: the output layer '{out.name}' reads {kernel.shape[0]} values, not the "
                f"{k[0]} features of '{spec.features_layer}': pick the layer the sigmoid output reads"
            )
        activation = getattr(getattr(feats, "activation", None), "__name__", "linear")
        if activation not in ("relu", "linear"):
            raise EdgePneumoError(
                f"{source}: '{spec.features_layer}' ends in {activation}; Grad-CAM needs ReLU or no activation"
            )
        kind = _kind(_between(model, spec, source))
        w2, b = out.get_weights()[0][:, 0], float(out.get_weights()[1][0]) if len(out.get_weights()) > 1 else 0.0
        w1 = feats.get_weights()[0] if kind == "dense" else None
        return cls(spec, kind, activation, tuple(int(v) for v in grid), w2.astype(np.float32), b, w1)

    def form(self) -> str:
        inner = KINDS[self.kind]
        features = f"ReLU({inner})" if self.activation == "relu" else inner
        return f"P = sigmoid(w2 . features + b), features = {features}"

    def check(self, model, x: np.ndarray, source: str = "") -> dict:
        """On images x: P = sigmoid(w2 . f + b), f = act(L(cam)) with L affine, and the exact Grad-CAM
        weights G; EdgePneumoError (nothing exported) when any of it fails."""
        p, f, a = _run(device_model(model, self.spec), x)
        dp = float(np.abs(1 / (1 + np.exp(-(f.astype(np.float64) @ self.w2 + self.b))) - p.ravel()).max())
        if dp > PROBABILITY_TOLERANCE:
            raise EdgePneumoError(
                f"{source}: P(PNEUMONIA) is not sigmoid(w2 . features + b) on the '{self.spec.features_layer}' "
                f"activations (max |dp| {dp:.1e} on {len(x)} validation images): pick the layer the output reads"
            )
        pre = _PreActivation(model, self.spec)
        la = pre(a)
        scale = 1.0 + float(np.abs(la).max())
        act_err = float(np.abs((np.maximum(la, 0) if self.activation == "relu" else la) - f).max()) / scale
        half = max(1, len(a) // 2)
        a1, a2 = a[:half], a[half : 2 * half] if len(a) >= 2 else a[:half]
        zero = pre(np.zeros_like(a[:1]))
        lin_err = float(np.abs(pre(a1 - 2 * a2) - (pre(a1) - 2 * pre(a2) + 2 * zero)).max()) / scale
        if max(act_err, lin_err) > LINEAR_TOLERANCE:
            raise EdgePneumoError(
                f"{source}: '{self.spec.cam_layer}' -> '{self.spec.features_layer}' is not linear"
                f"{' + ReLU' if self.activation == 'relu' else ''} (relative error {max(act_err, lin_err):.1e}): "
                "Grad-CAM needs --cam-layer to be the last (h, w, c) activations before pooling or Flatten + Dense"
            )
        probed = _probe_channel_weights(pre, self.grid, zero)
        analytic = self.channel_weights_from(self.w1)
        if analytic is not None:
            g_err = float(np.abs(analytic - probed).max()) / (1e-12 + float(np.abs(probed).max()))
            if g_err > LINEAR_TOLERANCE:
                raise EdgePneumoError(
                    f"{source}: the {self.kind} head's Grad-CAM weights disagree with the model's ({g_err:.1e})"
                )
        self.channel_weights = probed if analytic is None else analytic
        self.checked = {
            "images": int(len(x)),
            "max_abs_dp": dp,
            "tolerance": PROBABILITY_TOLERANCE,
            "activation_error": act_err,
            "linearity_error": lin_err,
            "channel_weights": f"from the weights ({self.kind})" if analytic is not None else "probed",
        }
        return self.checked

    def channel_weights_from(self, w1: np.ndarray | None) -> np.ndarray | None:
        """G (c, k) from the weights (None for an "affine" head: `check` probes the float model)."""
        if self.kind == "dense":
            return gradcam_channel_weights(w1, self.grid)
        if self.kind == "pooled":
            h, w, c = self.grid
            return (np.eye(c, dtype=np.float32) / (h * w)).astype(np.float32)
        return None

    def to_dict(self) -> dict:
        return {
            "form": self.form(),
            "kind": self.kind,
            "features": self.k,
            "features_activation": self.activation,
            "check": self.checked,
        }


def gradcam_channel_weights(w1: np.ndarray, grid: tuple[int, int, int] = (14, 14, 64)) -> np.ndarray:
    """Dense kernel (h*w*c, k), flattened channels-last -> (c, k): its spatial mean per channel,
    which is what Grad-CAM's channel weights need (see edge_pneumo.device.explain)."""
    h, w, c = grid
    return (w1.reshape(h, w, c, -1).sum(axis=(0, 1)) / (h * w)).astype(np.float32)


def cam_geometry(model, head: Head) -> dict:
    """The manifest's "cam" section: where cell (i, j) sits on the input. Through a plain chain of
    convolutions and pools the receptive-field centres are exact (the seed: scale 4, offset 3);
    through anything else (residual blocks) the grid is stretched over the input (offset 0)."""
    h, w, c = head.grid
    size = head.spec.size
    chain = _chain_centres(model, head.spec.cam_layer, size)
    if chain is not None and chain[2] == h == w:
        scale, first = chain[0], chain[1]
        offset, how = first - (scale - 1) / 2, "receptive-field centres through a plain chain of convolutions and pools"
    else:
        scale, offset, how = size / h, 0.0, "stretched: input size / grid (the layers before it are not a plain chain)"
    return {
        "grid": [h, w, c],
        "scale": _number(scale),
        "offset": _number(offset),
        "feature_mask": "relu" if head.activation == "relu" else "none",
        "how": how,
    }


class _PreActivation:
    """L: the cam activations -> the features before their activation, run eagerly (the features
    layer's activation is switched off for the call only)."""

    def __init__(self, model, spec: ModelSpec):
        import keras

        self.sub = keras.Model(model.get_layer(spec.cam_layer).output, model.get_layer(spec.features_layer).output)
        self.layer = model.get_layer(spec.features_layer)

    def __call__(self, a: np.ndarray, batch: int = 64) -> np.ndarray:
        import keras

        saved = getattr(self.layer, "activation", None)
        try:
            if saved is not None:
                self.layer.activation = keras.activations.linear
            parts = [
                keras.ops.convert_to_numpy(self.sub(a[i : i + batch], training=False)) for i in range(0, len(a), batch)
            ]
        finally:
            if saved is not None:
                self.layer.activation = saved
        return np.concatenate(parts).astype(np.float64)


def _probe_channel_weights(pre: _PreActivation, grid: tuple[int, int, int], zero: np.ndarray) -> np.ndarray:
    """G = (L(E_c) - L(0)) / (h w), a few channels at a time (E_c: ones on channel c)."""
    h, w, c = grid
    rows = []
    for first in range(0, c, 64):
        n = min(64, c - first)
        probe = np.zeros((n, h, w, c), np.float32)
        probe[np.arange(n), :, :, first + np.arange(n)] = 1.0
        rows.append(pre(probe))
    return ((np.concatenate(rows) - zero) / (h * w)).astype(np.float32)


def _layer(model, name: str, source: str):
    try:
        return model.get_layer(name)
    except ValueError:
        names = ", ".join(layer.name for layer in model.layers[-12:])
        raise EdgePneumoError(f"{source}: no layer named '{name}' (the last layers: {names})") from None


def _between(model, spec: ModelSpec, source: str) -> list[str]:
    """The layer types from the cam layer to the features layer; refuses when the features need more."""
    import keras

    try:
        sub = keras.Model(model.get_layer(spec.cam_layer).output, model.get_layer(spec.features_layer).output)
    except ValueError:
        raise EdgePneumoError(
            f"{source}: '{spec.features_layer}' does not depend on '{spec.cam_layer}' alone (another path joins "
            "in between): --cam-layer must be the last (h, w, c) activations before the features"
        ) from None
    return [type(layer).__name__ for layer in sub.layers[1:] if type(layer).__name__ != "Dropout"]


def _kind(between: list[str]) -> str:
    if between == ["Flatten", "Dense"]:
        return "dense"
    if between == ["GlobalAveragePooling2D"]:
        return "pooled"
    return "affine"


def _run(deployed, x: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    outs = [deployed(x[i : i + batch].astype(np.float32), training=False) for i in range(0, len(x), batch)]
    import keras

    return tuple(np.concatenate([keras.ops.convert_to_numpy(o[j]) for o in outs]) for j in range(3))  # type: ignore[return-value]


def _chain_centres(model, cam_layer: str, size: int) -> tuple[float, float, int] | None:
    """(stride, centre of cell 0, grid side) in input pixels, layer by layer, or None when the path
    from the input is not a plain chain whose sizes this arithmetic reproduces."""
    import keras

    sub = keras.Model(model.input, model.get_layer(cam_layer).output)
    step, first, n = 1.0, 0.0, size
    for layer in sub.layers[1:]:
        if type(layer).__name__ in MERGES:
            return None
        kernel = getattr(layer, "kernel_size", None) or getattr(layer, "pool_size", None)
        if kernel is not None:
            strides, dilation = layer.strides, getattr(layer, "dilation_rate", (1, 1))
            if len(set(kernel)) != 1 or len(set(strides)) != 1 or len(set(dilation)) != 1:
                return None
            k, s = (kernel[0] - 1) * dilation[0] + 1, strides[0]
            if layer.padding == "same":
                out = -(-n // s)
                before = max((out - 1) * s + k - n, 0) // 2
            else:
                out, before = (n - k) // s + 1, 0
            first += step * ((k - 1) / 2 - before)
            step, n = step * s, out
        shape = layer.output.shape
        if len(shape) != 4 or shape[1] != n or shape[2] != n:
            return None
    return step, first, n


def _number(v: float) -> float | int:
    return int(v) if float(v).is_integer() else round(float(v), 6)
