"""The pixel budget: how many pixels a file may announce in its header before any is decoded.

A 0.88 MB PNG can announce 30000 x 30000 px; decoding it costs 1.8 GB and seconds of CPU (a
decompression bomb). Every decoder reads the size from the header first (JPEG: the SOF, via
simplejpeg; PNG's IHDR and BMP's info header at their fixed offsets, else `imagesize`, which also
reads TIFF; DICOM: Rows x Columns x NumberOfFrames) and calls
`check` before it decodes a pixel.

One source for the limit, process-wide: `EDGE_PNEUMO_MAX_PIXELS` (whole pixels), else
`DEFAULT_MAX_PIXELS`. It is an environment variable, not a parameter, so every decode path
(a file, an upload, a C-STORE, a heatmap's re-decode, a Dask worker or other child process
started later) sees the same value without threading it through every call; the front ends'
`--max-pixels` calls `set_max_pixels`, which sets it for this process and its children.

The decode time limit (`decode_timeout`): a decoder that can loop forever on a damaged frame
(JPEG-LS: both CharLS and libjpeg) runs in a child process that is killed past this limit
(`isolated.py`). Its base, `EDGE_PNEUMO_DECODE_TIMEOUT_S` or `DEFAULT_DECODE_TIMEOUT_S`, is the
same kind of process-wide setting as the budget, plus an allowance per megapixel announced, so
that a real full-size film still decodes on a slow device.
"""

from __future__ import annotations

import io
import math
import os
import re

from edge_pneumo.errors import EdgePneumoError, InputImageError

DEFAULT_MAX_PIXELS = 60_000_000  # a 7,745 px square film; the largest real chest detectors are ~ 4,300 x 4,300
ENV = "EDGE_PNEUMO_MAX_PIXELS"
_MARK = "refused before decoding"  # in every ImageTooLarge message
DEFAULT_DECODE_TIMEOUT_S = 2.0
# CharLS decodes 18.5 MP of 12-bit JPEG-LS in 0.85 s on this shared x86 core (0.05 s/MP); a Raspberry
# Pi 4 is likely several times slower (not measured). 0.25 s/MP leaves ~5x of headroom here: a 4,300 px
# film gets 6.6 s, the budget's 60 MP 17 s, a fuzzed 500-pixel frame the base 2 s.
DECODE_S_PER_MP = 0.25
TIMEOUT_ENV = "EDGE_PNEUMO_DECODE_TIMEOUT_S"


class ImageTooLarge(InputImageError):
    """The header announces more pixels than the budget: refused before any pixel is decoded."""


def max_pixels() -> int:
    """The budget in force: $EDGE_PNEUMO_MAX_PIXELS, else the default."""
    raw = os.environ.get(ENV, "").strip().replace("_", "")
    if not raw:
        return DEFAULT_MAX_PIXELS
    try:
        value = int(raw)
    except ValueError:
        raise EdgePneumoError(f"{ENV}={raw!r}: not a whole number of pixels (e.g. {DEFAULT_MAX_PIXELS})") from None
    if value < 1:
        raise EdgePneumoError(f"{ENV}={raw!r}: the pixel budget must be at least 1")
    return value


def decode_timeout(pixels: int) -> float:
    """Seconds a time-limited decode of a frame of this many pixels may take before it is killed."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    try:
        base = float(raw) if raw else DEFAULT_DECODE_TIMEOUT_S
    except ValueError:
        raise EdgePneumoError(f"{TIMEOUT_ENV}={raw!r}: not a number of seconds (e.g. 2 or 0.5)") from None
    if not (base > 0 and math.isfinite(base)):
        raise EdgePneumoError(f"{TIMEOUT_ENV}={raw!r}: the decode time limit must be a finite number above 0 s")
    return base + DECODE_S_PER_MP * max(pixels, 0) / 1e6


def set_max_pixels(value: int | None) -> None:
    """Set the budget for this process and the processes it starts (None: leave it as it is)."""
    if value is None:
        return
    if value < 1:
        raise EdgePneumoError(f"--max-pixels {value}: the pixel budget must be at least 1")
    os.environ[ENV] = str(int(value))


def check(name: str, fmt: str, width: int, height: int, frames: int = 1) -> None:
    """Raise `ImageTooLarge` when width x height x frames is above the budget."""
    budget = max_pixels()
    total = max(width, 0) * max(height, 0) * max(frames, 1)
    if total <= budget:
        return
    shape = f"{width} x {height} px" + (f" x {frames} frames" if frames > 1 else "")
    raise ImageTooLarge(
        f"{name}: the {fmt} header announces {shape} ({total / 1e6:.1f} MP), above the pixel budget of "
        f"{budget / 1e6:g} MP; refused before decoding (a decompression bomb? if the film is real, raise "
        f"--max-pixels or {ENV})"
    )


def is_over_budget(reason: str | None) -> bool:
    """Whether a failed row's reason is this budget's refusal (front ends map it to their own status)."""
    return bool(reason) and _MARK in reason


def short_reason(reason: str) -> str:
    """The refusal in at most 64 characters (a DICOM ErrorComment is an LO)."""
    m = re.search(r"\(([\d.]+) MP\), above the pixel budget of ([^ ]+) MP", reason or "")
    text = f"header announces {m[1]} MP, over the {m[2]} MP pixel budget" if m else (reason or "").split(": ", 1)[-1]
    return text[:64]


def header_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG, TIFF or BMP from its header; None if unknown. PNG and BMP from their
    fixed offsets (`png_size`, `bmp_size`), anything else, or what those decline, by the `imagesize` package."""
    own = png_size(data) if data[:4] == b"\x89PNG" else bmp_size(data) if data[:2] == b"BM" else None
    if own is not None:
        return own
    import imagesize

    try:
        w, h = imagesize.get(io.BytesIO(data), exif_rotation=False)  # stored size: what the decoder allocates
    except Exception:  # imagesize raises struct.error, ValueError... on a damaged header
        return None
    if w is None or h is None or w < 0 or h < 0:
        return None
    return int(w), abs(int(h))


def png_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a PNG's IHDR, which the PNG spec puts first at fixed offsets (signature, length
    13, b"IHDR", width, height); None otherwise (imagesize then reads it). Read here, not by imagesize, so
    that a PNG bomb is refused without imagesize's ~30 ms import (it imports urllib for its HTTP reader)."""
    if len(data) >= 24 and data[12:16] == b"IHDR" and data[8:12] == b"\x00\x00\x00\x0d":
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    return None


def bmp_size(data: bytes) -> tuple[int, int] | None:
    """(width, |height|) from a BMP's info header at its fixed offsets (a 40-byte or larger
    BITMAPINFOHEADER: int32 width and height at 18 and 22; height < 0 is a top-down image); None for
    anything else (the old 12-byte core header...), which imagesize then reads. Read here for the same
    reason as `png_size`."""
    if len(data) >= 26 and int.from_bytes(data[14:18], "little") in (40, 52, 56, 108, 124):
        w, h = int.from_bytes(data[18:22], "little", signed=True), int.from_bytes(data[22:26], "little", signed=True)
        return (w, abs(h)) if w >= 0 else None
    return None
