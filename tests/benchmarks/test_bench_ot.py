"""The OT benchmark's methods compute the same loss (so its speed-ups compare like with like)."""
import importlib.util
import math
import os.path as osp

import pytest
import torch

BENCH = osp.join(osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))), "benchmarks", "bench_ot.py")


@pytest.fixture(scope="module")
def bench_ot():
    spec = importlib.util.spec_from_file_location("bench_ot", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_method_agrees_with_the_per_sample_pot_loop(bench_ot):
    rows = bench_ot.run_benchmark(batch=3, n=12, m=4, dim=16, regs=[1.0, 0.2], max_iter=500, tol=1e-9, repeats=1,
                                  methods=list(bench_ot.METHODS), scopes=["full", "solver"], rank=4, seed=0)
    full = {r["method"] for r in rows if r["scope"] == "full"}
    solver = {r["method"] for r in rows if r["scope"] == "solver"}
    assert full == set(bench_ot.METHODS)
    # The own-cost loop builds its cost from the features, so it has no solver-only scope.
    assert solver == set(bench_ot.METHODS) - set(bench_ot.FEATURE_METHODS)
    for r in rows:
        assert r["median_ms"] > 0
        if r["method"] in bench_ot.NOT_A_LOSS:
            assert math.isnan(r["max_abs_value_diff"]) and r["iterations"] == 0, r
        else:
            assert r["max_abs_value_diff"] < 1e-5, r
            assert r["iterations"] >= 1, r


def test_shared_products_does_the_products_of_the_loss_gradient(bench_ot):
    """d/dx sum(x y^T) = 1 y and d/dy = 1^T x: the row times exactly the loss's three products."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(3, 5, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    y = torch.randn(3, 4, 7, generator=gen, dtype=torch.float64, requires_grad=True)
    vals = bench_ot._shared_products(x, y, 1.0, 10, 1e-6)
    vals.sum().backward()
    torch.testing.assert_close(vals, torch.einsum("bnd,bmd->b", x, y))
    torch.testing.assert_close(x.grad, y.sum(1, keepdim=True).expand(-1, 5, -1))
    torch.testing.assert_close(y.grad, x.sum(1, keepdim=True).expand(-1, 4, -1))


def test_a_timing_only_method_cannot_be_the_reference(bench_ot):
    with pytest.raises(ValueError, match="shared_products"):
        bench_ot.run_benchmark(batch=2, n=4, m=3, dim=8, regs=[1.0], max_iter=10, tol=1e-6, repeats=1,
                               methods=["shared_products", "batched"], scopes=["full"])


def test_reference_without_the_scope_is_rejected(bench_ot):
    with pytest.raises(ValueError, match="pot_loop_own_cost"):
        bench_ot.run_benchmark(batch=2, n=4, m=3, dim=8, regs=[1.0], max_iter=10, tol=1e-6, repeats=1,
                               methods=["pot_loop_own_cost", "batched"], scopes=["solver"])


def test_4k_pages_row_is_the_plugin_loss_without_the_huge_page_buffer(bench_ot, monkeypatch):
    import clip3dreid_plugin.losses.ot as ot_module

    advised = []
    real = ot_module.empty_like_huge
    monkeypatch.setattr(ot_module, "empty_like_huge", lambda t: advised.append(t.shape) or real(t))
    gen = torch.Generator().manual_seed(0)
    x0, y0 = torch.randn(2, 6, 8, generator=gen), torch.randn(2, 3, 8, generator=gen)
    vals = {}
    for name in ("batched_4k_pages", "batched"):
        x, y = x0.clone().requires_grad_(), y0.clone().requires_grad_()
        fn = bench_ot.FEATURE_METHODS.get(name)
        vals[name] = (fn(x, y, 1.0, 50, 1e-6) if fn else bench_ot.METHODS[name][0](
            bench_ot.cosine_cost(x, y), 1.0, 50, 1e-6))
        vals[name].sum().backward()
        assert advised == ([] if name == "batched_4k_pages" else [x.shape]), name
    torch.testing.assert_close(vals["batched_4k_pages"], vals["batched"], rtol=0, atol=1e-6)
