"""`edge-pneumo watch IN --output results.jsonl`: classify every image in a folder, then each
new one as it arrives, each exactly once, across crashes and restarts.

- Existing files are scanned at start (events during downtime are never replayed).
- New files come from watchdog's inotify observer, or its polling observer (`--poll`) for
  network shares, where inotify sees nothing.
- A file is read only once its size and mtime have been stable for `stable_seconds` (a copy
  in progress fires `created` at its first byte); a read that still comes out truncated is
  retried later, while the file is young.
- `ledger.ResultSink` records each result once, keyed by the content hash: a `kill -9` at any
  moment loses nothing and repeats nothing; the same image copied twice is classified once.
- With a forwarder (`--forward`), each DICOM file's SR goes to the archive through the outbox,
  queued before its row is recorded (a crash between the two repeats the image, never loses it).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

from edge_pneumo.apps.ledger import ResultSink
from edge_pneumo.decoders.decode import IMAGE_SUFFIXES, read_bytes
from edge_pneumo.device.drift import DriftWindow
from edge_pneumo.device.result import FAILED
from edge_pneumo.device.scoring import DECISION_TEXT
from edge_pneumo.errors import EdgePneumoError, MissingRuntimeError

DRIFT_EVERY = 25  # judge the drift window after this many new results, and whenever a burst is done
RETRY_WINDOW_S = 30.0  # a file modified this recently whose read failed as truncated is tried again
_TRUNCATED_WORDS = ("cut short", "truncated", "premature", "file is empty")


class Watcher:
    def __init__(
        self,
        clf,
        folder: Path,
        sink: ResultSink,
        poll: bool = False,
        move_done: Path | None = None,
        stable_seconds: float = 1.0,
        log: Callable[[str], None] = print,
        forward=None,
    ):
        self.clf, self.folder, self.sink = clf, Path(folder), sink
        self.poll, self.move_done, self.stable = poll, move_done, stable_seconds
        self.log = log
        self.forward = forward  # a forward.Forwarder, or None
        self._pending: dict[str, tuple | None] = {}  # path -> (size, mtime, first seen stable at) or None (new)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.counts = {"classified": 0, "rejected": 0, "failed": 0, "already": 0}
        self.drift = DriftWindow.for_classifier(clf)  # the last 500 results, against the calibration population
        self._drift_out: list[str] = []
        self._drift_checked = 0  # drift.seen when last judged
        self._resume_drift()

    # -- discovery ---------------------------------------------------------------------

    def add(self, path: str) -> None:
        p = Path(path)
        if p.suffix.lower() not in IMAGE_SUFFIXES or p.name.startswith("."):
            return
        if self.move_done is not None and _inside(p, self.move_done):
            return
        with self._lock:
            self._pending.setdefault(str(p), None)

    def scan(self) -> int:
        n = 0
        for p in sorted(self.folder.rglob("*")):
            if p.is_file():
                self.add(str(p))
                n += 1
        return n

    def _observer(self):
        try:
            from watchdog.events import FileSystemEventHandler
            from watchdog.observers import Observer
            from watchdog.observers.polling import PollingObserver
        except ImportError:
            raise MissingRuntimeError("watching a folder needs watchdog: pip install 'edge-pneumo[watch]'") from None
        watcher = self

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if event.is_directory:
                    return
                for attr in ("dest_path", "src_path"):
                    path = getattr(event, attr, None)
                    if path and event.event_type != "deleted":
                        watcher.add(os.fsdecode(path))

        observer = PollingObserver(timeout=1.0) if self.poll else Observer()
        observer.schedule(Handler(), str(self.folder), recursive=True)
        return observer

    # -- the loop ----------------------------------------------------------------------

    def run(self, once: bool = False, until: Callable[[], bool] | None = None) -> dict:
        """Process what is there, then (unless `once`) keep watching until stopped."""
        observer = None
        if self.forward is not None:
            self.forward.start()
        if not once:
            observer = self._observer()
            observer.start()
        found = self.scan()
        self.log(
            f"watching {self.folder} ({found} files there at start; {'polling' if self.poll else 'inotify'})"
            if not once
            else f"{self.folder}: {found} files"
        )
        try:
            while not self._stop.is_set():
                busy = self._tick()
                if not busy and self.drift.seen != self._drift_checked:
                    self.check_drift()  # a burst has been processed
                if once and not self._pending:
                    self.check_drift()
                    break
                if until is not None and until():
                    break
                if not busy:
                    self._stop.wait(0.1)
        finally:
            if observer is not None:
                observer.stop()
                observer.join(timeout=5)
            if self.forward is not None:
                self.forward.stop()  # one last try for what is due; the rest waits in the outbox for the next run
        return self.counts

    def stop(self) -> None:
        self._stop.set()

    def _tick(self) -> bool:
        now = time.time()
        ready = []
        with self._lock:
            for path, seen in list(self._pending.items()):
                try:
                    st = os.stat(path)
                except FileNotFoundError:
                    del self._pending[path]
                    continue
                except OSError:
                    continue
                sig = (st.st_size, st.st_mtime_ns)
                if seen is None or seen[:2] != sig:
                    self._pending[path] = (*sig, now)
                elif now - seen[2] >= self.stable and st.st_size > 0:
                    ready.append((path, seen))
        for path, seen in ready:
            self._process(path, seen)
        return bool(ready)

    def _process(self, path: str, seen: tuple) -> None:
        try:
            data = read_bytes(Path(path))
        except EdgePneumoError:
            with self._lock:
                self._pending.pop(path, None)  # vanished or unreadable: a later event brings it back
            return
        key = hashlib.sha256(data).hexdigest()
        if self.sink.seen(key):
            self.counts["already"] += 1
            self._done(path)
            return
        dicom = self.forward is not None and is_dicom(data)
        r = (self.clf.explain if dicom and self.forward.heatmap else self.clf.predict_bytes)(data, name=path)
        if r.status == FAILED and self._may_still_be_arriving(path, seen, r.reason or ""):
            with self._lock:
                self._pending[path] = None  # not finished yet: wait for it to be stable again
            return
        row = r.to_dict()
        if dicom:
            try:
                row["forward_error"] = self._report(data, row, r)
            except Exception as e:  # the outbox could not take it (the disk): not done, tried again later
                self.log(f"warning: {path}: its report could not be queued ({type(e).__name__}); trying again")
                with self._lock:
                    self._pending[path] = None
                return
        if self.sink.record(key, row):
            self.counts[r.status] += 1
            said = DECISION_TEXT.get(r.decision or "", "")  # the decision in words, as infer's text output
            self.log(f"{r.status:<10} {said:<29} {path}" + (f"  ({r.reason})" if r.reason else ""))
            self.drift.add(row)
            if self.drift.seen - self._drift_checked >= DRIFT_EVERY:
                self.check_drift()
        else:
            self.counts["already"] += 1
        self._done(path)

    def _resume_drift(self) -> None:
        """Refill the drift window from the results already recorded by this artifact: a restart keeps it."""
        try:
            with open(self.sink.output, encoding="utf-8") as f:
                tail = deque(f, maxlen=self.drift.size)
        except OSError:
            return
        for line in tail:
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row, dict) and row.get("sha256") == self.clf.entry.sha256[:16]:
                self.drift.add(row)

    def check_drift(self) -> dict:
        """Judge the window; log when a statistic leaves its limit or comes back (not on every result)."""
        snap = self.drift.snapshot()
        self._drift_checked = self.drift.seen
        if snap["out"] != self._drift_out:
            why = [s["why"] for s in snap.get("statistics", []) if s["out"]]
            self.log("drift: " + ("; ".join(why) if why else f"back within limits over the last {snap['readable']}"))
            self._drift_out = snap["out"]
        return snap

    def _report(self, data: bytes, row: dict, r) -> str | None:
        import io

        import pydicom

        try:
            ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
        except Exception as e:
            return f"no report: the DICOM header cannot be read ({type(e).__name__})"
        return self.forward.report(ds, row, r, data)

    def _may_still_be_arriving(self, path: str, seen: tuple, reason: str) -> bool:
        try:
            st = os.stat(path)
        except OSError:
            return False
        changed = (st.st_size, st.st_mtime_ns) != seen[:2]
        young = time.time() - st.st_mtime < RETRY_WINDOW_S
        return changed or (young and any(w in reason for w in _TRUNCATED_WORDS))

    def _done(self, path: str) -> None:
        with self._lock:
            self._pending.pop(path, None)
        if self.move_done is None:
            return
        src = Path(path)
        try:
            rel = src.relative_to(self.folder)
        except ValueError:
            rel = Path(src.name)
        dst = self.move_done / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        n = 1
        while dst.exists():
            dst = dst.with_name(f"{rel.stem}.{n}{rel.suffix}")
            n += 1
        try:
            shutil.move(str(src), str(dst))
        except OSError as e:
            self.log(f"warning: {path}: classified, but could not move it to {dst} ({e.strerror or e})")


def is_dicom(data: bytes) -> bool:
    """A DICOM Part 10 file (the 'DICM' magic after the 128-byte preamble)."""
    return data[128:132] == b"DICM"


def _inside(p: Path, folder: Path) -> bool:
    try:
        p.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False
