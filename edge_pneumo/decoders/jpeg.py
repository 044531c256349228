"""JPEG decoding: one file's bytes -> grey pixels, with libjpeg's complaints as that file's warnings.

simplejpeg (libjpeg-turbo's TurboJPEG API) reports "Corrupt JPEG data: ..." as data instead of
printing it, so a damaged file gets a named warning in its own result and nothing reaches the
terminal. It gives the same pixels as OpenCV's decoder (the same libjpeg-turbo grey output,
the same 1/2, 1/4, 1/8 scaled decoding: all 5,840 dataset images identical). A JPEG that
simplejpeg refuses goes to OpenCV with fd 2 captured. Also used for the JPEG frame inside a
DICOM file. Both paths check the SOF's size against the pixel budget before decoding.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from edge_pneumo.decoders import limits
from edge_pneumo.decoders.pixels import GreyImage, colourfulness
from edge_pneumo.decoders.stderr_capture import capture
from edge_pneumo.errors import InputImageError

MAX_MISSING_FRACTION = 0.25  # a cut JPEG missing more than this is refused, not guessed at
_EOI = b"\xff\xd9"
_REDUCED = (8, 4, 2)
SCAN_WORK = 20  # scans x pixels allowed, in pixel budgets: a 60 MP film may have 20 scans, a 1 MP one 1,200
_STANDALONE = frozenset({0x01, *range(0xD0, 0xD9)})  # TEM, RSTn, SOI: markers without a length


def jpeg_size(data: bytes | np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a JPEG's (or JPEG-LS's) SOF marker, without decoding; None if not found.

    Walks the marker segments up to the first scan, as libjpeg does: bytes that are not a
    marker are skipped to the next 0xFF (libjpeg's "extraneous bytes"), so any SOF libjpeg
    would act on is found, however many APPn segments come first."""
    sof = jpeg_sof(data)
    return None if sof is None else sof[1:]


def jpeg_sof(data: bytes | np.ndarray) -> tuple[int, int, int] | None:
    """(SOF marker, width, height): `jpeg_size` with the marker it read them from (0xF7: JPEG-LS)."""
    b = data if isinstance(data, bytes) else bytes(data)
    i = 2
    while i + 9 < len(b):
        if b[i] != 0xFF:
            i = b.find(b"\xff", i)
            if i < 0:
                return None
            continue
        marker = b[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        if marker == 0xDA:  # start of scan before any frame header
            return None
        seg_len = (b[i + 2] << 8) | b[i + 3]
        if (0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC)) or marker == 0xF7:  # F7: JPEG-LS
            h = (b[i + 5] << 8) | b[i + 6]
            w = (b[i + 7] << 8) | b[i + 8]
            return marker, w, h
        i += 2 + seg_len
    return None


def check_scans(name: str, data: bytes, width: int, height: int) -> None:
    """Refuse a JPEG whose scans would cost more than SCAN_WORK x the pixel budget to decode.

    Each scan of a progressive JPEG is a pass over every coefficient, however few bytes it
    holds: 2,000 repeats of a 14-byte scan made a 44 kB, 4 MP JPEG take 64 s. Real encoders
    write 1 (baseline) to ~10 scans. Counted as FF DA pairs, which entropy-coded data never
    contains (its FF bytes are stuffed): an upper bound, exact for any real file. A file too
    short to hold enough of them (at most one per 2 bytes) is not counted at all."""
    budget = limits.max_pixels()
    if len(data) // 2 * width * height <= SCAN_WORK * budget:
        return  # even a file of nothing but FF DA pairs could not reach the limit
    scans = data.count(b"\xff\xda")
    work = scans * width * height
    if scans > 1 and work > SCAN_WORK * budget:
        raise limits.ImageTooLarge(
            f"{name}: JPEG with {scans} scans of {width} x {height} px ({work / 1e6:.0f} MP of decoding work), above "
            f"{SCAN_WORK} x the pixel budget of {budget / 1e6:g} MP; refused before decoding "
            "(a scan bomb? real JPEGs have 1 to ~10 scans)"
        )


def reduction_factor(size: tuple[int, int] | None, min_side_hint: int | None) -> int:
    """The largest of 8, 4, 2 that keeps the smaller side >= min_side_hint (1: decode fully)."""
    if not min_side_hint or not size or min(size) <= 0:
        return 1
    for factor in _REDUCED:
        if min(size) // factor >= min_side_hint:
            return factor
    return 1


def decode_jpeg(name: str, data: bytes, min_side_hint: int | None) -> GreyImage:
    import simplejpeg

    warnings: list[str] = []
    try:
        h, w, colourspace, _ = simplejpeg.decode_jpeg_header(data)
    except ValueError:
        return decode_jpeg_opencv(name, data, min_side_hint)
    limits.check(name, "JPEG", w, h)
    check_scans(name, data, w, h)
    factor = reduction_factor((w, h), min_side_hint)
    scale = dict(min_factor=factor, min_height=math.ceil(h / factor), min_width=math.ceil(w / factor))
    complete = data.rstrip(b"\x00\r\n ").endswith(_EOI)
    try:
        pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY", **scale)
    except ValueError as e:  # libjpeg's warning or error, as text: decode leniently, say what it was
        try:
            pixels = simplejpeg.decode_jpeg(data, colorspace="GRAY", strict=False, **scale)
        except ValueError:
            return decode_jpeg_opencv(name, data, min_side_hint)
        if complete:
            warnings.append(f"damaged JPEG ({_libjpeg_message(e)}); classified from what decoded")
    pixels = pixels[:, :, 0]
    if not complete:
        # A damaged original that lost its end: libjpeg decodes what is there and fills the
        # rest with flat grey. Say how much is missing; refuse when it is too much to classify.
        missing = missing_rows_fraction(pixels)
        if missing > MAX_MISSING_FRACTION:
            raise InputImageError(
                f"{name}: JPEG cut short, {missing:.0%} of the image is missing; too little to classify"
            )
        warnings.append(
            f"damaged JPEG (premature end of data, {missing:.0%} of rows missing); "
            "classified from what could be decoded"
        )
    colour = 0.0
    if colourspace not in ("Gray", "GRAY"):
        try:  # a thumbnail in colour, for the guard: a photo has channel differences, a grey X-ray none
            eighth = dict(min_factor=8, min_height=math.ceil(h / 8), min_width=math.ceil(w / 8))
            thumb = simplejpeg.decode_jpeg(data, colorspace="BGR", strict=False, **eighth)
            raw = thumb.tobytes()  # B, G, R interleaved: all equal is grey, colourfulness 0 (the common case)
            colour = 0.0 if raw[0::3] == raw[1::3] == raw[2::3] else colourfulness(thumb)
        except ValueError:
            colour = 0.0
    return GreyImage(np.ascontiguousarray(pixels), warnings, colour, (w, h), "jpeg")


def _libjpeg_message(e: Exception) -> str:
    text = str(e).strip()
    half = len(text) // 2  # TurboJPEG sometimes repeats the message twice in a row
    if half and text[:half] == text[half:]:
        text = text[:half]
    return text.rstrip(".")


def decode_jpeg_opencv(name: str, data: bytes, min_side_hint: int | None) -> GreyImage:
    """JPEGs simplejpeg refuses (garbage inside the header, exotic variants): OpenCV, with
    libjpeg's messages captured and attached to this file. The size comes from the SOF, checked
    against the pixel budget; a JPEG without one is refused (libjpeg could not decode it either)."""
    size = jpeg_size(data)
    if size is None:
        raise InputImageError(f"{name}: corrupt JPEG that cannot be decoded (no frame header)")
    limits.check(name, "JPEG", *size)
    check_scans(name, data, *size)
    factor = reduction_factor(size, min_side_hint)
    flag = {
        1: cv2.IMREAD_GRAYSCALE,
        2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
        4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
        8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
    }[factor]
    buf = np.frombuffer(data if data.rstrip(b"\x00\r\n ").endswith(_EOI) else data + _EOI, np.uint8)
    with capture() as said:
        try:
            pixels = cv2.imdecode(buf, flag)
        except cv2.error:
            pixels = None
    if pixels is None:
        raise InputImageError(
            f"{name}: corrupt JPEG that cannot be decoded" + (f" ({said.lines[0]})" if said.lines else "")
        )
    warnings = [f"damaged JPEG ({line}); classified from what decoded" for line in said.lines[:3]]
    w, h = size
    return GreyImage(pixels, warnings, 0.0, (w, h), "jpeg")


def missing_rows_fraction(pixels: np.ndarray) -> float:
    """Share of bottom rows that are libjpeg's flat mid-grey fill for data it never received."""
    flat = (pixels.min(axis=1) == pixels.max(axis=1)) & (np.abs(pixels[:, 0].astype(np.int16) - 128) <= 2)
    not_flat = np.flatnonzero(~flat)
    last_real = not_flat[-1] + 1 if len(not_flat) else 0
    return float((pixels.shape[0] - last_real) / pixels.shape[0])
