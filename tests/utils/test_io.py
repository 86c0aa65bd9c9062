"""Atomic writes (clip3dreid_plugin.utils.io): all or nothing, with the permissions a plain write would give."""
from __future__ import annotations

import json
import os

import pytest

from clip3dreid_plugin.utils.io import atomic_write, atomic_write_json


def test_atomic_write_replaces_whole_file_with_umask_permissions(tmp_path):
    path = tmp_path / "sub" / "out.json"
    atomic_write_json({"b": 1, "a": [1, 2]}, str(path))
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert os.listdir(path.parent) == ["out.json"]


def test_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.bin"
    atomic_write(str(path), lambda fh: fh.write(b"old"))

    def broken(fh):
        fh.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(str(path), broken)
    assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["out.bin"]
