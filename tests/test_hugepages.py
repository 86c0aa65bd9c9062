"""Huge-page hint on large CPU buffers (clip3dreid_plugin.utils.hugepages) and its use by the OT loss."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from clip3dreid_plugin.losses import OTLoss, cosine_cost
from clip3dreid_plugin.utils.hugepages import MIN_ADVISED_BYTES, empty_like_huge

THP_SYSFS = "/sys/kernel/mm/transparent_hugepage/enabled"
needs_thp = pytest.mark.skipif(not (sys.platform.startswith("linux") and os.path.exists(THP_SYSFS)
                                    and os.path.exists("/proc/self/smaps")),
                               reason="needs Linux with transparent huge pages and /proc/self/smaps")


def vm_flags(addr: int) -> set:
    """The kernel's VmFlags of the mapping of this process that holds ``addr``."""
    inside = False
    with open("/proc/self/smaps") as f:
        for line in f:
            head = line.split(None, 1)[0]
            if "-" in head and all(c in "0123456789abcdef-" for c in head):
                lo, hi = (int(v, 16) for v in head.split("-"))
                inside = lo <= addr < hi
            elif inside and line.startswith("VmFlags:"):
                return set(line.split()[1:])
    raise AssertionError(f"no mapping holds {addr:#x}")


def middle(t: torch.Tensor) -> int:
    return t.data_ptr() + t.numel() * t.element_size() // 2


@needs_thp
def test_large_buffer_is_advised_in_its_own_mapping_small_one_is_not():
    big = empty_like_huge(torch.empty(MIN_ADVISED_BYTES // 4 + 1024))
    assert "hg" in vm_flags(middle(big))
    ptr = big.data_ptr()
    del big
    # Freed with the tensor: the advised mapping is gone, so the hint cannot reach later allocations.
    with pytest.raises(AssertionError, match="no mapping"):
        vm_flags(ptr + MIN_ADVISED_BYTES // 2)
    small = empty_like_huge(torch.empty(MIN_ADVISED_BYTES // 8))
    assert "hg" not in vm_flags(middle(small))


HEAP_REUSE = """
import torch
from clip3dreid_plugin.utils.hugepages import MIN_ADVISED_BYTES, empty_like_huge
from test_hugepages import middle, vm_flags

# Grow the heap with many small blocks and free them: glibc then serves a large request from that free heap.
blocks = [torch.ones(1 << 18) for _ in range(400)]
del blocks
n = MIN_ADVISED_BYTES // 4 + 4096
template = torch.empty(n)
advised = empty_like_huge(template)
advised.fill_(1.0)
del advised
plain = [torch.empty(n) for _ in range(2)]  # the first one takes the memory the advised buffer had, if on the heap
print(any("hg" in vm_flags(middle(t)) for t in plain))
"""


@needs_thp
def test_hint_does_not_stay_on_heap_memory_that_is_reused(tmp_path):
    # No heap trimming, a fixed mmap threshold: the allocator keeps a large free heap, as a long training run does.
    env = dict(os.environ, MALLOC_TRIM_THRESHOLD_=str(1 << 40), MALLOC_MMAP_THRESHOLD_=str(MIN_ADVISED_BYTES),
               PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.abspath(__file__)),
                                           os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", HEAP_REUSE], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_empty_like_huge_keeps_layout():
    x = torch.randn(4, 2048, 1100).transpose(1, 2)  # [B, N, d] view of a channels-first map, 36 MB
    out = empty_like_huge(x)
    assert out.shape == x.shape and out.stride() == x.stride() and out.dtype == x.dtype and out.device == x.device
    out.copy_(x)
    assert torch.equal(out, x)
    assert empty_like_huge(torch.empty(0)).shape == (0,)
    assert empty_like_huge(torch.empty(3, 5, dtype=torch.float64)).dtype == torch.float64


@needs_thp
@pytest.mark.parametrize("huge_pages", [True, False])
def test_ot_gradient_buffer_advised_only_when_asked(huge_pages):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 288, 4096, generator=gen, requires_grad=True)  # 38 MB gradient
    y = torch.randn(8, 16, 4096, generator=gen, requires_grad=True)
    OTLoss(huge_pages=huge_pages)(x, y).backward()
    assert ("hg" in vm_flags(middle(x.grad))) is huge_pages


def test_ot_gradients_identical_with_and_without_huge_pages():
    gen = torch.Generator().manual_seed(1)
    x0 = torch.randn(8, 300, 4096, generator=gen)  # 39 MB: its gradient is advised
    y0 = torch.randn(8, 16, 4096, generator=gen)
    weights = torch.linspace(-1, 1, 16)
    grads = []
    for hp in (True, False):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        (cosine_cost(x, y, huge_pages=hp) * weights).sum().backward()
        grads.append((x.grad, y.grad))
    assert torch.equal(grads[0][0], grads[1][0]) and torch.equal(grads[0][1], grads[1][1])
    x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
    cos = F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).transpose(1, 2)
    ((1.0 - cos) * weights).sum().backward()
    torch.testing.assert_close(grads[0][0], x.grad, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(grads[0][1], y.grad, rtol=1e-4, atol=1e-7)
