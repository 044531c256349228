"""`edge-pneumo batch` on a real Dask LocalCluster: infer's rows, resume, a killed worker, every input once."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("distributed")
from edge_pneumo.apps.batch import list_inputs, run_batch  # noqa: E402
from edge_pneumo.apps.cli import app  # noqa: E402

EXE = str(Path(sys.executable).parent / "edge-pneumo")


def _rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_sources_folder_list_and_url(synthetic_data, tmp_path):
    folder = list_inputs(str(synthetic_data / "test"))
    assert len(folder) == 32 and all(p.endswith(".jpeg") for p in folder)
    listing = tmp_path / "list.txt"
    listing.write_text("# a comment\n" + "\n".join(folder[:5]) + "\n\n")
    assert list_inputs(str(listing)) == folder[:5]
    urls = list_inputs(f"file://{synthetic_data / 'test'}")
    assert len(urls) == 32


def test_batch_rows_are_infer_rows_and_resume_adds_only_the_rest(tiny_export, synthetic_data, tmp_path):
    out = tmp_path / "r.jsonl"
    src = str(synthetic_data / "train")
    items = list_inputs(src)
    (tmp_path / "half.txt").write_text("\n".join(items[:30]))
    s1 = run_batch(
        str(tmp_path / "half.txt"), out, "local:2", model=str(tiny_export), partition_size=8, log=lambda m: None
    )
    assert s1["classified"] + s1["rejected"] == 30 and len(_rows(out)) == 30
    s2 = run_batch(src, out, "local:2", resume=True, model=str(tiny_export), partition_size=8, log=lambda m: None)
    assert s2["skipped"] == 30 and s2["classified"] + s2["rejected"] == len(items) - 30
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted(items)
    r = CliRunner().invoke(app, ["infer", "--model", str(tiny_export), "--dir", src, "-f", "json"])
    infer_rows = {row["path"]: row for row in map(json.loads, r.stdout.splitlines())}
    for row in rows:
        twin = infer_rows[row["path"]]
        assert set(row) == set(twin) and row["label"] == twin["label"] and row["sha256"] == twin["sha256"]
        assert abs(row["probability"] - twin["probability"]) < 1e-6


def test_csv_and_parquet_outputs(tiny_export, synthetic_data, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    src = str(synthetic_data / "test")
    run_batch(src, tmp_path / "r.csv", "local:1", model=str(tiny_export), log=lambda m: None)
    lines = (tmp_path / "r.csv").read_text().splitlines()
    assert lines[0].startswith("path,status,label,decision,probability") and len(lines) == 33
    run_batch(src, tmp_path / "r.parquet", "local:1", model=str(tiny_export), log=lambda m: None)
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.num_rows == 32 and set(table.column("status").to_pylist()) <= {"classified", "rejected"}


def test_a_killed_worker_costs_time_not_results(tiny_export, synthetic_data, tmp_path):
    """Kill one worker process mid-run: Dask re-runs its tasks; every input is in the output once."""
    import psutil

    items = list_inputs(str(synthetic_data / "train")) + list_inputs(str(synthetic_data / "test"))
    listing = tmp_path / "inputs.txt"
    copies = tmp_path / "copies"
    copies.mkdir()
    paths = []
    for k in range(16):  # 1792 files: long enough to kill a worker in the middle
        for i, p in enumerate(items):
            dst = copies / f"{k}_{i}_{Path(p).name}"
            dst.write_bytes(Path(p).read_bytes())
            paths.append(str(dst))
    listing.write_text("\n".join(paths))
    out = tmp_path / "r.jsonl"
    proc = subprocess.Popen(
        [
            EXE,
            "batch",
            str(listing),
            "-o",
            str(out),
            "--cluster",
            "local:2",
            "--model",
            str(tiny_export),
            "--partition-size",
            "8",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    killed = threading.Event()

    def kill_a_worker():
        deadline = time.time() + 60
        while time.time() < deadline and not killed.is_set():
            if out.exists() and len(out.read_text().splitlines()) >= 100:
                workers = [
                    c
                    for c in psutil.Process(proc.pid).children(recursive=True)
                    if "distributed" in " ".join(c.cmdline()) or "spawn" in " ".join(c.cmdline())
                ]
                if workers:
                    workers[0].send_signal(signal.SIGKILL)
                    killed.set()
                    return
            time.sleep(0.05)

    t = threading.Thread(target=kill_a_worker)
    t.start()
    log, _ = proc.communicate(timeout=300)
    t.join()
    assert killed.is_set(), "the run ended before a worker could be killed"
    assert proc.returncode == 0, log
    rows = _rows(out)
    assert sorted(r["path"] for r in rows) == sorted(paths), log[-2000:]
