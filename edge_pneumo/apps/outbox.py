"""A durable outbox for DICOM objects going to an archive (C-STORE), with retries and backoff.

Each object is committed, encoded, to a SQLite table (WAL, synchronous=FULL) keyed by what it answers
(`sr:<source SOP Instance UID>`) before anything is sent. A sender thread stores due objects at the
destination over an association it keeps open while objects keep coming, and marks them sent (the
encoded copy is then dropped); a failed association or a refusal sets the next try after an exponential
backoff (`retry_first_s` doubling up to `retry_max_s`). After `kill -9` the table is still there and
the sender resumes. Nothing is sent twice under a new identity:
the object's SOP Instance UID is fixed by its key, so a send repeated after a crash (sent, but killed
before it was marked) replaces the archive's copy instead of adding one.
"""

from __future__ import annotations

import io
import logging
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from edge_pneumo.errors import EdgePneumoError, MissingRuntimeError

LOG = logging.getLogger("edge_pneumo.apps.outbox")
# C-STORE answers that mean the archive kept the object (success, and the three warnings).
_STORED = {0x0000, 0xB000, 0xB006, 0xB007, 0x0107, 0x0116}
# What the outbox sends: Comprehensive SR and Secondary Capture (the overlay), both proposed on every association.
SENT_CLASSES = ("1.2.840.10008.5.1.4.1.1.88.33", "1.2.840.10008.5.1.4.1.1.7")
KEEP_OPEN_S = 5.0  # an association with nothing to send for this long is released


class DestinationError(EdgePneumoError):
    exit_code = 2


@dataclass(frozen=True)
class Destination:
    ae_title: str
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Destination:
        """`AET@HOST:PORT`, e.g. `ORTHANC@10.0.0.5:4242`."""
        aet, at, rest = text.partition("@")
        host, colon, port = rest.rpartition(":")
        if not (at and colon and aet.strip() and host and port.isdigit()):
            raise DestinationError(f"{text!r}: give the archive as AET@HOST:PORT (e.g. ORTHANC@10.0.0.5:4242)")
        if len(aet.strip()) > 16:
            raise DestinationError(f"{text!r}: an AE title has at most 16 characters")
        if not 0 < int(port) < 65536:
            raise DestinationError(f"{text!r}: the port must be 1-65535")
        return cls(aet.strip(), host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.ae_title}@{self.host}:{self.port}"


@dataclass(frozen=True)
class OutboxOptions:
    folder: Path
    destination: Destination
    calling_ae: str = "EDGEPNEUMO"
    retry_first_s: float = 1.0
    retry_max_s: float = 60.0
    timeout_s: float = 10.0


class Outbox:
    """Objects waiting for the archive: `put` (durable before it returns), a sender thread, `status`."""

    def __init__(self, options: OutboxOptions):
        self.o = options
        self.folder = Path(options.folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(self.folder / "outbox.sqlite"), check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_error: tuple[float, str] | None = None
        self._ready: dict[str, object] = {}  # key -> the dataset put in this process (saves decoding it again)
        self._assoc = None  # kept open while objects keep coming (KEEP_OPEN_S)
        self._assoc_used, self._assoc_error = 0.0, ""
        with self._lock:
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            self._db.execute(
                "CREATE TABLE IF NOT EXISTS outbox (key TEXT PRIMARY KEY, sop_class TEXT NOT NULL, data BLOB, "
                "created REAL NOT NULL, classified_at REAL, attempts INTEGER NOT NULL DEFAULT 0, "
                "next_try REAL NOT NULL DEFAULT 0, last_error TEXT, send_started REAL, sent_at REAL)"
            )

    # -- queueing ------------------------------------------------------------------------

    def has(self, key: str) -> bool:
        with self._lock:
            return self._db.execute("SELECT 1 FROM outbox WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, ds, classified_at: float | None = None) -> bool:
        """Queue one dataset under `key`, committed to disk (one SQLite transaction, fsynced) before this
        returns; False if the key was queued before (nothing changes then)."""
        buf = io.BytesIO()
        ds.save_as(buf, enforce_file_format=True)
        with self._lock:
            new = (
                self._db.execute(
                    "INSERT OR IGNORE INTO outbox (key, sop_class, data, created, classified_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (key, str(ds.SOPClassUID), buf.getvalue(), time.time(), classified_at),
                ).rowcount
                == 1
            )
            if new:
                self._ready[key] = ds
        self._wake.set()
        return new

    def status(self) -> dict:
        with self._lock:
            pending, oldest, attempts = self._db.execute(
                "SELECT COUNT(*), MIN(created), MAX(attempts) FROM outbox WHERE sent_at IS NULL"
            ).fetchone()
            sent, last_sent = self._db.execute(
                "SELECT COUNT(*), MAX(sent_at) FROM outbox WHERE sent_at IS NOT NULL"
            ).fetchone()
            if self._last_error is None:  # after a restart: what the table remembers
                old = self._db.execute(
                    "SELECT last_error FROM outbox WHERE sent_at IS NULL AND last_error IS NOT NULL "
                    "ORDER BY next_try DESC LIMIT 1"
                ).fetchone()
                if old:
                    self._last_error = (time.time(), old[0])
        err = self._last_error
        return {
            "destination": str(self.o.destination),
            "pending": pending,
            "sent": sent,
            "oldest_pending_s": None if oldest is None else round(time.time() - oldest, 1),
            "attempts": attempts or 0,
            "last_error": None if err is None else err[1],
            "last_error_at": None if err is None else _iso(err[0]),
            "last_sent_at": None if last_sent is None else _iso(last_sent),
        }

    # -- sending -------------------------------------------------------------------------

    def start(self) -> Outbox:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="outbox", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=self.o.timeout_s + 5)
            self._thread = None
        try:
            self.flush()  # what was queued since the last round (e.g. `watch --once`)
        except Exception as e:
            LOG.error("outbox: %s", type(e).__name__)
        self._close_assoc()
        with self._lock:
            self._db.close()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before looking: a put() from now on wakes the next wait
            try:
                wait = self.flush()
            except Exception as e:  # the sender must outlive any one bad object
                LOG.error("outbox: %s", type(e).__name__)
                wait = self.o.retry_first_s
            if self._assoc is not None:
                idle = time.time() - self._assoc_used
                if idle >= KEEP_OPEN_S:
                    self._close_assoc()
                else:
                    wait = min(wait, KEEP_OPEN_S - idle)
            self._wake.wait(timeout=wait)

    def _due(self) -> list[tuple[str, int]]:
        with self._lock:
            return self._db.execute(
                "SELECT key, attempts FROM outbox WHERE sent_at IS NULL AND next_try <= ? ORDER BY created",
                (time.time(),),
            ).fetchall()

    def _next_wait(self) -> float:
        with self._lock:
            (t,) = self._db.execute("SELECT MIN(next_try) FROM outbox WHERE sent_at IS NULL").fetchone()
        return 3600.0 if t is None else max(0.0, min(3600.0, t - time.time()))

    def _dataset(self, key: str):
        ds = self._ready.get(key)
        if ds is not None:
            return ds
        import pydicom

        with self._lock:
            (data,) = self._db.execute("SELECT data FROM outbox WHERE key = ?", (key,)).fetchone()
        return pydicom.dcmread(io.BytesIO(data))

    def flush(self) -> float:
        """Send what is due (one association, kept open a while); seconds until the next object is due."""
        due = self._due()
        if not due:
            return self._next_wait()
        items = []
        for key, attempts in due:
            try:
                items.append((key, attempts, self._dataset(key)))
            except Exception as e:
                self._failed(key, attempts, f"cannot read the queued object ({type(e).__name__})")
        if items:
            self._send(items)
        return self._next_wait()

    def _association(self):
        """The open association, or a new one; None when the archive does not answer."""
        if self._assoc is not None and self._assoc.is_established:
            return self._assoc
        try:
            from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian
            from pynetdicom import AE
        except ImportError:
            raise MissingRuntimeError("forwarding needs pynetdicom: pip install 'edge-pneumo[dicom]'") from None
        d = self.o.destination
        ae = AE(ae_title=self.o.calling_ae)
        ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = self.o.timeout_s
        for cls in SENT_CLASSES:
            ae.add_requested_context(cls, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
        assoc = ae.associate(d.host, d.port, ae_title=d.ae_title)
        if not assoc.is_established:
            self._assoc_error = "association rejected" if assoc.is_rejected else "no answer"
            return None
        self._assoc = assoc
        return assoc

    def _close_assoc(self) -> None:
        if self._assoc is not None:
            try:
                if self._assoc.is_established:
                    self._assoc.release()
            except Exception:
                pass
            self._assoc = None

    def _send(self, items) -> None:
        d = self.o.destination
        for n, (key, attempts, ds) in enumerate(items):
            code, error = self._store(key, ds)
            if code in _STORED:
                self._sent(key)
            elif code is not None:
                self._failed(key, attempts, f"{d}: C-STORE status 0x{code:04X}")
            else:
                self._failed(key, attempts, error)
                if self._assoc is None:  # the archive is down: the rest of this round would fail the same way
                    for k, a, _ in items[n + 1 :]:
                        self._failed(k, a, error)
                    return

    def _store(self, key: str, ds) -> tuple[int | None, str | None]:
        """One C-STORE: (status, None), or (None, why not)."""
        d, error = self.o.destination, None
        for fresh in (False, True):  # a kept-open association the archive dropped: once more on a new one
            if fresh:
                self._close_assoc()
            assoc = self._association()
            if assoc is None:
                return None, f"{d}: {self._assoc_error}"
            with self._lock:
                self._db.execute("UPDATE outbox SET send_started = ? WHERE key = ?", (time.time(), key))
            try:
                st = assoc.send_c_store(ds)
            except Exception as e:
                error = f"{d}: C-STORE failed ({type(e).__name__})"
                continue
            self._assoc_used = time.time()
            if st and "Status" in st:
                return int(st.Status), None
            error = f"{d}: C-STORE got no response"
        self._close_assoc()
        return None, error

    def _sent(self, key: str) -> None:
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET sent_at = ?, last_error = NULL, data = NULL WHERE key = ?", (time.time(), key)
            )
            self._ready.pop(key, None)
        LOG.info("outbox: sent %s", key.split(":", 1)[0])

    def _failed(self, key: str, attempts: int, error: str) -> None:
        delay = min(self.o.retry_max_s, self.o.retry_first_s * 2**attempts)
        with self._lock:
            self._db.execute(
                "UPDATE outbox SET attempts = attempts + 1, next_try = ?, last_error = ? WHERE key = ?",
                (time.time() + delay, error, key),
            )
        self._last_error = (time.time(), error)
        LOG.warning("outbox: %s; next try in %.1f s", error, delay)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
