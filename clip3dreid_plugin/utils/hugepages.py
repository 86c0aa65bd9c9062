"""Large, short-lived CPU buffers backed by transparent huge pages (Linux).

A fresh large CPU buffer is new anonymous memory, and the first write to each 4 KiB page of it traps into the
kernel. For the OT loss's ``[B, N, d']`` feature gradient at the paper's settings those faults cost more than the
matrix product that fills the buffer (``BENCHMARKS.md``). ``madvise(MADV_HUGEPAGE)`` before the first write lets
the kernel back the buffer with 2 MiB pages, 512 times fewer faults. It is a hint on this one buffer: no value
changes, nothing else in the process is affected, and where the platform or kernel does not take it the buffer is
used as it is.

The buffer is a mapping of its own (``mmap``), unmapped when the tensor is freed. A buffer from the C allocator
would not do: glibc serves even a large request from free heap memory when it has enough, and a hint given there
stays on heap pages that later, unrelated allocations reuse.
"""
from __future__ import annotations

import ctypes
import functools
import logging
import mmap
import sys
from typing import Callable, Optional

import torch

logger = logging.getLogger(__name__)

__all__ = ["HUGE_PAGE_BYTES", "MIN_ADVISED_BYTES", "empty_like_huge"]

HUGE_PAGE_BYTES = 2 << 20
# Below this a buffer's faults cost little next to a syscall pair per allocation (mmap + munmap).
MIN_ADVISED_BYTES = 32 << 20
_MADV_HUGEPAGE = 14  # <linux/mman.h>


@functools.lru_cache(maxsize=1)
def _madvise() -> Optional[Callable[..., int]]:
    """libc's ``madvise`` on Linux, else ``None``."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fn = ctypes.CDLL(None, use_errno=True).madvise
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    fn.restype = ctypes.c_int
    return fn


def _advise(tensor: torch.Tensor) -> bool:
    """Gives the hint on the 2 MiB-aligned part of ``tensor``'s storage (a mapping of its own); True if taken."""
    madvise = _madvise()
    if madvise is None:
        return False
    storage = tensor.untyped_storage()
    start, nbytes = storage.data_ptr(), storage.nbytes()
    lo = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    hi = (start + nbytes) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if hi <= lo or madvise(lo, hi - lo, _MADV_HUGEPAGE) != 0:
        # A kernel without THP says EINVAL; the buffer works the same, only with 4 KiB pages.
        logger.debug("madvise(MADV_HUGEPAGE) refused (errno %d)", ctypes.get_errno())
        return False
    return True


def empty_like_huge(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(tensor)``, in a mapping of its own advised for huge pages when it is a large CPU buffer.

    Call it for a buffer about to be written whole: pages already touched stay small. CPU buffers under
    :data:`MIN_ADVISED_BYTES`, other devices and non-Linux platforms get a plain ``torch.empty_like``.

    Args:
        tensor: the tensor whose shape, strides, dtype and device to copy.

    Returns:
        An uninitialised tensor like ``tensor`` (same strides).
    """
    layout = torch.empty_like(tensor, device="meta")  # empty_like's strides, without allocating
    if tensor.device.type != "cpu" or _madvise() is None or layout.numel() == 0:
        return torch.empty_like(tensor)
    numel = 1 + sum((n - 1) * st for n, st in zip(layout.shape, layout.stride()))
    if numel * tensor.element_size() < MIN_ADVISED_BYTES:
        return torch.empty_like(tensor)
    # Anonymous and page-aligned; the tensor holds the mmap object, so freeing the tensor unmaps it.
    buf = mmap.mmap(-1, numel * tensor.element_size())
    flat = torch.frombuffer(buf, dtype=tensor.dtype, count=numel)
    _advise(flat)
    return flat.as_strided(layout.shape, layout.stride())
