"""Flip test-time augmentation: the model sees the image and its mirror image, and the two
probabilities are averaged.

A chest X-ray's left-right mirror is still a chest X-ray (training flips them too), so the
two views disagree only where the model is unsure; the mean ranks images a little better
for twice the model time. The training side scores validation through these same two
functions and chooses a separate operating point for TTA (the manifest's `tta` section):
averaged probabilities are less extreme, so the plain threshold would not fit them.
"""

from __future__ import annotations

import numpy as np

NAME = "flip"
DESCRIPTION = "mean of the probabilities of the image and its left-right mirror"


def with_mirrors(batch: np.ndarray) -> np.ndarray:
    """(n, h, w, c) -> (2n, h, w, c): the batch, then each image mirrored left-right."""
    return np.concatenate([batch, batch[:, :, ::-1]])


def combine(probabilities: np.ndarray, n: int) -> np.ndarray:
    """The 2n probabilities of `with_mirrors(batch)` -> the n averaged ones."""
    p = np.asarray(probabilities, np.float32).reshape(-1)
    return 0.5 * (p[:n] + p[n : 2 * n])


def predict(predict_fn, batch: np.ndarray) -> np.ndarray:
    """Flip-TTA probabilities from any batch -> probabilities function (a backend's, Keras's)."""
    return combine(predict_fn(with_mirrors(batch)), len(batch))
