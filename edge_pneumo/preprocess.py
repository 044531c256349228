"""The one preprocessing: image file -> grey image -> model input.

Training, calibration, evaluation and the device runner all call `Preprocessing.load`,
so a model is never fed differently from how it was trained. The exported manifest
records `Preprocessing.to_dict()`; the runner rebuilds it with `from_dict`.

Only OpenCV and numpy here: this module runs on the device.
"""

from __future__ import annotations

import os
import threading
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import InputImageError

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})
MIN_SIDE = 16  # smaller than this is not an X-ray, whatever the header says
MAX_MISSING_FRACTION = 0.25  # a cut JPEG missing more than this is refused, not guessed at
_EOI = np.frombuffer(b"\xff\xd9", np.uint8)

_INTERPOLATIONS = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR}
_INTENSITIES = ("none", "equalize", "clahe")
CLAHE_CLIP, CLAHE_TILES = 2.0, 4  # on the 64 px image: 4x4 tiles of 16 px
# libjpeg writes "Corrupt JPEG data ..." straight to fd 2; we silence it per file, one at a time.
_STDERR_LOCK = threading.Lock()
# Images are small and decoded one per thread by our own pools: OpenCV's inner threads would
# only oversubscribe the cores (measured: 971 vs 798 images/s on 2 cores, bench/throughput_variants.py).
cv2.setNumThreads(1)


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
        d["function"] = "edge_pneumo.preprocess.Preprocessing.load"
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Preprocessing":
        recorded = d.get("clahe")
        if recorded is not None and recorded != {"clip_limit": CLAHE_CLIP, "tile_grid": [CLAHE_TILES, CLAHE_TILES]}:
            raise ValueError(f"CLAHE {recorded} differs from this version's (clip {CLAHE_CLIP}, {CLAHE_TILES}x{CLAHE_TILES} tiles)")
        known = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if "value_range" in known:
            known["value_range"] = tuple(known["value_range"])
        return cls(**known)

    def apply(self, grey: np.ndarray) -> np.ndarray:
        """Grey uint8 image of any size -> model input (size, size, channels) uint8."""
        x = cv2.resize(grey, (self.size, self.size), interpolation=_INTERPOLATIONS[self.interpolation])
        if self.intensity == "equalize":
            x = cv2.equalizeHist(x)
        elif self.intensity == "clahe":
            x = _clahe().apply(x)
        if self.channels == 3:
            return cv2.cvtColor(x, cv2.COLOR_GRAY2BGR)  # the grey plane 3 times; 3x faster than np.repeat
        return np.ascontiguousarray(x[:, :, None])

    def load(self, path: str | os.PathLike) -> tuple[np.ndarray, list[str]]:
        """Read an image file and return (model input, warnings).

        Raises InputImageError, with the path in its message, when the file cannot be used.
        """
        image = read_grey(path, min_side_hint=2 * self.size if self.reduced_jpeg_decode else None)
        return self.apply(image.pixels), image.warnings


_LOCAL = threading.local()


def _clahe():
    """One CLAHE object per thread: cheaper than a new one per image, and not shared across threads."""
    clahe = getattr(_LOCAL, "clahe", None)
    if clahe is None:
        clahe = _LOCAL.clahe = cv2.createCLAHE(CLAHE_CLIP, (CLAHE_TILES, CLAHE_TILES))
    return clahe


@dataclass
class GreyImage:
    pixels: np.ndarray  # 2-D uint8
    warnings: list[str]


def read_grey(path: str | os.PathLike, min_side_hint: int | None = None) -> GreyImage:
    """Decode any supported file to a 2-D uint8 grey image.

    `min_side_hint`: a JPEG whose smaller side is at least this many pixels after a
    1/2, 1/4 or 1/8 reduction is decoded at that reduced scale (much faster for
    full-resolution X-rays, and the resize to the model input averages anyway).
    """
    p = Path(path)
    suffix = p.suffix.lower()
    if not p.exists():
        raise InputImageError(f"{p}: no such file")
    if p.is_dir():
        raise InputImageError(f"{p}: is a directory, not an image (use --dir to classify a folder)")
    if suffix not in IMAGE_SUFFIXES:
        raise InputImageError(
            f"{p}: unsupported file type '{suffix or '(none)'}'; use one of {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    data = _read_bytes(p)
    warnings: list[str] = []
    if suffix == ".dcm" or _is_dicom(data):
        from .dicom import read_dicom_grey  # optional extra, imported only when needed

        pixels = read_dicom_grey(p)
    elif data[:3].tobytes() == b"\xff\xd8\xff":
        pixels = _decode_jpeg(p, data, min_side_hint, warnings)
    elif _looks_like_image(data):
        pixels = _decode_other(p, data)
    else:
        kind = "a text file" if _is_text(data) else "not an image"
        raise InputImageError(f"{p}: {kind}, although named {suffix}; expected a JPEG, PNG, BMP, TIFF or DICOM file")
    h, w = pixels.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputImageError(f"{p}: image is {w}x{h} px, too small to be an X-ray (need at least {MIN_SIDE} px a side)")
    return GreyImage(pixels, warnings)


def _read_bytes(p: Path) -> np.ndarray:
    try:
        data = np.fromfile(p, dtype=np.uint8)
    except FileNotFoundError:
        raise InputImageError(f"{p}: no such file") from None
    except PermissionError:
        raise InputImageError(f"{p}: permission denied") from None
    except OSError as e:
        raise InputImageError(f"{p}: cannot read ({e.strerror or e})") from None
    if data.size == 0:
        raise InputImageError(f"{p}: file is empty")
    return data


def _is_dicom(data: np.ndarray) -> bool:
    return data.size > 132 and data[128:132].tobytes() == b"DICM"


def _looks_like_image(data: np.ndarray) -> bool:
    head = data[:8].tobytes()
    return (
        head.startswith(b"\x89PNG")
        or head.startswith(b"BM")
        or head.startswith(b"II*\x00")
        or head.startswith(b"MM\x00*")
    )


def _is_text(data: np.ndarray) -> bool:
    head = data[:512].tobytes()
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def jpeg_size(data: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF marker, without decoding; None if not found."""
    b = data.tobytes() if data.size < 65536 else data[:65536].tobytes()
    i = 2
    while i + 9 < len(b):
        if b[i] != 0xFF:
            return None
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        seg_len = (b[i + 2] << 8) | b[i + 3]
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            h = (b[i + 5] << 8) | b[i + 6]
            w = (b[i + 7] << 8) | b[i + 8]
            return w, h
        i += 2 + seg_len
    return None


_REDUCED_GREY = ((8, cv2.IMREAD_REDUCED_GRAYSCALE_8), (4, cv2.IMREAD_REDUCED_GRAYSCALE_4), (2, cv2.IMREAD_REDUCED_GRAYSCALE_2))


def _decode_jpeg(p: Path, data: np.ndarray, min_side_hint: int | None, warnings: list[str]) -> np.ndarray:
    flag = cv2.IMREAD_GRAYSCALE
    if min_side_hint:
        size = jpeg_size(data)
        if size and min(size) > 0:
            for factor, reduced in _REDUCED_GREY:
                if min(size) // factor >= min_side_hint:
                    flag = reduced
                    break
    # A complete JPEG ends with the EOI marker (FF D9). Damaged originals often lose their last
    # bytes: OpenCV 5 then refuses the whole file, while libjpeg can still decode what is there
    # (the missing rows come out flat grey). Give it the marker back, keep libjpeg's
    # "Corrupt JPEG data" line off the terminal, and say it once, with how much is missing.
    tail = data[-64:].tobytes().rstrip(b"\x00\r\n ")
    if tail.endswith(b"\xff\xd9"):
        pixels = cv2.imdecode(data, flag)
        if pixels is None:
            raise InputImageError(f"{p}: corrupt JPEG that cannot be decoded")
        return pixels
    with silenced_stderr():
        pixels = cv2.imdecode(np.concatenate([data, _EOI]), flag)
    if pixels is None:
        raise InputImageError(f"{p}: JPEG cut short before its image data; it cannot be decoded")
    missing = missing_rows_fraction(pixels)
    if missing > MAX_MISSING_FRACTION:
        raise InputImageError(f"{p}: JPEG cut short, {missing:.0%} of the image is missing; too little to classify")
    warnings.append(f"damaged JPEG (premature end of data, {missing:.0%} of rows missing); classified from what could be decoded")
    return pixels


def missing_rows_fraction(pixels: np.ndarray) -> float:
    """Share of bottom rows that are libjpeg's flat mid-grey fill for data it never received."""
    flat = (pixels.min(axis=1) == pixels.max(axis=1)) & (np.abs(pixels[:, 0].astype(np.int16) - 128) <= 2)
    not_flat = np.flatnonzero(~flat)
    last_real = not_flat[-1] + 1 if len(not_flat) else 0
    return float((pixels.shape[0] - last_real) / pixels.shape[0])


def _decode_other(p: Path, data: np.ndarray) -> np.ndarray:
    with silenced_stderr():
        img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputImageError(f"{p}: corrupt image that cannot be decoded")
    return to_grey_uint8(img, str(p))


def to_grey_uint8(img: np.ndarray, name: str = "image") -> np.ndarray:
    """Any OpenCV image (grey/BGR/BGRA, 8/16-bit) -> 2-D uint8 grey."""
    if img.ndim == 3:
        if img.shape[2] == 4:
            img = cv2.cvtColor(img, cv2.COLOR_BGRA2GRAY)
        elif img.shape[2] == 3:
            img = cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
        elif img.shape[2] == 1:
            img = img[:, :, 0]
        else:
            raise InputImageError(f"{name}: unsupported number of channels ({img.shape[2]})")
    if img.dtype == np.uint8:
        return img
    if img.dtype in (np.uint16, np.int16, np.float32, np.float64):
        return stretch_to_uint8(img)
    raise InputImageError(f"{name}: unsupported pixel type {img.dtype}")


def stretch_to_uint8(img: np.ndarray) -> np.ndarray:
    """Linear min-max stretch to 0..255: 16-bit X-rays rarely use the full 16-bit range."""
    a = img.astype(np.float32)
    lo, hi = float(a.min()), float(a.max())
    if hi <= lo:
        return np.zeros(a.shape, np.uint8)
    return np.round((a - lo) * (255.0 / (hi - lo))).astype(np.uint8)


@contextmanager
def silenced_stderr():
    """Point fd 2 at /dev/null while a native decoder runs (only around single decodes)."""
    with _STDERR_LOCK:
        try:
            saved = os.dup(2)
        except OSError:  # no fd 2 at all
            yield
            return
        devnull = os.open(os.devnull, os.O_WRONLY)
        try:
            import sys

            sys.stderr.flush()
            os.dup2(devnull, 2)
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.close(devnull)
