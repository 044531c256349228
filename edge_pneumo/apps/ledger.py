"""Nothing lost, nothing twice: a SQLite ledger keyed by content hash, and an append-only
results file that always agrees with it, across `kill -9` and restart.

Shared by `watch`, the DICOM node and `batch --resume`. A result goes:
1. into the ledger (one committed transaction, `written = 0`);
2. onto the results file as one JSON line, flushed and fsynced;
3. `written = 1` in the ledger.
On start, `ResultSink` cuts a half-written last line off the results file, then appends
every ledger row still marked unwritten whose key is not already in the file. A crash at any
point therefore leaves each input either fully recorded once, or not at all (and then it is
classified again). The content hash keys it: the same image copied twice is classified once.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from pathlib import Path

from edge_pneumo import jsonout


class Ledger:
    """The SQLite table `results(key PRIMARY KEY, row, written, created)`, thread-safe."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS results (key TEXT PRIMARY KEY, row TEXT NOT NULL, "
                "written INTEGER NOT NULL DEFAULT 0, created REAL NOT NULL)"
            )

    def has(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM results WHERE key = ?", (key,)).fetchone() is not None

    def get(self, key: str) -> dict | None:
        """The row recorded under `key`, or None."""
        with self._lock:
            found = self._db.execute("SELECT row FROM results WHERE key = ?", (key,)).fetchone()
        return None if found is None else json.loads(found[0])

    def add(self, key: str, row: dict) -> bool:
        """Record a result; False if the key was already there (nothing changes then)."""
        with self._lock:
            cur = self._db.execute(
                "INSERT OR IGNORE INTO results (key, row, written, created) VALUES (?, ?, 0, ?)",
                (key, jsonout.dumps(row), time.time()),
            )
            return cur.rowcount == 1

    def add_many(self, rows: list[tuple[str, dict]]) -> list[bool]:
        """`add` for many rows in one transaction (one fsync); which of them were new."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                new = [
                    self._db.execute(
                        "INSERT OR IGNORE INTO results (key, row, written, created) VALUES (?, ?, 0, ?)",
                        (k, jsonout.dumps(r), time.time()),
                    ).rowcount
                    == 1
                    for k, r in rows
                ]
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            return new

    def mark_written(self, *keys: str) -> None:
        with self._lock:
            self._db.executemany("UPDATE results SET written = 1 WHERE key = ?", [(k,) for k in keys])

    def unwritten(self) -> list[tuple[str, dict]]:
        with self._lock:
            rows = self._db.execute("SELECT key, row FROM results WHERE written = 0 ORDER BY created").fetchall()
        return [(k, json.loads(r)) for k, r in rows]

    def close(self) -> None:
        with self._lock:
            self._db.close()


def repair_jsonl(path: Path, key_field: str = "key") -> set[str]:
    """Cut a half-written last line off a JSON-lines file; return the keys (`key_field`) it holds."""
    keys: set[str] = set()
    if not path.exists():
        return keys
    data = path.read_bytes()
    end = data.rfind(b"\n") + 1
    if end < len(data):
        with open(path, "r+b") as f:
            f.truncate(end)
            f.flush()
            os.fsync(f.fileno())
    for line in data[:end].splitlines():
        try:
            k = json.loads(line).get(key_field)
        except (ValueError, AttributeError):
            continue
        if k:
            keys.add(k)
    return keys


class ResultSink:
    """Results file (JSON lines) + ledger, kept in step (see the module docstring).

    Rows are written as given (the same rows as `infer`'s); `key_field` names the field that
    holds each row's key, so the file alone says what it holds: `content_sha256` for a
    watched folder, `sop_instance_uid` for the DICOM node, `path` for a batch."""

    def __init__(
        self, output: str | os.PathLike, ledger: str | os.PathLike | None = None, key_field: str = "content_sha256"
    ):
        self.output = Path(output)
        self.output.parent.mkdir(parents=True, exist_ok=True)
        self.key_field = key_field
        self.ledger = Ledger(ledger or self.output.with_name(self.output.name + ".ledger.sqlite"))
        self._lock = threading.Lock()
        in_file = repair_jsonl(self.output, key_field)
        self._file = open(self.output, "a", encoding="utf-8")
        for key, row in self.ledger.unwritten():  # recorded, then the process died before the line was out
            if key not in in_file:
                self._append(row)
            self.ledger.mark_written(key)

    def seen(self, key: str) -> bool:
        return self.ledger.has(key)

    def record(self, key: str, row: dict) -> bool:
        """Record one result exactly once; False if this key was already recorded."""
        row = {**row, self.key_field: key}
        with self._lock:
            if not self.ledger.add(key, row):
                return False
            self._append(row)
            self.ledger.mark_written(key)
            return True

    def record_many(self, items: list[tuple[str, dict]]) -> list[bool]:
        """`record` for a batch (a Dask partition): the same three steps, one transaction and one
        fsync for the whole batch instead of one per row."""
        items = [(k, {**r, self.key_field: k}) for k, r in items]
        with self._lock:
            new = self.ledger.add_many(items)
            fresh = [(k, r) for (k, r), n in zip(items, new) if n]
            if fresh:
                self._append(*[r for _, r in fresh])
                self.ledger.mark_written(*[k for k, _ in fresh])
            return new

    def _append(self, *rows: dict) -> None:
        self._file.write("".join(jsonout.dumps(row) + "\n" for row in rows))
        self._file.flush()
        os.fsync(self._file.fileno())

    def close(self) -> None:
        with self._lock:
            self._file.close()
            self.ledger.close()
