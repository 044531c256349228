"""Grad-CAM on the device, from the artifact that made the decision: no autograd, no TensorFlow.

The seed CNN's head is Flatten -> Dense(128, ReLU) -> Dense(1), so the gradient of the
logit with respect to the pooled conv-2 activations A (14x14x64) is W1^T (w2 * [h > 0]).
Grad-CAM weighs each channel by that gradient's spatial mean: alpha = G (w2 * [h > 0]),
where G (64x128) is W1 summed over positions, computed at export from the artifact's own
(dequantised) weights. A and h are the artifact's second and third outputs, so one forward
pass gives the map: a few microseconds of numpy on top of the classification.
"""

from __future__ import annotations

import cv2
import numpy as np


def gradcam_map(
    conv: np.ndarray, features: np.ndarray, channel_weights: np.ndarray, w2: np.ndarray, size: int = 64
) -> np.ndarray:
    """(size, size) float32 in [0, 1]; higher = more evidence for PNEUMONIA."""
    alpha = channel_weights @ (w2 * (features > 0))  # (c,)
    cam = np.maximum(conv.astype(np.float32) @ alpha.astype(np.float32), 0.0)  # (h, w)
    top = float(cam.max())
    cam = cam / top if top > 0 else cam
    return to_input_grid(cam.astype(np.float32), size)


def to_input_grid(cam: np.ndarray, size: int) -> np.ndarray:
    """Place a conv-2 map on the model input's pixels.

    Pooled cell i of the seed CNN is centred on input pixel 4i + 4.5 (3x3 valid conv, 2x2
    pool, twice), so the map is scaled 4x and shifted 3 px, not stretched to the border."""
    n = cam.shape[0]
    up = cv2.resize(cam, (4 * n, 4 * n), interpolation=cv2.INTER_LINEAR)
    pad_lo = 3
    pad_hi = max(0, size - 4 * n - pad_lo)
    out = cv2.copyMakeBorder(up, pad_lo, pad_hi, pad_lo, pad_hi, cv2.BORDER_REPLICATE)
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
