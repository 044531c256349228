"""The start's sha256 check reuses a digest only while the file's stat is unchanged (device/hash_cache.py)."""

from __future__ import annotations

import os
import time

import pytest

from edge_pneumo.device import hash_cache
from edge_pneumo.device.manifest import load_manifest
from edge_pneumo.errors import IntegrityError


@pytest.fixture()
def cache(tmp_path, monkeypatch):
    """A private cache file, this process's copy emptied, and a count of the files hashed in full."""
    monkeypatch.setenv(hash_cache.ENV, str(tmp_path / "cache" / "sha256.json"))
    monkeypatch.setattr(hash_cache, "_entries", None)
    hashed: list[str] = []
    full = hash_cache.sha256_of
    monkeypatch.setattr(hash_cache, "sha256_of", lambda p: hashed.append(str(p)) or full(p))
    return hashed


def _age(path, seconds: float = 60.0) -> None:
    """Make the file look last written a while ago (its ctime stays: that is the point)."""
    t = time.time() - seconds
    os.utime(path, (t, t))


def test_an_unchanged_file_is_hashed_once(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(hash_cache, "RACY_NS", 0)
    f = tmp_path / "model.bin"
    f.write_bytes(b"weights" * 1000)
    first = hash_cache.sha256_cached(f)
    assert first == hash_cache.sha256_cached(f) == hash_cache.sha256_of(f) and len(cache) == 2  # one + the check
    monkeypatch.setattr(hash_cache, "_entries", None)  # a new process reads the cache file
    assert hash_cache.sha256_cached(f) == first and len(cache) == 2


def test_a_file_written_since_is_hashed_again_even_with_its_mtime_put_back(cache, tmp_path, monkeypatch):
    monkeypatch.setattr(hash_cache, "RACY_NS", 0)
    f = tmp_path / "model.bin"
    f.write_bytes(b"weights" * 1000)
    _age(f)
    before = os.stat(f)
    first = hash_cache.sha256_cached(f)
    time.sleep(0.05)  # past the file system's clock tick, so the write below moves the ctime
    f.write_bytes(b"Weights" * 1000)  # same size
    os.utime(f, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert os.stat(f).st_size == before.st_size and os.stat(f).st_mtime_ns == before.st_mtime_ns
    assert hash_cache.sha256_cached(f) != first and len(cache) == 2


def test_a_file_changed_just_now_is_not_recorded(cache, tmp_path):
    f = tmp_path / "model.bin"
    f.write_bytes(b"weights")
    hash_cache.sha256_cached(f)
    hash_cache.sha256_cached(f)
    assert len(cache) == 2 and not (tmp_path / "cache" / "sha256.json").exists()


def test_the_cache_can_be_turned_off_or_unwritable(tmp_path, monkeypatch):
    monkeypatch.setattr(hash_cache, "RACY_NS", 0)
    f = tmp_path / "model.bin"
    f.write_bytes(b"weights")
    for value in ("", str(tmp_path / "model.bin" / "not-a-folder.json")):
        monkeypatch.setenv(hash_cache.ENV, value)
        monkeypatch.setattr(hash_cache, "_entries", None)
        assert hash_cache.sha256_cached(f) == hash_cache.sha256_of(f)


def test_a_tampered_artifact_is_refused_after_a_clean_start(cache, exported_copy, monkeypatch):
    monkeypatch.setattr(hash_cache, "RACY_NS", 0)
    manifest = load_manifest(exported_copy)
    entry = manifest.artifacts["onnx_int8"]
    path = entry.path(exported_copy)
    _age(path)
    manifest.verify(entry, cached=True)
    manifest.verify(entry, cached=True)
    assert cache == [os.path.abspath(path)]
    time.sleep(0.05)
    data = bytearray(path.read_bytes())
    data[-1] ^= 1
    path.write_bytes(bytes(data))
    _age(path)
    with pytest.raises(IntegrityError, match="does not match the manifest"):
        manifest.verify(entry, cached=True)
