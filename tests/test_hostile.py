"""Hostile inputs (issue 25): decompression bombs are refused from their headers on every front end,
the long-running front ends cap their decodes, fuzzing finds are regression tests, and real films
are classified exactly as before the pixel budget existed (rows saved on main before it)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import cv2
import hostile_files as hf
import numpy as np
import pytest
from conftest import REPO, real_data_dir, synthetic_xray

from edge_pneumo.decoders import limits
from edge_pneumo.decoders.decode import decode_bytes, read_grey
from edge_pneumo.errors import EdgePneumoError, InputImageError, InputRejected, MissingRuntimeError

SHIPPED = REPO / "exported"
EXE = str(Path(sys.executable).parent / "edge-pneumo")
SIDE = 9000  # 81 MP: over the 60 MP default, and quick to make
# A child's peak RSS: VmHWM starts afresh at exec (ru_maxrss would keep this test process's high-water mark).
PEAK_MB = "print([int(x.split()[1]) // 1024 for x in open('/proc/self/status') if x.startswith('VmHWM')][0])\n"
pydicom = pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def bombs(tmp_path_factory) -> dict[str, Path]:
    return hf.write_bombs(tmp_path_factory.mktemp("bombs"), SIDE)


@pytest.fixture(scope="module")
def good_png(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("good") / "good.png"
    cv2.imwrite(str(p), synthetic_xray(np.random.default_rng(3), 1, 128))
    return p


def _rows(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


# -- the budget in the decoders ------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(hf.MAKERS))
def test_every_format_bomb_is_refused_from_its_header(bombs, name):
    with pytest.raises(limits.ImageTooLarge) as e:
        read_grey(bombs[name])
    text = str(e.value)
    assert text.startswith(str(bombs[name])) and limits.is_over_budget(text)
    assert f"{SIDE} x {SIDE} px" in text or "inflates" in text


def test_the_issue_s_png_bomb_is_refused_without_its_memory(tmp_path):
    """The 0.88 MB 30000 x 30000 PNG: decoded, it costs 1.8 GB; refused, the process stays small."""
    bomb = hf.write_bombs(tmp_path, hf.SIDE, ["bomb.png"])["bomb.png"]
    assert bomb.stat().st_size < 1_000_000
    code = (
        "import sys\n"
        "from edge_pneumo.decoders.decode import read_grey\n"
        "from edge_pneumo.decoders.limits import ImageTooLarge\n"
        "try:\n    read_grey(sys.argv[1])\nexcept ImageTooLarge as e:\n    print(e)\n" + PEAK_MB
    )
    out = subprocess.run([sys.executable, "-c", code, str(bomb)], capture_output=True, text=True, timeout=120)
    message, peak_mb = out.stdout.strip().splitlines()
    assert "30000 x 30000 px (900.0 MP)" in message and int(peak_mb) < 300, out


def test_png_and_bmp_sizes_are_read_as_imagesize_reads_them_and_their_bombs_need_no_imagesize(tmp_path, good_png):
    import imagesize

    from edge_pneumo.decoders.limits import bmp_size, png_size

    bombs = hf.write_bombs(tmp_path, hf.SIDE, ["bomb.png", "bomb.bmp"])
    grey = synthetic_xray(np.random.default_rng(4), 1, 96)[:, :80]
    cv2.imwrite(str(tmp_path / "grey.bmp"), grey)
    cv2.imwrite(str(tmp_path / "colour.bmp"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    top_down = bytearray((tmp_path / "grey.bmp").read_bytes())
    top_down[22:26] = (-96).to_bytes(4, "little", signed=True)  # a top-down BMP: negative height
    (tmp_path / "top_down.bmp").write_bytes(bytes(top_down))
    adult = REPO.parent / "shared" / "data" / "adult_cxr"
    pngs = [good_png, bombs["bomb.png"], *(sorted(adult.glob("*.png")) if adult.is_dir() else [])]
    bmps = [bombs["bomb.bmp"], *(tmp_path / f for f in ("grey.bmp", "colour.bmp", "top_down.bmp"))]
    for reader, files in ((png_size, pngs), (bmp_size, bmps)):
        for p in files:
            w, h = imagesize.get(p, exif_rotation=False)
            assert reader(p.read_bytes()) == (w, abs(h)), p
    assert bmp_size(tmp_path.joinpath("top_down.bmp").read_bytes()) == (80, 96)
    assert png_size(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20) is None  # no IHDR first: imagesize decides
    assert bmp_size(b"BM" + b"\x00" * 12 + (12).to_bytes(4, "little") + b"\x00" * 8) is None  # core header
    code = (
        "import sys\n"
        "from edge_pneumo.decoders.decode import read_grey\n"
        "from edge_pneumo.decoders.limits import ImageTooLarge\n"
        "for f in sys.argv[1:]:\n"
        "    try:\n        read_grey(f)\n    except ImageTooLarge:\n        pass\n"
        "print('imagesize' in sys.modules)\n"
    )
    files = [str(bombs["bomb.png"]), str(bombs["bomb.bmp"])]
    out = subprocess.run([sys.executable, "-c", code, *files], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out


def test_the_budget_comes_from_the_environment_and_the_option(monkeypatch, good_png):
    monkeypatch.delenv(limits.ENV, raising=False)
    assert limits.max_pixels() == limits.DEFAULT_MAX_PIXELS
    read_grey(good_png)
    monkeypatch.setenv(limits.ENV, "10000")  # 128 x 128 = 16,384 px
    with pytest.raises(limits.ImageTooLarge, match=r"128 x 128 px"):
        read_grey(good_png)
    limits.set_max_pixels(20_000)
    assert os.environ[limits.ENV] == "20000" and read_grey(good_png).pixels.shape == (128, 128)
    monkeypatch.setenv(limits.ENV, "lots")
    with pytest.raises(EdgePneumoError, match="EDGE_PNEUMO_MAX_PIXELS"):
        limits.max_pixels()


def test_a_jpeg_whose_frame_header_hides_behind_big_app_segments_is_still_sized(monkeypatch):
    """The SOF is found past 64 kB of APPn segments (the old reader stopped there)."""
    small = hf.small_jpeg()
    app = b"\xff\xe1" + (65533 + 2).to_bytes(2, "big")[-2:] + bytes(65533)
    padded = small[:2] + app + app + small[2:]
    monkeypatch.setenv(limits.ENV, "1000")
    with pytest.raises(limits.ImageTooLarge, match="224 x 224 px"):
        decode_bytes(padded, "padded.jpeg")


# -- every front end -------------------------------------------------------------------------


def test_infer_fails_the_bomb_rows_and_classifies_the_rest(bombs, good_png):
    files = [str(bombs["bomb.png"]), str(good_png), str(bombs["bomb_rows.dcm"])]
    r = subprocess.run([EXE, "infer", "--model", str(SHIPPED), "-f", "json", *files], capture_output=True, text=True)
    rows = {row["path"]: row for row in _rows(r.stdout)}
    assert r.returncode == 1, r.stderr
    assert rows[str(good_png)]["status"] in ("classified", "rejected")
    for f in (files[0], files[2]):
        assert rows[f]["status"] == "failed" and limits.is_over_budget(rows[f]["reason"]) and f in rows[f]["reason"]
    r = subprocess.run(  # --max-pixels (the fast entry) reaches the decoders
        [EXE, "infer", "--model", str(SHIPPED), "-f", "json", "--max-pixels", "1000", str(good_png)],
        capture_output=True,
        text=True,
    )
    assert "128 x 128 px" in _rows(r.stdout)[0]["reason"]


def test_watch_records_a_failed_row_for_a_bomb(tmp_path, bombs, good_png):
    inbox = tmp_path / "in"
    inbox.mkdir()
    for p in (bombs["bomb.tiff"], good_png):
        (inbox / p.name).write_bytes(p.read_bytes())
    out = tmp_path / "r.jsonl"
    r = subprocess.run(
        [EXE, "watch", str(inbox), "--once", "--model", str(SHIPPED), "-o", str(out), "--stable-seconds", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    rows = {Path(row["path"]).name: row for row in _rows(out.read_text())}
    assert r.returncode == 0, r.stderr
    assert rows["bomb.tiff"]["status"] == "failed" and "TIFF header announces" in rows["bomb.tiff"]["reason"]
    assert rows["good.png"]["status"] in ("classified", "rejected")


def test_a_batch_partition_fails_only_its_bomb_and_hands_the_budget_to_its_worker(monkeypatch, bombs, good_png):
    pytest.importorskip("dask")
    from edge_pneumo.apps.batch import classify_partition

    monkeypatch.setenv(limits.ENV, str(limits.DEFAULT_MAX_PIXELS))  # restored afterwards (the worker sets it)
    rows = classify_partition([str(bombs["bomb.bmp"]), str(good_png)], str(SHIPPED), None)
    assert rows[0]["status"] == "failed" and "BMP header announces" in rows[0]["reason"]
    assert rows[1]["status"] in ("classified", "rejected")
    rows = classify_partition([str(good_png)], str(SHIPPED), None, max_pixels=1000)
    assert rows[0]["status"] == "failed" and limits.is_over_budget(rows[0]["reason"])


def test_serve_refuses_bombs_from_four_clients_and_keeps_answering_healthz(tmp_path, bombs, good_png):
    pytest.importorskip("starlette")
    from test_serve import post, start_server

    proc, url, _ = start_server(SHIPPED, tmp_path)
    names = sorted(bombs)
    answers, health = [], []

    def client(k):
        for i in range(5):
            name = names[(k * 5 + i) % len(names)]
            status, body, _ = post(url, bombs[name].read_bytes(), token=None, filename=name)
            answers.append((name, status, body.get("error", "")))

    try:
        clients = [threading.Thread(target=client, args=(k,)) for k in range(4)]
        for c in clients:
            c.start()
        while any(c.is_alive() for c in clients):
            with urllib.request.urlopen(f"{url}/healthz", timeout=10) as r:
                health.append(r.status)
            time.sleep(0.02)
        for c in clients:
            c.join()
        status, body, _ = post(url, good_png.read_bytes(), token=None)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert len(answers) == 20 and health and set(health) == {200}
    for name, code, error in answers:
        assert code == 503 or (code == 422 and limits.is_over_budget(error)), (name, code, error)
    assert status == 200 and body["status"] in ("classified", "rejected"), body


def test_the_dicom_node_answers_bombs_with_a_failure_naming_the_budget(tmp_path):
    pytest.importorskip("pynetdicom")
    from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEGBaseline8Bit
    from pynetdicom import AE
    from pynetdicom.sop_class import ComputedRadiographyImageStorage
    from test_serve import free_port, start_server

    dport, results = free_port(), tmp_path / "dicom.jsonl"
    proc, _, _ = start_server(
        SHIPPED, tmp_path, "--dicom-port", str(dport), "--allow-aet", "XRAY01", "--results", str(results)
    )
    bomb = pydicom.dcmread(__import__("io").BytesIO(hf.dicom_jpeg_bomb(SIDE, SIDE, SIDE)))
    try:
        time.sleep(0.5)
        ae = AE(ae_title="XRAY01")
        ae.add_requested_context(ComputedRadiographyImageStorage, JPEGBaseline8Bit)
        assoc = ae.associate("127.0.0.1", dport, ae_title="EDGEPNEUMO")
        assert assoc.is_established
        status = assoc.send_c_store(bomb)
        assoc.release()
        ae = AE(ae_title="XRAY01")  # the deflated bomb, sent deflated: checked before pynetdicom inflates it
        ae.add_requested_context(ComputedRadiographyImageStorage, DeflatedExplicitVRLittleEndian)
        assoc = ae.associate("127.0.0.1", dport, ae_title="EDGEPNEUMO")
        assert assoc.is_established
        deflated = pydicom.dcmread(__import__("io").BytesIO(hf.dicom_deflate_bomb(SIDE)))
        deflated_status = assoc.send_c_store(deflated)
        assoc.release()
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert int(status.Status) == 0xC000 and "pixel budget" in str(status.ErrorComment)
    assert int(deflated_status.Status) == 0xC000 and "pixel budget" in str(deflated_status.ErrorComment)
    row = _rows(results.read_text())[0]
    assert row["status"] == "failed" and limits.is_over_budget(row["reason"])


# -- fuzzing: its finds, and a short deterministic slice ----------------------------------------


def _cr_bytes(**tags) -> bytes:
    import io

    from pydicom.uid import ExplicitVRLittleEndian

    ds = hf._cr_dataset(64, 64)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = synthetic_xray(np.random.default_rng(5), 0, 64).tobytes()
    for k, v in tags.items():
        setattr(ds.file_meta if k == "TransferSyntaxUID" else ds, k, v)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def test_fuzz_find_an_element_flood_is_refused_not_parsed_for_seconds():
    code = "import sys; sys.path.insert(0, 'tests'); import hostile_files as hf\n" + (
        "from edge_pneumo.decoders.decode import decode_bytes\n"
        "try:\n    decode_bytes(hf.dicom_element_flood(), 'flood')\nexcept Exception as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert "top-level elements" in out.stdout, out.stderr


def test_fuzz_finds_damaged_elements_and_bad_syntax_uids_are_failed_rows_not_tracebacks():
    data = _cr_bytes()
    at = data.index(b"UI", data.index(b"\x08\x00\x18\x00"))  # the SOPInstanceUID's VR
    with pytest.raises(InputImageError, match="damaged DICOM file"):
        decode_bytes(data[:at] + b"II" + data[at + 2 :], "unknown-vr.dcm")
    syntax = b"1.2.840.10008.1.2.1\x00"  # explicit VR little endian, as written
    assert data.count(syntax) == 1
    with pytest.raises(InputImageError):  # the Verification SOP class's UID where a transfer syntax belongs
        decode_bytes(data.replace(syntax, b"1.2.840.10008.1.1\x00\x00\x00"), "not-a-syntax.dcm")


def test_fuzz_find_a_jpeg_frame_of_height_0_is_refused_not_decoded_for_ever():
    """The SOF of a DICOM's JPEG frame says 224 x 0 px: 0 pixels for the budget, but pylibjpeg's libjpeg (which
    pydicom falls back to when simplejpeg refuses the frame) then decoded it for ever, past 1.6 GB. A JPEG
    frame with a side of 0 is now refused before decoding, by the pre-scan and by the pydicom path alike
    (a JPEG-LS one is left to its child process's time limit, tested above)."""
    code = (
        "import sys; sys.path.insert(0, 'tests'); import hostile_files as hf\n"
        "from edge_pneumo.decoders.decode import decode_bytes\n"
        "from edge_pneumo.decoders import dicom\n"
        "data = hf.dicom_jpeg_zero_height()\n"
        "for pre in (dicom.precheck, lambda data, name: None):\n"
        "    dicom.precheck = pre\n"
        "    try:\n        decode_bytes(data, 'dnl.dcm')\n    except Exception as e:\n        print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60)
    said = out.stdout.splitlines()
    assert len(said) == 2 and said[0] == said[1], out.stderr
    assert said[0].startswith("dnl.dcm: a JPEG frame in the DICOM announces 224 x 0 px: a side of 0")


def test_a_deflated_dicom_with_bytes_after_its_stream_decodes_and_never_loops():
    """pydicom's own deflated test file: zlib keeps its last 8 bytes as an unconsumed tail after the
    end of the stream, which once made the inflate cap loop forever."""
    from pydicom.data import get_testdata_file

    path = get_testdata_file("image_dfl.dcm")
    code = f"from edge_pneumo.decoders.decode import read_grey; print(read_grey({str(path)!r}).pixels.shape)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "(512, 512)", out.stderr


def test_a_progressive_jpeg_with_thousands_of_scans_is_refused_and_a_real_one_is_not():
    with pytest.raises(limits.ImageTooLarge, match="2006 scans of 2000 x 2000 px"):
        decode_bytes(hf.jpeg_scan_bomb(), "scans.jpeg")
    assert decode_bytes(hf.jpeg_scan_bomb(repeats=0), "progressive.jpeg", 128).pixels.shape == (250, 250)


def test_fuzz_find_a_png_chunk_claiming_4_gb_is_refused_before_opencv_allocates_it():
    """A 96 px PNG whose IDAT length says 0xFFFFE9D7: OpenCV 5 allocated the 4 GB before reading
    (4 GB of RSS, 16-38 s). Now refused from the chunk walk, in a process that stays small."""
    png = cv2.imencode(".png", synthetic_xray(np.random.default_rng(7), 0, 96))[1].tobytes()
    at = png.index(b"IDAT") - 4
    forged = png[:at] + (0xFFFFE9D7).to_bytes(4, "big") + png[at + 4 :]
    code = (
        "import sys\nfrom edge_pneumo.decoders.decode import decode_bytes\n"
        "try:\n    decode_bytes(sys.stdin.buffer.read(), 'forged.png')\nexcept Exception as e:\n    print(e)\n"
        + PEAK_MB
    )
    out = subprocess.run([sys.executable, "-c", code], input=forged, capture_output=True, timeout=120)
    message, peak_mb = out.stdout.decode().strip().splitlines()
    assert "cut short (or forged)" in message and "4,294,961,623 bytes" in message and int(peak_mb) < 300
    cut = png[: len(png) // 2]  # an honest PNG cut in the middle of its data: refused the same way
    with pytest.raises(InputImageError, match="cut short"):
        decode_bytes(cut, "cut.png")


def test_fuzz_find_a_jpeg_ls_frame_that_hangs_libjpeg_is_decoded_by_charls_and_refused(tmp_path):
    """A fuzz find (654 bytes, a mutated pydicom test file, rebuilt by `hf.fuzz_find`): pylibjpeg's libjpeg
    loops forever on its JPEG-LS frame; CharLS (pyjpegls) refuses it at once."""
    pytest.importorskip("jpeg_ls")
    path = tmp_path / "fuzz_jpegls_hang.dcm"
    path.write_bytes(hf.fuzz_find("jpegls_hang"))
    code = "import sys\nfrom edge_pneumo.decoders.decode import read_grey\n" + (
        "try:\n    read_grey(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120)
    assert out.stdout.startswith("InputImageError") and "cannot decode DICOM pixel data" in out.stdout, out


# read_grey's pixels for pydicom's valid JPEG-LS test files, hashed on main e95dc98, before the child process.
JPEG_LS_BEFORE = {
    "MR_small_jpeg_ls_lossless.dcm": "ce2751992d2ca918100dbe9a4a2dd98daee6c56c400e9063f2a927145d82a35c",
    "SC_rgb_jls_lossy_line.dcm": "4f8d155bd8bc5ca7fdc7a20fb3cb7d50090d6eaf640826edb892c3050e444c0b",
}


def test_fuzz_finds_jpeg_ls_frames_that_hang_charls_and_libjpeg_are_refused_in_their_child_process(tmp_path):
    """`hf.fuzz_find("jpegls_charls_hang")`: found after JPEG-LS moved to CharLS, which loops forever on its
    48-byte frame (as libjpeg does on "jpegls_hang"). A JPEG-LS frame is decoded in a child process killed
    at the time limit (2 s here): both files are refused naming themselves, libjpeg's too when it is the
    child's codec, and no child is left behind as a zombie. Run in a process of its own with a timeout,
    so a regression fails instead of hanging the suite."""
    pytest.importorskip("jpeg_ls")
    pytest.importorskip("psutil")
    files = {}
    for find in ("jpegls_charls_hang", "jpegls_hang"):
        files[find] = tmp_path / f"fuzz_{find}.dcm"
        files[find].write_bytes(hf.fuzz_find(find))
    code = (
        "import sys, time, psutil\nfrom edge_pneumo.decoders import isolated\n"
        "from edge_pneumo.decoders.decode import read_grey\n"
        "for path, inner in zip(sys.argv[1::2], sys.argv[2::2]):\n"
        "    isolated.INNER = (inner,)\n    t = time.monotonic()\n"
        "    try:\n        read_grey(path)\n    except Exception as e:\n        print(type(e).__name__, e)\n"
        "    print(round(time.monotonic() - t, 2), [c.status() for c in psutil.Process().children()])\n"
    )
    args = [str(files["jpegls_charls_hang"]), "pyjpegls", str(files["jpegls_hang"]), "pylibjpeg"]
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=120)
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 4, out
    for path, message, seconds_children in zip(args[::2], lines[::2], lines[1::2]):
        assert message.startswith(f"InputImageError {path}: JPEG-LS decode did not finish in 2 s; "), out
        assert message.endswith("the file's pixel data is likely corrupt"), out
        seconds, children = seconds_children.split(" ", 1)
        assert float(seconds) < 30 and children == "[]", out  # killed and reaped; the next file starts a new one


def test_a_jpeg_ls_decode_past_its_time_limit_is_killed_reaped_and_refused_and_the_next_one_decodes(monkeypatch):
    """The same path made certain: a valid 4 MP frame (~0.2 s to decode here) under a 10 ms limit."""
    pytest.importorskip("jpeg_ls")
    psutil = pytest.importorskip("psutil")
    from edge_pneumo.decoders import isolated

    pixels = (np.arange(2000 * 2000, dtype=np.uint32).reshape(2000, 2000) * 2654435761 % 4096).astype(np.uint16)
    big = hf.dicom_jpeg_ls(pixels, bits_stored=12)
    decode_bytes(big, "warm.dcm")  # the child is started and kept
    first = isolated._WORKER.proc.pid
    monkeypatch.setenv(limits.TIMEOUT_ENV, "0.01")
    monkeypatch.setattr(limits, "DECODE_S_PER_MP", 0.0)
    with pytest.raises(InputImageError, match=r"^big\.dcm: JPEG-LS decode did not finish in 0\.01 s; the file's pixel"):
        decode_bytes(big, "big.dcm")
    assert isolated._WORKER is None
    children = psutil.Process().children()
    assert first not in [c.pid for c in children] and all(c.status() != psutil.STATUS_ZOMBIE for c in children)
    monkeypatch.undo()
    assert decode_bytes(big, "again.dcm").pixels.shape == (2000, 2000)
    assert isolated._WORKER.proc.pid != first
    monkeypatch.setenv(limits.TIMEOUT_ENV, "soon")
    with pytest.raises(EdgePneumoError, match="EDGE_PNEUMO_DECODE_TIMEOUT_S='soon': not a number of seconds"):
        limits.decode_timeout(1)


def test_serve_refuses_a_hanging_jpeg_ls_upload_leaves_no_zombie_and_its_child_ends_with_it(tmp_path):
    """serve, the DICOM node and watch call the same decoder: a hanging upload is a 422 naming its time
    limit, the server goes on (a valid JPEG-LS CR afterwards is classified), it never holds a zombie,
    and its decoder child does not outlive it."""
    pytest.importorskip("starlette")
    pytest.importorskip("jpeg_ls")
    psutil = pytest.importorskip("psutil")
    from test_serve import post, start_server

    pixels = synthetic_xray(np.random.default_rng(8), 1, 256).astype(np.uint16) * 16
    proc, url, _ = start_server(SHIPPED, tmp_path)
    server = psutil.Process(proc.pid)
    try:
        hang = post(url, hf.fuzz_find("jpegls_charls_hang"), token=None, filename="hang.dcm")
        after_hang = server.children(recursive=True)
        good = post(url, hf.dicom_jpeg_ls(pixels, bits_stored=12), token=None, filename="cr.dcm")
        after_good = server.children(recursive=True)
        states = [c.status() for c in after_good]
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    assert hang[0] == 422 and "JPEG-LS decode did not finish in 2 s" in hang[1].get("error", ""), hang
    assert after_hang == [], after_hang  # the hung child was killed and reaped
    assert good[0] == 200 and good[1]["status"] in ("classified", "rejected"), good
    assert len(after_good) == 1 and psutil.STATUS_ZOMBIE not in states, states  # one child, kept for the next file
    gone, alive = psutil.wait_procs(after_good, timeout=10)
    assert not alive, alive


def test_a_valid_jpeg_ls_dicom_decodes_in_its_child_to_the_pixels_it_had_in_process(monkeypatch):
    """pydicom's JPEG-LS test files give read_grey's images of before; 12-bit unsigned lossless and signed
    near-lossless frames give pydicom's in-process arrays, through CharLS and through libjpeg."""
    pytest.importorskip("jpeg_ls")
    import hashlib
    import io

    from pydicom.data import get_testdata_file
    from pydicom.pixels import get_decoder
    from pydicom.uid import JPEGLSLossless

    from edge_pneumo.decoders import isolated

    for name, digest in JPEG_LS_BEFORE.items():
        assert hashlib.sha256(read_grey(get_testdata_file(name)).pixels.tobytes()).hexdigest() == digest, name
    rng = np.random.default_rng(4)
    unsigned = (synthetic_xray(rng, 1, 300)[:, :200].astype(np.uint16) * 16 + rng.integers(0, 16, (300, 200))).astype(
        np.uint16
    )
    signed = rng.integers(-2000, 2000, (120, 90)).astype(np.int16)
    inners = [p for p in isolated.INNER if p in get_decoder(JPEGLSLossless).available_plugins]
    for pixels, near in ((unsigned, 0), (signed, 2)):
        data = hf.dicom_jpeg_ls(pixels, near, 12)
        for inner in inners:
            monkeypatch.setattr(isolated, "INNER", (inner,))
            child = isolated.pixel_array(pydicom.dcmread(io.BytesIO(data)), "x.dcm")
            assert isolated._WORKER.plugin == inner
            ds = pydicom.dcmread(io.BytesIO(data))
            ds.pixel_array_options(decoding_plugin=inner)
            assert child.dtype == ds.pixel_array.dtype and np.array_equal(child, ds.pixel_array), (inner, near)
            assert near or np.array_equal(child, pixels)


def _seeds() -> list[bytes]:
    grey = synthetic_xray(np.random.default_rng(9), 1, 48)
    out = [cv2.imencode(ext, grey)[1].tobytes() for ext in (".jpg", ".png", ".tif", ".bmp")]
    out += [cv2.imencode(".png", grey.astype(np.uint16) * 257)[1].tobytes(), _cr_bytes()]
    out += [hf.png_bomb(1200), hf.jpeg_bomb(1200), hf.tiff_bomb(1200), hf.dicom_jpeg_bomb(64, 64, 1200)]
    return out


SEEDS = _seeds()


def test_a_deterministic_fuzz_slice_never_crashes_and_never_decodes_past_the_budget(monkeypatch):
    hypothesis = pytest.importorskip("hypothesis")
    from hypothesis import strategies as st

    monkeypatch.setenv(limits.ENV, "1000000")
    edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.integers(0, 255)), max_size=8)

    @hypothesis.settings(max_examples=400, derandomize=True, deadline=None, database=None)
    @hypothesis.given(st.sampled_from(range(len(SEEDS))), edits, st.integers(0, 1 << 20), st.booleans())
    def run(seed, changes, cut, as_dcm):
        data = bytearray(SEEDS[seed])
        for pos, value in changes:
            data[pos % len(data)] = value
        data = bytes(data[: max(1, cut % (len(data) + 1))] if cut % 3 == 0 else data)
        try:
            image = decode_bytes(data, "fuzz.dcm" if as_dcm else "fuzz", 32 if cut % 2 else None)
        except (InputImageError, InputRejected, MissingRuntimeError):
            return
        assert image.pixels.size <= 1_000_000 and image.pixels.dtype == np.uint8

    run()


# -- real films: exactly the rows of main before the budget -------------------------------------


@pytest.mark.realdata
def test_real_films_get_exactly_the_rows_they_got_before_the_budget(tmp_path):
    """Rows saved by tests/rows_baseline.py (at 743e67c with the budget off; see its docstring): the 624
    test images, the adult films, and two films of 59.99 MP (PNG and JPEG) just under the default budget."""
    import rows_baseline as rb

    data = real_data_dir()
    if data is None or not (data.parent / "adult_cxr").is_dir():
        pytest.skip("the chest X-ray dataset and the adult films are needed")
    saved = json.loads((REPO / "tests" / "data" / "rows_before_hostile.json").read_text())
    if rb.manifest_sha256() != saved["manifest_sha256"]:
        pytest.skip("the shipped model or guard changed since the rows were saved: remake them (rows_baseline.py)")
    paths = rb.inputs(data, data.parent / "adult_cxr")
    now = rb.rows(paths, data.parent)
    assert {k: v["file_sha256"] for k, v in now.items()} == {k: v["file_sha256"] for k, v in saved["rows"].items()}
    assert now == saved["rows"]
    big = rb.big_films(data.parent / "adult_cxr", tmp_path)
    now_big = rb.rows(big, tmp_path)
    made = {k: v["file_sha256"] for k, v in now_big.items()}
    if made != {k: v["file_sha256"] for k, v in saved["big_films"].items()}:
        pytest.skip(f"this OpenCV ({cv2.__version__}) encodes the 59.99 MP films differently from {saved['cv2']}")
    assert now_big == saved["big_films"]
