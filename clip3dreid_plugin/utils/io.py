"""Atomic file writes: a reader (or a resumed run) sees the old file or the new one, never half of one."""
from __future__ import annotations

import json
import os
import os.path as osp
import tempfile
from typing import Any, BinaryIO, Callable

from clip3dreid_plugin.errors import UserError, WriteError

__all__ = ["atomic_write", "atomic_write_json"]


def _default_mode() -> int:
    # mkstemp creates files readable by their owner only; a written file should get the usual umask-based mode.
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _on_the_way(filename: Any, folder: str) -> bool:
    """Whether an OS error's file is ``folder``, one of its parents (made by ``makedirs``) or a file in it."""
    if filename is None:  # a failed write() or fsync() names no file
        return True
    name = osp.abspath(os.fsdecode(filename))
    return folder == name or folder.startswith(name + os.sep) or osp.dirname(name) == folder


def atomic_write(path: str, write: Callable[[BinaryIO], Any], fsync: bool = False) -> str:
    """Writes ``path`` through ``write(fh)`` on a temporary file in the same folder, then ``os.replace``.

    Args:
        path: the final file; its folder is created when missing.
        write: writes the content to a binary file handle.
        fsync: flush the data to disk before the rename (checkpoints and caches that must survive a power cut;
            not for the thousands of small images of a dataset build).

    Returns:
        ``path``.

    Raises:
        WriteError: an OS call failed (no space left, permission denied): the message names ``path`` and the
            cause. Nothing is left behind: no temporary file, and the previous file untouched. Any other exception
            of ``write`` propagates as it is, with the same clean-up.
    """
    folder = osp.dirname(osp.abspath(path))
    tmp = None
    try:
        os.makedirs(folder, exist_ok=True)
        # The '.tmp' suffix lets resumable builders recognise and discard a crashed write.
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + osp.basename(path) + ".", suffix=".tmp")
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            if fsync:
                fh.flush()
                os.fsync(fh.fileno())
        os.chmod(tmp, _default_mode())
        os.replace(tmp, path)
    except OSError as err:
        # Only a failed OS call on the way to ``path`` (it sets errno) is the machine's problem; an OSError subclass
        # of the project's (an unreadable input image), a bare OSError of ``write`` or a failed read of another
        # file keeps its own type.
        if err.errno is None or isinstance(err, UserError) or not _on_the_way(err.filename, folder):
            raise
        raise WriteError(path, err) from err
    finally:
        if tmp is not None and osp.exists(tmp):
            os.remove(tmp)
    return path


def atomic_write_json(obj: Any, path: str) -> str:
    """Writes ``obj`` as indented, key-sorted JSON to ``path`` atomically; returns ``path``."""
    text = json.dumps(obj, indent=2, sort_keys=True).encode("utf-8")
    return atomic_write(path, lambda fh: fh.write(text))
