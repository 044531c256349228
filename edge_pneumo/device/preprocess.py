"""The one preprocessing: image file -> grey image -> model input.

Training, calibration, evaluation and the device runner all call `Preprocessing.load`,
so a model is never fed differently from how it was trained. The exported manifest
records `Preprocessing.to_dict()`; the runner rebuilds it with `from_dict`.

Only OpenCV and numpy here: this module runs on the device.
"""

from __future__ import annotations

import os
import threading
from dataclasses import asdict, dataclass, field

import cv2
import numpy as np

from edge_pneumo.decoders.decode import read_grey

_INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
_INTENSITIES = ("none", "equalize", "clahe")
CLAHE_CLIP, CLAHE_TILES = 2.0, 4  # on the 64 px image: 4x4 tiles of 16 px
# Images are small and decoded one per thread by our own pools: OpenCV's inner threads would
# only oversubscribe the cores (measured: 971 vs 798 images/s on 2 cores, bench/throughput_variants.py).
cv2.setNumThreads(1)
# The contract's stable id, written into every manifest since schema 1: it names the function, not
# its file, so it stays the same when the module moves (old manifests compare equal).
FUNCTION_ID = "edge_pneumo.preprocess.Preprocessing.load"


@dataclass(frozen=True)
class Preprocessing:
    """The input contract of a model, applied by `load` and `apply`.

    Grey is the content of a chest X-ray: colour input is converted to grey, then the
    grey plane is repeated into `channels` identical channels (the dataset's JPEGs are
    R = G = B). Pixels stay in 0..255 (uint8); the model scales them itself.
    """

    size: int = 64
    channels: int = 3
    interpolation: str = "area"
    intensity: str = "none"  # after the resize: "equalize" (global histogram) or "clahe" (local, clipped)
    dtype: str = "uint8"
    value_range: tuple[int, int] = (0, 255)
    color: str = "grey"
    sixteen_bit: str = "min-max stretch to 0..255"
    reduced_jpeg_decode: bool = True  # decode big JPEGs at 1/2, 1/4 or 1/8 scale
    notes: str = field(default="", compare=False)

    def __post_init__(self) -> None:
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"interpolation must be one of {sorted(_INTERPOLATIONS)}")
        if self.intensity not in _INTENSITIES:
            raise ValueError(f"intensity must be one of {_INTENSITIES}")
        if self.size < 8 or self.channels not in (1, 3) or self.dtype != "uint8":
            raise ValueError("unsupported size, channels or dtype")

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (self.size, self.size, self.channels)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["value_range"] = list(self.value_range)
        if self.intensity == "clahe":
            d["clahe"] = {"clip_limit": CLAHE_CLIP, "tile_grid": [CLAHE_TILES, CLAHE_TILES]}
        d["function"] = FUNCTION_ID
        return d

    @classmethod
    def from_dict(cls, d: dict) -> Preprocessing:
        recorded = d.get("clahe")
        if recorded is not None and recorded != {"clip_limit": CLAHE_CLIP, "tile_grid": [CLAHE_TILES, CLAHE_TILES]}:
            raise ValueError(
                f"CLAHE {recorded} differs from this version's (clip {CLAHE_CLIP}, {CLAHE_TILES}x{CLAHE_TILES} tiles)"
            )
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "value_range" in known:
            known["value_range"] = tuple(known["value_range"])
        return cls(**known)

    def apply(self, grey: np.ndarray) -> np.ndarray:
        """Grey uint8 image of any size -> model input (size, size, channels) uint8."""
        return self.finish(self.resize(grey))

    def resize(self, grey: np.ndarray) -> np.ndarray:
        """Step 1: grey image of any size -> grey (size, size), before any intensity change.

        The input guard looks at this image: CLAHE would stretch a blank page into texture."""
        return cv2.resize(grey, (self.size, self.size), interpolation=_INTERPOLATIONS[self.interpolation])

    def finish(self, x: np.ndarray) -> np.ndarray:
        """Step 2: resized grey -> model input: intensity normalisation, then the channels."""
        if self.intensity == "equalize":
            x = cv2.equalizeHist(x)
        elif self.intensity == "clahe":
            x = _clahe().apply(x)
        if self.channels == 3:
            return cv2.cvtColor(x, cv2.COLOR_GRAY2BGR)  # the grey plane 3 times; 3x faster than np.repeat
        return np.ascontiguousarray(x[:, :, None])

    @property
    def min_side_hint(self) -> int | None:
        """Big JPEGs may be decoded at a reduced scale that keeps at least this many pixels a side."""
        return 2 * self.size if self.reduced_jpeg_decode else None

    def load(self, path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
        """Read an image file and return (model input, warnings).

        Raises InputImageError, with the path in its message, when the file cannot be used.
        """
        image = read_grey(path, min_side_hint=self.min_side_hint)
        return self.apply(image.pixels), image.warnings


_LOCAL = threading.local()


def _clahe():
    """One CLAHE object per thread: cheaper than a new one per image, and not shared across threads."""
    clahe = getattr(_LOCAL, "clahe", None)
    if clahe is None:
        clahe = _LOCAL.clahe = cv2.createCLAHE(CLAHE_CLIP, (CLAHE_TILES, CLAHE_TILES))
    return clahe
