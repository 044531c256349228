"""The pydicom path as the pre-scan's oracle (tests/test_dicom_prescan.py, bench/fuzz_decode.py): what
read_dicom says about the pixel budget with and without the stdlib pre-scan, and whether every value the
pre-scan reads equals pydicom's."""

from __future__ import annotations

import io
import zlib
from unittest import mock

import pydicom
from pydicom.encaps import generate_frames

from edge_pneumo.decoders import dicom, dicom_prescan
from edge_pneumo.errors import InputImageError, InputRejected

KEYS = ("Rows", "Columns", "NumberOfFrames", "BitsAllocated", "SamplesPerPixel")
REACHED = "the header passed the budget"


def pydicom_verdict(data: bytes, name: str = "x.dcm") -> str | None:
    """What read_dicom says without the pre-scan, stopped right after the budget (by the header check it
    then runs): the refusal's message (the budget's, or any other), None when the budget passes."""
    with mock.patch.object(dicom, "precheck", lambda data, name: None):
        try:
            dicom.read_dicom(data, name, dicom_check=lambda header: REACHED)
        except InputRejected as e:
            assert str(e) == REACHED
            return None
        except InputImageError as e:
            return str(e)
    return None  # a file with no header check to stop at cannot get here


def prescan_verdict(data: bytes, name: str = "x.dcm") -> str | None:
    """The pre-scan's refusal (the budget's, or a frame that cannot be bounded), or None."""
    try:
        dicom.precheck(data, name)
    except InputImageError as e:
        return str(e)
    return None


def head_of(data: bytes, start: int) -> bytes:
    """The inflated start that dicom._check_inflated reads its header from."""
    return zlib.decompressobj(-zlib.MAX_WBITS).decompress(data[start:], 1 << 18)


def compare_with_pydicom(data: bytes, strict: bool = True) -> str:
    """'none' (the pre-scan is unsure), or 'decided' after asserting that every value it read equals
    pydicom's: dcmread(stop_before_pixels=True, force=True)'s, the header dicom.py reads from a deflated
    file's start (`_header_of`), and the frames generate_frames gives. `strict`: a file pydicom cannot read
    fails the comparison (a real file); otherwise (fuzzing) only what pydicom could read is compared."""
    found = dicom_prescan.scan(data)
    if found is None:
        return "none"
    ds = _dcmread(data, strict, stop_before_pixels=True)
    if found.deflated:
        try:
            head = head_of(data, found.start)
        except zlib.error:
            return "none"  # dicom._check_inflated stops there too: pydicom decides
        try:
            mine = dicom_prescan.inflated_header(head)
        except dicom_prescan.Unknown:
            return "none"
        theirs = dicom._header_of(head)
        assert (mine is None) == (theirs is None), "a header in the inflated start"
        if mine is not None:
            _same_values(mine, theirs)
            if strict:
                _same_values(mine, ds)
        return "decided"
    if ds is not None:
        _same_values(found.values, ds)
        assert str(ds.file_meta.TransferSyntaxUID) == found.syntax
    frames = max(dicom._as_int(found.get("NumberOfFrames", 1), 1), 1)
    split = found.frames(frames)
    full = _dcmread(data, strict, stop_before_pixels=False) if split is not None else None
    if full is not None:
        assert "PixelData" in full
        assert [bytes(f) for f in split] == list(generate_frames(full.PixelData, number_of_frames=frames)), "frames"
    return "decided"


def _dcmread(data: bytes, strict: bool, stop_before_pixels: bool):
    try:
        return pydicom.dcmread(io.BytesIO(data), stop_before_pixels=stop_before_pixels, force=True)
    except Exception:
        if strict:
            raise
        return None


def _same_values(mine: dict, ds) -> None:
    for key in KEYS:
        present = key in ds and ds[key].value not in (None, "")
        assert (key in mine) == present, key
        if present:
            assert dicom._as_int(ds[key].value, -1) == mine[key], key


def differential(data: bytes, name: str = "x.dcm") -> str | None:
    """None, or what is wrong: the pre-scan read another value than pydicom, or refused a file otherwise
    than the pydicom path does. Any exception the pre-scan itself raises propagates (a bug)."""
    try:
        compare_with_pydicom(data, strict=False)
    except AssertionError as e:
        return f"value mismatch: {e}"
    early = prescan_verdict(data, name)
    if early is not None:
        full = pydicom_verdict(data, name)
        if full != early:
            return f"refusal mismatch: pre-scan {early!r}, pydicom path {full!r}"
    return None
