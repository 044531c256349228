"""DICOM input (the `dicom` extra: pydicom plus the pylibjpeg decoders for compressed pixel data).

The header is read first and handed to the guard's rule table (`dicom_check`) before any
pixel is decoded: a CT, a lateral view or a colour ultrasound is refused from its tags.
A chest X-ray then becomes the same kind of grey uint8 image as a JPEG: 8-bit pixels with no
rescale and no window are display values already and are used as they are; anything else
goes through the modality LUT (rescale slope/intercept), VOI LUT or window and a min-max
stretch to 0..255. MONOCHROME1 is inverted so bone is bright. An 8-bit JPEG-compressed frame
is decoded like a JPEG file, at a reduced scale when the image is big. pydicom's warnings
become this file's warnings; none reaches the terminal.

Before any of that, the pixel budget (`limits.py`): a deflated file is inflated once under a cap
(it could grow a thousandfold), then Rows x Columns x NumberOfFrames, and the size each
compressed frame's own header announces (JPEG SOF, JPEG-LS, JPEG 2000 SIZ), are checked. Those
same checks run first on a stdlib pre-scan of the header (`dicom_prescan.py`), before pydicom is
even imported (~190 ms): a bomb is refused in milliseconds, with the same message; where the
pre-scan is unsure, or the file passes, pydicom reads it and checks it again as before.
Then a JPEG-LS frame is decoded in a child process under a time limit (`isolated.py`): both of
its decoders can loop forever on a damaged one.
"""

from __future__ import annotations

import io
import logging
import threading
import warnings as _warnings
import zlib
from collections.abc import Callable, Iterable

import numpy as np

from edge_pneumo.decoders import dicom_prescan, limits
from edge_pneumo.decoders.jpeg import check_scans, decode_jpeg, jpeg_size, jpeg_sof
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


MAX_ELEMENTS = dicom_prescan.MAX_ELEMENTS  # top-level data elements; a CR or DX has a few hundred


class _TooManyElements(Exception):
    pass


class _ElementCount:
    """pydicom's `stop_when` hook, used to count: a few kB of zeros parse as ~100,000 empty
    elements per second of CPU (fuzzing found a 3.6 kB deflated file that took 5 s)."""

    def __init__(self):
        self.n = 0

    def __call__(self, tag, vr, length) -> bool:
        self.n += 1
        if self.n > MAX_ELEMENTS:
            raise _TooManyElements
        return False


JPEG_LS_SYNTAXES = {"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"}


def _pixel_array(ds, name: str):
    """JPEG-LS in a child process under a time limit (`isolated.py`): fuzzing found frames on which
    both of its decoders, pylibjpeg's libjpeg and CharLS (pyjpegls), loop forever. The child runs
    CharLS only, unless pyjpegls is missing (then libjpeg): pydicom would fall back from CharLS to
    libjpeg on a frame CharLS refuses, and libjpeg is the one that hangs on most of them."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in JPEG_LS_SYNTAXES:
        return ds.pixel_array
    from edge_pneumo.decoders import isolated

    return isolated.pixel_array(ds, name)


def _as_int(value, default: int) -> int:
    try:
        return int(str(value).strip() or default)
    except (TypeError, ValueError):
        return default


def check_inflated_size(data: bytes, name: str, verified: tuple[int, int] | None = None) -> None:
    """A deflated DICOM (the whole dataset zlib-compressed) can inflate a thousandfold, and pydicom
    inflates all of it at once. So inflate its start, check the pixel budget on the header found
    there, then inflate the rest in chunks thrown away, up to what that header's pixels need
    (or a 16-bit film at the budget, when the start says nothing) plus 1 MB.

    `verified`: (stream start, cap) that `precheck` already inflated this file against. When pydicom's
    header gives the same start and cap, that inflation (whose outcome depends on nothing else) is not
    done twice: +38 ms on a 5 MB deflated 2000 px film, +234 ms on a 27 MB 4300 px one, otherwise."""
    try:
        from pydicom.filereader import _read_file_meta_info, read_preamble
        from pydicom.uid import UID

        fp = io.BytesIO(data)
        read_preamble(fp, False)
        syntax = _read_file_meta_info(fp).get("TransferSyntaxUID")
        if not syntax or not UID(str(syntax)).is_deflated:
            return
        start = fp.tell()
    except Exception:  # not readable this way: dcmread reports it
        return
    _check_inflated(data, start, name, _header_of, verified)


def _check_inflated(
    data: bytes, start: int, name: str, header_of: Callable[[bytes], object], verified=None
) -> tuple[int, int] | None:
    """`check_inflated_size` from the start of the deflate stream on; `header_of(head)` reads the header in
    the inflated start (pydicom's `_header_of`, or the pre-scan's `dicom_prescan.inflated_header`).
    Returns (start, cap) when the whole stream was found within the cap (or was already, `verified`)."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        head = inflater.decompress(data[start:], 1 << 18)
    except zlib.error:
        return None  # damaged stream: dcmread says so
    cap = 2 * limits.max_pixels()
    header = header_of(head)
    if header is not None:
        check_budget(header, name)
        rows, cols = _as_int(header.get("Rows", 0), 0), _as_int(header.get("Columns", 0), 0)
        frames = max(_as_int(header.get("NumberOfFrames", 1), 1), 1)
        samples = max(_as_int(header.get("SamplesPerPixel", 1), 1), 1)
        bits = max(_as_int(header.get("BitsAllocated", 16), 16), 1)
        if rows and cols:
            cap = min(cap, rows * cols * frames * samples * -(-bits // 8))
    cap += 1 << 20
    if verified == (start, cap):
        return verified  # the same stream, already inflated against the same cap
    total, tail = len(head), inflater.unconsumed_tail
    try:
        while tail and total <= cap and not inflater.eof:
            out = inflater.decompress(tail, 1 << 20)
            if not out and inflater.unconsumed_tail == tail:
                break  # no progress (trailing bytes zlib will not take): never loop on them
            total, tail = total + len(out), inflater.unconsumed_tail
    except zlib.error:
        return None
    if total > cap:
        raise limits.ImageTooLarge(
            f"{name}: deflated DICOM inflates to more than {cap / 1e6:.0f} MB, more than its pixels need "
            f"(pixel budget {limits.max_pixels() / 1e6:g} MP); refused before decoding (a decompression bomb?)"
        )
    return start, cap


def _header_of(head: bytes):
    """The elements before the pixel data in an inflated dataset's start (explicit VR little endian), or None."""
    from pydicom.filereader import read_dataset

    count = _ElementCount()
    try:
        ds = read_dataset(
            io.BytesIO(head), False, True, stop_when=lambda tag, vr, n: count(tag, vr, n) or tag >= 0x7FE00000
        )
        return ds if "Rows" in ds else None
    except Exception:  # cut in the middle of an element, or damaged: the size cap alone decides
        return None


def _frame_size(frame: bytes) -> tuple[int, int] | None:
    """(width, height) a compressed frame's own header announces: JPEG/JPEG-LS SOF, JPEG 2000 SIZ."""
    if frame[:2] == b"\xff\xd8":
        return jpeg_size(frame)
    at = frame.find(b"\xff\x4f\xff\x51", 0, 4096)  # J2K codestream (possibly inside a JP2 box)
    if at >= 0 and len(frame) >= at + 24:
        x, y, x0, y0 = (int.from_bytes(frame[at + k : at + k + 4], "big") for k in (8, 12, 16, 20))
        return max(x - x0, 0), max(y - y0, 0)
    return None


def _decoded_in_process(frame) -> bool:
    """A JPEG frame (not JPEG-LS, whose frames are decoded in a child process under a time limit)."""
    sof = jpeg_sof(bytes(frame[: 1 << 20]))
    return sof is not None and sof[0] != 0xF7


def check_budget(ds, name: str) -> None:
    """Rows x Columns x NumberOfFrames, and each compressed frame's own announced size, against the budget."""
    frames = _check_announced(ds, name)
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or not syntax.is_transfer_syntax or not syntax.is_encapsulated or "PixelData" not in ds:
        return

    def generate():
        from pydicom.encaps import generate_frames

        return generate_frames(ds.PixelData, number_of_frames=frames)

    _check_frames(name, generate, frames)


def _check_announced(ds, name: str) -> int:
    """Rows x Columns x NumberOfFrames against the budget (`ds`: a pydicom Dataset, or anything with its
    `get`: the pre-scan's header, an inflated start's values); the number of frames."""
    frames = max(_as_int(ds.get("NumberOfFrames", 1), 1), 1)
    rows, cols = _as_int(ds.get("Rows", 0), 0), _as_int(ds.get("Columns", 0), 0)
    limits.check(name, "DICOM", cols, rows, frames)
    return frames


def _check_frames(name: str, generate: Callable[[], Iterable], frames: int) -> None:
    """Each compressed frame's own announced size (and a JPEG's scans), added up against the budget."""
    total = 0
    try:
        for frame in generate():
            size = _frame_size(bytes(frame[: 1 << 20]))
            if size is not None and frame[:2] == b"\xff\xd8":
                if 0 in size and _decoded_in_process(frame):  # fuzzing: libjpeg grew past 1.6 GB on one, for ever
                    raise InputImageError(
                        f"{name}: a JPEG frame in the DICOM announces {size[0]} x {size[1]} px: a side of 0 (a height "
                        "left to a DNL marker) cannot be bounded before decoding; refused (a damaged or hostile frame?)"
                    )
                check_scans(name, bytes(frame), *size)
            if size is not None:
                total += size[0] * size[1]
                if total > limits.max_pixels():
                    limits.check(name, "compressed frame in the DICOM", *size, frames)
    except InputImageError:
        raise
    except Exception:  # damaged encapsulation: the pixel decoder reports it
        return


def precheck(data: bytes, name: str) -> tuple[int, int] | None:
    """The pixel budget on the stdlib pre-scan (`dicom_prescan.py`), before pydicom is imported: raise the
    ImageTooLarge that `check_inflated_size` or `check_budget` would raise after pydicom's read, with
    the same message; return when the file passes or the pre-scan is unsure (pydicom decides, as before):
    for a deflated file whose whole stream passed, the (start, cap) it was inflated against."""
    try:
        found = dicom_prescan.scan(data)
    except Exception:  # a pre-scan bug must never cost a file: pydicom reads it as before
        return None
    if found is None:
        return None

    def header_of(head: bytes):
        try:
            return dicom_prescan.inflated_header(head)
        except Exception:  # Unknown, or a pre-scan bug
            raise dicom_prescan.Unknown from None

    try:
        if found.deflated:
            return _check_inflated(data, found.start, name, header_of)
        frames = _check_announced(found, name)
        try:
            split = found.frames(frames)
        except Exception:
            return None
        if split is not None:
            _check_frames(name, lambda: split, frames)
    except dicom_prescan.Unknown:
        pass
    return None


def read_dicom(
    data: bytes, name: str, dicom_check: Callable[[dict], str | None] | None = None, min_side_hint: int | None = None
):
    verified = precheck(data, name)  # a bomb is refused here, before pydicom's import (~190 ms) and read
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise MissingRuntimeError(f"{name}: reading DICOM needs pip install 'edge-pneumo[dicom]'") from None
    _hook_pydicom_messages()
    said: list[str] = []
    _SINK.messages = said
    try:
        check_inflated_size(data, name, verified)
        try:
            ds = pydicom.filereader.read_partial(io.BytesIO(data), stop_when=_ElementCount(), force=False)
        except _TooManyElements:
            raise InputImageError(
                f"{name}: DICOM with more than {MAX_ELEMENTS:,} top-level elements; refused (no X-ray has that many)"
            ) from None
        except Exception as e:  # pydicom raises InvalidDicomError, EOFError, ... for broken files
            raise InputImageError(f"{name}: not a readable DICOM file ({type(e).__name__})") from None
        header = header_fields(ds)
        check_budget(ds, name)
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
            arr = _pixel_array(ds, name) if arr is None else arr
        except InputImageError:  # the child's time limit, or the child itself, said why
            raise
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
    except (InputImageError, InputRejected, MissingRuntimeError):
        raise
    except Exception as e:  # pydicom parses elements lazily: a damaged one fails where it is first read
        text = str(e).splitlines()[0][:120] if str(e) else ""
        raise InputImageError(f"{name}: damaged DICOM file ({type(e).__name__}: {text})") from None
    finally:
        _SINK.messages = None
