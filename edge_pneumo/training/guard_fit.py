"""Fit the input guard's limits on training images, at export (see `edge_pneumo.device.guard`).

Every limit comes from training images, by a rule written into the manifest next to it:
- pixel limits from all of train/: colour, contrast (blank pages) and texture (noise);
- the layout model (principal components of 16x16 thumbnails) and the feature statistics
  (mean and covariance of each artifact's features, Dense(128) for the seed) are fitted on the `fit`
  part of `data.selection_split`, and their thresholds set on the held-out `selection` part:
  `warn` at its 99th percentile, `refuse` at 1.5 x its 99.5th percentile.
The only limit set by hand is the aspect ratio: the dataset's copies were all squashed to
squares, so they say nothing about it.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from edge_pneumo.decoders.decode import read_grey
from edge_pneumo.device.guard import contrast, feature_distance, layout_residual, layout_vector, rules_as_data, texture
from edge_pneumo.device.preprocess import Preprocessing
from edge_pneumo.lab.dataset import Sample

LAYOUT_COMPONENTS = 8
COLOUR_FLOOR = 8.0  # chroma noise of a grey image saved as a colour JPEG, in 0..255 units
ASPECT_RANGE = (0.4, 2.5)  # width/height; chest X-ray detectors are 0.8-1.25, film scans a little more
MARGINS = {"contrast": 0.5, "texture": 1.25, "smoothness": 0.5}
# Layout and features: refuse above REFUSE_MARGIN x the REFUSE_QUANTILE of held-out training images,
# warn above their WARN_QUANTILE. A quantile, not the maximum: a handful of real but oddly framed
# training X-rays (black borders, the child small in the frame) would otherwise set the limit.
REFUSE_QUANTILE, REFUSE_MARGIN, WARN_QUANTILE = 99.5, 1.5, 99.0
FEATURE_SHRINKAGE = 0.01  # covariance shrinkage toward its mean eigenvalue (128 dims, a few thousand images)


@dataclass
class PixelStats:
    colour: np.ndarray
    contrast: np.ndarray
    texture: np.ndarray
    layout: np.ndarray  # (n, 256) layout vectors


def pixel_stats(samples: Sequence[Sample], pre: Preprocessing, threads: int = 2) -> PixelStats:
    def one(s: Sample):
        image = read_grey(s.path, pre.min_side_hint)
        small = pre.resize(image.pixels)
        return image.colour, contrast(small), texture(small), layout_vector(small)

    with ThreadPoolExecutor(max(1, threads)) as pool:
        rows = list(pool.map(one, samples, chunksize=32))
    return PixelStats(
        np.array([r[0] for r in rows]),
        np.array([r[1] for r in rows]),
        np.array([r[2] for r in rows]),
        np.stack([r[3] for r in rows]),
    )


def _threshold(held_out: np.ndarray) -> dict:
    return {
        "refuse": round(float(np.percentile(held_out, REFUSE_QUANTILE) * REFUSE_MARGIN), 4),
        "warn": round(float(np.percentile(held_out, WARN_QUANTILE)), 4),
        "held_out_max": round(float(held_out.max()), 4),
    }


_LIMIT_RULE = (
    f"warn above the {WARN_QUANTILE:g}th percentile and refuse above {REFUSE_MARGIN:g} x the "
    f"{REFUSE_QUANTILE:g}th percentile of"
)


def fit_pixel_guard(all_train: PixelStats, fit_part: np.ndarray) -> tuple[dict, dict]:
    """(manifest section, arrays) for the pixel checks and the layout model.

    `fit_part`: boolean mask over all_train rows, True for the images the layout model is fitted on."""
    lay_fit, lay_held = all_train.layout[fit_part], all_train.layout[~fit_part]
    mean = lay_fit.mean(axis=0)
    _, _, vt = np.linalg.svd(lay_fit - mean, full_matrices=False)
    basis = vt[:LAYOUT_COMPONENTS].astype(np.float32)
    held = layout_residual(lay_held, mean, basis)
    section = {
        "rules": rules_as_data(),
        "pixels": {
            "max_colour": round(float(2 * all_train.colour.max() + COLOUR_FLOOR), 3),
            "min_contrast": round(float(all_train.contrast.min() * MARGINS["contrast"]), 3),
            "max_texture": round(float(all_train.texture.max() * MARGINS["texture"]), 4),
            "min_texture": round(float(all_train.texture.min() * MARGINS["smoothness"]), 5),
            "aspect": list(ASPECT_RANGE),
            "rule": (
                f"colour: 2 x the training maximum + {COLOUR_FLOOR}; contrast: {MARGINS['contrast']} x the training "
                f"minimum; texture: {MARGINS['texture']} x the training maximum and {MARGINS['smoothness']} x the "
                f"minimum (all {len(all_train.colour)} train/ "
                "images); aspect: set by hand, the dataset's copies are all square"
            ),
            "train_range": {
                "colour": [float(all_train.colour.min()), float(all_train.colour.max())],
                "contrast": [float(all_train.contrast.min()), float(all_train.contrast.max())],
                "texture": [float(all_train.texture.min()), float(all_train.texture.max())],
            },
        },
        "layout": {
            "size": int(round(np.sqrt(lay_fit.shape[1]))),
            "components": LAYOUT_COMPONENTS,
            **_threshold(held),
            "rule": f"principal components of {len(lay_fit)} fit images; {_LIMIT_RULE} {len(held)} held-out images",
        },
        "features": {},
    }
    return section, {"layout/mean": mean.astype(np.float32), "layout/basis": basis}


def fit_feature_guard(features: np.ndarray, fit_part: np.ndarray) -> tuple[dict, dict]:
    """(limits, arrays) of the Mahalanobis check for one artifact's features (any width)."""
    f_fit, f_held = features[fit_part].astype(np.float64), features[~fit_part]
    mean = f_fit.mean(axis=0)
    cov = np.cov(f_fit, rowvar=False)
    cov = (1 - FEATURE_SHRINKAGE) * cov + FEATURE_SHRINKAGE * np.trace(cov) / len(cov) * np.eye(len(cov))
    evals, evecs = np.linalg.eigh(cov)
    whitening = (evecs / np.sqrt(np.maximum(evals, 1e-12))).T  # W^T W = cov^-1
    d = feature_distance(f_held, mean.astype(np.float32), whitening.astype(np.float32))
    limits = {
        **_threshold(d),
        "rule": (
            f"Mahalanobis distance (shrinkage {FEATURE_SHRINKAGE}) from {len(f_fit)} fit images; {_LIMIT_RULE} "
            f"{len(d)} held-out images"
        ),
    }
    return limits, {"feature_mean": mean.astype(np.float32), "feature_whitening": whitening.astype(np.float32)}
