"""PACS round trip with the real parts: DCMTK's storescu is the modality, the node (`serve --dicom-port
--forward`) classifies and answers with a DICOM SR, Orthanc is the archive. The shipped model; CR films
made here from dataset JPEGs, and the RSNA Secondary Capture film."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, real_data_dir
from pacs_parts import RSNA_FILM, Orthanc, cr_film, free_port, need, sr_items, storescu

pydicom = pytest.importorskip("pydicom")
pytest.importorskip("pynetdicom")
pytest.importorskip("highdicom")
pytest.importorskip("starlette")

MODEL = REPO / "exported"
ADULT = (real_data_dir() or REPO.parent / "shared" / "data" / "chest_xray").parent / "adult_cxr"
pytestmark = pytest.mark.realdata


@pytest.fixture()
def films(tmp_path):
    """Six films around test-split JPEGs, (path, SOP UID): CR, DX for presentation, CR, DX for processing,
    CR, CR; even ones JPEG Baseline, odd ones uncompressed."""
    data = real_data_dir()
    if data is None or not (ADULT / RSNA_FILM).exists():
        pytest.skip("the chest X-ray dataset and adult_cxr/ are needed (set EDGE_PNEUMO_DATA)")
    jpegs = (
        sorted((data / "test" / "NORMAL").glob("*.jpeg"))[:3] + sorted((data / "test" / "PNEUMONIA").glob("*.jpeg"))[:3]
    )
    out = []
    for i, j in enumerate(jpegs):
        path = tmp_path / f"cr{i}.dcm"
        kind = {1: "DX", 3: "DX-processing"}.get(i, "CR")
        out.append((path, cr_film(j, path, compressed=i % 2 == 0, kind=kind)))
    return out


def start_node(tmp: Path, orthanc: Orthanc, *extra: str):
    """`edge-pneumo serve` with a DICOM node forwarding to Orthanc; (process, http url, dicom port)."""
    port, dport = free_port(), free_port()
    log = open(tmp / "node.log", "a")
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "edge-pneumo"), "serve", "--model", str(MODEL), "--port", str(port)]
        + ["--dicom-port", str(dport), "--allow-aet", "XRAY01", "--results", str(tmp / "dicom.jsonl")]
        + ["--forward", orthanc.destination, "--forward-retry-max", "0.5", *extra],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 60
    while time.time() < deadline:
        try:
            urllib.request.urlopen(url + "/healthz", timeout=1).read()
            return proc, url, dport
        except OSError:
            if proc.poll() is not None:
                raise AssertionError((tmp / "node.log").read_text()[-3000:])
            time.sleep(0.1)
    proc.kill()
    raise AssertionError("the node did not start")


def info(url: str) -> dict:
    with urllib.request.urlopen(url + "/api/v1/info", timeout=5) as r:
        return json.loads(r.read())


def rows(tmp: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp / "dicom.jsonl").read_text().splitlines()]


def srs_by_source(orthanc: Orthanc) -> dict[str, list]:
    """Source SOP Instance UID -> the SRs in the archive that reference it."""
    out: dict[str, list] = {}
    for inst in orthanc.find("SR"):
        ds = pydicom.dcmread(io.BytesIO(orthanc.file(inst["ID"])))
        ref = sr_items(ds)["Source image"].ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        out.setdefault(str(ref), []).append(ds)
    return out


def wait_until(check, timeout: float = 20.0):
    deadline = time.time() + timeout
    while not check() and time.time() < deadline:
        time.sleep(0.2)
    return check()


def test_films_answered_in_the_archive_across_an_outage(films, tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc").start()
    proc, url, dport = start_node(tmp_path, orthanc, "--forward-heatmap")
    try:
        lateral = tmp_path / "lateral.dcm"
        lateral_uid = cr_film(_jpeg(0), lateral, view="LL")
        out = storescu(dport, films[0][0], ADULT / RSNA_FILM, lateral)
        assert out.count("Received Store Response (Success)") == 2, out
        assert "Received Store Response (Error: CannotUnderstand)" in out, out  # refused: a failure status
        status = _send_with_pynetdicom(dport, lateral)  # sent again: the same answer, with the reason
        assert status.Status == 0xC001 and "LL view" in status.ErrorComment, status
        rsna_uid = str(pydicom.dcmread(ADULT / RSNA_FILM, stop_before_pixels=True).SOPInstanceUID)

        orthanc.wait_for("SR", 3)
        orthanc.wait_for("OT", 2)
        by_source = srs_by_source(orthanc)
        assert sorted(by_source) == sorted([films[0][1], rsna_uid, lateral_uid])
        assert all(len(v) == 1 for v in by_source.values())
        assert len(orthanc.find("OT")) == 2  # the overlays of the two classified films
        recorded = {r["sop_instance_uid"]: r for r in rows(tmp_path)}
        sha = json.loads((MODEL / "manifest.json").read_text())
        for uid in (films[0][1], rsna_uid):
            sr, row = by_source[uid][0], recorded[uid]
            items = sr_items(sr)
            src = films[0][0] if uid == films[0][1] else ADULT / RSNA_FILM
            source = pydicom.dcmread(src, stop_before_pixels=True)
            assert sr.StudyInstanceUID == source.StudyInstanceUID and sr.SeriesInstanceUID != source.SeriesInstanceUID
            assert sr.SOPClassUID == "1.2.840.10008.5.1.4.1.1.88.33"  # Comprehensive SR
            assert row["status"] == "classified"
            decision = items["Screening decision"].ConceptCodeSequence[0].CodeMeaning
            expected = {"NORMAL": "No pneumonia found", "PNEUMONIA": "Pneumonia likely"}[row["label"]]
            assert decision == ("Indeterminate" if row["confidence"] == "indeterminate" else expected)
            p = float(items["Probability"].MeasuredValueSequence[0].NumericValue)
            assert abs(p - row["probability"]) < 1e-5
            art = str(items["Model artifact sha256"].TextValue)
            assert art.startswith(row["sha256"]) and art in json.dumps(sha)
            assert str(items["Algorithm Version"].TextValue) == row["model_version"]
            assert "not verified by a radiologist" in str(items["Comment"].TextValue)
            assert "Decision threshold" in items and "Calibration in force" in items
        refused = sr_items(by_source[lateral_uid][0])
        assert refused["Screening decision"].ConceptCodeSequence[0].CodeMeaning == "Not assessed"
        assert "LL view" in str(refused["Reason not assessed"].TextValue)
        assert recorded[lateral_uid]["status"] == "rejected" and "LL view" in recorded[lateral_uid]["reason"]

        sr_file = tmp_path / "one_sr.dcm"
        by_source[rsna_uid][0].save_as(sr_file)
        check = subprocess.run([need("dsrdump"), str(sr_file)], capture_output=True, text=True)
        assert check.returncode == 0 and "E:" not in check.stderr, check.stderr
        assert "Pneumonia" in check.stdout

        # the archive goes down: three more films are answered, queued, and arrive once it is back
        orthanc.stop()
        out = storescu(dport, *[f for f, _ in films[1:4]])
        assert out.count("Received Store Response (Success)") == 3, out
        assert wait_until(lambda: info(url)["outbox"]["last_error"] is not None)
        box = info(url)["outbox"]
        assert box["pending"] >= 3 and box["destination"] == orthanc.destination
        page = urllib.request.urlopen(url + "/", timeout=5).read().decode()
        assert "api/v1/info" in page and "PACS outbox" in page  # the page reads and shows the same
        orthanc.start()
        orthanc.wait_for("SR", 6)
        by_source = srs_by_source(orthanc)
        assert len(by_source) == 6 and all(len(v) == 1 for v in by_source.values())
        assert {uid for _, uid in films[1:4]} <= set(by_source)
        assert wait_until(lambda: info(url)["outbox"]["pending"] == 0)
        final = rows(tmp_path)
        assert len(final) == 6  # CR, DX for presentation and for processing, SC: every chest film classified
        assert all(r["status"] == "classified" for r in final if r["sop_instance_uid"] != lateral_uid), final
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        orthanc.stop()
    assert "DOE" not in (tmp_path / "node.log").read_text()  # no patient data in the log


def _send_with_pynetdicom(port: int, path: Path):
    from pynetdicom import AE

    ds = pydicom.dcmread(path)
    ae = AE(ae_title="XRAY01")
    ae.add_requested_context(ds.SOPClassUID, ds.file_meta.TransferSyntaxUID)
    assoc = ae.associate("127.0.0.1", port, ae_title="EDGEPNEUMO")
    assert assoc.is_established
    try:
        return assoc.send_c_store(ds)
    finally:
        assoc.release()


def _jpeg(i: int) -> Path:
    return sorted((real_data_dir() / "test" / "NORMAL").glob("*.jpeg"))[i]


def test_kill_9_mid_outbox_leaves_exactly_one_sr_per_image(films, tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc")  # not started yet: the archive is down, the outbox fills
    proc, url, dport = start_node(tmp_path, orthanc)
    sent = films[:4]
    try:
        out = storescu(dport, *[f for f, _ in sent])
        assert out.count("Received Store Response (Success)") == len(sent), out
        assert info(url)["outbox"]["pending"] == len(sent)
        orthanc.start()  # the sender's next try (backoff at most 0.5 s here) starts emptying the outbox ...
        deadline = time.time() + 20
        while not orthanc.find("SR") and time.time() < deadline:
            time.sleep(0.02)
        proc.send_signal(signal.SIGKILL)  # ... and the node dies as soon as the first SR has arrived
        proc.wait(timeout=10)
        at_kill = len(orthanc.find("SR"))
        proc, url, dport = start_node(tmp_path, orthanc)
        out = storescu(dport, *[f for f, _ in sent])  # the modality, unsure, sends everything again
        assert out.count("Received Store Response (Success)") == len(sent), out
        orthanc.wait_for("SR", len(sent))
        assert wait_until(lambda: info(url)["outbox"]["pending"] == 0)
        time.sleep(0.5)
        by_source = srs_by_source(orthanc)
        assert sorted(by_source) == sorted(uid for _, uid in sent), at_kill
        assert all(len(v) == 1 for v in by_source.values()), at_kill
        assert sorted(r["sop_instance_uid"] for r in rows(tmp_path)) == sorted(uid for _, uid in sent)
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        orthanc.stop()


def test_watch_sends_an_sr_for_a_dicom_file(films, tmp_path):
    orthanc = Orthanc(tmp_path / "orthanc").start()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "film.dcm").write_bytes(films[5][0].read_bytes())
    try:
        p = subprocess.run(
            [str(Path(sys.executable).parent / "edge-pneumo"), "watch", str(inbox), "--once", "--model", str(MODEL)]
            + ["--output", str(tmp_path / "watch.jsonl"), "--stable-seconds", "0", "--forward", orthanc.destination],
            capture_output=True,
            text=True,
            timeout=120,
            env={**os.environ},
        )
        assert p.returncode == 0, p.stdout + p.stderr
        found = orthanc.wait_for("SR", 1, timeout=5)
        assert len(found) == 1
        assert list(srs_by_source(orthanc)) == [films[5][1]]
    finally:
        orthanc.stop()


@pytest.mark.parametrize(
    "syntax", ["RLELossless", "JPEGLSLossless", "JPEG2000Lossless", "DeflatedExplicitVRLittleEndian"]
)
def test_the_node_classifies_films_in_other_transfer_syntaxes(syntax, films, tmp_path):
    """No archive: the node in this process, pynetdicom as the modality, one film compressed by pydicom."""
    from edge_pneumo.apps.dicom_node import DicomNode
    from edge_pneumo.apps.ledger import ResultSink
    from edge_pneumo.device.classifier import Classifier

    uid = getattr(pydicom.uid, syntax)
    ds = pydicom.dcmread(films[1][0])  # uncompressed DX
    try:
        if syntax.startswith("Deflated"):
            ds.file_meta.TransferSyntaxUID = uid
        elif syntax.startswith("JPEG2000"):  # pydicom's J2K encoder needs openjpeg; Pillow writes the codestream
            from PIL import Image

            buf = io.BytesIO()
            Image.fromarray(ds.pixel_array).save(buf, format="JPEG2000", no_jp2=True, irreversible=False)
            ds.PixelData = pydicom.encaps.encapsulate([buf.getvalue()])
            ds["PixelData"].VR = "OB"
            ds.file_meta.TransferSyntaxUID = uid
        else:
            ds.compress(uid, generate_instance_uid=False)
    except Exception as e:  # an encoder this installation lacks says nothing about the node
        pytest.skip(f"pydicom cannot encode {syntax} here ({type(e).__name__})")
    path = tmp_path / "film.dcm"
    ds.save_as(path, enforce_file_format=True)
    port = free_port()
    sink = ResultSink(tmp_path / "dicom.jsonl", key_field="sop_instance_uid")
    node = DicomNode(Classifier.load(MODEL), sink, port, allowed=["XRAY01"], host="127.0.0.1")
    node.start()
    try:
        status = _send_with_pynetdicom(port, path)
    finally:
        node.stop()
        sink.close()
    assert status.Status == 0x0000, status
    (row,) = rows(tmp_path)
    assert row["status"] == "classified" and row["sop_instance_uid"] == films[1][1]
