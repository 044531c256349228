"""Grad-CAM on the device, from the artifact that made the decision: no autograd, no TensorFlow.

Every exported head has the form P = sigmoid(w2 . f + b), f = act(L(A)), where A (h x w x c)
is the cam layer's activations, L is linear and act is ReLU or nothing (`export` checks this on
validation images). The gradient of the logit with respect to A is then L^T (w2 * act'(L(A))),
and Grad-CAM weighs each channel by its spatial mean: alpha = G (w2 * [f > 0]), where G (c x k)
holds the spatial mean of L's weights per channel, computed at export from the artifact's own
(dequantised) weights where it holds them. For the seed CNN, L is Flatten -> Dense(128, ReLU);
for a global-average-pooled head, G = I / (h w) and the map is exactly CAM. A and f are the
artifact's second and third outputs, so one forward pass gives the map: a few microseconds of
numpy on top of the classification. Where the grid sits on the input comes from the manifest's
"cam" section (`CamGeometry`); manifests without one are the seed's.
"""

from __future__ import annotations

import cv2
import numpy as np


class CamGeometry:
    """Where cell (i, j) of the cam grid sits on the model input: centred on input pixel
    scale * i + (scale - 1) / 2 + offset, and whether the features are ReLU'd (the [f > 0] gate).

    The defaults are the seed CNN's (3x3 valid conv + 2x2 pool, twice: cell i on pixel 4i + 4.5)."""

    __slots__ = ("scale", "offset", "relu_features")

    def __init__(self, scale: float = 4.0, offset: float = 3.0, relu_features: bool = True):
        self.scale, self.offset, self.relu_features = float(scale), float(offset), relu_features

    @classmethod
    def from_manifest(cls, raw: dict) -> CamGeometry:
        section = raw.get("cam")
        if not section:
            return cls()  # exports before the section: the seed CNN
        return cls(section["scale"], section["offset"], section.get("feature_mask", "relu") == "relu")


SEED_GEOMETRY = CamGeometry()


def gradcam_map(
    conv: np.ndarray,
    features: np.ndarray,
    channel_weights: np.ndarray,
    w2: np.ndarray,
    size: int = 64,
    geometry: CamGeometry | None = None,
) -> np.ndarray:
    """(size, size) float32 in [0, 1]; higher = more evidence for PNEUMONIA."""
    g = geometry or SEED_GEOMETRY
    gate = w2 * (features > 0) if g.relu_features else w2
    alpha = channel_weights @ gate  # (c,)
    cam = np.maximum(conv.astype(np.float32) @ alpha.astype(np.float32), 0.0)  # (h, w)
    top = float(cam.max())
    cam = cam / top if top > 0 else cam
    return to_input_grid(cam.astype(np.float32), size, g)


def to_input_grid(cam: np.ndarray, size: int, geometry: CamGeometry | None = None) -> np.ndarray:
    """Place a cam-grid map on the model input's pixels: scaled by the geometry's stride and
    shifted by its offset, not stretched to the border (the seed's cells are 4 px apart and its
    first is centred on pixel 4.5); the edge values are repeated where the grid does not reach."""
    g = geometry or SEED_GEOMETRY
    h, w = cam.shape
    up = cv2.resize(cam, (int(round(g.scale * w)), int(round(g.scale * h))), interpolation=cv2.INTER_LINEAR)
    shift = int(round(g.offset))
    if shift < 0:
        up, shift = up[-shift:, -shift:], 0
    pad_y, pad_x = max(0, size - up.shape[0] - shift), max(0, size - up.shape[1] - shift)
    out = cv2.copyMakeBorder(up, shift, pad_y, shift, pad_x, cv2.BORDER_REPLICATE)
    return np.clip(out[:size, :size], 0.0, 1.0).astype(np.float32)


def overlay(grey: np.ndarray, heatmap: np.ndarray, caption: str = "", alpha: float = 0.45) -> np.ndarray:
    """The X-ray at its own resolution with the heatmap over it, a colour scale and a caption (BGR uint8).

    Pass the map already weighted as it should be shown (e.g. by P(PNEUMONIA), so a confident
    NORMAL stays cool): the colours are absolute, 0 to 1."""
    h, w = grey.shape[:2]
    heat = np.clip(cv2.resize(heatmap.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR), 0, 1)
    colour = cv2.applyColorMap(np.uint8(heat * 255), cv2.COLORMAP_JET)
    base = cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR)
    weight = (alpha * heat**0.5)[..., None]  # cold regions stay mostly X-ray
    out = (base * (1 - weight) + colour * weight).astype(np.uint8)
    bar_w, margin = max(8, w // 40), max(6, w // 80)
    bar_h = h // 3
    x0 = w - margin - bar_w
    out[margin : margin + bar_h, x0 : x0 + bar_w] = cv2.applyColorMap(
        np.linspace(255, 0, bar_h).astype(np.uint8)[:, None].repeat(bar_w, 1), cv2.COLORMAP_JET
    )
    scale = max(0.35, w / 900)
    thick = max(1, int(round(w / 500)))

    def text(s: str, x: int, y: int) -> None:
        cv2.putText(out, s, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), thick + 2, cv2.LINE_AA)
        cv2.putText(out, s, (x, y), cv2.FONT_HERSHEY_SIMPLEX, scale, (255, 255, 255), thick, cv2.LINE_AA)

    (tw, th), _ = cv2.getTextSize("high", cv2.FONT_HERSHEY_SIMPLEX, scale, thick)
    text("high", x0 - tw - margin // 2, margin + th)
    text("low", x0 - tw - margin // 2, margin + bar_h)
    if caption:
        text(caption, margin, margin + th)
    return out


def result_overlay(grey: np.ndarray, result) -> np.ndarray:
    """The picture a person sees for a classified result (the CLI's PNG, the page's image): the map
    weighted by P(PNEUMONIA), so a confident NORMAL stays cool, and the answer in a corner."""
    from edge_pneumo.device.scoring import DECISION_TEXT

    words = DECISION_TEXT.get(result.decision or "", result.label or "")
    caption = f"{words} p={result.probability:.2f} (threshold {result.threshold:.2f})"
    return overlay(grey, result.heatmap * result.probability, caption)
