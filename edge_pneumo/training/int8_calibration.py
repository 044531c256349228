"""Calibration images for int8 quantization, through one small interface.

`CalibrationImages` yields preprocessed uint8 images one at a time; it feeds both
TFLite's `representative_dataset` and onnxruntime's `CalibrationDataReader`.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from edge_pneumo.errors import DatasetError

MIN_CALIBRATION_IMAGES = 32


class CalibrationImages:
    """A fixed, ordered set of preprocessed images (n, size, size, channels) uint8."""

    def __init__(self, images: np.ndarray, minimum: int = MIN_CALIBRATION_IMAGES):
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError("calibration images must be a uint8 batch (n, h, w, c)")
        if len(images) < minimum:
            raise DatasetError(f"only {len(images)} calibration images; int8 quantization needs at least {minimum}")
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[np.ndarray]:
        for img in self.images:
            yield img[None].astype(np.float32)

    def representative_dataset(self):
        """For `TFLiteConverter.representative_dataset` (a callable returning an iterator of input lists)."""
        return lambda: ([x] for x in self)

    def onnx_reader(self, input_name: str):
        """An onnxruntime `CalibrationDataReader` over the same images."""
        from onnxruntime.quantization import CalibrationDataReader

        images = self

        class _Reader(CalibrationDataReader):
            def __init__(self):
                self._it = iter(images)

            def get_next(self):
                x = next(self._it, None)
                return None if x is None else {input_name: x}

            def rewind(self):
                self._it = iter(images)

        return _Reader()
