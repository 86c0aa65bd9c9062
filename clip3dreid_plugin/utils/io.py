"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one."""
from __future__ import annotations

import json
import os
import os.path as osp
import tempfile
from typing import Any, BinaryIO, Callable

__all__ = ["atomic_write", "atomic_write_json"]


def _default_mode() -> int:
    # mkstemp creates files readable by their owner only; a written file should get the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: str, write: Callable[[BinaryIO], Any], fsync: bool = False) -> str:
    """Writes ``path`` through ``write(fh)`` on a temporary file in the same folder, then ``os.replace``.

    Args:
        path: the final file; its folder is created when missing.
        write: writes the content to a binary file handle.
        fsync: flush the data to disk before the rename (checkpoints and caches that must survive a power cut;
            not for the thousands of small images of a dataset build).

    Returns:
        ``path``. A failure leaves no temporary file behind and the previous file untouched.
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    # The '.tmp' suffix lets resumable builders recognise and discard a crashed write.
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + osp.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    finally:
        if osp.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_json(obj: Any, path: str) -> str:
    """Writes ``obj`` as indented, key-sorted JSON to ``path`` atomically; returns ``path``."""
    text = json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(text))
