"""Native libraries' messages: none lost, none anonymous.

libpng, libtiff, libjpeg (inside OpenCV) and LiteRT write warnings straight to file
descriptor 2, with no file name. Two rules keep every message:

1. `protect_python_stderr()`: the front ends (CLI, server, watcher) write their own messages
   to a duplicate of fd 2, never to fd 2 itself, so pointing fd 2 elsewhere for a moment can
   never swallow them.
2. `capture()`: a native call whose messages matter runs with fd 2 pointed at a private
   temporary file, under a lock (fd 2 is one per process); what the library wrote comes back
   as text, to be attached to the file it concerns. The common path (JPEG through
   simplejpeg, which reports damage as data) never needs it.
"""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager

_LOCK = threading.Lock()


def protect_python_stderr() -> None:
    """Point sys.stderr at a duplicate of fd 2, when it writes to fd 2 itself.

    A stream that is not fd 2 (a test runner's buffer, an already protected stream) is left
    alone: nothing written to it can be swallowed by a redirect of fd 2."""
    try:
        if sys.stderr is None or sys.stderr.fileno() != 2:
            return
        fd = os.dup(2)
    except (AttributeError, ValueError, OSError):  # no fileno (captured), closed, or no fd 2 at all
        return
    try:
        sys.stderr.flush()
    except (AttributeError, ValueError, OSError):
        pass
    encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
    sys.stderr = os.fdopen(fd, "w", buffering=1, encoding=encoding, errors="backslashreplace")


class Captured:
    text: str = ""

    @property
    def lines(self) -> list[str]:
        return [line.strip() for line in self.text.splitlines() if line.strip()]


@contextmanager
def capture():
    """Run the body with fd 2 redirected to a private in-memory file; `.text` holds what was written."""
    out = Captured()
    with _LOCK:
        try:
            saved = os.dup(2)
        except OSError:
            yield out
            return
        try:
            sys.stderr.flush()
        except (AttributeError, ValueError, OSError):
            pass
        fd = _scratch_fd()
        try:
            os.dup2(fd, 2)
            try:
                yield out
            finally:
                os.dup2(saved, 2)
                os.close(saved)
                os.lseek(fd, 0, os.SEEK_SET)
                out.text = os.read(fd, 64 * 1024).decode("utf-8", "replace").strip()
        finally:
            os.close(fd)


def _scratch_fd() -> int:
    """An anonymous file: memfd on Linux (no disk, nothing to import), else a temporary file."""
    if hasattr(os, "memfd_create"):
        try:
            return os.memfd_create("edge-pneumo-stderr")
        except OSError:
            pass
    import tempfile

    fd, path = tempfile.mkstemp(prefix="edge-pneumo-stderr-")
    os.unlink(path)
    return fd
