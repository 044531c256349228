"""Acquisition shifts applied to raw images: a proxy for an unseen scanner batch, built from train/ only.

The patient-wise validation split comes from the same patients' population as train/, so every
candidate scores ~0.99 AUC on it and it cannot tell recipes or thresholds apart, while test/ is
harder. Not because it is another batch by name: its normals are the same two file families as
train/'s (`IM-*` 69, `NORMAL2-IM-*` 165), but other patients, the lowest-numbered of each
(IM patient ids 1-111 vs 115-766 in train/, NORMAL2 7-381 vs 383-1423), so possibly acquired
at another time. These shifts mimic what differs between acquisitions
(exposure curve, sharpness, noise, compression, field of view, aspect ratio). They are applied
to the raw image *before* the shared preprocessing, so the model's own intensity normalisation
sees them. Used to break threshold ties by robustness (`train --threshold-tiebreak shifts`)
and by experiments/select_recipe.py.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_pneumo.decoders.decode import read_grey
from edge_pneumo.device.preprocess import Preprocessing


def _gamma(g: float):
    lut = (255.0 * (np.arange(256) / 255.0) ** g).round().astype(np.uint8)
    return lambda img: cv2.LUT(img, lut)


def _contrast(f: float):
    return lambda img: np.clip((img.astype(np.float32) - img.mean()) * f + img.mean(), 0, 255).astype(np.uint8)


def _blur(sigma: float):
    return lambda img: cv2.GaussianBlur(img, (0, 0), sigma)


def _sharpen(amount: float):
    def f(img):
        soft = cv2.GaussianBlur(img, (0, 0), 2.0).astype(np.float32)
        return np.clip(img + amount * (img - soft), 0, 255).astype(np.uint8)

    return f


def _noise(std: float, seed: int = 0):
    def f(img):
        rng = np.random.default_rng(seed + int(img.sum()) % 100003)
        return np.clip(img + rng.normal(0, std, img.shape), 0, 255).astype(np.uint8)

    return f


def _jpeg(quality: int):
    def f(img):
        _, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, quality])
        return cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE)

    return f


def _crop(keep: float):
    def f(img):
        h, w = img.shape
        dy, dx = int(h * (1 - keep) / 2), int(w * (1 - keep) / 2)
        return img[dy : h - dy, dx : w - dx]

    return f


def _pad(fraction: float):
    def f(img):
        h, w = img.shape
        py, px = int(h * fraction), int(w * fraction)
        return cv2.copyMakeBorder(img, py, py, px, px, cv2.BORDER_CONSTANT, value=0)

    return f


def _width(factor: float):
    """Anatomy wider (crop back to the frame) or narrower (black bars): another original aspect ratio."""

    def f(img):
        h, w = img.shape
        nw = round(w * factor)
        r = cv2.resize(img, (nw, h), interpolation=cv2.INTER_AREA if factor < 1 else cv2.INTER_LINEAR)
        if nw >= w:
            return r[:, (nw - w) // 2 : (nw - w) // 2 + w]
        left = (w - nw) // 2
        return cv2.copyMakeBorder(r, 0, 0, left, w - nw - left, cv2.BORDER_CONSTANT, value=0)

    return f


SHIFTS = {
    "gamma0.7": _gamma(0.7),
    "gamma1.4": _gamma(1.4),
    "contrast0.7": _contrast(0.7),
    "blur2": _blur(2.0),
    "sharpen1": _sharpen(1.0),
    "noise8": _noise(8.0),
    "jpeg20": _jpeg(20),
    "crop85": _crop(0.85),
    "pad8": _pad(0.08),
    "wider1.2": _width(1.2),
    "narrower0.83": _width(0.83),
}


def shifted_sets(paths: list[str], pp: Preprocessing) -> dict[str, np.ndarray]:
    """{shift name: model inputs (n, size, size, channels) uint8} for the given images."""
    raw = [read_grey(p).pixels for p in paths]
    return {name: np.stack([pp.apply(f(img)) for img in raw]) for name, f in SHIFTS.items()}
