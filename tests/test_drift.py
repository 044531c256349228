"""Drift watch (device/drift.py, `edge-pneumo drift`, serve's /api/v1/drift, watch's log), on real images:
nine adult films must trip it; a sample of the population the reference was measured on must not."""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import urllib.request
import zlib
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, real_data_dir

from edge_pneumo.device import drift
from edge_pneumo.lab.dataset import patient_id

EXE = str(Path(sys.executable).parent / "edge-pneumo")
ARTIFACT = REPO / "exported" / "pneumonia_int8.onnx"  # pinned: the default artifact follows the device profile
IMAGES = (".jpeg", ".jpg", ".png", ".dcm")


def _adult() -> Path:
    data = real_data_dir()
    folder = data.parent / "adult_cxr" if data else None
    if folder is None or not folder.is_dir():
        pytest.skip("adult_cxr films not found beside the dataset (set EDGE_PNEUMO_DATA)")
    return folder


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGES)


def _infer(paths: list[Path], out: Path, model: Path = ARTIFACT) -> Path:
    """`infer --format json` over paths, in this order (the order they 'arrived' in)."""
    cmd = [EXE, "infer", "-", "--model", str(model), "--format", "json", "--output", str(out)]
    subprocess.run(cmd, input="\n".join(map(str, paths)), text=True, capture_output=True, check=True)
    return out


def _drift(*args) -> subprocess.CompletedProcess:
    return subprocess.run([EXE, "drift", *map(str, args)], text=True, capture_output=True)


# --- the limits ------------------------------------------------------------------------


@pytest.mark.parametrize("n,x_ref,n_ref", [(500, 132, 5214), (9, 132, 5214), (500, 2, 5216), (120, 0, 100)])
def test_share_limits_keep_their_false_alarm_rate(n, x_ref, n_ref):
    """Windows drawn from the reference population (its rate uncertain by its own sample) alarm at most ALPHA."""
    rng = np.random.default_rng(0)
    _, high = drift.share_limits(n, x_ref, n_ref, two_sided=False)
    p = rng.beta(x_ref + 0.5, n_ref - x_ref + 0.5, 200_000)
    alarms = (rng.binomial(n, p) > high).mean()
    assert alarms <= 2 * drift.ALPHA
    # and the limit is not loose: one count lower would alarm more often than ALPHA
    if high > 0:
        assert (rng.binomial(n, p) > high - 1).mean() > drift.ALPHA / 2


def test_positive_share_is_judged_both_ways():
    low, high = drift.share_limits(500, 3744, 5214, two_sided=True)
    assert low is not None and low / 500 < 3744 / 5214 < high / 500
    assert abs(drift.z_upper(0.025) - 1.959964) < 1e-5


# --- the command on real images --------------------------------------------------------


@pytest.fixture(scope="module")
def adult_results(tmp_path_factory) -> Path:
    return _infer(_images(_adult()), tmp_path_factory.mktemp("adult") / "adult.jsonl")


def test_nine_adult_films_trip_the_training_reference(adult_results):
    r = _drift(adult_results, "--model", ARTIFACT)
    assert r.returncode == 1, r.stdout + r.stderr
    out = dict(re.findall(r"OUT (\w+): (.*)", r.stdout))
    assert {"out_of_population", "feature_distance"} <= set(out)
    assert "training population" in out["feature_distance"]


def test_training_images_do_not_trip_it(real_data, tmp_path):
    """500 train/ images in a random arrival order: the population the shipped reference was measured on."""
    paths = _images(real_data / "train")
    random.Random(1).shuffle(paths)
    r = _drift(_infer(paths[:500], tmp_path / "train.jsonl"), "--model", ARTIFACT)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "all within limits" in r.stdout


def test_the_test_split_does_not_trip_the_training_reference(real_data, tmp_path):
    """All 624 test/ images in a random arrival order: another set of the same hospital's children."""
    paths = _images(real_data / "test")
    random.Random(3).shuffle(paths)
    r = _drift(_infer(paths, tmp_path / "test.jsonl"), "--model", ARTIFACT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_site_reference_from_its_own_images(real_data, adult_results, tmp_path):
    """The test split plays a site: half of its patients make the reference, the other half must not trip it,
    the adult films must."""
    paths = _images(real_data / "test")
    random.Random(2).shuffle(paths)
    reference_half = [p for p in paths if zlib.crc32(patient_id(p.name).encode()) % 2 == 0]
    later = [p for p in paths if zlib.crc32(patient_id(p.name).encode()) % 2 == 1]
    site = tmp_path / "site_drift.json"
    made = _drift(_infer(reference_half, tmp_path / "ref.jsonl"), "--write-reference", site, "--source", "site A")
    assert made.returncode == 0, made.stderr
    doc = json.loads(site.read_text())
    ref = doc["artifacts"]["onnx_int8"]
    assert ref["summary"]["readable"] == len(reference_half)
    assert "path" not in json.dumps(doc)  # aggregates only: no file name leaves the site

    r = _drift(_infer(later, tmp_path / "later.jsonl"), "--site", site, "--format", "json")
    assert r.returncode == 0, r.stdout + r.stderr
    windows = [json.loads(line) for line in r.stdout.splitlines()]
    assert sum(w["readable"] for w in windows) == len(later) and all(not w["out"] for w in windows)
    assert windows[0]["reference"]["source"] == "site A"

    tripped = _drift(adult_results, "--site", site)
    assert tripped.returncode == 1 and "OUT feature_distance" in tripped.stdout
    site_file = tmp_path / "site.json"  # a site file from `calibrate` keeps its reference under "drift"
    site_file.write_text(json.dumps({"site": "A", "counts": {}, "drift": doc}))
    assert _drift(adult_results, "--site", site_file).returncode == 1


def test_a_site_file_from_calibrate_is_the_reference(real_data, tmp_path):
    """`calibrate` on half of test/'s patients: the other half, classified with the site file, stays within its
    population's limits; the adult films trip them; results made without the site file are refused."""
    if "calibrate" not in subprocess.run([EXE, "--help"], text=True, capture_output=True).stdout:
        pytest.skip("no `calibrate` command in this version")
    paths = _images(real_data / "test")
    random.Random(2).shuffle(paths)
    later = []
    for p in paths:
        if zlib.crc32(patient_id(p.name).encode()) % 2:
            later.append(p)
        else:
            (tmp_path / "site" / p.parent.name).mkdir(parents=True, exist_ok=True)
            (tmp_path / "site" / p.parent.name / p.name).symlink_to(p)
    site = tmp_path / "site.json"
    cmd = [EXE, "calibrate", str(tmp_path / "site"), "--out", str(site), "--model", str(ARTIFACT), "--name", "A"]
    subprocess.run(cmd, text=True, capture_output=True, check=True)

    def infer_site(images, out):
        cmd = [
            EXE,
            "infer",
            "-",
            "--model",
            str(ARTIFACT),
            "--site",
            str(site),
            "--format",
            "json",
            "--output",
            str(out),
        ]
        subprocess.run(cmd, input="\n".join(map(str, images)), text=True, capture_output=True, check=True)
        return out

    r = _drift(infer_site(later, tmp_path / "later.jsonl"), "--site", site)
    assert r.returncode == 0, r.stdout + r.stderr
    tripped = _drift(infer_site(_images(_adult()), tmp_path / "adult.jsonl"), "--site", site)
    assert tripped.returncode == 1 and "OUT feature_distance" in tripped.stdout
    plain = _drift(_infer(later, tmp_path / "plain.jsonl"), "--site", site)
    assert plain.returncode == 3 and "operating point" in plain.stderr


def test_plot(adult_results, tmp_path):
    pytest.importorskip("matplotlib")
    png = tmp_path / "drift.png"
    r = _drift(adult_results, "--model", ARTIFACT, "--plot", png)
    assert r.returncode == 1 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_files_get_a_clear_error(adult_results, tmp_path):
    missing = _drift(tmp_path / "nope.jsonl")
    assert missing.returncode == 3 and "no such results file" in missing.stderr and "Traceback" not in missing.stderr
    garbled = tmp_path / "garbled.jsonl"
    garbled.write_text(adult_results.read_text().splitlines()[0] + "\n{not json\n")
    r = _drift(garbled, "--model", ARTIFACT)
    assert r.returncode == 3 and "line 2: not a JSON row" in r.stderr
    not_rows = tmp_path / "other.jsonl"
    not_rows.write_text('{"a": 1}\n')
    assert "not a result row" in _drift(not_rows).stderr
    no_reference = tmp_path / "site.json"
    no_reference.write_text('{"site": "x"}')
    r = _drift(adult_results, "--site", no_reference)
    assert r.returncode == 3 and "holds no drift reference" in r.stderr


def test_a_reference_for_another_artifact_is_refused(adult_results, tmp_path):
    site = tmp_path / "site.json"
    assert _drift(adult_results, "--write-reference", site).returncode == 3  # nine rows are too few for a reference
    rows = [json.loads(line) for line in adult_results.read_text().splitlines()]
    many = tmp_path / "many.jsonl"
    many.write_text("".join(json.dumps(rows[i % len(rows)]) + "\n" for i in range(60)))
    assert _drift(many, "--write-reference", site).returncode == 0
    tflite = _infer(_images(_adult()), tmp_path / "tflite.jsonl", REPO / "exported" / "pneumonia_int8.tflite")
    if json.loads(tflite.read_text().splitlines()[0])["artifact"] != "tflite_int8":
        pytest.skip("LiteRT is not installed")
    r = _drift(tflite, "--site", site)
    assert r.returncode == 3 and "no reference for the artifact" in r.stderr


# --- serve and watch -------------------------------------------------------------------


def test_serve_reports_drift_over_its_last_results(tmp_path):
    pytest.importorskip("uvicorn")
    from test_serve import multipart, start_server

    proc, url, _ = start_server(ARTIFACT, tmp_path)
    try:
        with urllib.request.urlopen(f"{url}/api/v1/drift", timeout=10) as r:
            empty = json.load(r)
        assert empty["readable"] == 0 and empty["out"] == [] and empty["reference"]["source"] == "training population"
        for p in _images(_adult()):
            body, ctype = multipart(p.read_bytes(), p.name)
            req = urllib.request.Request(f"{url}/api/v1/classify", data=body, headers={"Content-Type": ctype})
            urllib.request.urlopen(req, timeout=60).read()
        with urllib.request.urlopen(f"{url}/api/v1/drift", timeout=10) as r:
            d = json.load(r)
        assert d["readable"] == 9 and d["window"] == drift.WINDOW
        assert {"out_of_population", "feature_distance"} <= set(d["out"])
        stats = {s["name"]: s for s in d["statistics"]}
        assert stats["feature_distance"]["value"] > stats["feature_distance"]["high"]
        assert stats["rejected"]["high"] is not None and stats["positive"]["low"] is not None
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_watch_logs_when_drift_leaves_its_limits(tmp_path):
    pytest.importorskip("watchdog")
    inbox = tmp_path / "in"
    inbox.mkdir()
    for p in _images(_adult()):
        (inbox / p.name).write_bytes(p.read_bytes())
    cmd = [EXE, "watch", str(inbox), "--once", "-o", str(tmp_path / "r.jsonl"), "--model", str(ARTIFACT)]
    r = subprocess.run(cmd, text=True, capture_output=True, timeout=120)
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("drift: "))
    assert "out-of-population warning" in line and "mean guard feature distance" in line
    again = subprocess.run(cmd, text=True, capture_output=True, timeout=120)  # a restart: nothing new to classify
    assert "0 classified" in again.stdout and "9 already recorded" in again.stdout
    assert any(x.startswith("drift: ") for x in again.stdout.splitlines())  # the window came back from the results
