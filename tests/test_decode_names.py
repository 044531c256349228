"""read_grey names a file as str(Path(path)) in every message, without building a Path in a folder run."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from edge_pneumo.decoders.decode import _suffix, path_name, read_grey
from edge_pneumo.errors import InputImageError


def test_path_name_and_suffix_are_pathlibs():
    names = ["".join(t) for n in range(7) for t in itertools.product("/.a", repeat=n)]
    names += ["x.jpeg", "./x.JPEG", "a/b.tar.gz", "/abs/IM-0001.jpeg", "a/.jpeg", "a/b.", "..", "../x.png", "a\\b.png"]
    for name in names:
        assert path_name(name) == str(Path(name)), name
        assert _suffix(path_name(name)) == Path(name).suffix.lower(), name
    assert path_name(Path("a//b.png")) == "a/b.png"


@pytest.mark.parametrize("spelling", ["{d}/missing.jpeg", "{d}//missing.jpeg", "{d}/./missing.jpeg"])
def test_messages_name_the_file_as_before(tmp_path, spelling):
    with pytest.raises(InputImageError) as e:
        read_grey(spelling.format(d=tmp_path))
    assert str(e.value) == f"{tmp_path}/missing.jpeg: no such file"
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(InputImageError, match=r"notes.txt: unsupported file type '.txt'"):
        read_grey(f"{tmp_path}//notes.txt")
    with pytest.raises(InputImageError, match="is a directory"):
        read_grey(f"{tmp_path}/")
