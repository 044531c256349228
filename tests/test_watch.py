"""`edge-pneumo watch` and the ledger: slow copies, kill -9 and restart; every file exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from conftest import synthetic_xray

from edge_pneumo.apps.ledger import ResultSink, repair_jsonl

pytest.importorskip("watchdog")
EXE = str(Path(sys.executable).parent / "edge-pneumo")


def _png(seed: int) -> bytes:
    return cv2.imencode(".png", synthetic_xray(np.random.default_rng(seed), seed % 2, 96))[1].tobytes()


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def _wait_for(cond, timeout=60.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if cond():
            return True
        time.sleep(0.1)
    return False


def test_sink_repairs_a_cut_line_and_replays_what_the_file_missed(tmp_path):
    out = tmp_path / "r.jsonl"
    sink = ResultSink(out, key_field="key")
    assert sink.record("a", {"status": "classified"}) and not sink.record("a", {"status": "classified"})
    sink.ledger.add("b", {"status": "rejected", "key": "b"})  # recorded, then "killed" before the line went out
    sink.close()
    with open(out, "a") as f:
        f.write('{"key": "c", "sta')  # a half-written line
    sink = ResultSink(out, key_field="key")
    assert [r["key"] for r in _rows(out)] == ["a", "b"] and repair_jsonl(out, "key") == {"a", "b"}
    assert sink.seen("b") and not sink.seen("c")
    sink.close()


def test_slow_copies_new_files_and_duplicates(tiny_export, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "results.jsonl"
    inbox.mkdir()
    (inbox / "before.png").write_bytes(_png(1))
    proc = subprocess.Popen(
        [EXE, "watch", str(inbox), "--model", str(tiny_export), "-o", str(out), "--stable-seconds", "0.5"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert _wait_for(lambda: len(_rows(out)) == 1), "the file already there was not classified"
        data = _png(2)
        with open(inbox / "slow.png", "wb") as f:  # a copy that takes 2 s: never read half-written
            for i in range(0, len(data), len(data) // 8 + 1):
                f.write(data[i : i + len(data) // 8 + 1])
                f.flush()
                time.sleep(0.25)
        (inbox / "copy_of_before.png").write_bytes(_png(1))  # same content: classified once
        (inbox / "notes.jpeg").write_text("not an image")
        assert _wait_for(lambda: len(_rows(out)) == 3)
        time.sleep(1.5)
    finally:
        proc.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=20)
    rows = _rows(out)
    assert len(rows) == 3, log
    by_status = sorted(r["status"] for r in rows)
    assert by_status == ["classified", "classified", "failed"], rows
    slow = [r for r in rows if r["path"].endswith("slow.png")][0]
    assert slow["status"] == "classified" and not slow["warnings"]
    assert len({r["content_sha256"] for r in rows}) == 3 and "Traceback" not in log


def test_kill_9_and_restart_lose_nothing_and_repeat_nothing(tiny_export, tmp_path):
    inbox, out = tmp_path / "in", tmp_path / "results.jsonl"
    inbox.mkdir()
    n = 60
    for i in range(n):
        (inbox / f"img_{i:03d}.png").write_bytes(_png(100 + i))
    args = [EXE, "watch", str(inbox), "--model", str(tiny_export), "-o", str(out), "--stable-seconds", "0.2"]
    for _ in range(3):  # killed at a different point each time
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        before = len(_rows(out))
        _wait_for(lambda: len(_rows(out)) > before + 5, timeout=60)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    proc = subprocess.Popen([*args, "--once"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    log, _ = proc.communicate(timeout=120)
    assert proc.returncode == 0, log
    rows = _rows(out)
    names = sorted(Path(r["path"]).name for r in rows)
    assert names == sorted(f"img_{i:03d}.png" for i in range(n)), log
    assert len({r["content_sha256"] for r in rows}) == n


def test_move_done_and_polling(tiny_export, tmp_path):
    inbox, done, out = tmp_path / "in", tmp_path / "done", tmp_path / "r.jsonl"
    inbox.mkdir()
    proc = subprocess.Popen(
        [
            EXE,
            "watch",
            str(inbox),
            "--model",
            str(tiny_export),
            "-o",
            str(out),
            "--poll",
            "--move-done",
            str(done),
            "--stable-seconds",
            "0.3",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        time.sleep(1.0)
        (inbox / "sub").mkdir()
        (inbox / "sub" / "a.png").write_bytes(_png(7))
        assert _wait_for(lambda: (done / "sub" / "a.png").exists(), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        log, _ = proc.communicate(timeout=20)
    assert not (inbox / "sub" / "a.png").exists() and len(_rows(out)) == 1, log


def test_sink_records_a_batch_once(tmp_path):
    out = tmp_path / "b.jsonl"
    sink = ResultSink(out, key_field="path")
    assert sink.record_many([("x", {"status": "classified"}), ("y", {"status": "failed"})]) == [True, True]
    assert sink.record_many([("y", {"status": "failed"}), ("z", {"status": "rejected"})]) == [False, True]
    sink.close()
    assert [r["path"] for r in _rows(out)] == ["x", "y", "z"]
    assert ResultSink(out, key_field="path").ledger.unwritten() == []
