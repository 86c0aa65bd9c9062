"""Huge-page hint on large CPU buffers (clip3dreid_plugin.utils.hugepages) and its use by the OT loss."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from clip3dreid_plugin.losses import cosine_cost
from clip3dreid_plugin.utils.hugepages import MIN_ADVISED_BYTES, advise_huge_pages, empty_like_huge

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
def test_large_buffer_is_advised_small_one_is_not():
    big = torch.empty(MIN_ADVISED_BYTES // 4 + 1024)
    assert "hg" not in vm_flags(middle(big))
    assert advise_huge_pages(big) is True
    assert "hg" in vm_flags(middle(big))
    small = torch.empty(MIN_ADVISED_BYTES // 8)
    assert advise_huge_pages(small) is False and "hg" not in vm_flags(middle(small))


def test_empty_like_huge_keeps_layout():
    x = torch.randn(4, 2048, 1100).transpose(1, 2)  # [B, N, d] view of a channels-first map, 36 MB
    out = empty_like_huge(x)
    assert out.shape == x.shape and out.stride() == x.stride() and out.dtype == x.dtype
    assert not advise_huge_pages(torch.empty(0)) and not advise_huge_pages(torch.empty(10, dtype=torch.float64))


OT_GRADIENT_FLAG = """
import sys
import torch
from clip3dreid_plugin.losses import OTLoss
from test_hugepages import middle, vm_flags

gen = torch.Generator().manual_seed(0)
x = torch.randn(8, 288, 4096, generator=gen, requires_grad=True)  # 38 MB gradient
y = torch.randn(8, 16, 4096, generator=gen, requires_grad=True)
OTLoss(huge_pages=sys.argv[1] == "True")(x, y).backward()
print("hg" in vm_flags(middle(x.grad)))
"""


@needs_thp
@pytest.mark.parametrize("huge_pages", [True, False])
def test_ot_gradient_buffer_advised_only_when_asked(huge_pages):
    # A fresh process: an earlier hint can stay on heap pages that glibc hands out again (see the module docstring),
    # so whether an unadvised buffer carries the flag depends on what ran before it in the same process.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([os.path.dirname(os.path.abspath(__file__)),
                                                        os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", OT_GRADIENT_FLAG, str(huge_pages)], capture_output=True, text=True,
                         env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == str(huge_pages)


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
