"""JPEG-LS frames decoded in a child process with a time limit.

Fuzzing found JPEG-LS frames of 566-654 bytes on which pylibjpeg's libjpeg and CharLS (pyjpegls)
loop forever. A native loop cannot be interrupted from Python; only its process can be killed.
So each JPEG-LS frame goes to a child (`frame_worker.py`: a fresh interpreter, started on the
first JPEG-LS file and reused, so it inherits none of this process's memory and costs its
start-up once) that runs pydicom's own plugin on it, CharLS first, else libjpeg. Past
`limits.decode_timeout` the child is killed and reaped, and the file is refused; the next file
gets a new child. Everything else (the frame walk, the reshape, the sign fix-up) stays in
pydicom, in this process, through a plugin of ours (`LABEL`) that only forwards the frame: the
pixels are the ones the in-process plugin gives. A codec that crashes now kills the child, not
the server. POSIX only (poll on a pipe), like the rest of the device.
"""

from __future__ import annotations

import atexit
import fcntl
import json
import os
import select
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from edge_pneumo.decoders import limits
from edge_pneumo.decoders.frame_worker import HEAD, READY
from edge_pneumo.errors import InputImageError

SYNTAXES = frozenset({"1.2.840.10008.1.2.4.80", "1.2.840.10008.1.2.4.81"})  # JPEG-LS lossless, near-lossless
LABEL = "edge_pneumo_isolated"
INNER = ("pyjpegls", "pylibjpeg")  # the plugin the child runs: the first one pydicom has
DECODER_DEPENDENCIES = {uid: ("numpy", "pyjpegls>=1.2") for uid in SYNTAXES}  # pydicom's plugin contract
START_TIMEOUT_S = 60.0  # a fresh interpreter importing pydicom and the codec, on a slow device
_BOOT = (
    "import sys; sys.path.insert(0, sys.argv[1]); from edge_pneumo.decoders.frame_worker import main; main(sys.argv[2])"
)
_ROOT = str(Path(__file__).resolve().parents[2])  # the folder holding this edge_pneumo: the child imports the same

_LOCK = threading.Lock()  # one child, one request at a time
_REGISTER_LOCK = threading.Lock()
_LOCAL = threading.local()  # the file being decoded on this thread, and our own failure for it
_WORKER: _Worker | None = None


class _Timeout(Exception):
    pass


def pixel_array(ds, name: str):
    """`ds.pixel_array`, a JPEG-LS frame decoded in the child under the time limit.

    pydicom reports a plugin's failure as one message for all plugins; the time limit and a dead
    child are ours to explain, so they come back as InputImageError naming the file."""
    syntax = str(getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", ""))
    if syntax not in SYNTAXES or not _register(syntax):
        return ds.pixel_array  # neither CharLS nor libjpeg: pydicom's own choice (gdcm), in this process
    ds.pixel_array_options(decoding_plugin=LABEL)
    _LOCAL.name, _LOCAL.failure = name, None
    try:
        return ds.pixel_array
    except Exception:
        if _LOCAL.failure:
            raise InputImageError(_LOCAL.failure) from None
        raise
    finally:
        _LOCAL.name = _LOCAL.failure = None


def _register(syntax: str) -> bool:
    """Add `LABEL` to pydicom's decoder for this syntax once; False when the child has no plugin to run."""
    from pydicom.pixels import get_decoder

    decoder = get_decoder(syntax)
    if LABEL in decoder.available_plugins:
        return True
    with _REGISTER_LOCK:  # pydicom's add_plugin is not thread-safe
        if LABEL not in decoder.available_plugins and _inner(syntax):
            decoder.add_plugin(LABEL, (__name__, "_decode_frame"))
    return LABEL in decoder.available_plugins


def _inner(syntax: str) -> str | None:
    from pydicom.pixels import get_decoder

    have = get_decoder(syntax).available_plugins
    return next((p for p in INNER if p in have), None)


def is_available(uid: str) -> bool:
    """pydicom's plugin contract: usable when the child has a codec to run."""
    return str(uid) in SYNTAXES and _inner(uid) is not None


def _decode_frame(src: bytes, runner) -> bytearray:
    """pydicom's plugin contract: one encoded frame -> its decoded bytes, decoded in the child."""
    name = getattr(_LOCAL, "name", None) or "DICOM"
    if getattr(_LOCAL, "failure", None):  # an earlier frame of this file hung: do not wait again
        raise RuntimeError(_LOCAL.failure)
    pixels = runner.rows * runner.columns * runner.samples_per_pixel
    limit = limits.decode_timeout(pixels)
    options = {k: v for k, v in runner.options.items() if isinstance(v, (str, int, float, bool))}
    try:
        reply, frame = _exchange(_inner(runner.transfer_syntax), options, src, limit)
    except _Timeout:
        _LOCAL.failure = (
            f"{name}: JPEG-LS decode did not finish in {limit:.2g} s; the file's pixel data is likely corrupt"
        )
        raise RuntimeError(_LOCAL.failure) from None
    except OSError as e:  # did not start, or died mid-frame (a crash in the codec)
        _LOCAL.failure = f"{name}: cannot decode DICOM pixel data: the JPEG-LS decoder process {e}"
        raise RuntimeError(_LOCAL.failure) from None
    if "error" in reply:  # the codec refused the frame: pydicom reports it as before
        raise RuntimeError(reply["error"])
    for key, value in reply["set"].items():
        runner.set_option(key, value)
    return frame


def _exchange(plugin: str, options: dict, src: bytes, limit: float) -> tuple[dict, bytearray]:
    """One request to the child (started if needed); on a timeout or any failure it is killed."""
    global _WORKER
    meta = json.dumps({"options": options, "alarm_s": int(limit) + 3}).encode()
    with _LOCK:
        worker = _WORKER
        if worker is None or not worker.usable(plugin):
            if worker is not None:
                worker.close()
            _WORKER = None
            worker = _Worker(plugin)
            _WORKER = worker
        try:
            return worker.ask(meta, src, limit)
        except BaseException:  # timed out, died, or interrupted: its state is unknown
            _WORKER = None
            worker.close()
            raise


class _Worker:
    """One child interpreter running `frame_worker.main`, and the pipes to it."""

    def __init__(self, plugin: str):
        self.plugin, self.owner = plugin, os.getpid()
        self.err = tempfile.TemporaryFile()  # its stderr: read back only to say why it died
        fd = self.err.fileno()
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)  # so truncating is safe
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _BOOT, _ROOT, plugin],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            bufsize=0,
        )
        self.poller = select.poll()  # not select(): a server's descriptors can be numbered past 1024
        self.poller.register(self.proc.stdout, select.POLLIN)
        _close_at_exit()
        try:
            if self._read(1, time.monotonic() + START_TIMEOUT_S) != READY:
                raise EOFError
        except (_Timeout, EOFError):
            self.close()
            raise OSError(f"did not start ({self.why()})") from None

    def usable(self, plugin: str) -> bool:
        """False after a fork (the pipes are shared with the parent's child), or if it exited."""
        return self.plugin == plugin and self.owner == os.getpid() and self.proc.poll() is None

    def ask(self, meta: bytes, src, limit: float) -> tuple[dict, bytearray]:
        src = memoryview(src).cast("B")
        try:
            self._write(HEAD.pack(len(meta), src.nbytes) + meta)
            self._write(src)
            deadline = time.monotonic() + limit
            n_meta, n_frame = HEAD.unpack(self._read(HEAD.size, deadline))
            reply = json.loads(self._read(n_meta, deadline))
            frame = self._read(n_frame, deadline)
        except (EOFError, BrokenPipeError):
            self.close()
            raise OSError(f"died ({self.why()})") from None
        self.err.truncate(0)
        return reply, frame

    def _write(self, data) -> None:
        view = memoryview(data)
        while len(view):
            view = view[self.proc.stdin.write(view) :]

    def _read(self, n: int, deadline: float) -> bytearray:
        """n bytes from the child, or `_Timeout` at the deadline (poll: a hung child never blocks us)."""
        buf = bytearray(n)
        view, got = memoryview(buf), 0
        while got < n:
            left = deadline - time.monotonic()
            if left <= 0 or not self.poller.poll(max(1, int(left * 1000))):
                raise _Timeout
            k = self.proc.stdout.readinto(view[got:])
            if not k:
                raise EOFError
            got += k
        return buf

    def close(self) -> None:
        """Kill and reap (no zombie); after a fork the child is the parent's, so only let go of it."""
        if self.owner == os.getpid():
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout):
            f.close()

    def why(self) -> str:
        code = self.proc.returncode
        said = ""
        try:
            self.err.seek(0)
            said = self.err.read()[-600:].decode("utf-8", "replace").strip().splitlines()[-1:]
            said = f": {said[0]}" if said else ""
        except (OSError, ValueError):
            pass
        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
        return how + said


_HOOKED = False


def _close_at_exit() -> None:
    global _HOOKED
    if not _HOOKED:
        _HOOKED = True
        atexit.register(_shutdown)


def _shutdown() -> None:
    global _WORKER
    worker, _WORKER = _WORKER, None
    if worker is not None:
        worker.close()
