"""`edge-pneumo infer` through the real CLI: outputs, formats, exit codes, bad input."""

from __future__ import annotations

import csv
import io
import json

import cv2
import numpy as np
import pytest
from conftest import synthetic_xray
from typer.testing import CliRunner

from edge_pneumo import Classifier
from edge_pneumo.apps.cli import app
from edge_pneumo.device.manifest import load_manifest
from edge_pneumo.device.scoring import effective_band
from edge_pneumo.errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL

runner = CliRunner()


@pytest.fixture()
def images(tmp_path):
    """X-ray-like images (like the tiny model's training images) of several sizes, bit depths
    and channel counts: grey stored as 3-channel JPEG, grey + alpha, 16-bit, full resolution."""
    rng = np.random.default_rng(1)
    d = tmp_path / "imgs"
    d.mkdir()
    g = cv2.resize(synthetic_xray(rng, 1, 96), (300, 260), interpolation=cv2.INTER_CUBIC)
    g[0, :2] = (0, 255)  # full range: the 16-bit copy's min-max stretch then gives the same grey image
    good = {
        "grey.jpeg": cv2.merge([g, g, g]),
        "alpha.png": cv2.merge([g, g, g, np.full_like(g, 200)]),
        "deep.png": g.astype(np.uint16) * 257,
        "big.jpg": cv2.resize(g, (1800, 2100)),
        "single.png": g,
    }
    for name, img in good.items():
        cv2.imwrite(str(d / name), img)
    (d / "notes.txt").write_text("ignored by --dir: not an image extension")
    return d, sorted(good)


def _json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def test_json_output_has_one_object_per_image(tiny_export, images):
    d, names = images
    r = runner.invoke(app, ["infer", "--model", str(tiny_export), "--dir", str(d), "--format", "json"])
    assert r.exit_code == EXIT_OK, r.output
    rows = _json_lines(r.stdout)
    assert sorted(row["path"].rsplit("/", 1)[1] for row in rows) == names
    clf = Classifier.load(tiny_export)
    manifest = load_manifest(tiny_export)
    cal = manifest.raw["calibration"]
    lo, hi = effective_band(manifest.threshold, cal["rule_out"], cal["rule_in"])  # the band, on the raw scale
    for row in rows:
        assert row["status"] == "classified" and row["reason"] is None
        assert row["label"] in ("NORMAL", "PNEUMONIA")
        assert row["label"] == ("PNEUMONIA" if row["probability"] >= row["threshold"] else "NORMAL")
        assert row["artifact"] == clf.entry.name and row["ms"] > 0
        assert row["sha256"] == manifest.artifacts[row["artifact"]].sha256[:16]
        assert row["model_version"] == manifest.raw["model_version"] and row["model_version"]
        assert row["confidence"] == ("indeterminate" if lo <= row["raw_probability"] < hi else "confident")
        assert row["probability"] == pytest.approx(clf.predict(row["path"]).probability, abs=1e-6)


def test_text_and_csv_and_output_file(tiny_export, images, tmp_path):
    d, names = images
    r = runner.invoke(app, ["infer", "--model", str(tiny_export), "--image", str(d / "grey.jpeg")])
    assert r.exit_code == EXIT_OK
    line = r.stdout.strip()
    assert line.startswith(str(d / "grey.jpeg")) and "threshold=" in line and line.endswith("ms")
    assert Classifier.load(tiny_export).entry.name in line
    out = tmp_path / "res.csv"
    r = runner.invoke(app, ["infer", "--model", str(tiny_export), "--dir", str(d), "-f", "csv", "-o", str(out)])
    assert r.exit_code == EXIT_OK and r.stdout == ""
    rows = list(csv.DictReader(io.StringIO(out.read_text())))
    assert len(rows) == len(names) and all(0 <= float(row["probability"]) <= 1 for row in rows)
    assert {row["status"] for row in rows} == {"classified"} and all(len(row["sha256"]) == 16 for row in rows)


def test_output_through_a_symlink_writes_its_target_and_keeps_the_link(tiny_export, images, tmp_path):
    d, _ = images
    target = tmp_path / "results" / "latest.jsonl"
    target.parent.mkdir()
    target.write_text("old\n")
    link = tmp_path / "link.jsonl"
    link.symlink_to(target)
    r = runner.invoke(app, ["infer", "--model", str(tiny_export), str(d / "grey.jpeg"), "-f", "json", "-o", str(link)])
    assert r.exit_code == EXIT_OK, r.output
    assert link.is_symlink() and link.resolve() == target.resolve()
    assert [row["path"] for row in _json_lines(target.read_text())] == [str(d / "grey.jpeg")]
    assert sorted(p.name for p in target.parent.iterdir()) == ["latest.jsonl"]  # no temporary file left


def test_serial_and_threaded_decoding_give_the_same_results(tiny_export, images):
    d, names = images
    paths = [str(d / n) for n in names] + [str(d / "missing.jpeg")]
    clf = Classifier.load(tiny_export)
    serial = [r.to_dict() for r in clf.predict_many(paths, batch_size=2, decode_threads=1)]
    threaded = [r.to_dict() for r in clf.predict_many(paths, batch_size=2, decode_threads=2)]
    for row in serial + threaded:
        row.pop("ms", None)
    assert serial == threaded and serial[-1]["status"] == "failed" and serial[-1]["reason"].endswith("no such file")


@pytest.mark.parametrize("artifact", ["tflite_int8", "onnx_int8"])
def test_each_folder_thread_runs_the_model_on_a_session_of_its_own(tiny_export, images, artifact, monkeypatch):
    """A folder run's threads each take files from decoding to results: no model call on the main
    thread, and a LiteRT interpreter (which serves one call at a time) never shared by two threads;
    onnxruntime's session serves concurrent calls, so every thread shares the classifier's own."""
    pytest.importorskip("ai_edge_litert" if artifact.startswith("tflite") else "onnxruntime")
    import threading
    from collections import defaultdict

    d, names = images
    paths = [str(d / n) for n in names] * 4
    for threads in (1, 2):
        clf = Classifier.load(tiny_export, artifact=artifact, threads=threads)
        backend_type = type(clf.backend)
        real_run = backend_type.run
        users = defaultdict(set)  # backend -> threads that called it

        def run(self, batch, want=("probability", "features"), real_run=real_run, users=users):
            users[self].add(threading.get_ident())
            return real_run(self, batch, want)

        monkeypatch.setattr(backend_type, "run", run)
        rows = [r.to_dict() for r in clf.predict_many(paths, batch_size=3, decode_threads=2)]
        monkeypatch.undo()
        callers = set().union(*users.values())
        assert len(rows) == len(paths) and callers and threading.get_ident() not in callers
        model = [b for b in users if b.path == clf.backend.path]  # not the view check's
        if artifact.startswith("tflite"):  # an interpreter each, one-thread; the classifier's own when it is one
            assert all(len(users[b]) == 1 for b in model) and len(model) == len(callers)
            assert all(b.threads == 1 for b in model) and (clf.backend in model) == (threads == 1)
        else:  # one session serves every thread
            assert model == [clf.backend]
        serial = clf.predict_many(paths, decode_threads=1)
        assert rows == [r.to_dict() | {"ms": row["ms"]} for r, row in zip(serial, rows)]


def test_a_model_file_changed_after_loading_is_not_opened_again_for_a_folder_thread(tmp_path):
    """A folder thread's own LiteRT interpreter is opened from the file the classifier checked at load;
    if the file was written or replaced since, the run stops with an integrity error instead of
    running an unchecked model."""
    pytest.importorskip("ai_edge_litert")
    import os
    import shutil

    from edge_pneumo.device.manifest import default_model_folder
    from edge_pneumo.device.runtime import open_backend
    from edge_pneumo.errors import IntegrityError

    model = tmp_path / "model.tflite"
    shutil.copy(default_model_folder() / "pneumonia_int8.tflite", model)
    backend = open_backend(model, 1)
    worker = backend.for_worker()
    assert worker is not backend and worker.threads == 1 and worker.path == model
    x = np.zeros((2, *backend.describe_input()["shape"][1:]), np.uint8)
    assert np.array_equal(worker.predict(x), backend.predict(x))
    replacement = tmp_path / "other.tflite"
    shutil.copy(model, replacement)  # the same bytes, but another file put in its place
    os.replace(replacement, model)
    with pytest.raises(IntegrityError, match="changed after it was loaded"):
        backend.for_worker()


def test_paths_from_stdin(tiny_export, images):
    d, names = images
    stdin = "\n".join(str(d / n) for n in names[:2]) + "\n"
    r = runner.invoke(app, ["infer", "--model", str(tiny_export), "-", "--format", "json"], input=stdin)
    assert r.exit_code == EXIT_OK
    assert [row["path"] for row in _json_lines(r.stdout)] == [str(d / n) for n in names[:2]]


def test_a_bad_file_in_a_batch_is_reported_and_the_rest_classified(tiny_export, images):
    d, names = images
    (d / "fake.jpeg").write_text("this is a text file")
    (d / "empty.jpeg").write_bytes(b"")
    cv2.imwrite(str(d / "dot.png"), np.zeros((1, 1), np.uint8))
    good = cv2.imread(str(d / "grey.jpeg"), cv2.IMREAD_UNCHANGED)
    ok, buf = cv2.imencode(".jpg", cv2.resize(good, (400, 400)))
    (d / "damaged.jpeg").write_bytes(buf.tobytes()[: int(len(buf) * 0.97)])
    r = runner.invoke(
        app,
        [
            "infer",
            "--model",
            str(tiny_export),
            "--dir",
            str(d),
            "--format",
            "json",
            "--image",
            str(d / "missing.jpeg"),
            "--image",
            str(d),
        ],
    )
    assert r.exit_code == EXIT_PARTIAL
    rows = {row["path"].rsplit("/", 1)[1]: row for row in _json_lines(r.stdout)}
    for name in names:
        assert rows[name]["label"] in ("NORMAL", "PNEUMONIA")
    for name, says in (
        ("fake.jpeg", "text file"),
        ("empty.jpeg", "empty"),
        ("dot.png", "too small"),
        ("missing.jpeg", "no such file"),
        ("imgs", "is a directory"),
    ):
        assert rows[name]["status"] == "failed" and says in rows[name]["reason"] and rows[name]["label"] is None
    damaged = rows["damaged.jpeg"]
    assert damaged["status"] == "classified" and damaged["label"] in ("NORMAL", "PNEUMONIA")
    assert any("damaged JPEG" in w for w in damaged["warnings"])
    assert "Traceback" not in r.output
    assert "5 failed" in r.stderr


def test_nothing_could_run_exit_codes(tiny_export, tmp_path, images):
    d, _ = images
    empty = tmp_path / "empty"
    empty.mkdir()
    r = runner.invoke(app, ["infer", "--model", str(tiny_export), "--dir", str(empty)])
    assert r.exit_code == EXIT_FAILED and "no image files" in r.stderr
    (tmp_path / "a.jpeg").write_text("text")
    r = runner.invoke(app, ["infer", "--model", str(tiny_export), str(tmp_path / "a.jpeg")])
    assert r.exit_code == EXIT_FAILED
    r = runner.invoke(app, ["infer", "--model", str(tiny_export)])
    assert r.exit_code == EXIT_FAILED and "no images given" in r.stderr


def test_wrong_model_files_are_refused(exported_copy, images, tmp_path):
    d, _ = images
    img = str(d / "grey.jpeg")
    fake = exported_copy / "pneumonia_int8.onnx"
    fake.write_text("not a model")
    r = runner.invoke(app, ["infer", "--model", str(exported_copy), "--artifact", "onnx_int8", img])
    assert r.exit_code == EXIT_FAILED and "sha256" in r.stderr and "does not match the manifest" in r.stderr
    r = runner.invoke(app, ["infer", "--model", str(exported_copy), "--artifact", "onnx_int8", "--no-verify", img])
    assert r.exit_code == EXIT_FAILED and "not a valid ONNX model" in r.stderr
    r = runner.invoke(app, ["infer", "--model", str(d / "grey.jpeg"), img])
    assert r.exit_code == EXIT_FAILED and "not a model file" in r.stderr
    r = runner.invoke(app, ["infer", "--model", str(tmp_path / "nowhere.onnx"), img])
    assert r.exit_code == EXIT_FAILED and "not found" in r.stderr
    r = runner.invoke(app, ["infer", "--model", str(tmp_path), img])
    assert r.exit_code == EXIT_FAILED and "no manifest.json" in r.stderr
    assert "Traceback" not in r.output


def test_tampered_tflite_is_refused_and_others_still_run(exported_copy, images):
    d, _ = images
    t = exported_copy / "pneumonia_int8.tflite"
    t.write_bytes(t.read_bytes()[:-1] + b"\x00")
    r = runner.invoke(app, ["infer", "--model", str(t), str(d / "grey.jpeg")])
    assert r.exit_code == EXIT_FAILED and "does not match the manifest" in r.stderr
    r = runner.invoke(app, ["infer", "--model", str(exported_copy), "--artifact", "onnx_float32", str(d / "grey.jpeg")])
    assert r.exit_code == EXIT_OK


def test_tflite_and_onnx_agree_through_the_cli(tiny_export, images):
    pytest.importorskip("ai_edge_litert")
    d, _ = images
    outs = {}
    for art in ("onnx_float32", "tflite_float32", "tflite_int8"):
        r = runner.invoke(app, ["infer", "--model", str(tiny_export), "--artifact", art, "--dir", str(d), "-f", "json"])
        assert r.exit_code == EXIT_OK
        outs[art] = {row["path"]: row["probability"] for row in _json_lines(r.stdout)}
    for path, p in outs["onnx_float32"].items():
        assert outs["tflite_float32"][path] == pytest.approx(p, abs=1e-5)
        assert outs["tflite_int8"][path] == pytest.approx(p, abs=0.05)


def test_help_explains_and_version():
    r = runner.invoke(app, ["infer", "--help"])
    assert r.exit_code == 0 and "--dir" in r.stdout and "Exit code" in r.stdout
    r = runner.invoke(app, [])
    assert "train" in r.output and "export" in r.output and "compare" in r.output
    from edge_pneumo import __version__

    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0 and r.stdout.strip() == __version__
