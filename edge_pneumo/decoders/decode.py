"""Image files -> grey pixels, with every decoder complaint attached to its own file.

The format is told from the bytes, not the name. JPEG: `jpeg.py` (simplejpeg, damage reported
as data). PNG, BMP and TIFF: OpenCV with fd 2 captured (`native_output.capture`), so a libpng
or libtiff complaint becomes this file's warning. DICOM: `dicom.py` (the `dicom` extra).
Every path reads the size its header announces and checks it against the pixel budget
(`limits.py`) before it decodes a pixel.
"""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np

from edge_pneumo.decoders import limits
from edge_pneumo.decoders.jpeg import decode_jpeg, jpeg_size  # noqa: F401  (jpeg_size: re-exported)
from edge_pneumo.decoders.pixels import GreyImage, colourfulness, to_grey_uint8
from edge_pneumo.decoders.stderr_capture import capture
from edge_pneumo.errors import InputImageError

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".dcm"})
_IS_DIR = "{}: is a directory, not an image (use --dir to classify a folder)"
MIN_SIDE = 16  # smaller than this is not an X-ray, whatever the header says


def read_grey(path: str | os.PathLike, min_side_hint: int | None = None, dicom_check=None) -> GreyImage:
    """Decode any supported file to a 2-D uint8 grey image.

    `min_side_hint`: a JPEG whose smaller side is at least this many pixels after a 1/2, 1/4
    or 1/8 reduction is decoded at that reduced scale (much faster for full-resolution X-rays;
    the resize to the model input averages anyway). `dicom_check(header) -> reason | None`
    runs on a DICOM's header before its pixels are decoded (the guard's rule table).
    """
    name = path_name(path)
    suffix = _suffix(name)
    # Opening the file answers "is it there, is it a folder": no stat calls before it (two per
    # image in a folder run). The same messages, in the same order, as checking first.
    if suffix not in IMAGE_SUFFIXES:
        p = Path(name)
        if not p.exists():
            raise InputImageError(f"{p}: no such file")
        if p.is_dir():
            raise InputImageError(_IS_DIR.format(p))
        raise InputImageError(
            f"{p}: unsupported file type '{suffix or '(none)'}'; use one of {', '.join(sorted(IMAGE_SUFFIXES))}"
        )
    return decode_bytes(read_bytes(name), name, min_side_hint, dicom_check)


def path_name(path: str | os.PathLike) -> str:
    """`str(Path(path))`, the name every message uses, without building a Path for a string that is
    already in that form (a folder run's paths: ~15 us an image)."""
    if (
        os.sep == "/"
        and type(path) is str
        and path not in ("", ".")
        and "//" not in path
        and "/./" not in path
        and not path.startswith("./")
        and not path.endswith(("/", "/."))
    ):
        return path
    return str(Path(path))


def _suffix(name: str) -> str:
    """`Path(name).suffix.lower()` for a name from `path_name`."""
    base = name.rpartition("/")[2]
    i = base.rfind(".")
    return base[i:].lower() if 0 < i < len(base) - 1 else ""


def decode_bytes(data: bytes, name: str, min_side_hint: int | None = None, dicom_check=None) -> GreyImage:
    """The same as `read_grey` for bytes already in memory (an upload, a DICOM C-STORE)."""
    if not data:
        raise InputImageError(f"{name}: file is empty")
    if name.lower().endswith(".dcm") or is_dicom(data):
        from edge_pneumo.decoders.dicom import read_dicom  # optional extra, imported only when needed

        image = read_dicom(data, name, dicom_check, min_side_hint)
    elif data[:3] == b"\xff\xd8\xff":
        image = decode_jpeg(name, data, min_side_hint)
    elif _looks_like_image(data):
        image = _decode_other(name, data)
    else:
        kind = "a text file" if _is_text(data) else "not an image"
        named = f", although named {Path(name).suffix}" if Path(name).suffix else ""
        raise InputImageError(f"{name}: {kind}{named}; expected a JPEG, PNG, BMP, TIFF or DICOM file")
    h, w = image.pixels.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise InputImageError(
            f"{name}: image is {w}x{h} px, too small to be an X-ray (need at least {MIN_SIDE} px a side)"
        )
    return image


def read_bytes(p: str | os.PathLike) -> bytes:
    try:
        with open(p, "rb", buffering=0) as f:  # one read of the whole file: no buffer object (~2 us)
            data = f.read()
    except FileNotFoundError:
        raise InputImageError(f"{p}: no such file") from None
    except IsADirectoryError:
        raise InputImageError(_IS_DIR.format(p)) from None
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


def _check_png_chunks(name: str, data: bytes) -> None:
    """Every PNG chunk must fit in the file. OpenCV 5 allocates a chunk's declared length before
    reading it: fuzzing found a 5.9 kB PNG whose IDAT claims 4 GB (4 GB of RSS, 16-38 s). A
    chunk that runs past the end never decodes anyway: the file was cut short (or forged)."""
    i = 8
    while i + 8 <= len(data):
        length = int.from_bytes(data[i : i + 4], "big")
        kind = data[i + 4 : i + 8]
        if i + 12 + length > len(data):
            raise InputImageError(
                f"{name}: PNG cut short (or forged): its {kind.decode('latin-1')!r} chunk claims {length:,} bytes, "
                f"only {max(len(data) - i - 12, 0):,} follow"
            )
        if kind == b"IEND":
            return
        i += 12 + length


def _decode_other(name: str, data: bytes) -> GreyImage:
    fmt = "png" if data[:4] == b"\x89PNG" else "bmp" if data[:2] == b"BM" else "tiff"
    size = limits.header_size(data)
    if size is None:
        # Refused, not decoded under a cap: OpenCV's own cap (OPENCV_IO_MAX_IMAGE_PIXELS, 1 GP) is read
        # once per process and is far above the budget, and a header that imagesize cannot read
        # is one libpng/libtiff would not trust either.
        raise InputImageError(f"{name}: corrupt image that cannot be decoded (no size in its {fmt.upper()} header)")
    limits.check(name, fmt.upper(), *size)
    if fmt == "png":
        _check_png_chunks(name, data)
    with capture() as said:
        try:
            img = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_UNCHANGED)
        except cv2.error:
            img = None
    if img is None:
        raise InputImageError(
            f"{name}: corrupt image that cannot be decoded" + (f" ({said.lines[0]})" if said.lines else "")
        )
    warnings = [f"decoder: {line}" for line in said.lines[:3]]
    try:
        grey = to_grey_uint8(img, name)
    except cv2.error as e:
        raise InputImageError(
            f"{name}: cannot convert this {fmt} to grey ({str(e).strip().splitlines()[-1][:80]})"
        ) from None
    return GreyImage(grey, warnings, colourfulness(img), (img.shape[1], img.shape[0]), fmt)
