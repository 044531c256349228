"""The real parts of a PACS round trip, started by the tests: Orthanc (the archive), DCMTK (the modality),
and CR films made in the test from dataset JPEGs (a DICOM wrapper around a real image; never committed)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import cv2
import pytest

RSNA_FILM = "1.2.276.0.7230010.3.1.4.8323329.6904.1517875201.850819.dcm"


def need(binary: str) -> str:
    """The binary's path; a skip with the reason where it is absent, a failure in CI (CI=true)."""
    found = shutil.which(binary) or next(
        (str(p) for p in (Path("/usr/sbin") / binary, Path("/usr/bin") / binary) if p.exists()), None
    )
    if found:
        return found
    why = f"{binary} is not installed (apt-get install orthanc dcmtk)"
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"{why}: CI must have it (.ci/run installs it)")
    pytest.skip(why)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Orthanc:
    """An Orthanc archive on 127.0.0.1 with free DICOM and HTTP ports, its storage in `folder`."""

    def __init__(self, folder: Path, aet: str = "ORTHANC"):
        self.binary = need("Orthanc")
        self.folder, self.aet = Path(folder), aet
        self.folder.mkdir(parents=True, exist_ok=True)
        self.dicom_port, self.http_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.http_port}"
        self.config = self.folder / "orthanc.json"
        self.config.write_text(
            json.dumps(
                {
                    "Name": "edge-pneumo-test",
                    "StorageDirectory": str(self.folder / "db"),
                    "IndexDirectory": str(self.folder / "db"),
                    "HttpPort": self.http_port,
                    "DicomPort": self.dicom_port,
                    "DicomAet": aet,
                    "RemoteAccessAllowed": False,
                    "AuthenticationEnabled": False,
                    "DicomModalities": {},
                    "Plugins": [],
                }
            )
        )
        self.proc: subprocess.Popen | None = None

    @property
    def destination(self) -> str:
        return f"{self.aet}@127.0.0.1:{self.dicom_port}"

    def start(self) -> Orthanc:
        log = open(self.folder / "orthanc.log", "a")
        self.proc = subprocess.Popen([self.binary, str(self.config)], stdout=log, stderr=subprocess.STDOUT)
        deadline = time.time() + 30
        while time.time() < deadline:
            try:
                self.get("/system")
                return self
            except OSError:
                if self.proc.poll() is not None:
                    raise AssertionError((self.folder / "orthanc.log").read_text()[-3000:])
                time.sleep(0.1)
        raise AssertionError("Orthanc did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=20)
        self.proc = None

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=5) as r:
            data = r.read()
        return json.loads(data) if path != "/file" and not path.endswith("/file") else data

    def find(self, modality: str) -> list[dict]:
        req = urllib.request.Request(
            self.url + "/tools/find",
            data=json.dumps({"Level": "Instance", "Query": {"Modality": modality}, "Expand": True}).encode(),
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.loads(r.read())

    def file(self, instance_id: str) -> bytes:
        return self.get(f"/instances/{instance_id}/file")

    def wait_for(self, modality: str, n: int, timeout: float = 20.0) -> list[dict]:
        deadline = time.time() + timeout
        while True:
            found = self.find(modality)
            if len(found) >= n or time.time() > deadline:
                return found
            time.sleep(0.2)


STORAGE = {  # modality -> SOP class
    "CR": "1.2.840.10008.5.1.4.1.1.1",  # CR Image Storage
    "DX": "1.2.840.10008.5.1.4.1.1.1.1",  # Digital X-Ray Image Storage - For Presentation
    "DX-processing": "1.2.840.10008.5.1.4.1.1.1.1.1",  # Digital X-Ray Image Storage - For Processing
}


def cr_film(
    jpeg: Path, out: Path, compressed: bool = True, view: str = "PA", patient: str = "DOE^JANE", kind: str = "CR"
):
    """A CR (or DX, `kind`) film around a dataset X-ray: its grey pixels as JPEG Baseline (8-bit, one
    component), or uncompressed (Explicit VR Little Endian). Returns the SOP Instance UID."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import ExplicitVRLittleEndian, JPEGBaseline8Bit, generate_uid

    grey = cv2.imread(str(jpeg), cv2.IMREAD_GRAYSCALE)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = STORAGE[kind]
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = JPEGBaseline8Bit if compressed else ExplicitVRLittleEndian
    ds = FileDataset(str(out), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.Modality, ds.BodyPartExamined, ds.ViewPosition = kind[:2], "CHEST", view
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = patient, "PID-0042", "20200101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20261129", "080000", "1", "ACC1"
    ds.ReferringPhysicianName, ds.SeriesNumber, ds.InstanceNumber = "", 1, 1
    ds.Rows, ds.Columns = grey.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 8
    ds.HighBit, ds.PixelRepresentation = 7, 0
    if compressed:
        ok, jpg = cv2.imencode(".jpg", grey, [cv2.IMWRITE_JPEG_QUALITY, 95])
        ds.PixelData = encapsulate([jpg.tobytes()])
        ds["PixelData"].VR = "OB"
        ds.LossyImageCompression = "01"
    else:
        ds.PixelData = grey.tobytes()
    ds.save_as(out, enforce_file_format=True)
    return str(ds.SOPInstanceUID)


def storescu(port: int, *files: Path, calling: str = "XRAY01", called: str = "EDGEPNEUMO") -> str:
    """DCMTK's storescu sends the files (JPEG lossy proposed too); its verbose output, to read statuses from."""
    cmd = [need("storescu"), "-v", "-xy", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, files)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    return p.stdout + p.stderr


def sr_items(ds) -> dict:
    """An SR's content items, flattened: concept meaning -> item (the last one wins)."""
    out = {}

    def walk(seq):
        for item in seq:
            if "ConceptNameCodeSequence" in item:
                out[str(item.ConceptNameCodeSequence[0].CodeMeaning)] = item
            walk(item.get("ContentSequence", []))

    walk(ds.get("ContentSequence", []))
    return out
