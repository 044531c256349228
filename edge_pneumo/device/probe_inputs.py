"""The fixed synthetic inputs every artifact is checked on, at export and on the device (`verify`).

numpy only, so the same bytes come out on every platform.
"""

from __future__ import annotations

import numpy as np

from edge_pneumo.device.preprocess import Preprocessing

VERIFY_SEED = 20181
VERIFY_IMAGES = 24


def verify_inputs(pre: Preprocessing, n: int = VERIFY_IMAGES, seed: int = VERIFY_SEED) -> np.ndarray:
    """Deterministic X-ray-like inputs: smooth random fields (numpy only, same bytes on every platform).

    Blocks of seeded noise, upsampled and box-blurred in float64, then the shared
    preprocessing: the inputs exercise the whole range of pixel values.
    """
    rng = np.random.default_rng(seed)
    s = pre.size
    out = []
    for i in range(n):
        coarse = rng.random((8, 8))
        field = np.kron(coarse, np.ones((s // 8, s // 8)))
        k = np.ones(5) / 5
        field = np.apply_along_axis(lambda r: np.convolve(r, k, mode="same"), 1, field)
        field = np.apply_along_axis(lambda c: np.convolve(c, k, mode="same"), 0, field)
        lo, hi = field.min(), field.max()
        grey = np.round(255 * (field - lo) / (hi - lo + 1e-12) * (0.4 + 0.6 * (i % 4) / 3)).astype(np.uint8)
        out.append(pre.apply(grey))
    return np.stack(out)
