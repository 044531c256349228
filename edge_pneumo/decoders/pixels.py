"""What every decoder returns (`GreyImage`) and the pixel conversions they share: any image
array -> 2-D uint8 grey, and how colourful it was. Only numpy and OpenCV; nothing here knows
about files or formats, and it imports no other module of the package but its errors.
"""

from __future__ import annotations

import cv2
import numpy as np

from edge_pneumo.errors import InputImageError


class GreyImage:
    """A decoded image: 2-D uint8 `pixels`, per-file `warnings`, how colourful it was before it
    became grey, the file's (width, height) before any reduced decoding, its format, and the
    DICOM header fields the guard looked at (or None)."""

    __slots__ = ("pixels", "warnings", "colour", "size", "format", "dicom")

    def __init__(
        self,
        pixels: np.ndarray,
        warnings: list[str],
        colour: float = 0.0,
        size: tuple[int, int] = (0, 0),
        format: str = "",
        dicom: dict | None = None,
    ):
        self.pixels, self.warnings, self.colour, self.size, self.format, self.dicom = (
            pixels,
            warnings,
            colour,
            size,
            format,
            dicom,
        )


def to_grey_uint8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Any OpenCV image (grey/BGR/BGRA, 8/16-bit, integer or float) -> 2-D uint8 grey."""
    if img.ndim == 3:
        if img.shape[2] == 1:
            img = img[:, :, 0]
        elif img.shape[2] in (3, 4):
            if img.dtype not in (np.uint8, np.uint16, np.float32):
                img = _to_unit_float32(img)  # float64 or int32 may not fit float32's range: scale first
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY)
        else:
            raise InputImageError(f"{name}: unsupported number of channels ({img.shape[2]})")
    elif img.ndim != 2:
        raise InputImageError(f"{name}: unsupported image shape {img.shape} (a volume or several frames?)")
    if img.dtype == np.uint8:
        return img
    if img.dtype.kind in "uif" and img.dtype != np.bool_:
        return stretch_to_uint8(img)
    raise InputImageError(f"{name}: unsupported pixel type {img.dtype}")


def _to_unit_float32(img: np.ndarray) -> np.ndarray:
    """Any numeric array -> float32 in 0..1, non-finite values as 0 (no overflow, no warnings)."""
    a = np.nan_to_num(np.asarray(img, np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(a.min()), float(a.max())
    return ((a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)).astype(np.float32)


def stretch_to_uint8(img: np.ndarray) -> np.ndarray:
    """Linear min-max stretch to 0..255: 16-bit X-rays rarely use the full 16-bit range."""
    a = img.astype(np.float32)
    finite = np.isfinite(a)
    if not finite.all():
        a = np.where(finite, a, 0.0)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


_EXACT_U8_PIXELS = (1 << 24) // 255  # float32 sums of 0..255 values are exact up to this many


def colourfulness(img: np.ndarray) -> float:
    """How far an image is from grey: the mean of max |channel difference| per pixel, in 0..255 units
    (a small coloured marker on a grey X-ray hardly moves it; a photograph does).

    Channel differences, not channel count: the dataset's JPEGs have three channels that are
    equal (R = G = B), while a photograph's differ. Measured on a thumbnail (cheap).
    """
    if img.ndim != 3 or img.shape[2] < 3:
        return 0.0
    small = img[:, :, :3]
    h, w = small.shape[:2]
    step = max(1, min(h, w) // 64)
    small = small[::step, ::step]
    if small.dtype == np.uint8 and small.shape[0] * small.shape[1] <= _EXACT_U8_PIXELS:
        small = np.ascontiguousarray(small)
        raw = small.tobytes()
        if raw[0::3] == raw[1::3] == raw[2::3]:  # grey (an X-ray saved as colour): every difference is 0
            return 0.0
        # Integer channel differences in C (OpenCV), summed exactly: the very value the float32
        # lines below give (their sum is exact below 2^24), without six numpy passes.
        b, g, r = cv2.split(small)
        diff = cv2.max(cv2.max(cv2.absdiff(b, g), cv2.absdiff(g, r)), cv2.absdiff(b, r))
        return float(np.float32(int(np.add.reduce(diff, axis=None, dtype=np.int64)) / diff.size))
    if small.dtype == np.uint8:
        small = small.astype(np.float32)
    elif small.dtype == np.uint16:
        small = small.astype(np.float32) / 257.0
    else:
        small = 255.0 * _to_unit_float32(small)
    b, g, r = small[..., 0], small[..., 1], small[..., 2]
    diff = np.maximum(np.maximum(np.abs(b - g), np.abs(g - r)), np.abs(b - r))
    return float(diff.mean())
