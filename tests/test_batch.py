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


def _mixed_folder(synthetic_data: Path, folder: Path) -> Path:
    """Eight test images, one cut short (a row with a warning) and one that is not an image (a failed row)."""
    import shutil

    folder.mkdir()
    for f in sorted((synthetic_data / "test").rglob("*.jpeg"))[::4]:
        shutil.copy(f, folder / f.name)
    first = sorted(folder.iterdir())[0].read_bytes()
    (folder / "cut_short.jpeg").write_bytes(first[: int(len(first) * 0.8)])
    (folder / "not_an_image.png").write_bytes(b"this is text, not a PNG")
    return folder


def test_batch_csv_and_parquet_are_infer_csv_rows(tiny_export, synthetic_data, tmp_path):
    """The same inputs through `infer --format csv` and `batch`: same columns, same order, every
    value equal but the timing (`ms`)."""
    import csv

    from edge_pneumo.device.result import FIELDS

    pq = pytest.importorskip("pyarrow.parquet")
    src = _mixed_folder(synthetic_data, tmp_path / "in")
    r = CliRunner().invoke(app, ["infer", "--model", str(tiny_export), "--dir", str(src), "-f", "csv"])
    infer_lines = [line for line in r.stdout.splitlines() if line]
    infer_rows = {row["path"]: row for row in csv.DictReader(infer_lines)}
    assert {row["status"] for row in infer_rows.values()} >= {"classified", "failed"}
    assert any(row["warnings"] for row in infer_rows.values()) and any(row["guard"] for row in infer_rows.values())

    run_batch(str(src), tmp_path / "r.csv", "local:1", model=str(tiny_export), log=lambda m: None)
    batch_lines = (tmp_path / "r.csv").read_text().splitlines()
    assert batch_lines[0] == infer_lines[0] == ",".join(FIELDS)
    batch_rows = list(csv.DictReader(batch_lines))
    assert len(batch_rows) == len(infer_rows)
    for row in batch_rows:
        twin = infer_rows[row["path"]]
        assert {k: v for k, v in row.items() if k != "ms"} == {k: v for k, v in twin.items() if k != "ms"}

    run_batch(str(src), tmp_path / "r.parquet", "local:1", model=str(tiny_export), log=lambda m: None)
    table = pq.read_table(tmp_path / "r.parquet")
    assert table.column_names == list(FIELDS) and table.num_rows == len(infer_rows)
    for row in table.to_pylist():
        twin = infer_rows[row["path"]]
        for k in FIELDS:
            if k == "ms":
                continue
            expected = twin[k]
            if row[k] is None:
                assert expected == "", (k, row["path"])
            elif isinstance(row[k], float):
                assert row[k] == float(expected), (k, row["path"])
            else:
                assert row[k] == expected, (k, row["path"])


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
