"""DICOM input through the `dicom` extra: LUTs, MONOCHROME1, 16-bit, JPEG-compressed pixel data."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

pydicom = pytest.importorskip("pydicom")
from pydicom.dataset import FileDataset, FileMetaDataset  # noqa: E402
from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, SecondaryCaptureImageStorage, generate_uid  # noqa: E402

from edge_pneumo.decoders.decode import read_grey  # noqa: E402
from edge_pneumo.device.preprocess import Preprocessing  # noqa: E402
from edge_pneumo.errors import InputImageError  # noqa: E402


def _dataset(path, syntax=ExplicitVRLittleEndian):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = SecondaryCaptureImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = syntax
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "DX"
    return ds


def _image(h=96, w=80):
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx * 3 + yy * 2) % 256).astype(np.uint8)


def _write_uncompressed(path, pixels: np.ndarray, photometric="MONOCHROME2", slope=1.0, intercept=0.0, window=None):
    ds = _dataset(path)
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = photometric
    ds.BitsAllocated = ds.BitsStored = pixels.dtype.itemsize * 8
    ds.HighBit = ds.BitsStored - 1
    ds.PixelRepresentation = 0
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    if window:
        ds.WindowCenter, ds.WindowWidth = window
    ds.PixelData = pixels.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def test_monochrome2_16bit_matches_the_8bit_image(tmp_path):
    g = _image()
    _write_uncompressed(tmp_path / "a.dcm", g.astype(np.uint16) * 257)
    grey = read_grey(tmp_path / "a.dcm").pixels
    assert np.abs(grey.astype(int) - g).max() <= 1


def test_monochrome1_is_inverted(tmp_path):
    g = _image()
    _write_uncompressed(tmp_path / "m1.dcm", g.astype(np.uint16) * 16, photometric="MONOCHROME1")
    grey = read_grey(tmp_path / "m1.dcm").pixels
    assert np.abs(grey.astype(int) - (255 - g)).max() <= 1


def test_window_is_applied(tmp_path):
    g = (_image().astype(np.uint16)) * 16  # 0..4080
    _write_uncompressed(tmp_path / "w.dcm", g, window=(1000, 400))  # only 800..1200 is shown
    grey = read_grey(tmp_path / "w.dcm").pixels
    assert np.all(grey[g <= 800] == 0) and np.all(grey[g >= 1200] == 255)


def test_jpeg_baseline_compressed_dicom_decodes(tmp_path):
    pytest.importorskip("pylibjpeg")
    from pydicom.encaps import encapsulate

    g = _image()
    ok, jpeg = cv2.imencode(".jpg", g, [cv2.IMWRITE_JPEG_QUALITY, 95])
    ds = _dataset(tmp_path / "c.dcm", JPEGBaseline8Bit)
    ds.Rows, ds.Columns = g.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit = 7
    ds.PixelRepresentation = 0
    ds.PixelData = encapsulate([jpeg.tobytes()])
    ds["PixelData"].is_undefined_length = True
    ds.save_as(str(tmp_path / "c.dcm"), enforce_file_format=True)
    x, _ = Preprocessing().load(tmp_path / "c.dcm")
    ref = Preprocessing().apply(g)
    assert np.abs(x.astype(int) - ref.astype(int)).mean() < 2


def test_dicom_without_pixel_data_is_refused(tmp_path):
    ds = _dataset(tmp_path / "sr.dcm")
    ds.Modality = "SR"
    ds.save_as(str(tmp_path / "sr.dcm"), enforce_file_format=True)
    with pytest.raises(InputImageError, match="without pixel data"):
        read_grey(tmp_path / "sr.dcm")
