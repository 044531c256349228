"""DICOM input (the `dicom` extra: pydicom plus the pylibjpeg decoders for compressed pixel data).

The header is read first and handed to the guard's rule table (`dicom_check`) before any
pixel is decoded: a CT, a lateral view or a colour ultrasound is refused from its tags.
A chest X-ray then becomes the same kind of grey uint8 image as a JPEG: 8-bit pixels with no
rescale and no window are display values already and are used as they are; anything else
goes through the modality LUT (rescale slope/intercept), VOI LUT or window and a min-max
stretch to 0..255. MONOCHROME1 is inverted so bone is bright. An 8-bit JPEG-compressed frame
is decoded like a JPEG file, at a reduced scale when the image is big. pydicom's warnings become
this file's warnings; none reaches the terminal.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings as _warnings
from collections.abc import Callable

import numpy as np

from edge_pneumo.decoders.jpeg import decode_jpeg
from edge_pneumo.decoders.pixels import GreyImage, stretch_to_uint8, to_grey_uint8
from edge_pneumo.errors import InputImageError, InputRejected, MissingRuntimeError

# Header fields the guard's rules read, and that a result reports (never patient data).
HEADER_FIELDS = (
    "Modality",
    "BodyPartExamined",
    "ViewPosition",
    "PhotometricInterpretation",
    "NumberOfFrames",
    "SOPInstanceUID",
)

_SINK = threading.local()
_HOOKED = False
_HOOK_LOCK = threading.Lock()


def _hook_pydicom_messages() -> None:
    """Route pydicom's warnings and log records to the file being read (per thread), never to stderr."""
    global _HOOKED
    with _HOOK_LOCK:
        if _HOOKED:
            return
        original = _warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            sink = getattr(_SINK, "messages", None)
            if sink is not None:
                sink.append(str(message))
            else:
                original(message, category, filename, lineno, file, line)

        _warnings.showwarning = show
        _warnings.filterwarnings("always", module=r"pydicom")  # every file gets its own, not once per process

        class _ToSink(logging.Handler):
            def emit(self, record):
                sink = getattr(_SINK, "messages", None)
                if sink is not None and record.levelno >= logging.WARNING:
                    sink.append(record.getMessage())

        logger = logging.getLogger("pydicom")
        logger.addHandler(_ToSink())
        logger.propagate = False
        _HOOKED = True


def header_fields(ds) -> dict:
    out = {}
    for key in HEADER_FIELDS:
        value = ds.get(key, None)
        if value is None or str(value).strip() == "":
            continue
        out[key] = str(value).strip()
    return out


JPEG_8BIT_SYNTAXES = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51"}  # JPEG Baseline, JPEG Extended


def _jpeg_frame_fast(ds, min_side_hint: int | None):
    """An 8-bit JPEG-compressed single-frame grey DICOM: its encapsulated frame is an ordinary
    JPEG, so decode it like one, at 1/2, 1/4 or 1/8 scale when that still leaves min_side_hint
    pixels a side (several times faster than pydicom + pylibjpeg at full size). None when the
    file is not such a DICOM or the frame does not decode this way: the caller falls back."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if (
        syntax not in JPEG_8BIT_SYNTAXES
        or int(ds.get("SamplesPerPixel", 1) or 1) != 1
        or int(ds.get("NumberOfFrames", 1) or 1) != 1
        or int(ds.get("BitsStored", 8) or 8) != 8
    ):
        return None
    try:
        from pydicom.encaps import generate_frames

        frame = next(generate_frames(ds.PixelData, number_of_frames=1))
        image = decode_jpeg("dicom frame", bytes(frame), min_side_hint)
    except Exception:  # anything unusual: the full pydicom path decides
        return None
    if image.warnings:
        return None
    return image.pixels


def _display_ready(ds, arr) -> bool:
    """8-bit unsigned pixels with no rescale and no window: already display values (a stretch
    would only depend on the image's two most extreme pixels, and differ with reduced decoding)."""
    return (
        arr.dtype == np.uint8
        and int(ds.get("BitsStored", 8) or 8) <= 8
        and float(ds.get("RescaleSlope", 1) or 1) == 1.0
        and float(ds.get("RescaleIntercept", 0) or 0) == 0.0
        and "WindowCenter" not in ds
        and "VOILUTSequence" not in ds
        and "ModalityLUTSequence" not in ds
    )


def read_dicom(
    data: bytes, name: str, dicom_check: Callable[[dict], str | None] | None = None, min_side_hint: int | None = None
):
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise MissingRuntimeError(f"{name}: reading DICOM needs pip install 'edge-pneumo[dicom]'") from None
    _hook_pydicom_messages()
    said: list[str] = []
    _SINK.messages = said
    try:
        try:
            ds = pydicom.dcmread(io.BytesIO(data), force=False)
        except Exception as e:  # pydicom raises InvalidDicomError, EOFError, ... for broken files
            raise InputImageError(f"{name}: not a readable DICOM file ({type(e).__name__})") from None
        header = header_fields(ds)
        if dicom_check is not None:
            reason = dicom_check(header)
            if reason:
                raise InputRejected(reason, check="dicom_header", details={"dicom": header})
        has_pixels = any(k in ds for k in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"))
        if not has_pixels:
            if "Rows" in ds or any("end of file" in m.lower() for m in said):
                raise InputImageError(
                    f"{name}: truncated DICOM file: the header describes an image but its pixel data is cut off"
                )
            raise InputImageError(f"{name}: DICOM without pixel data (a report or structured document?)")
        arr = _jpeg_frame_fast(ds, min_side_hint)
        try:
            arr = ds.pixel_array if arr is None else arr
        except Exception as e:  # missing decoder plugin, corrupt or cut-short pixel data
            text = str(e).splitlines()[0][:120] if str(e) else type(e).__name__
            if "length" in text.lower() or "end of" in text.lower() or any("end of file" in m.lower() for m in said):
                raise InputImageError(
                    f"{name}: truncated DICOM file: the pixel data is shorter than the header says ({text})"
                ) from None
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            raise InputImageError(
                f"{name}: cannot decode DICOM pixel data (transfer syntax {getattr(syntax, 'name', syntax)}): {text}"
            ) from None
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        if arr.ndim == 3 and samples == 1 or arr.ndim == 4:
            arr = arr[0]  # several frames: the first (the guard refuses multi-frame files before this)
        if samples == 1:
            if _display_ready(ds, arr):  # 8-bit values meant for display, like a JPEG's: used as they are
                grey = np.ascontiguousarray(arr, dtype=np.uint8)
            else:
                arr = apply_voi_lut(apply_modality_lut(arr, ds), ds)
                grey = stretch_to_uint8(np.asarray(arr, dtype=np.float64))
            if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
                grey = 255 - grey
            colour = 0.0
        else:  # colour DICOM (the guard refuses these by header): pydicom gives RGB
            rgb = np.ascontiguousarray(np.asarray(arr)[..., ::-1])
            from edge_pneumo.decoders.pixels import colourfulness

            colour = colourfulness(rgb)
            grey = to_grey_uint8(rgb, name)
        warnings = [f"DICOM: {m}" for m in dict.fromkeys(said)][:3]
        size = (int(ds.get("Columns", grey.shape[1])), int(ds.get("Rows", grey.shape[0])))
        return GreyImage(grey, warnings, colour, size, "dicom", header)
    finally:
        _SINK.messages = None
