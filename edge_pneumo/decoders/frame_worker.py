"""The child process of `isolated.py`: decodes compressed frames with one of pydicom's own plugins.

Started as `python -c` by the parent (a fresh interpreter: it inherits none of the parent's
memory), it imports the plugin once, says it is ready, then answers requests on stdin/stdout
until stdin closes. A request is the frame and the runner options the plugin reads; a reply is
the decoded bytes and the options the plugin set (JSON, never pickle: the parent must not
unpickle what a decoder fed with hostile data wrote). Each decode runs under an alarm a little
longer than the parent's limit: SIGALRM's default action ends the process even inside a native
loop, so a hang cannot outlive a parent that was killed before it could kill this process. Only the standard library is
imported here; pydicom and the codec come with the plugin.
"""

from __future__ import annotations

import json
import os
import signal
import struct
import sys
from importlib import import_module

HEAD = struct.Struct("<IQ")  # JSON length, payload length: both directions
READY = b"R"


class _Runner:
    """The part of pydicom's DecodeRunner that its decoding plugins use; records what they set."""

    def __init__(self, options: dict):
        from pydicom.uid import UID

        self.options = options
        self.options["transfer_syntax_uid"] = UID(options["transfer_syntax_uid"])
        self.changed: dict = {}

    @property
    def transfer_syntax(self):
        return self.options["transfer_syntax_uid"]

    @property
    def photometric_interpretation(self) -> str:
        return self.options["photometric_interpretation"]

    @property
    def bits_stored(self) -> int:
        return self.options["bits_stored"]

    def get_option(self, name: str, default=None):
        return self.options.get(name, default)

    def set_option(self, name: str, value) -> None:
        self.options[name] = value
        self.changed[name] = value


def _read_exact(fd: int, n: int) -> bytes:
    chunks, left = [], n
    while left:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            raise EOFError
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data) -> None:
    view = memoryview(data).cast("B")
    while len(view):
        view = view[os.write(fd, view) :]


def _decode(plugin, request: dict, src: bytes) -> tuple[dict, memoryview]:
    runner = _Runner(request["options"])
    try:
        frame = plugin._decode_frame(src, runner)
    except Exception as e:  # the codec's refusal: the parent reports it like an in-process one
        return {"error": f"{type(e).__name__}: {e}"}, memoryview(b"")
    changed = {k: v for k, v in runner.changed.items() if isinstance(v, (str, int, float, bool))}
    return {"set": changed}, memoryview(frame).cast("B")


def main(plugin_name: str) -> None:
    plugin = import_module(f"pydicom.pixels.decoders.{plugin_name}")
    inp, out = 0, os.dup(1)
    os.dup2(2, 1)  # a native library's printf must never land in the reply stream
    sys.stdout = sys.stderr
    _write_all(out, READY)
    while True:
        try:
            n_meta, n_src = HEAD.unpack(_read_exact(inp, HEAD.size))
            request = json.loads(_read_exact(inp, n_meta))
            src = _read_exact(inp, n_src)
        except EOFError:  # the parent closed the pipe (or exited): done
            return
        signal.alarm(int(request["alarm_s"]))
        reply, frame = _decode(plugin, request, src)
        signal.alarm(0)
        meta = json.dumps(reply).encode()
        _write_all(out, HEAD.pack(len(meta), frame.nbytes))
        _write_all(out, meta)
        _write_all(out, frame)
