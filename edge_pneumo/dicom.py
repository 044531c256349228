"""DICOM input (the `dicom` extra: pydicom plus the pylibjpeg decoders for compressed pixel data).

A chest X-ray DICOM becomes the same kind of grey uint8 image as a JPEG: modality LUT
(rescale slope/intercept), VOI LUT or window, MONOCHROME1 inverted so bone is bright,
then a min-max stretch to 0..255.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import InputImageError, MissingRuntimeError
from .preprocess import stretch_to_uint8, to_grey_uint8


def read_dicom_grey(path: Path) -> np.ndarray:
    try:
        import pydicom
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise MissingRuntimeError(f"{path}: reading DICOM needs pip install 'edge-pneumo[dicom]'") from None
    try:
        ds = pydicom.dcmread(str(path))
    except Exception as e:  # pydicom raises InvalidDicomError, EOFError, ... for broken files
        raise InputImageError(f"{path}: not a readable DICOM file ({type(e).__name__})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise InputImageError(f"{path}: DICOM without pixel data (a report or structured document?)")
    try:
        arr = ds.pixel_array
    except Exception as e:  # missing decoder plugin, corrupt compressed stream
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", syntax)
        raise InputImageError(f"{path}: cannot decode DICOM pixel data (transfer syntax {name}): {str(e).splitlines()[0][:120]}") from None
    if arr.ndim == 3 and ds.get("SamplesPerPixel", 1) == 1:
        arr = arr[0]  # multi-frame: the first frame
    if ds.get("SamplesPerPixel", 1) == 1:
        arr = apply_modality_lut(arr, ds)
        arr = apply_voi_lut(arr, ds)
        grey = stretch_to_uint8(np.asarray(arr, dtype=np.float64))
        if str(ds.get("PhotometricInterpretation", "")).upper() == "MONOCHROME1":
            grey = 255 - grey
        return grey
    # colour DICOM (rare for X-ray): pydicom gives RGB
    rgb = np.asarray(arr)
    return to_grey_uint8(rgb[..., ::-1].copy() if rgb.ndim == 3 else rgb, str(path))
