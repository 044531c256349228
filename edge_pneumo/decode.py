"""Image files -> grey pixels, with every decoder complaint attached to its own file.

JPEG goes through simplejpeg (libjpeg-turbo's TurboJPEG API), which reports libjpeg's
"Corrupt JPEG data: ..." warnings as data instead of printing them: a damaged file gets a
named warning in its own result and nothing reaches the terminal. It gives the same pixels
as OpenCV's decoder (same libjpeg-turbo grey output, same 1/2, 1/4, 1/8 scaled decoding).
PNG, BMP and TIFF go through OpenCV with fd 2 captured (`native_output.capture`), as does a
JPEG that simplejpeg refuses. DICOM is read by `dicom.py` (the `dicom` extra).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .errors import InputImageError
from .native_output import capture
from .pixels import colourfulness, to_grey_uint8

JPEG_SUFFIXES = frozenset({".jpg", ".jpeg"})
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})
MIN_SIDE = 16  # smaller than this is not an X-ray, whatever the header says
MAX_MISSING_FRACTION = 0.25  # a cut JPEG missing more than this is refused, not guessed at
_EOI = b"\xff\xd9"
_REDUCED = (8, 4, 2)


@dataclass
class GreyImage:
    pixels: np.ndarray  # 2-D uint8
    warnings: list[str]
    colour: float = 0.0  # pixels.colourfulness of the decoded image before it became grey
    size: tuple[int, int] = (0, 0)  # (width, height) of the file's image, before any reduced decoding
    format: str = ""
    dicom: dict | None = field(default=None)  # header fields the guard looked at


def read_grey(path: str | os.PathLike, min_side_hint: int | None = None, dicom_check=None) -> GreyImage:
    """Decode any supported file to a 2-D uint8 grey image.

    `min_side_hint`: a JPEG whose smaller side is at least this many pixels after a 1/2, 1/4
    or 1/8 reduction is decoded at that reduced scale (much faster for full-resolution X-rays;
    the resize to the model input averages anyway). `dicom_check(header) -> reason | None`
    runs on a DICOM's header before its pixels are decoded (the guard's rule table).
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
    return decode_bytes(read_bytes(p), str(p), min_side_hint, dicom_check)


def decode_bytes(data: bytes, name: str, min_side_hint: int | None = None, dicom_check=None) -> GreyImage:
    """The same as `read_grey` for bytes already in memory (an upload, a DICOM C-STORE)."""
    if not data:
        raise InputImageError(f"{name}: file is empty")
    if name.lower().endswith(".dcm") or is_dicom(data):
        from .dicom import read_dicom  # optional extra, imported only when needed

        image = read_dicom(data, name, dicom_check, min_side_hint)
    elif data[:3] == b"\xff\xd8\xff":
        image = _decode_jpeg(name, data, min_side_hint)
    elif _looks_like_image(data):
        image = _decode_other(name, data)
    else:
        kind = "a text file" if _is_text(data) else "not an image"
        named = f", although named {Path(name).suffix}" if Path(name).suffix else ""
        raise InputImageError(f"{name}: {kind}{named}; expected a JPEG, PNG, BMP, TIFF or DICOM file")
    h, w = image.pixels.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputImageError(f"{name}: image is {w}x{h} px, too small to be an X-ray (need at least {MIN_SIDE} px a side)")
    return image


def read_bytes(p: Path) -> bytes:
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise InputImageError(f"{p}: no such file") from None
    except PermissionError:
        raise InputImageError(f"{p}: permission denied") from None
    except OSError as e:
        raise InputImageError(f"{p}: cannot read ({e.strerror or e})") from None
    if not data:
        raise InputImageError(f"{p}: file is empty")
    return data


def is_dicom(data: bytes) -> bool:
    return len(data) > 132 and data[128:132] == b"DICM"


def _looks_like_image(data: bytes) -> bool:
    head = data[:8]
    return head.startswith((b"\x89PNG", b"BM", b"II*\x00", b"MM\x00*"))


def _is_text(data: bytes) -> bool:
    try:
        data[:512].decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def jpeg_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's SOF marker, without decoding; None if not found."""
    b = bytes(data[:65536])
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


def reduction_factor(size: tuple[int, int] | None, min_side_hint: int | None) -> int:
    """The largest of 8, 4, 2 that keeps the smaller side >= min_side_hint (1: decode fully)."""
    if not min_side_hint or not size or min(size) <= 0:
        return 1
    for factor in _REDUCED:
        if min(size) // factor >= min_side_hint:
            return factor
    return 1


def _decode_jpeg(name: str, data: bytes, min_side_hint: int | None) -> GreyImage:
    import simplejpeg

    warnings: list[str] = []
    try:
        h, w, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return _decode_jpeg_opencv(name, data, min_side_hint)
    factor = reduction_factor((w, h), min_side_hint)
    scale = dict(min_factor=factor, min_height=math.ceil(h / factor), min_width=math.ceil(w / factor))
    complete = data.rstrip(b"\x00\r\n ").endswith(_EOI)
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY", **scale)
    except ValueError as e:  # libjpeg's warning or error, as text: decode leniently, say what it was
        try:
            pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=False, **scale)
        except ValueError:
            return _decode_jpeg_opencv(name, data, min_side_hint)
        if complete:
            warnings.append(f"damaged JPEG ({_libjpeg_message(e)}); classified from what decoded")
    pixels = pixels[:, :, 0]
    if not complete:
        # A damaged original that lost its end: libjpeg decodes what is there and fills the
        # rest with flat grey. Say how much is missing; refuse when it is too much to classify.
        missing = missing_rows_fraction(pixels)
        if missing > MAX_MISSING_FRACTION:
            raise InputImageError(f"{name}: JPEG cut short, {missing:.0%} of the image is missing; too little to classify")
        warnings.append(f"damaged JPEG (premature end of data, {missing:.0%} of rows missing); classified from what could be decoded")
    colour = 0.0
    if colourspace not in ("Gray", "GRAY"):
        try:  # a thumbnail in colour, for the guard: a photo has channel differences, a grey X-ray none
            colour = colourfulness(simplejpeg.decode_jpeg(data, colorspace="BGR", strict=False, min_factor=8,
                                                          min_height=math.ceil(h / 8), min_width=math.ceil(w / 8)))
        except ValueError:
            colour = 0.0
    return GreyImage(np.ascontiguousarray(pixels), warnings, colour, (w, h), "jpeg")


def _libjpeg_message(e: Exception) -> str:
    text = str(e).strip()
    half = len(text) // 2  # TurboJPEG sometimes repeats the message twice in a row
    if half and text[:half] == text[half:]:
        text = text[:half]
    return text.rstrip(".")


def _decode_jpeg_opencv(name: str, data: bytes, min_side_hint: int | None) -> GreyImage:
    """JPEGs simplejpeg refuses (garbage inside the header, exotic variants): OpenCV, with
    libjpeg's messages captured and attached to this file."""
    size = jpeg_size(data)
    factor = reduction_factor(size, min_side_hint)
    flag = {1: cv2.IMREAD_GRAYSCALE, 2: cv2.IMREAD_REDUCED_GRAYSCALE_2, 4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
            8: cv2.IMREAD_REDUCED_GRAYSCALE_8}[factor]
    buf = np.frombuffer(data if data.rstrip(b"\x00\r\n ").endswith(_EOI) else data + _EOI, np.uint8)
    with capture() as said:
        try:
            pixels = cv2.imdecode(buf, flag)
        except cv2.error:
            pixels = None
    if pixels is None:
        raise InputImageError(f"{name}: corrupt JPEG that cannot be decoded" + (f" ({said.lines[0]})" if said.lines else ""))
    warnings = [f"damaged JPEG ({line}); classified from what decoded" for line in said.lines[:3]]
    w, h = size or (pixels.shape[1], pixels.shape[0])
    return GreyImage(pixels, warnings, 0.0, (w, h), "jpeg")


def missing_rows_fraction(pixels: np.ndarray) -> float:
    """Share of bottom rows that are libjpeg's flat mid-grey fill for data it never received."""
    flat = (pixels.min(axis=1) == pixels.max(axis=1)) & (np.abs(pixels[:, 0].astype(np.int16) - 128) <= 2)
    not_flat = np.flatnonzero(~flat)
    last_real = not_flat[-1] + 1 if len(not_flat) else 0
    return float((pixels.shape[0] - last_real) / pixels.shape[0])


def _decode_other(name: str, data: bytes) -> GreyImage:
    with capture() as said:
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            img = None
    if img is None:
        raise InputImageError(f"{name}: corrupt image that cannot be decoded" + (f" ({said.lines[0]})" if said.lines else ""))
    warnings = [f"decoder: {line}" for line in said.lines[:3]]
    fmt = "png" if data[:4] == b"\x89PNG" else "bmp" if data[:2] == b"BM" else "tiff"
    try:
        grey = to_grey_uint8(img, name)
    except cv2.error as e:
        raise InputImageError(f"{name}: cannot convert this {fmt} to grey ({str(e).strip().splitlines()[-1][:80]})") from None
    return GreyImage(grey, warnings, colourfulness(img), (img.shape[1], img.shape[0]), fmt)
