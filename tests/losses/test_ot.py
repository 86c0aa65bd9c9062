"""OT distillation loss against POT, the global distillation loss by hand, and the identity losses against
torchreid's.

References are computed one sample at a time with POT on torch tensors (autodiff through POT's own
iterations), run far past convergence, so they are independent of the batched log-domain solver.
"""
from __future__ import annotations

import math

import ot
import pytest
import torch
import torch.nn.functional as F

from clip3dreid_plugin.losses import OTLoss, global_distill_loss, ot_distance, transport_plan
from clip3dreid_plugin.losses.ot import cosine_cost, sinkhorn_log

@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """The problems here are tiny: with two threads on a shared CPU, OpenMP hand-offs dominate (~10x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


# (seed, B, N, M, d): several sizes within B 4-8, N 12-48, M 16, d 8-32.
CASES = [(0, 4, 12, 16, 8), (1, 6, 30, 16, 16), (2, 8, 48, 16, 32)]

# Tight settings: both solvers converge, so values and gradients are those of the fixed point.
TIGHT = {torch.float64: dict(tol=1e-11, max_iter=5000), torch.float32: dict(tol=1e-7, max_iter=5000)}
# Tolerances: values absolute; gradients relative to the largest reference entry (gradients are ~1e-2).
VALUE_ATOL = {torch.float64: 1e-9, torch.float32: 1e-4}
GRAD_RTOL = {torch.float64: 1e-7, torch.float32: 1e-4}


def _feats(seed, B, N, M, d, dtype=torch.float32):
    gen = torch.Generator().manual_seed(seed)
    # A low-rank part spreads the cosines over [-1, 1], so the plans are far from uniform.
    basis = torch.randn(3, d, generator=gen, dtype=torch.float64)
    x = torch.randn(B, N, 3, generator=gen, dtype=torch.float64) @ basis
    y = torch.randn(B, M, 3, generator=gen, dtype=torch.float64) @ basis
    x = x + 0.3 * torch.randn(B, N, d, generator=gen, dtype=torch.float64)
    y = y + 0.3 * torch.randn(B, M, d, generator=gen, dtype=torch.float64)
    return x.to(dtype).requires_grad_(), y.to(dtype).requires_grad_()


def _ref_cost(x, y):
    """Cosine cost of one sample computed independently of the plugin (F.normalize + matmul)."""
    return 1.0 - F.normalize(x, dim=-1) @ F.normalize(y, dim=-1).T


def _uniform(n, like):
    return torch.full((n,), 1.0 / n, dtype=like.dtype)


def _pot_sinkhorn2(x, y, reg, tol, max_iter, method="sinkhorn"):
    """Per-sample ``ot.sinkhorn2`` values [B] (autodiff-able through POT)."""
    vals = []
    for b in range(x.size(0)):
        C = _ref_cost(x[b], y[b])
        vals.append(ot.sinkhorn2(_uniform(C.size(0), C), _uniform(C.size(1), C), C, reg, method=method,
                                 numItermax=max_iter, stopThr=tol))
    return torch.stack(vals)


def _assert_grad_close(g, ref, rtol):
    scale = ref.abs().max().item()
    err = (g - ref).abs().max().item()
    assert err <= rtol * scale, f"max grad error {err:.3e} > {rtol:g} * {scale:.3e}"


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("reg", [1.0, 0.1])
@pytest.mark.parametrize("case", CASES)
def test_autodiff_matches_pot_sinkhorn2(case, reg, dtype):
    seed, B, N, M, d = case
    x, y = _feats(seed, B, N, M, d, dtype)
    out = ot_distance(x, y, reg=reg, grad="autodiff", **TIGHT[dtype])
    assert out.shape == (B,) and out.dtype == dtype
    gx, gy = torch.autograd.grad(out.sum(), (x, y))

    xr, yr = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    ref = _pot_sinkhorn2(xr, yr, reg, **TIGHT[dtype])
    rx, ry = torch.autograd.grad(ref.sum(), (xr, yr))

    assert torch.allclose(out, ref, rtol=0, atol=VALUE_ATOL[dtype]), (out - ref).abs().max()
    _assert_grad_close(gx, rx, GRAD_RTOL[dtype])
    _assert_grad_close(gy, ry, GRAD_RTOL[dtype])


@pytest.mark.parametrize("reg", [1.0, 0.1])
def test_envelope_gradient_is_that_of_the_regularised_objective(reg):
    """grad='envelope' == d/d(features) of min_T <T,C> + reg*sum T log T (POT's ot.solve, autodiff)."""
    x, y = _feats(3, 5, 20, 16, 12, torch.float64)
    out = ot_distance(x, y, reg=reg, grad="envelope", tol=1e-12, max_iter=5000)
    gx, gy = torch.autograd.grad(out.sum(), (x, y))

    xr, yr = x.detach().clone().requires_grad_(), y.detach().clone().requires_grad_()
    reg_values, linear_values = [], []
    for b in range(xr.size(0)):
        C = _ref_cost(xr[b], yr[b])
        res = ot.solve(C, _uniform(C.size(0), C), _uniform(C.size(1), C), reg=reg, reg_type="entropy",
                       max_iter=5000, tol=1e-12, grad="autodiff")
        reg_values.append(res.value)
        linear_values.append(res.value_linear)
    rx, ry = torch.autograd.grad(torch.stack(reg_values).sum(), (xr, yr))
    _assert_grad_close(gx, rx, 1e-7)
    _assert_grad_close(gy, ry, 1e-7)
    # The value itself is still the transport cost <T*, C>, not the regularised optimum.
    assert torch.allclose(out, torch.stack(linear_values).detach(), atol=1e-10)

    # The two gradient modes differ: the gradient comparisons above can tell them apart.
    ga, _ = torch.autograd.grad(ot_distance(x, y, reg=reg, tol=1e-12, max_iter=5000).sum(), (x, y))
    assert (ga - gx).abs().max() > 1e-3 * gx.abs().max()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_plan_marginals_are_uniform(dtype):
    seed, B, N, M, d = CASES[1]
    x, y = _feats(seed, B, N, M, d, dtype)
    tol = 1e-10 if dtype == torch.float64 else 1e-6
    plan = transport_plan(x, y, reg=0.1, tol=tol, max_iter=5000)
    assert plan.shape == (B, N, M) and not plan.requires_grad
    assert (plan >= 0).all()
    # Rows: within the stopping tolerance (an L2 bound, so it bounds every entry); columns: exact after
    # the last v update, up to rounding.
    assert torch.allclose(plan.sum(2), torch.full((B, N), 1.0 / N, dtype=dtype), rtol=0, atol=tol)
    col_atol = 1e-14 if dtype == torch.float64 else 1e-7
    assert torch.allclose(plan.sum(1), torch.full((B, M), 1.0 / M, dtype=dtype), rtol=0, atol=col_atol)
    # Not the trivial product plan: the cost shapes it.
    assert (plan - 1.0 / (N * M)).abs().max() > 1e-3 / (N * M)


def test_stopping_rule():
    x, y = _feats(4, 6, 24, 16, 8, torch.float64)
    C = cosine_cost(x.detach(), y.detach())
    N = C.size(1)
    plan, n_iter = sinkhorn_log(C, reg=0.1, max_iter=1000, tol=1e-4, check_every=1)
    assert 1 < n_iter < 1000
    # The returned plan passed the test: max over the batch of the L2 row-marginal violation < tol ...
    assert (plan.sum(2) - 1.0 / N).norm(dim=1).max() < 1e-4
    # ... and one iteration fewer would not have.
    prev, _ = sinkhorn_log(C, reg=0.1, max_iter=n_iter - 1, tol=0.0)
    assert (prev.sum(2) - 1.0 / N).norm(dim=1).max() >= 1e-4
    # tol=0 runs exactly max_iter iterations.
    assert sinkhorn_log(C, reg=0.1, max_iter=7, tol=0.0)[1] == 7
    # Checking every 5 iterations stops at the first multiple of 5 at or after the converged iteration.
    assert sinkhorn_log(C, reg=0.1, max_iter=1000, tol=1e-4, check_every=5)[1] == 5 * math.ceil(n_iter / 5)


@pytest.mark.parametrize("grad", ["autodiff", "envelope"])
@pytest.mark.parametrize("reg, tol, check_every", [(1.0, 1e-5, 5), (0.1, 1e-4, 1), (0.1, 1e-6, 5), (0.02, 3e-3, 3),
                                                   (0.1, 0.0, 5)])
def test_device_side_stopping_equals_stopping_on_the_host(reg, tol, check_every, grad):
    """Without host checks (a GPU's default) the test's result stays on the device and freezes the potentials once
    it passes: the same iteration count, bit for bit the same values, plans and gradients as breaking out of the
    loop on the host, and no value read back. reg 0.02 takes the full log-sum-exp (the cost is not read to choose)."""
    from fixtures.host_syncs import count_host_syncs

    x, y = _feats(8, 5, 20, 16, 8, torch.float32)
    out = {}
    for host in (True, False):
        with count_host_syncs() as syncs:
            val, plan = ot_distance(x, y, reg=reg, tol=tol, max_iter=300, grad=grad, check_every=check_every,
                                    return_plan=True, host_checks=host)
            grads = torch.autograd.grad(val.sum(), (x, y))
        out[host] = (val.detach(), plan, grads, len(syncs.calls))
        C = cosine_cost(x.detach(), y.detach())
        n = sinkhorn_log(C, reg, 300, tol, check_every, host_checks=host, max_span=2.0)[1]
        out[host] += (int(n),)
    assert out[False][3] == 0
    if tol > 0:
        assert out[True][3] > 0  # the control: breaking out on the host reads the tests back
    assert out[True][4] == out[False][4] and (tol == 0 or out[True][4] < 300), (out[True][4], out[False][4])
    assert torch.equal(out[True][0], out[False][0])
    if reg >= 0.1:  # both choose the same stabiliser, so the plans are bit for bit equal
        assert torch.equal(out[True][1], out[False][1])
        for a, b in zip(out[True][2], out[False][2]):
            assert torch.equal(a, b)
    else:
        torch.testing.assert_close(out[False][1], out[True][1], rtol=1e-4, atol=0)
        for a, b in zip(out[True][2], out[False][2]):
            _assert_grad_close(b, a, 1e-4)


def test_default_host_checks_are_the_cpus_only():
    """The default reads convergence back on the CPU only (free there); elsewhere nothing is read."""
    from clip3dreid_plugin.losses.ot import _reads_on_host

    assert _reads_on_host(torch.device("cpu"), None) is True
    assert _reads_on_host(torch.device("cuda", 0), None) is False
    assert _reads_on_host(torch.device("cuda", 0), True) is True and _reads_on_host(torch.device("cpu"), False) is False


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_half_precision_cost_is_upcast(low):
    """ot_distance_from_cost runs a half-precision cost in float32, as ot_distance does with its inputs: in half
    precision Sinkhorn's exp underflows at small reg."""
    from clip3dreid_plugin.losses import ot_distance_from_cost

    x, y = _feats(9, 4, 16, 16, 8, torch.float32)
    cost = cosine_cost(x.detach(), y.detach()).to(low).requires_grad_()
    for reg in (0.1, 0.01):
        out = ot_distance_from_cost(cost, reg=reg)
        assert out.dtype == torch.float32 and torch.isfinite(out).all()
        assert torch.equal(out, ot_distance_from_cost(cost.detach().float(), reg=reg))
    (g,) = torch.autograd.grad(out.sum(), cost)
    assert g.dtype == low and torch.isfinite(g.float()).all() and g.abs().sum() > 0


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_lse_stabilisers_agree(dtype):
    """The cheap potential-shift stabiliser (used for reg >~ 0.034) equals torch.logsumexp's, with gradients."""
    x, y = _feats(10, 5, 20, 16, 8, dtype)
    out = {}
    for lse in ("full", "potential"):
        C = cosine_cost(x, y)
        plan, n = sinkhorn_log(C, reg=0.1, max_iter=60, tol=0.0, lse=lse)
        val = (plan * C).sum()
        out[lse] = (plan.detach(), torch.autograd.grad(val, (x, y)))
    rtol = 1e-10 if dtype == torch.float64 else 1e-4  # float32: 60 iterations of rounding in exp/log
    assert torch.allclose(out["full"][0], out["potential"][0], rtol=rtol, atol=0)
    for g_full, g_pot in zip(out["full"][1], out["potential"][1]):
        _assert_grad_close(g_pot, g_full, 1e-10 if dtype == torch.float64 else 1e-5)
    # A constant added to one sample's cost changes neither its plan nor the gradient w.r.t. the cost.
    C2 = C.detach().clone().requires_grad_()
    shifted = C2 + torch.arange(5, dtype=dtype).view(5, 1, 1) * 3.0
    plan2, _ = sinkhorn_log(shifted, reg=0.1, max_iter=60, tol=0.0)
    assert torch.allclose(plan2, out["full"][0], rtol=rtol, atol=0)
    with pytest.raises(ValueError, match="lse"):
        sinkhorn_log(C, reg=0.1, lse="fast")


def test_small_reg_is_finite_and_correct():
    x, y = _feats(5, 4, 24, 16, 16, torch.float32)
    for grad in ("autodiff", "envelope"):
        out = ot_distance(x, y, reg=0.01, grad=grad)  # default cap (100) and tol: unconverged, still finite
        gx, gy = torch.autograd.grad(out.sum(), (x, y))
        for t in (out, gx, gy):
            assert torch.isfinite(t).all()
    # Converged, in float64: the value matches POT's log-domain solver (its scaling domain underflows here).
    # Sinkhorn at this reg can need ~1e5 iterations (near-ties, square problems); this seed and shape
    # converge in < 700, so both solvers really reach the fixed point.
    gen = torch.Generator().manual_seed(3)
    xd = torch.randn(3, 24, 16, generator=gen, dtype=torch.float64)
    yd = torch.randn(3, 16, 16, generator=gen, dtype=torch.float64)
    out64 = ot_distance(xd, yd, reg=0.01, tol=1e-10, max_iter=5000)
    ref = _pot_sinkhorn2(xd, yd, 0.01, tol=1e-10, max_iter=5000, method="sinkhorn_log")
    assert torch.allclose(out64, ref, rtol=0, atol=1e-8), (out64 - ref).abs().max()


@pytest.mark.parametrize("low", [torch.bfloat16, torch.float16])
def test_low_precision_inputs_are_upcast(low):
    x, y = _feats(6, 4, 16, 16, 8, torch.float32)
    xl, yl = x.detach().to(low).requires_grad_(), y.detach().to(low).requires_grad_()
    out = ot_distance(xl, yl, reg=0.1)
    assert out.dtype == torch.float32
    # Same as running on the float32 copies of the rounded inputs: nothing is computed in low precision.
    assert torch.equal(out, ot_distance(xl.detach().float(), yl.detach().float(), reg=0.1))
    out.sum().backward()
    assert xl.grad.dtype == low and torch.isfinite(xl.grad.float()).all() and xl.grad.abs().sum() > 0
    assert torch.isfinite(ot_distance(xl, yl, reg=0.01)).all()


def test_autocast_is_disabled_inside():
    x, y = _feats(7, 4, 16, 16, 8, torch.float32)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        out = ot_distance(x, y, reg=0.1)
        loss = OTLoss(reg=0.1)(x, y)
    assert out.dtype == torch.float32 and loss.dtype == torch.float32
    ref = ot_distance(x, y, reg=0.1)
    assert torch.allclose(out, ref, rtol=0, atol=1e-6)  # a bf16 bmm would be off by ~1e-3


def test_otloss_mean_and_config():
    from clip3dreid_plugin.config.defaults import get_cfg

    x, y = _feats(8, 5, 12, 16, 8, torch.float64)
    cfg = get_cfg()
    assert OTLoss.from_cfg(cfg).huge_pages is True
    cfg.ot.reg, cfg.ot.max_iter, cfg.ot.tol, cfg.ot.grad, cfg.ot.huge_pages = 0.5, 50, 1e-8, "envelope", False
    loss_fn = OTLoss.from_cfg(cfg)
    assert (loss_fn.reg, loss_fn.max_iter, loss_fn.tol, loss_fn.grad, loss_fn.huge_pages) == (
        0.5, 50, 1e-8, "envelope", False)
    loss = loss_fn(x, y)
    assert loss.dim() == 0
    assert torch.allclose(loss, ot_distance(x, y, 0.5, 50, 1e-8, "envelope").mean(), rtol=0, atol=1e-14)
    loss.backward()
    assert x.grad is not None and y.grad is not None


@pytest.mark.parametrize("local_shape,text_shape,name", [
    ((4, 12, 8), (4, 16), "text_feats"),
    ((12, 8), (4, 16, 8), "local_feats"),
    ((4, 12, 8), (3, 16, 8), "text_feats"),
    ((4, 12, 8), (4, 16, 9), "text_feats"),
    ((4, 0, 8), (4, 16, 8), "local_feats"),
])
def test_bad_shapes_raise(local_shape, text_shape, name):
    with pytest.raises(ValueError, match=name):
        ot_distance(torch.randn(*local_shape), torch.randn(*text_shape))
    with pytest.raises(ValueError, match=name):
        transport_plan(torch.randn(*local_shape), torch.randn(*text_shape))


@pytest.mark.parametrize("kwargs,name", [
    (dict(reg=0.0), "reg"), (dict(reg=float("nan")), "reg"), (dict(max_iter=0), "max_iter"),
    (dict(tol=-1.0), "tol"), (dict(grad="implicit"), "grad"),
])
def test_bad_parameters_raise(kwargs, name):
    x, y = torch.randn(2, 4, 3), torch.randn(2, 5, 3)
    with pytest.raises(ValueError, match=name):
        ot_distance(x, y, **kwargs)
    with pytest.raises(ValueError, match=name):
        OTLoss(**kwargs)


def test_non_tensor_raises():
    with pytest.raises(TypeError, match="local_feats"):
        ot_distance([[[0.0]]], torch.randn(1, 1, 1))


def test_cosine_cost_gradcheck():
    x, y = _feats(9, 2, 5, 4, 6, torch.float64)
    assert torch.autograd.gradcheck(cosine_cost, (x, y))
    c = cosine_cost(x, y)
    ref = torch.stack([_ref_cost(x[b], y[b]) for b in range(2)])
    assert torch.allclose(c, ref, rtol=0, atol=1e-14)


def test_global_distill_loss_by_hand():
    teacher = torch.tensor([[1.0, 2.0, 0.0], [0.0, 0.0, 1.0]], requires_grad=True)
    f_id = torch.tensor([[0.0, 0.0, 0.0], [3.0, 4.0, 1.0]], requires_grad=True)
    # Sample 0: 1 + 4 + 0 = 5; sample 1: 9 + 16 + 0 = 25; mean over the batch: 15.
    loss = global_distill_loss(teacher, f_id)
    assert loss.dim() == 0 and loss.item() == pytest.approx(15.0)
    loss.backward()
    # d/d teacher = 2 (teacher - f_id) / B, and the opposite for f_id.
    expected = torch.tensor([[1.0, 2.0, 0.0], [-3.0, -4.0, 0.0]])
    assert torch.allclose(teacher.grad, expected) and torch.allclose(f_id.grad, -expected)
    assert global_distill_loss(f_id.detach(), f_id.detach()).item() == 0.0
    half = global_distill_loss(teacher.detach().bfloat16(), f_id.detach().bfloat16())
    assert half.dtype == torch.float32 and half.item() == pytest.approx(15.0)


@pytest.mark.parametrize("a,b,name", [((2, 3), (2, 4), "f_id"), ((2, 3, 1), (2, 3), "projected_teacher")])
def test_global_distill_loss_bad_shapes(a, b, name):
    with pytest.raises(ValueError, match=name):
        global_distill_loss(torch.randn(*a), torch.randn(*b))


def test_torchreid_losses_are_reexported():
    import torchreid

    from clip3dreid_plugin import losses

    assert losses.CrossEntropyLoss is torchreid.losses.CrossEntropyLoss
    assert losses.TripletLoss is torchreid.losses.TripletLoss
    ce = losses.CrossEntropyLoss(num_classes=3, use_gpu=False, label_smooth=True)
    logits, target = torch.tensor([[2.0, 0.0, 0.0]]), torch.tensor([0])
    # Label smoothing with eps=0.1 over 3 classes: target distribution (0.9333, 0.0333, 0.0333).
    logp = torch.log_softmax(logits, dim=1)[0]
    expected = -(logp[0] * (0.9 + 0.1 / 3) + (logp[1] + logp[2]) * 0.1 / 3)
    assert ce(logits, target).item() == pytest.approx(expected.item(), rel=1e-6)


@pytest.mark.parametrize("label_smooth", [True, False])
def test_device_cross_entropy_equals_torchreids(label_smooth):
    """The engine's cross-entropy (F.cross_entropy with label_smoothing) gives torchreid's CrossEntropyLoss values
    and gradients, without its CPU one-hot targets (no value read back)."""
    import torchreid

    from clip3dreid_plugin.losses import cross_entropy
    from fixtures.host_syncs import count_host_syncs

    gen = torch.Generator().manual_seed(11)
    for num_classes, batch in ((3, 1), (7, 16), (751, 64)):
        # float32: torchreid builds its smoothed targets in float32 whatever the logits' dtype.
        logits = (3 * torch.randn(batch, num_classes, generator=gen)).requires_grad_()
        targets = torch.randint(0, num_classes, (batch,), generator=gen)
        ref_fn = torchreid.losses.CrossEntropyLoss(num_classes=num_classes, use_gpu=False, label_smooth=label_smooth)
        ref = ref_fn(logits, targets)
        (ref_grad,) = torch.autograd.grad(ref, logits)
        with count_host_syncs() as syncs:
            got = cross_entropy(logits, targets, label_smooth)
            (got_grad,) = torch.autograd.grad(got, logits)
        assert syncs.calls == []
        assert float(got) == pytest.approx(float(ref), rel=1e-6), num_classes
        torch.testing.assert_close(got_grad, ref_grad, rtol=1e-5, atol=1e-8)


def test_device_triplet_loss_equals_torchreids():
    """Batch-hard triplet with masked reductions gives torchreid's TripletLoss (a boolean index per anchor)."""
    import torchreid

    from clip3dreid_plugin.losses import batch_hard_triplet
    from fixtures.host_syncs import count_host_syncs

    gen = torch.Generator().manual_seed(12)
    for margin in (0.3, 5.0):
        feats = torch.randn(16, 32, generator=gen, dtype=torch.float64).requires_grad_()
        pids = torch.arange(16) // 4  # P x K = 4 x 4, as the identity sampler draws
        ref = torchreid.losses.TripletLoss(margin=margin)(feats, pids)
        (ref_grad,) = torch.autograd.grad(ref, feats)
        with count_host_syncs() as syncs:
            got = batch_hard_triplet(feats, pids, margin)
            (got_grad,) = torch.autograd.grad(got, feats)
        assert syncs.calls == []
        assert float(ref) > 0 and float(got) == pytest.approx(float(ref), rel=1e-12), margin
        torch.testing.assert_close(got_grad, ref_grad, rtol=1e-10, atol=1e-14)


requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@requires_cuda
@pytest.mark.parametrize("reg", [1.0, 0.1])
def test_cuda_matches_pot_sinkhorn2_on_cpu(reg):
    seed, B, N, M, d = CASES[2]
    x, y = _feats(seed, B, N, M, d, torch.float32)
    xc, yc = x.detach().cuda().requires_grad_(), y.detach().cuda().requires_grad_()
    out = ot_distance(xc, yc, reg=reg, **TIGHT[torch.float32])
    assert out.device.type == "cuda"
    gx, gy = torch.autograd.grad(out.sum(), (xc, yc))
    xr, yr = x.detach().double().requires_grad_(), y.detach().double().requires_grad_()
    ref = _pot_sinkhorn2(xr, yr, reg, **TIGHT[torch.float64])
    rx, ry = torch.autograd.grad(ref.sum(), (xr, yr))
    assert torch.allclose(out.cpu().double(), ref, rtol=0, atol=VALUE_ATOL[torch.float32])
    _assert_grad_close(gx.cpu().double(), rx, GRAD_RTOL[torch.float32])
    _assert_grad_close(gy.cpu().double(), ry, GRAD_RTOL[torch.float32])


@requires_cuda
def test_cuda_fp16_autocast_small_reg_is_float32_and_finite():
    x, y = _feats(0, 4, 12, 16, 8, torch.float16)
    xc, yc = x.detach().cuda().requires_grad_(), y.detach().cuda().requires_grad_()
    with torch.autocast(device_type="cuda", dtype=torch.float16):
        out = ot_distance(xc, yc, reg=0.01, max_iter=2000, tol=1e-6)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    gx, gy = torch.autograd.grad(out.sum(), (xc, yc))
    assert torch.isfinite(gx).all() and torch.isfinite(gy).all()
    cpu = ot_distance(x.detach().float(), y.detach().float(), reg=0.01, max_iter=2000, tol=1e-6)
    torch.testing.assert_close(out.cpu(), cpu, rtol=0, atol=1e-4)
