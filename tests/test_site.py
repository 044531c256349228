"""Site calibration: the band rules, the finite-sample bound, the head, site files, `calibrate` + `infer --site`."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO
from typer.testing import CliRunner

from edge_pneumo.apps.cli import app
from edge_pneumo.device.classifier import Calibration
from edge_pneumo.device.manifest import load_manifest
from edge_pneumo.device.scoring import BandError, decide, ordered_band
from edge_pneumo.device.site import SiteHead, load_site
from edge_pneumo.errors import EXIT_FAILED, EXIT_OK, ModelFileError
from edge_pneumo.lab.metrics import conformal_band, conformal_rank
from edge_pneumo.lab.site_fit import SiteData, SiteOptions, cross_fit_report, fit_head, fit_site

runner = CliRunner()
SHIPPED = REPO / "exported"


# -- the band rules ---------------------------------------------------------------------------


def test_ordered_band_keeps_a_good_band_and_widens_or_refuses_a_degenerate_one():
    assert ordered_band(0.5, 0.3, 0.7) == (0.3, 0.7, [])
    lo, hi, widened = ordered_band(0.353, 0.344, 0.178)  # the old shipped band: rule-in below the threshold
    assert lo == 0.344 and 0.353 < hi < 0.3531 and widened == ["rule_in"]
    lo, hi, widened = ordered_band(0.5, 0.6, 0.55)
    assert lo < 0.5 < hi and widened == ["rule_out"]
    with pytest.raises(BandError, match="rule-in point 0.1780 is not above the threshold 0.3530"):
        ordered_band(0.353, 0.344, 0.178, widen=False)


def test_a_decided_row_never_contradicts_its_label():
    cal = Calibration(0.35, 1.0, 0.30, 0.60)
    for p in np.linspace(0, 1, 1001):
        d = cal.decision(p)
        if d != "indeterminate":
            assert (d == "pneumonia") == (p >= cal.threshold)
    assert [decide(p, 0.3, 0.6) for p in (0.1, 0.3, 0.59, 0.6)] == [
        "no_pneumonia",
        "indeterminate",
        "indeterminate",
        "pneumonia",
    ]
    # an old manifest's degenerate band is clamped at run time: nothing ruled in below the threshold
    old = Calibration(0.353, 0.72, 0.344, 0.178)
    assert [old.decision(p) for p in (0.2, 0.35, 0.36)] == ["no_pneumonia", "indeterminate", "pneumonia"]


def test_conformal_band_uses_the_finite_sample_rank():
    pos = np.arange(1, 61) / 100.0  # 60 pneumonias: k = floor(0.03 * 61) = 1 -> the lowest score
    neg = np.arange(1, 40) / 1000.0  # 39 normals: m = floor(0.05 * 40) = 2 -> just above the 2nd highest
    y = np.r_[np.ones(60), np.zeros(39)]
    lo, hi = conformal_band(y, np.r_[pos, neg])
    assert lo == pytest.approx(0.01)
    assert 0.038 < hi < 0.0381
    # too few pneumonias for the promise (k = 0): nothing is ruled out; too few normals: nothing ruled in
    lo, hi = conformal_band(np.r_[np.ones(20), np.zeros(10)], np.r_[pos[:20], neg[:10]])
    assert lo == 0.0 and hi == 1.0


def test_conformal_rank_rounds_down_or_smooths_to_the_exact_promise():
    # 38 normals, 5%: alpha (n + 1) = 1.95 -> conservative rank 1 (promise 1/39 = 2.6%);
    # smoothed: rank 2 (2/39 = 5.1%) for a draw below 0.95, so that the average promise is exactly 5%
    assert conformal_rank(38, 0.05) == 1
    assert [conformal_rank(38, 0.05, u) for u in (0.0, 0.5, 0.949, 0.951, 0.999)] == [2, 2, 2, 1, 1]
    assert conformal_rank(62, 0.03) == 1 and conformal_rank(62, 0.03, 0.88) == 2 and conformal_rank(62, 0.03, 0.9) == 1
    # too few for even one rank: the smoothed rule still rules out with the matching probability
    assert conformal_rank(10, 0.03) == 0 and conformal_rank(10, 0.03, 0.1) == 1 and conformal_rank(10, 0.03, 0.5) == 0
    # an integer alpha (n + 1) has no fraction to smooth: both rules agree
    assert conformal_rank(39, 0.05) == conformal_rank(39, 0.05, 0.0) == 2


def test_the_smoothed_band_keeps_its_promise_exactly_and_decides_more():
    """62 pneumonias and 38 normals (a site of 100 at test prevalence), fitted 1,000 times and measured
    on new patients: the smoothed band's miss rates average the asked 3% and 5% (within simulation
    error); the conservative band's stay well under them and decide fewer images."""
    rng = np.random.default_rng(1)
    y = np.r_[np.ones(62, int), np.zeros(38, int)]
    new_pos = np.sort(rng.normal(2.0, 1.0, 200_000))
    new_neg = np.sort(rng.normal(-2.0, 1.0, 200_000))
    miss = {"smoothed": ([], []), "conservative": ([], [])}
    decided = {"smoothed": [], "conservative": []}
    for _ in range(1000):
        s = np.r_[rng.normal(2.0, 1.0, 62), rng.normal(-2.0, 1.0, 38)]
        for rule, draws in (("smoothed", tuple(rng.random(2))), ("conservative", None)):
            lo, hi = conformal_band(y, s, draws=draws)
            out = np.searchsorted(new_pos, lo) / len(new_pos)  # share of new pneumonias below rule-out
            inn = 1 - np.searchsorted(new_neg, hi) / len(new_neg)  # share of new normals at or above rule-in
            miss[rule][0].append(out)
            miss[rule][1].append(inn)
            undecided = (np.searchsorted(new_pos, hi) - np.searchsorted(new_pos, lo)) + (
                np.searchsorted(new_neg, hi) - np.searchsorted(new_neg, lo)
            )
            decided[rule].append(1 - undecided / (len(new_pos) + len(new_neg)))
    out_s, in_s = np.mean(miss["smoothed"][0]), np.mean(miss["smoothed"][1])
    out_c, in_c = np.mean(miss["conservative"][0]), np.mean(miss["conservative"][1])
    assert abs(out_s - 0.03) < 0.004 and abs(in_s - 0.05) < 0.006
    assert out_c < 0.022 and in_c < 0.032  # ranks 1 of 62 and 1 of 38: promises 1.6% and 2.6%
    assert np.mean(decided["smoothed"]) > np.mean(decided["conservative"]) + 0.02


def test_site_fit_records_its_band_ranks_and_is_reproducible():
    d = _site(n=100)
    a, b = fit_site(d, SiteOptions()), fit_site(d, SiteOptions())
    assert (a.rule_out, a.rule_in) == (b.rule_out, b.rule_in)  # the draws come from the data: same images, same file
    ranks = a.calibration(SiteOptions())["band_ranks"]
    n_pos, n_neg = int(d.y.sum()), int((1 - d.y).sum())
    assert ranks["rule"] == "smoothed" and ranks["rule_out"]["of"] == n_pos and ranks["rule_in"]["of"] == n_neg
    for end, alpha in (("rule_out", 0.03), ("rule_in", 0.05)):
        r = ranks[end]
        assert r["rank"] in (int(np.floor(alpha * (r["of"] + 1))), int(np.floor(alpha * (r["of"] + 1))) + 1)
        assert r["promise"] == pytest.approx(r["rank"] / (r["of"] + 1), abs=1e-4)
    c = fit_site(d, SiteOptions(band="conservative")).calibration(SiteOptions(band="conservative"))["band_ranks"]
    assert c["rule_in"]["rank"] == int(np.floor(0.05 * (n_neg + 1)))
    with pytest.raises(ValueError, match="band rule"):
        fit_site(d, SiteOptions(band="loose"))


def test_the_conformal_promise_holds_on_new_patients_in_simulation():
    """Fit on n images, measure on many new ones: the mean miss rates stay within the promises,
    where the plain in-sample rule (band_thresholds) breaks them."""
    from edge_pneumo.lab.metrics import band_thresholds

    rng = np.random.default_rng(0)
    miss_out, miss_in, plain_out = [], [], []
    for _ in range(400):
        y = (rng.random(100) < 0.6).astype(int)
        s = 1 / (1 + np.exp(-(rng.normal(size=100) + 2.0 * (2 * y - 1))))
        lo, hi = conformal_band(y, s)
        plo, _ = band_thresholds(y, s)
        new_pos = 1 / (1 + np.exp(-(rng.normal(size=2000) + 2.0)))
        new_neg = 1 / (1 + np.exp(-(rng.normal(size=2000) - 2.0)))
        miss_out.append(np.mean(new_pos < lo))
        miss_in.append(np.mean(new_neg >= hi))
        plain_out.append(np.mean(new_pos < plo))
    assert np.mean(miss_out) <= 0.03 and np.mean(miss_in) <= 0.05
    assert np.mean(plain_out) > np.mean(miss_out)


# -- the head ---------------------------------------------------------------------------------


def _site(n=120, seed=0, informative=True):
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.5).astype(int)
    f = rng.normal(size=(n, 16))
    if informative:
        f[:, 0] += 2.0 * (2 * y - 1)  # the site's evidence lives in one feature the shipped logit ignores
    p = 1 / (1 + np.exp(-(0.5 * (2 * y - 1) + rng.normal(size=n))))
    return SiteData(y, p, f, np.array([f"p{i // 2}" for i in range(n)]))


def test_head_fit_learns_site_evidence_and_strong_l2_returns_the_shipped_logit():
    d = _site()
    head = fit_head(d, l2=1.0)
    assert head.weights[0] > 1.0 and np.abs(head.weights[1:]).max() < 0.5 * head.weights[0]
    stiff = fit_head(d, l2=1e6)
    assert np.abs(stiff.weights).max() < 1e-3 and stiff.logit_weight == pytest.approx(1.0, abs=1e-3)
    from edge_pneumo.device.scoring import _logit

    assert np.allclose(stiff.logits(d.probability, d.features), _logit(d.probability) + stiff.bias, atol=1e-2)


def test_head_round_trips_through_its_dict_and_cross_fitting_never_scores_what_it_fitted():
    d = _site()
    fit = fit_site(d, SiteOptions(head=True))
    again = SiteHead.from_dict(json.loads(json.dumps(fit.head.to_dict())))
    assert np.allclose(again.score(d.probability, d.features), fit.head.score(d.probability, d.features), atol=1e-5)
    assert fit.rule_out < fit.threshold < fit.rule_in
    report = cross_fit_report(d, SiteOptions(head=True), (0.5, 0.4, 0.6))
    # the head helps on held-out patients here (the evidence is real), and no fold scored its own images
    assert report["site_head"]["accuracy"] > report["site"]["accuracy"]
    noise = _site(informative=False)
    r = cross_fit_report(noise, SiteOptions(head=True), (0.5, 0.4, 0.6))
    assert r["site_head"]["accuracy"] < 0.8  # pure-noise features: out-of-fold scoring shows no magic


# -- site files -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site_folder(tmp_path_factory, real_data) -> Path:
    """A small labelled 'site' of real X-rays from train/ (no look at test/): 24 + 24 images."""
    root = tmp_path_factory.mktemp("site")
    for cls in ("NORMAL", "PNEUMONIA"):
        (root / cls).mkdir()
        files = sorted((real_data / "train" / cls).iterdir())[::37][:24]
        for f in files:
            os.symlink(f, root / cls / f.name)
    return root


@pytest.fixture(scope="module")
def site_file(site_folder, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("sitefile") / "site.json"
    r = runner.invoke(
        app,
        [
            "calibrate",
            str(site_folder),
            "--out",
            str(out),
            "--model",
            str(SHIPPED),
            "--artifact",
            "tflite_int8",
            "--head",
            "--name",
            "test-site",
        ],
    )
    assert r.exit_code == EXIT_OK, r.output
    assert "what it buys" in r.output and "site + head" in r.output
    return out


def test_calibrate_writes_aggregates_only(site_file, site_folder):
    text = site_file.read_text()
    site = json.loads(text)
    assert site["artifact"]["name"] == "tflite_int8"
    assert site["artifact"]["sha256"] == load_manifest(SHIPPED).artifacts["tflite_int8"].sha256
    assert site["counts"] == {
        "NORMAL": 24,
        "PNEUMONIA": 24,
        "patients": site["counts"]["patients"],
        "rejected_by_guard": 0,
    }
    c = site["calibration"]
    assert c["rule_out"] < c["threshold"] < c["rule_in"]
    assert set(site["report"]) >= {"before", "site", "site_head"}
    for key in ("rejected", "feature_distance", "indeterminate", "positive"):
        assert key in site["population"]["statistics"]
    for f in site_folder.rglob("*.jpeg"):  # no file name, path or patient id leaves the folder
        assert f.name not in text and f.stem not in text and str(site_folder) not in text.replace(site["command"], "")
    assert not list(site_file.parent.glob(".*partial"))


def test_infer_with_the_site_file_and_its_refusal_for_another_artifact(site_file, site_folder, tmp_path):
    images = [str(p) for p in sorted(site_folder.rglob("*.jpeg"))[::6]]
    r = runner.invoke(app, ["infer", "--model", str(SHIPPED), "--site", str(site_file), "-f", "json", *images])
    assert r.exit_code == EXIT_OK, r.output
    rows = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    sha = load_site(site_file).sha256[:16]
    assert len(rows) == len(images)
    for row in rows:
        assert row["site"] == sha and row["calibrated_on"].startswith("site test-site")
        assert row["artifact"] == "tflite_int8"  # the site file's artifact is the one loaded
        if row["decision"] != "indeterminate":
            assert (row["decision"] == "pneumonia") == (row["label"] == "PNEUMONIA")
    plain = runner.invoke(app, ["infer", "--model", str(SHIPPED), "--artifact", "tflite_int8", "-f", "json", images[0]])
    row = json.loads(plain.stdout.splitlines()[0])
    assert row["site"] is None and row["calibrated_on"] == "training population"
    text = runner.invoke(app, ["infer", "--model", str(SHIPPED), "--site", str(site_file), images[0]])
    assert "calibrated on: site test-site" in text.stdout and "threshold=" in text.stdout
    # another artifact: refused, naming the file and the fix
    other = runner.invoke(
        app, ["infer", "--model", str(SHIPPED), "--artifact", "onnx_float32", "--site", str(site_file), images[0]]
    )
    assert other.exit_code == EXIT_FAILED and "fitted for artifact tflite_int8" in other.stderr
    with pytest.raises(ModelFileError, match="not onnx_float32"):
        from edge_pneumo.device.classifier import Classifier

        Classifier.load(SHIPPED, artifact="onnx_float32", site=site_file)
    # verify shows it and checks it
    v = runner.invoke(app, ["verify", str(SHIPPED), "--runs", "1", "--no-profile", "--site", str(site_file), "--json"])
    report = json.loads(v.stdout)
    assert report["site"]["status"] == "ok" and report["site"]["sha256"] == sha
    bad = tmp_path / "bad.json"
    data = json.loads(site_file.read_text())
    data["artifact"]["sha256"] = "0" * 64
    bad.write_text(json.dumps(data))
    v = runner.invoke(app, ["verify", str(SHIPPED), "--runs", "1", "--no-profile", "--site", str(bad), "--json"])
    assert json.loads(v.stdout)["site"]["status"] == "FAILED" and v.exit_code != EXIT_OK


def test_a_broken_site_file_is_one_clear_error(tmp_path, site_file):
    for content, why in (
        ("{not json", "not a usable site file"),
        (json.dumps({"kind": "something else"}), "not a site file"),
    ):
        p = tmp_path / "s.json"
        p.write_text(content)
        with pytest.raises(ModelFileError, match=why):
            load_site(p)
    data = json.loads(site_file.read_text())
    data["calibration"]["rule_in"] = data["calibration"]["threshold"] - 0.01  # a contradicting band
    p = tmp_path / "degenerate.json"
    p.write_text(json.dumps(data))
    with pytest.raises(ModelFileError, match="band"):
        load_site(p)
    with pytest.raises(ModelFileError, match="no such site file"):
        load_site(tmp_path / "absent.json")


# -- bad SITE inputs: a message naming the file, nothing written -------------------------------


def _calibrate(args, out):
    r = runner.invoke(
        app, ["calibrate", *args, "--out", str(out), "--model", str(SHIPPED), "--artifact", "tflite_int8"]
    )
    return r, out.exists()


def test_bad_site_inputs_write_nothing(tmp_path, site_folder):
    out = tmp_path / "site.json"
    r, written = _calibrate([str(tmp_path / "absent")], out)
    assert r.exit_code == EXIT_FAILED and "no such folder" in r.stderr and not written

    one_class = tmp_path / "one_class"
    (one_class / "NORMAL").mkdir(parents=True)
    r, written = _calibrate([str(one_class)], out)
    assert r.exit_code == EXIT_FAILED and "PNEUMONIA: class folder missing" in r.stderr and not written
    r, written = _calibrate(["--labels", str(tmp_path / "nope.csv")], out)
    assert r.exit_code == EXIT_FAILED and "nope.csv: cannot read the labels file" in r.stderr and not written

    few = tmp_path / "few"
    (few / "NORMAL").mkdir(parents=True)
    (few / "PNEUMONIA").mkdir()
    for f in sorted((site_folder / "NORMAL").iterdir())[:5]:
        os.symlink(f.resolve(), few / "NORMAL" / f.name)
    for f in sorted((site_folder / "PNEUMONIA").iterdir()):
        os.symlink(f.resolve(), few / "PNEUMONIA" / f.name)
    r, written = _calibrate([str(few)], out)
    assert r.exit_code == EXIT_FAILED and "5 NORMAL" in r.stderr and "at least 20" in r.stderr and not written

    broken = tmp_path / "broken"
    for cls in ("NORMAL", "PNEUMONIA"):
        (broken / cls).mkdir(parents=True)
        for f in sorted((site_folder / cls).iterdir()):
            os.symlink(f.resolve(), broken / cls / f.name)
    (broken / "NORMAL" / "truncated.jpeg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    r, written = _calibrate([str(broken)], out)
    assert r.exit_code == EXIT_FAILED and "truncated.jpeg" in r.stderr and not written

    labels = tmp_path / "labels.csv"
    files = sorted(site_folder.rglob("*.jpeg"))
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label"])
        for f in files:
            w.writerow([str(f), f.parent.name])
        w.writerow([str(files[0]), "maybe"])
    r, written = _calibrate(["--labels", str(labels)], out)
    assert r.exit_code == EXIT_FAILED and "'maybe'" in r.stderr and "line" in r.stderr and not written


def test_labels_csv_gives_the_same_site_file_numbers_as_the_folder(tmp_path, site_folder, site_file):
    labels = tmp_path / "labels.csv"
    with labels.open("w", newline="") as fh:
        w = csv.writer(fh)
        for f in sorted(site_folder.rglob("*.jpeg")):
            w.writerow([os.path.relpath(f, tmp_path), "1" if f.parent.name == "PNEUMONIA" else "0"])
    out = tmp_path / "from_csv.json"
    r, written = _calibrate(["--labels", str(labels)], out)
    assert r.exit_code == EXIT_OK and written, r.output
    a, b = json.loads(out.read_text()), json.loads(site_file.read_text())
    assert a["counts"] == b["counts"]
    # the same images, no head here: the band-only fit is the one the headed file reported beside
    assert a["report"]["site"] == b["report"]["site"]


def test_serve_with_a_site_file_from_the_environment_says_so(site_file, site_folder, tmp_path):
    """`serve` reads $EDGE_PNEUMO_SITE; the page names the active calibration, rows carry it, info shows it."""
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    import urllib.request

    from test_serve import post, start_server

    proc, url, _ = start_server(SHIPPED, tmp_path, env={"EDGE_PNEUMO_SITE": str(site_file)})
    try:
        with urllib.request.urlopen(f"{url}/", timeout=10) as r:
            page = r.read().decode()
        assert "Calibrated on this site: site test-site" in page and "{{calibration}}" not in page
        assert "Indeterminate: needs a reader" in page  # the page's words for the three decisions
        image = next(iter(sorted((site_folder / "PNEUMONIA").iterdir()))).resolve().read_bytes()
        status, row, _ = post(url, image, token=None, filename="x.jpeg")
        assert status == 200 and row["site"] == load_site(site_file).sha256[:16]
        assert row["decision"] in ("pneumonia", "no_pneumonia", "indeterminate")
        with urllib.request.urlopen(f"{url}/api/v1/info", timeout=10) as r:
            info = json.loads(r.read())
        assert info["calibration"]["calibrated_on"].startswith("site test-site") and info["calibration"]["site"]["head"]
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_rejected_and_failed_rows_have_no_decision_but_carry_the_site(site_file, tmp_path):
    import cv2

    blank = tmp_path / "blank.png"
    cv2.imwrite(str(blank), np.full((256, 256), 128, np.uint8))  # a flat grey page: the guard rejects it
    broken = tmp_path / "broken.jpeg"
    broken.write_bytes(b"not an image")
    r = runner.invoke(
        app, ["infer", "--model", str(SHIPPED), "--site", str(site_file), "-f", "json", str(blank), str(broken)]
    )
    rows = {Path(row["path"]).name: row for row in map(json.loads, r.stdout.splitlines())}
    assert rows["blank.png"]["status"] == "rejected" and rows["broken.jpeg"]["status"] == "failed"
    sha = load_site(site_file).sha256[:16]
    for row in rows.values():
        assert row["decision"] is None and row["label"] is None and row["site"] == sha


def test_calibrating_on_a_test_split_is_a_logged_look(site_folder, tmp_path, monkeypatch):
    log = tmp_path / "looks.jsonl"
    monkeypatch.setenv("EDGE_PNEUMO_LOOK_LOG", str(log))
    as_test = tmp_path / "test"  # a folder named test: the labels read are a test split's
    for cls in ("NORMAL", "PNEUMONIA"):
        (as_test / cls).mkdir(parents=True)
        for f in sorted((site_folder / cls).iterdir()):
            os.symlink(f.resolve(), as_test / cls / f.name)
    r, written = _calibrate([str(as_test)], tmp_path / "s.json")
    assert r.exit_code == EXIT_OK and written, r.output
    looks = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(looks) == 1 and looks[0]["by"] == "calibrate" and "error_among_decided" in looks[0]
    r, _ = _calibrate([str(site_folder)], tmp_path / "s2.json")  # not a test split: no look
    assert r.exit_code == EXIT_OK and len(log.read_text().splitlines()) == 1
