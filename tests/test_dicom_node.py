"""The DICOM node of `serve`: pynetdicom's own sender (storescu's role), from an allowed and a refused AE."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
from conftest import synthetic_xray
from test_serve import free_port, start_server

pynetdicom = pytest.importorskip("pynetdicom")
pydicom = pytest.importorskip("pydicom")
pytest.importorskip("starlette")


def _cr_dataset(pixels: np.ndarray, modality: str = "CR"):
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ComputedRadiographyImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = modality, "CHEST", "PA"
    ds.PatientName, ds.PatientID = "DOE^JOHN", "PID-0042"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    pixels = pixels.copy()
    pixels[0, :2] = (0, 255)  # full range: the DICOM reader's min-max stretch leaves the image as it is
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    ds.PixelData = pixels.tobytes()
    return ds


def _send(port: int, ds, calling: str) -> tuple[bool, int | None]:
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage

    ae = AE(ae_title=calling)
    ae.add_requested_context(ComputedRadiographyImageStorage)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEPNEUMO")
    if not assoc.is_established:
        return False, None
    status = assoc.send_c_store(ds)
    assoc.release()
    return True, int(status.Status) if status else None


def test_c_store_from_an_allowed_ae_is_classified_once_and_others_are_refused(tiny_export, tmp_path):
    dport = free_port()
    results = tmp_path / "dicom.jsonl"
    proc, _, log = start_server(
        tiny_export, tmp_path, "--dicom-port", str(dport), "--allow-aet", "XRAY01", "--results", str(results)
    )
    try:
        time.sleep(0.5)
        good = _cr_dataset(synthetic_xray(np.random.default_rng(21), 1, 96))
        ok, status = _send(dport, good, "XRAY01")
        assert ok and status == 0x0000
        assert _send(dport, good, "XRAY01") == (True, 0x0000)  # sent twice: recorded once
        ct = _cr_dataset(synthetic_xray(np.random.default_rng(22), 0, 96), modality="CT")
        assert _send(dport, ct, "XRAY01") == (True, 0xC001)  # received, refused by the guard: a failure status
        refused, _ = _send(dport, good, "INTRUDER")
        assert not refused
        time.sleep(0.5)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    rows = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(rows) == 2, rows
    first = [r for r in rows if r["sop_instance_uid"] == good.SOPInstanceUID][0]
    assert (
        first["status"] == "classified"
        and first["calling_ae"] == "XRAY01"
        and first["label"] in ("NORMAL", "PNEUMONIA")
    )
    second = [r for r in rows if r["sop_instance_uid"] == ct.SOPInstanceUID][0]
    assert second["status"] == "rejected" and "modality CT" in second["reason"]
    text = Path(log).read_text()
    assert "DOE" not in text and "PID-0042" not in text  # no patient data in the log
