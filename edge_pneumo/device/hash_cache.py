"""The model files' sha256, hashed in full once rather than on every start: a cache keyed by each file's stat.

Every start checks the artifact, the parameter file and the view model against the manifest's
sha256. Hashing them, and loading OpenSSL to do it, costs a one-image `infer` ~5 ms and ~3.6 MB
(issue 27). A file whose device, inode, size, mtime and ctime are those it had when it was last
hashed in full has not been written since: a write, a file renamed over it or a `touch` sets its
ctime to the present, and no program can set a ctime back. So the digest recorded then is its
digest now, and a tampered or replaced file is still refused: its stat differs, it is hashed
again, and the new digest is compared with the manifest's as before.

Two cautions, as git takes them for its index: an entry is recorded only for a file last changed
at least RACY_NS before it was hashed (file times are coarse, and a write in the same tick could
keep the stat), and `edge-pneumo verify` hashes every byte without looking here. What no stat
shows is a change under the file system (a bit flipped on an SD card): `verify` finds that.

The cache is a small JSON file beside the device profile ($EDGE_PNEUMO_HASH_CACHE overrides the
path; set it empty to turn the cache off), never inside the model folder, which may be read-only.
A cache that cannot be read or written is not used.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

ENV = "EDGE_PNEUMO_HASH_CACHE"
RACY_NS = 2_000_000_000  # a file changed less than 2 s before its hash is not recorded
MAX_ENTRIES = 64
_entries: dict | None = None  # this process's copy of the cache


def cache_path() -> Path | None:
    """$EDGE_PNEUMO_HASH_CACHE, else `<device profile>.sha256.json` beside the device profile; None: off."""
    env = os.environ.get(ENV)
    if env is not None:
        return Path(env) if env.strip() else None
    from edge_pneumo.device.device_profile import profile_path

    return profile_path().with_suffix(".sha256.json")


def sha256_of(path: str | os.PathLike) -> str:
    """The file's sha256, every byte read (hashlib, imported here: OpenSSL loads only when a file is hashed)."""
    import hashlib

    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def sha256_cached(path: str | os.PathLike) -> str:
    """The file's sha256: the recorded one while its stat is unchanged, else hashed in full (and recorded)."""
    key = os.path.abspath(path)
    stamp = file_stamp(key)
    entries = _load()
    hit = entries.get(key)
    if isinstance(hit, list) and hit[:-1] == stamp:
        return hit[-1]
    digest = sha256_of(key)
    if file_stamp(key) == stamp and time.time_ns() - max(stamp[3], stamp[4]) >= RACY_NS:
        entries[key] = [*stamp, digest]
        _save(entries)
    return digest


def file_stamp(path: str | os.PathLike) -> list[int]:
    """The stat that changes with any write or replacement of the file (the module docstring says why)."""
    st = os.stat(path)
    return [st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def _load() -> dict:
    global _entries
    if _entries is None:
        _entries = {}
        path = cache_path()
        try:
            raw = json.loads(path.read_text()) if path is not None else {}
        except (OSError, ValueError):
            raw = {}
        if isinstance(raw, dict) and isinstance(raw.get("files"), dict):
            _entries = raw["files"]
    return _entries


def _save(entries: dict) -> None:
    """Written beside and renamed into place: a reader never sees half a cache (the last writer wins)."""
    path = cache_path()
    if path is None:
        return
    keep = dict(list(entries.items())[-MAX_ENTRIES:])
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps({"schema": 1, "files": keep}))
        os.replace(tmp, path)
    except OSError:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
