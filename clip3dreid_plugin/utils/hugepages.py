"""Large, short-lived CPU buffers backed by transparent huge pages (Linux).

A fresh large CPU buffer is new anonymous memory, and the first write to each 4 KiB page of it traps into the
kernel. For the OT loss's ``[B, N, d']`` feature gradient at the paper's settings those faults cost more than the
matrix product that fills the buffer (``BENCHMARKS.md``). ``madvise(MADV_HUGEPAGE)`` before the first write lets
the kernel back the buffer with 2 MiB pages, 512 times fewer faults. No value ever changes, and where the platform
or kernel does not take the hint the buffer is used as it is.

The hint is given on memory from the C allocator, not on a mapping of its own. glibc serves a large request from
free heap memory when it has enough. A hint given there stays on those pages after the tensor is freed, so later
allocations that reuse them get huge pages too. That reuse, with no new page faults at all, is also what makes this
path fast. A private ``mmap`` per call would keep the hint to one buffer, but it faults and zeroes the whole buffer
on every step and measured about 40 % slower (``BENCHMARKS.md``).
"""
from __future__ import annotations

import ctypes
import functools
import logging
import sys
from typing import Callable, Optional

import torch

logger = logging.getLogger(__name__)

__all__ = ["HUGE_PAGE_BYTES", "MIN_ADVISED_BYTES", "advise_huge_pages", "empty_like_huge"]

HUGE_PAGE_BYTES = 2 << 20
# Below this a buffer's faults cost little next to the madvise call.
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


def advise_huge_pages(tensor: torch.Tensor) -> bool:
    """Asks the kernel to back ``tensor``'s memory with transparent huge pages.

    Call it before the first write: pages already touched stay small. Only the 2 MiB-aligned part of the
    storage is advised. CPU tensors under :data:`MIN_ADVISED_BYTES` are left alone.

    Args:
        tensor: a CPU tensor (any shape); other devices are ignored.

    Returns:
        ``True`` when the kernel accepted the hint, ``False`` when it was not given or refused.
    """
    if tensor.device.type != "cpu":
        return False
    storage = tensor.untyped_storage()
    start, nbytes = storage.data_ptr(), storage.nbytes()
    if nbytes < MIN_ADVISED_BYTES:
        return False
    madvise = _madvise()
    if madvise is None:
        return False
    lo = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    hi = (start + nbytes) // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if madvise(lo, hi - lo, _MADV_HUGEPAGE) != 0:
        # A kernel without THP says EINVAL; the buffer works the same, only with 4 KiB pages.
        logger.debug("madvise(MADV_HUGEPAGE) refused (errno %d)", ctypes.get_errno())
        return False
    return True


def empty_like_huge(tensor: torch.Tensor) -> torch.Tensor:
    """``torch.empty_like(tensor)``, advised for huge pages when it is a large CPU buffer.

    Args:
        tensor: the tensor whose shape, strides, dtype and device to copy.

    Returns:
        An uninitialised tensor like ``tensor``.
    """
    out = torch.empty_like(tensor)
    advise_huge_pages(out)
    return out
