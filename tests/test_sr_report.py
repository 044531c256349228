"""The SR and overlay objects (read back by pydicom, highdicom and DCMTK's dsrdump) and the outbox on its own
(a closed port as the archive that is down, pynetdicom's storage SCP as the one that comes back)."""

from __future__ import annotations

import subprocess
import time

import cv2
import numpy as np
import pytest
from conftest import REPO, synthetic_xray
from pacs_parts import cr_film, free_port, need, sr_items

pydicom = pytest.importorskip("pydicom")
hd = pytest.importorskip("highdicom")
pytest.importorskip("pynetdicom")

from edge_pneumo.apps.outbox import Destination, DestinationError, Outbox, OutboxOptions  # noqa: E402
from edge_pneumo.apps.sr_report import ReportContext, build_overlay_sc, build_sr, decision_of  # noqa: E402


@pytest.fixture(scope="module")
def ctx():
    from edge_pneumo.device.classifier import Classifier

    return ReportContext.from_classifier(Classifier.load(REPO / "exported", artifact="onnx_int8"))


@pytest.fixture()
def source(tmp_path):
    jpeg = tmp_path / "x.jpeg"
    cv2.imwrite(str(jpeg), synthetic_xray(np.random.default_rng(3), 1, 128))
    cr_film(jpeg, tmp_path / "cr.dcm")
    return pydicom.dcmread(tmp_path / "cr.dcm", stop_before_pixels=True)


ROWS = {
    "Pneumonia likely": {"status": "classified", "label": "PNEUMONIA", "probability": 0.93, "confidence": "confident"},
    "No pneumonia found": {"status": "classified", "label": "NORMAL", "probability": 0.02, "confidence": "confident"},
    "Indeterminate": {"status": "classified", "label": "NORMAL", "probability": 0.25, "confidence": "indeterminate"},
    "Not assessed": {"status": "rejected", "reason": "LL view; the model reads frontal (PA or AP) chest X-rays"},
}


@pytest.mark.parametrize("meaning", list(ROWS))
def test_each_decision_is_coded_and_dcmtk_reads_the_sr(meaning, source, ctx, tmp_path):
    row = ROWS[meaning]
    ds = build_sr(source, row, ctx)
    path = tmp_path / "sr.dcm"
    ds.save_as(path, enforce_file_format=True)
    dump = subprocess.run([need("dsrdump"), str(path)], capture_output=True, text=True)
    assert dump.returncode == 0 and "E:" not in dump.stderr, dump.stderr
    back = pydicom.dcmread(path)
    hd.sr.ComprehensiveSR.from_dataset(back)  # highdicom reads it as what it claims to be
    items = sr_items(back)
    assert items["Screening decision"].ConceptCodeSequence[0].CodeMeaning == meaning
    assert back.CodingSchemeIdentificationSequence[0].CodingSchemeDesignator == "99EDGEPN"
    assert back.StudyInstanceUID == source.StudyInstanceUID and back.SeriesInstanceUID != source.SeriesInstanceUID
    assert back.VerificationFlag == "UNVERIFIED" and back.CompletionFlag == "COMPLETE"
    ref = items["Source image"].ReferencedSOPSequence[0]
    assert ref.ReferencedSOPInstanceUID == source.SOPInstanceUID and ref.ReferencedSOPClassUID == source.SOPClassUID
    assert str(items["Model artifact sha256"].TextValue) == ctx.artifact_sha256 and len(ctx.artifact_sha256) == 64
    assert "shipped calibration" in str(items["Calibration in force"].TextValue)
    lo, hi = (
        float(items[k].MeasuredValueSequence[0].NumericValue)
        for k in ("Indeterminate band, lower limit", "Indeterminate band, upper limit")
    )
    assert lo <= float(items["Decision threshold"].MeasuredValueSequence[0].NumericValue) <= hi
    if meaning == "Not assessed":
        assert "Probability" not in items and "LL view" in str(items["Reason not assessed"].TextValue)
        assert "Finding" not in items  # no claim about pneumonia either way
    else:
        presence = items["Presence of property"].ConceptCodeSequence[0]
        assert presence.CodingSchemeDesignator == "SCT"
        assert items["Finding"].ConceptCodeSequence[0].CodeValue == "233604007"  # SNOMED CT: pneumonia
        assert abs(float(items["Probability"].MeasuredValueSequence[0].NumericValue) - row["probability"]) < 1e-9


def test_the_same_image_always_gets_the_same_report_uid(source, ctx):
    a, b = build_sr(source, ROWS["Indeterminate"], ctx), build_sr(source, ROWS["Indeterminate"], ctx)
    assert a.SOPInstanceUID == b.SOPInstanceUID and a.SeriesInstanceUID == b.SeriesInstanceUID
    other = source.copy()
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    c = build_sr(other, ROWS["Indeterminate"], ctx)
    assert c.SOPInstanceUID != a.SOPInstanceUID and c.SeriesInstanceUID == a.SeriesInstanceUID  # one series per study


def test_the_rows_own_decision_wins_and_a_site_calibration_is_named(source, ctx):
    row = {**ROWS["Pneumonia likely"], "decision": "indeterminate", "site": "clinic-7", "calibrated_on": "2026-11-20"}
    assert decision_of(row) == "indeterminate"
    items = sr_items(build_sr(source, row, ctx))
    assert items["Screening decision"].ConceptCodeSequence[0].CodeMeaning == "Indeterminate"
    assert "clinic-7" in str(items["Calibration in force"].TextValue)


def test_a_sender_that_leaves_out_type_2_attributes_still_gets_a_report(source, ctx):
    for key in ("PatientName", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber"):
        delattr(source, key)
    ds = build_sr(source, ROWS["No pneumonia found"], ctx)
    assert ds.StudyInstanceUID == source.StudyInstanceUID and ds.PatientBirthDate == ""
    assert build_overlay_sc(source, np.zeros((8, 8, 3), np.uint8), ROWS["No pneumonia found"], ctx).Rows == 8


def test_the_overlay_is_a_secondary_capture_in_the_same_study(source, ctx):
    rgb = np.zeros((64, 80, 3), np.uint8)
    ds = build_overlay_sc(source, rgb, ROWS["Pneumonia likely"], ctx)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7" and ds.StudyInstanceUID == source.StudyInstanceUID
    assert ds.PhotometricInterpretation == "RGB" and (ds.Rows, ds.Columns) == (64, 80)
    assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID


@pytest.mark.parametrize("bad", ["ORTHANC", "ORTHANC@host", "@host:4242", "A" * 17 + "@h:1", "X@h:99999"])
def test_a_bad_destination_is_refused_in_words(bad):
    with pytest.raises(DestinationError, match="AET@HOST:PORT|AE title|port"):
        Destination.parse(bad)
    assert str(Destination.parse("ORTHANC@10.0.0.5:4242")) == "ORTHANC@10.0.0.5:4242"


def test_the_outbox_keeps_what_the_archive_did_not_take_and_sends_it_once_it_answers(source, ctx, tmp_path):
    from pynetdicom import AE, evt
    from pynetdicom.sop_class import ComprehensiveSRStorage

    port = free_port()  # nothing listens yet: the archive is down
    options = OutboxOptions(tmp_path / "outbox", Destination("ARCHIVE", "127.0.0.1", port), retry_first_s=0.05)
    box = Outbox(options)
    sr = build_sr(source, ROWS["No pneumonia found"], ctx)
    assert box.put("sr:1", sr) and not box.put("sr:1", sr)
    box.flush()
    status = box.status()
    assert status["pending"] == 1 and "ARCHIVE@127.0.0.1" in status["last_error"]
    box.stop()

    got = []
    scp = AE(ae_title="ARCHIVE")
    scp.add_supported_context(ComprehensiveSRStorage)
    server = scp.start_server(
        ("127.0.0.1", port), block=False, evt_handlers=[(evt.EVT_C_STORE, lambda e: got.append(e.dataset) or 0)]
    )
    try:
        box = Outbox(options)  # a new process: the table and the file are still there
        assert box.status()["pending"] == 1 and box.status()["last_error"]
        time.sleep(0.2)  # past the backoff
        box.flush()
        assert box.status()["pending"] == 0 and box.status()["sent"] == 1
        assert [d.SOPInstanceUID for d in got] == [sr.SOPInstanceUID]
        box.stop()
        import sqlite3

        db = sqlite3.connect(tmp_path / "outbox" / "outbox.sqlite")
        assert db.execute("SELECT COUNT(*) FROM outbox WHERE data IS NOT NULL").fetchone() == (0,)  # sent: dropped
        db.close()
    finally:
        server.shutdown()


@pytest.mark.parametrize(
    "args, words",
    [
        (["serve", "--forward", "ORTHANC@127.0.0.1:4242"], "add --dicom-port"),
        (["serve", "--dicom-port", "11199", "--allow-aet", "X", "--forward-heatmap"], "needs --forward"),
        (["serve", "--dicom-port", "11199", "--allow-aet", "X", "--forward", "ORTHANC"], "AET@HOST:PORT"),
        (["watch", ".", "--forward", "ORTHANC@h:0"], "port"),
    ],
)
def test_forward_options_are_checked_before_anything_starts(args, words, tmp_path):
    import sys
    from pathlib import Path

    exe = str(Path(sys.executable).parent / "edge-pneumo")
    extra = ["--model", str(REPO / "exported")] + (
        ["--results", str(tmp_path / "r.jsonl")] if args[0] == "serve" else []
    )
    p = subprocess.run([exe, *args, *extra], capture_output=True, text=True, timeout=60, cwd=tmp_path)
    assert p.returncode == 2 and words in p.stderr, p.stderr
    assert not list(tmp_path.glob("*.outbox"))


def test_without_highdicom_forwarding_says_which_pip_line_fixes_it():
    import sys

    code = (
        "import sys; sys.modules['highdicom'] = None\n"  # as if it were not installed
        "from edge_pneumo.apps.sr_report import require_highdicom\n"
        "from edge_pneumo.errors import MissingRuntimeError\n"
        "try:\n    require_highdicom()\nexcept MissingRuntimeError as e:\n    print(e)\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert "pip install 'edge-pneumo[dicom]'" in p.stdout, p.stdout + p.stderr


def test_a_missing_binary_skips_here_but_fails_in_ci(monkeypatch):
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="CI must have it"):
        need("no-such-binary-edge-pneumo")
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="not installed"):
        need("no-such-binary-edge-pneumo")
