"""Local (optimal-transport) distillation: batched entropic OT between local and text features.

For one image the student's local features ``F = {f_n}`` (N patches) and the projected teacher text
features ``H' = {h'_m}`` (M body-shape descriptors) are two uniform discrete measures (weights
``a = 1/N``, ``b = 1/M``). With the cosine cost ``C[n, m] = 1 - cos(f_n, h'_m)`` the entropic OT
problem (paper Eq. 6-7)::

    T* = argmin_T  <T, C> - reg * H(T)    s.t.  T 1_M = a,  T^T 1_N = b,  T >= 0
    H(T) = -sum_nm T_nm log T_nm

is solved by Sinkhorn's algorithm and the loss is the transport cost ``d_OT = <T*, C>`` (without the
entropy term), averaged over the batch.

The solver runs on the whole batch at once in the log domain: it iterates the dual potentials
``u [B,N]``, ``v [B,M]`` with ``log T = -C/reg + u 1^T + 1 v^T`` and stabilised log-sum-exps, so
nothing overflows or underflows for small ``reg`` (0.01 and below), where the scaling-domain kernel
``exp(-C/reg)`` of POT's default ``ot.sinkhorn2`` would.

Gradients (``grad`` argument):

* ``'autodiff'``: backpropagates through every Sinkhorn iteration, i.e. the gradient of the
  computed ``<T*, C>`` including the dependence of ``T*`` on ``C``; this is what POT's
  ``ot.sinkhorn2`` gives under autodiff with torch tensors. Memory grows with the iteration count
  (about two ``[B,N,M]`` tensors per iteration: 2.5 MB at B=64, N=288, M=16 in float32).
* ``'envelope'``: the plan is detached, so the gradient w.r.t. ``C`` is ``T*`` itself. By Danskin's
  (envelope) theorem ``T*`` is the exact gradient of the *regularised* optimum
  ``OT_reg(C) = min_T <T, C> + reg * sum_nm T_nm log T_nm``, not of ``<T*, C>``; the returned value is
  still ``<T*, C>``. The iterations build no graph, so this mode is cheaper in time and memory.

POT's batched solver (``ot.batch.solve_batch(method='log_sinkhorn')``) implements the same iterations
and gives the same values and gradients; this module keeps its own loop because it is faster per iteration
(a cheaper log-sum-exp stabiliser, see :func:`sinkhorn_log`; figures in BENCHMARKS.md), tests convergence
at no extra cost and every 5 instead of 10 iterations, and handles the dtype/autocast rules below
(``benchmarks/bench_ot.py``).

Convergence on a GPU: reading the test's result on the host would stop the CPU until the GPU has caught up with
everything queued before it (the student's forward), several times a step. Off the CPU the test therefore stays on
the device: once it passes, the potentials are frozen and the remaining iterations change nothing. The plan and its
gradient are those of stopping there, and every ``max_iter`` iteration runs (``host_checks``).
"""
from __future__ import annotations

import logging
import math
from typing import Optional, Tuple, Union

import torch
import torch.nn as nn
from torch.autograd.function import once_differentiable

from clip3dreid_plugin.utils.hugepages import empty_like_huge

logger = logging.getLogger(__name__)

__all__ = ["ot_distance", "ot_distance_from_cost", "transport_plan", "sinkhorn_log", "cosine_cost", "OTLoss",
           "GRAD_MODES"]

GRAD_MODES = ("autodiff", "envelope")

# Convergence is tested every few iterations: each test costs about as much as one [B,N,M] iteration, and read on
# the host (the CPU's way) a test is a host-device sync on a GPU.
DEFAULT_CHECK_EVERY = 5

# Upper bound of the span of a cosine cost 1 - cos (in [0, 2]): lets lse='auto' choose without reading the cost.
_COSINE_SPAN = 2.0

_LOW_PRECISION = (torch.float16, torch.bfloat16)


def _check_params(reg: float, max_iter: int, tol: float, grad: str, check_every: int) -> Tuple[float, float]:
    """Validates the solver parameters and returns ``(reg, tol)`` as Python floats.

    Raises:
        ValueError: naming the first invalid parameter.
    """
    try:
        reg, tol = float(reg), float(tol)  # accept ints from yacs ("reg: 1") and numpy scalars
    except (TypeError, ValueError):
        raise ValueError(f"reg and tol must be numbers, got reg={reg!r}, tol={tol!r}") from None
    if not (math.isfinite(reg) and reg > 0):
        raise ValueError(f"reg must be a finite number > 0, got {reg!r}")
    if isinstance(max_iter, bool) or not (isinstance(max_iter, int) and max_iter >= 1):
        raise ValueError(f"max_iter must be an integer >= 1, got {max_iter!r}")
    if not tol >= 0:
        raise ValueError(f"tol must be a number >= 0, got {tol!r}")
    if grad not in GRAD_MODES:
        raise ValueError(f"grad must be one of {GRAD_MODES}, got {grad!r}")
    if isinstance(check_every, bool) or not (isinstance(check_every, int) and check_every >= 1):
        raise ValueError(f"check_every must be an integer >= 1, got {check_every!r}")
    return reg, tol


def _check_feats(local_feats: torch.Tensor, text_feats: torch.Tensor) -> None:
    """Raises ``TypeError``/``ValueError`` naming the argument whose type or shape is wrong."""
    for name, x in (("local_feats", local_feats), ("text_feats", text_feats)):
        if not torch.is_tensor(x):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
        if x.dim() != 3:
            raise ValueError(f"{name} must have shape [B, n, d] (3 dims), got {tuple(x.shape)}")
        if not x.is_floating_point():
            raise ValueError(f"{name} must be a floating-point tensor, got {x.dtype}")
        if x.size(1) == 0 or x.size(2) == 0:
            raise ValueError(f"{name} must have at least one point and one channel, got {tuple(x.shape)}")
    if text_feats.size(0) != local_feats.size(0):
        raise ValueError(f"text_feats batch size {text_feats.size(0)} does not match local_feats batch size "
                         f"{local_feats.size(0)}")
    if text_feats.size(2) != local_feats.size(2):
        raise ValueError(f"text_feats feature dim {text_feats.size(2)} does not match local_feats feature dim "
                         f"{local_feats.size(2)}")
    if text_feats.device != local_feats.device:
        raise ValueError(f"text_feats is on {text_feats.device} but local_feats is on {local_feats.device}")


def _compute_dtype(local_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.dtype:
    """float64 if either input is float64, else float32 (fp16/bf16 are upcast: Sinkhorn needs the range)."""
    dtype = torch.promote_types(local_feats.dtype, text_feats.dtype)
    return torch.float32 if dtype in _LOW_PRECISION else dtype


# Same floor as F.normalize: a zero feature gets cosine 0 with everything instead of NaN.
_NORM_EPS = 1e-12


class _CosineCost(torch.autograd.Function):
    """``1 - cos`` between rows of ``x [B,N,d]`` and ``y [B,M,d]`` with a hand-written backward.

    Why not ``1 - bmm(normalize(x), normalize(y)^T)``: autograd would keep a normalised copy of the
    (large) local feature map for the backward and allocate several ``[B,N,d]`` temporaries in it. Here
    only the ``[B,N,M]`` cosines and the norms are saved, and the gradient of ``x`` is built in a single
    ``[B,N,d]`` buffer (advised for huge pages when ``huge_pages``, see :mod:`clip3dreid_plugin.utils.hugepages`)::

        d cos_nm / d x_n = y_m / (|x_n| |y_m|) - cos_nm x_n / |x_n|^2
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, y: torch.Tensor, huge_pages: bool) -> torch.Tensor:
        ctx.huge_pages = huge_pages
        nx = x.norm(dim=-1).clamp_min(_NORM_EPS)
        ny = y.norm(dim=-1).clamp_min(_NORM_EPS)
        cos = torch.bmm(x, y.transpose(1, 2)).div_(nx.unsqueeze(2)).div_(ny.unsqueeze(1))
        ctx.save_for_backward(x, y, nx, ny, cos)
        return 1.0 - cos

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_cost: torch.Tensor) -> Tuple[Optional[torch.Tensor], Optional[torch.Tensor], None]:
        x, y, nx, ny, cos = ctx.saved_tensors
        g = -grad_cost  # gradient w.r.t. cos
        a = g / nx.unsqueeze(2) / ny.unsqueeze(1)  # [B,N,M]
        gcos = g * cos
        grad_x = grad_y = None
        if ctx.needs_input_grad[0]:
            # Where the norm was clamped the clamp has zero derivative, so the norm term drops out.
            coef = (gcos.sum(2) / nx.square()).neg_().mul_(nx > _NORM_EPS)
            grad_x = empty_like_huge(x) if ctx.huge_pages else torch.empty_like(x)
            # Product first, into the fresh buffer: an accumulating GEMM (baddbmm_ onto x * coef) would read
            # the [B,N,d] buffer once more.
            torch.bmm(a, y, out=grad_x).addcmul_(x, coef.unsqueeze(2))
        if ctx.needs_input_grad[1]:
            coef = (gcos.sum(1) / ny.square()).neg_().mul_(ny > _NORM_EPS)
            grad_y = (y * coef.unsqueeze(2)).baddbmm_(a.transpose(1, 2), x)
        return grad_x, grad_y, None


def cosine_cost(local_feats: torch.Tensor, text_feats: torch.Tensor, huge_pages: bool = True) -> torch.Tensor:
    """Cosine cost between every local feature and every text feature.

    Differentiable once (no double backward); a zero feature has cosine 0 with everything.

    Args:
        local_feats: ``[B, N, d]``.
        text_feats: ``[B, M, d]`` (same dtype).
        huge_pages: back the ``[B, N, d]`` gradient of ``local_feats`` with transparent huge pages when it
            is a large CPU buffer (Linux; fewer page faults, same values).

    Returns:
        ``C [B, N, M]`` with ``C[b, n, m] = 1 - cos(local_feats[b, n], text_feats[b, m])`` in ``[0, 2]``,
        in the dtype of the inputs (:func:`ot_distance` upcasts fp16/bf16 before calling it).
    """
    return _CosineCost.apply(local_feats, text_feats, huge_pages)


# Largest exponent span (cost span / reg) for which the cheap stabiliser of _lse_shifted cannot underflow a
# whole row: exp(-60) ~ 1e-26 is a normal float32, exp(-600) ~ 1e-261 a normal float64.
_CHEAP_LSE_SPAN = {torch.float32: 60.0, torch.float64: 600.0}


def _lse_shifted(K: torch.Tensor, pot: torch.Tensor, dim: int) -> torch.Tensor:
    """``LSE_dim(K + pot)`` with ``K <= 0``, stabilised by ``max(pot)`` instead of a max over ``[B,N,M]``.

    ``pot`` is broadcast along the non-reduced axis (``pot [B,M]`` for ``dim=2``, ``[B,N]`` for ``dim=1``).
    Every exponent is ``<= 0`` (no overflow) and the term at ``argmax(pot)`` is ``>= min(K)``, so nothing
    underflows to ``log 0`` while ``-min(K)`` is below ``_CHEAP_LSE_SPAN``. It saves the ``amax`` pass and a
    temporary of ``torch.logsumexp`` (the gain is measured in BENCHMARKS.md).
    """
    s = pot.amax(dim=1, keepdim=True)  # [B,1]
    shifted = (pot - s).unsqueeze(1 if dim == 2 else 2)
    return (K + shifted).exp_().sum(dim=dim).log_() + s


def _reads_on_host(device: torch.device, host_checks: Optional[bool]) -> bool:
    """``host_checks`` as asked, or by default True only on the CPU, where reading a value back costs nothing."""
    return device.type == "cpu" if host_checks is None else bool(host_checks)


def sinkhorn_log(cost: torch.Tensor, reg: float, max_iter: int = 100, tol: float = 1e-5,
                 check_every: int = DEFAULT_CHECK_EVERY, lse: str = "auto", host_checks: Optional[bool] = None,
                 max_span: Optional[float] = None) -> Tuple[torch.Tensor, Union[int, torch.Tensor]]:
    """Batched log-domain Sinkhorn with uniform marginals.

    Each iteration updates ``u = log a - LSE_m(K + v)`` then ``v = log b - LSE_n(K + u)`` with
    ``K = -(cost - min cost) / reg`` (the per-sample shift changes neither the plan nor any gradient), so
    after an iteration the column marginals are exact and only the row marginals can be off. The row
    marginal of the current plan ``(u, v)`` is ``a * exp(u - u_next)``, which falls out of the next ``u``
    update at no extra cost; the stopping test uses it.

    Stopping rule: every ``check_every`` iterations, stop when
    ``max_b || T_b 1_M - a ||_2 < tol`` (the largest, over the batch, L2 norm of the row-marginal
    violation; the same norm POT's ``stopThr`` and ``ot.batch``'s ``tol`` test). The plan returned is the
    one that passed the test. At most ``max_iter`` iterations run. With ``host_checks`` each test (and the
    ``'auto'`` choice of ``lse``) reads one scalar back to the host, a sync on CUDA; without, the test's result stays
    on the device and freezes ``(u, v)`` once it passes (bit for bit the same plan and gradient, all ``max_iter``
    iterations run, nothing is read). Autograd records the iterations when ``cost`` requires grad (call under
    ``torch.no_grad()`` to avoid that).

    Args:
        cost: ``[B, N, M]`` cost matrices (float32 or float64).
        reg: entropic weight (> 0).
        max_iter: iteration cap.
        tol: marginal-violation tolerance; 0 runs exactly ``max_iter`` iterations.
        check_every: iterations between convergence tests.
        lse: log-sum-exp stabiliser: ``'full'`` (``torch.logsumexp``, a max over every row/column; safe
            for any ``reg``), ``'potential'`` (:func:`_lse_shifted`; safe while ``cost span / reg`` is below
            60 in float32, 600 in float64) or ``'auto'`` (``'potential'`` when that holds, else ``'full'``;
            cosine costs span at most 2, so ``'potential'`` for ``reg >= 0.034`` in float32).
        host_checks: read the tests on the host and stop there; None: only on the CPU.
        max_span: an upper bound of every sample's cost span, known to the caller (2 for a cosine cost). Without
            host checks ``'auto'`` decides from it, or takes ``'full'`` when it is None; with them it reads the cost.

    Returns:
        ``(plan [B, N, M], n_iter)``: the iterations run until the test passed, an int, or without host checks a
        0-dim int64 tensor on ``cost``'s device (reading it is a sync).
    """
    if lse not in ("auto", "full", "potential"):
        raise ValueError(f"lse must be 'auto', 'full' or 'potential', got {lse!r}")
    on_host = _reads_on_host(cost.device, host_checks)
    B, N, M = cost.shape
    with torch.no_grad():
        cmin = cost.amin(dim=(1, 2), keepdim=True)
        if lse == "auto":
            if on_host:
                span = (cost.amax(dim=(1, 2), keepdim=True) - cmin).max().item() / reg
            else:
                span = math.inf if max_span is None else float(max_span) / reg
            lse = "potential" if span <= _CHEAP_LSE_SPAN.get(cost.dtype, 0.0) else "full"
    # Detached shift: the plan is invariant to a per-sample constant, so no gradient is lost.
    K = (cost - cmin) / (-reg)
    if lse == "potential":
        def row_lse(v: torch.Tensor) -> torch.Tensor:
            return _lse_shifted(K, v, dim=2)

        def col_lse(u: torch.Tensor) -> torch.Tensor:
            return _lse_shifted(K, u, dim=1)
    else:
        def row_lse(v: torch.Tensor) -> torch.Tensor:
            return torch.logsumexp(K + v.unsqueeze(1), dim=2)

        def col_lse(u: torch.Tensor) -> torch.Tensor:
            return torch.logsumexp(K + u.unsqueeze(2), dim=1)

    def row_error(u: torch.Tensor, u_next: torch.Tensor) -> torch.Tensor:
        # Row marginal of the plan (u, v): a * exp(u - u_next); L2 norm of its error per sample.
        with torch.no_grad():
            return ((u - u_next).exp() - 1.0).norm(dim=1).max() / N

    log_a, log_b = -math.log(N), -math.log(M)
    u = cost.new_zeros(B, N)
    v = cost.new_zeros(B, M)
    n_iter: Union[int, torch.Tensor] = 0
    if on_host or tol <= 0:
        for it in range(max_iter):
            u_next = log_a - row_lse(v)
            if tol > 0 and it > 0 and it % check_every == 0 and row_error(u, u_next).item() < tol:
                break
            u = u_next
            v = log_b - col_lse(u)
            n_iter = it + 1
    else:
        done = torch.zeros((), dtype=torch.bool, device=cost.device)
        n_iter = torch.full((), max_iter, dtype=torch.long, device=cost.device)
        for it in range(max_iter):
            u_next = log_a - row_lse(v)
            if it < check_every:  # no test has run yet, so none has passed
                u = u_next
                v = log_b - col_lse(u)
                continue
            if it % check_every == 0:
                passed = row_error(u, u_next) < tol
                n_iter = torch.where(passed & ~done, it, n_iter)
                done = done | passed
            u = torch.where(done, u, u_next)
            v = torch.where(done, v, log_b - col_lse(u))
    plan = (K + u.unsqueeze(2) + v.unsqueeze(1)).exp()
    return plan, n_iter


def ot_distance(local_feats: torch.Tensor, text_feats: torch.Tensor, reg: float = 1.0, max_iter: int = 100,
                tol: float = 1e-5, grad: str = "autodiff", check_every: int = DEFAULT_CHECK_EVERY,
                return_plan: bool = False, huge_pages: bool = True, host_checks: Optional[bool] = None):
    """Entropic OT transport cost ``<T*, C>`` between local features and text features, per sample.

    Both inputs are L2-normalised along ``d``; ``C = 1 - cos`` (``[B, N, M]``); marginals are uniform
    (``1/N``, ``1/M``); ``T*`` solves the entropic problem with weight ``reg`` (see
    :func:`sinkhorn_log` for the stopping rule). The computation runs in float64 if an input is float64
    and in float32 otherwise: fp16/bf16 inputs are upcast and autocast is disabled inside, so callers
    under AMP get a float32 result.

    Args:
        local_feats: ``[B, N, d]`` student local features.
        text_feats: ``[B, M, d]`` projected text features.
        reg: entropic weight (the paper's lambda; > 0).
        max_iter: Sinkhorn iteration cap.
        tol: max over the batch of the L2 row-marginal violation at which iterations stop early.
        grad: ``'autodiff'`` (gradient of ``<T*, C>`` through the iterations) or ``'envelope'``
            (plan detached: the gradient of the regularised optimum; see the module docstring).
        check_every: iterations between convergence tests.
        return_plan: also return the (detached) plan.
        huge_pages: see :func:`cosine_cost`.
        host_checks: see :func:`sinkhorn_log` (default: on the CPU only; no host-device sync elsewhere).

    Returns:
        ``d_OT [B]`` (float32 or float64), and ``plan [B, N, M]`` (detached) when ``return_plan``.

    Raises:
        TypeError: an input is not a tensor.
        ValueError: an input has the wrong rank, batch size, feature width or device, or a solver
            parameter is invalid (the message names it).
    """
    _check_feats(local_feats, text_feats)
    reg, tol = _check_params(reg, max_iter, tol, grad, check_every)
    dtype = _compute_dtype(local_feats, text_feats)
    # Autocast would run the bmm (and so the cost) in half precision again; Sinkhorn's exp/log need fp32.
    with torch.autocast(device_type=local_feats.device.type, enabled=False):
        cost = cosine_cost(local_feats.to(dtype), text_feats.to(dtype), huge_pages)
        return ot_distance_from_cost(cost, reg, max_iter, tol, grad, check_every, return_plan, host_checks,
                                     max_span=_COSINE_SPAN)


def ot_distance_from_cost(cost: torch.Tensor, reg: float = 1.0, max_iter: int = 100, tol: float = 1e-5,
                          grad: str = "autodiff", check_every: int = DEFAULT_CHECK_EVERY,
                          return_plan: bool = False, host_checks: Optional[bool] = None,
                          max_span: Optional[float] = None):
    """``<T*, C>`` per sample for given costs (uniform marginals): the solver part of :func:`ot_distance`.

    Args:
        cost: ``[B, N, M]`` cost matrices; float16/bfloat16 costs are upcast to float32 (Sinkhorn's exp and log
            need its range), float32/float64 ones are used as they are.
        reg, max_iter, tol, grad, check_every, return_plan, host_checks: as in :func:`ot_distance`.
        max_span: see :func:`sinkhorn_log`.

    Returns:
        ``d_OT [B]`` (float32 or float64), and ``plan [B, N, M]`` (detached) when ``return_plan``.
    """
    if not (torch.is_tensor(cost) and cost.dim() == 3 and cost.is_floating_point()
            and cost.size(1) > 0 and cost.size(2) > 0):
        raise ValueError(f"cost must be a non-empty floating-point tensor [B, N, M], got "
                         f"{tuple(cost.shape) if torch.is_tensor(cost) else type(cost).__name__}")
    reg, tol = _check_params(reg, max_iter, tol, grad, check_every)
    if cost.dtype in _LOW_PRECISION:
        cost = cost.float()
    # No op here is lowered by autocast today; disabling it keeps that true if autocast's op lists grow.
    with torch.autocast(device_type=cost.device.type, enabled=False):
        solve = dict(host_checks=host_checks, max_span=max_span)
        if grad == "envelope":
            with torch.no_grad():
                plan, n_iter = sinkhorn_log(cost, reg, max_iter, tol, check_every, **solve)
        else:
            plan, n_iter = sinkhorn_log(cost, reg, max_iter, tol, check_every, **solve)
        dist = (plan * cost).sum(dim=(1, 2))
    if isinstance(n_iter, int):  # a device count is not read back for a debug line
        logger.debug("sinkhorn: B=%d N=%d M=%d reg=%g iterations=%d", *cost.shape, reg, n_iter)
    if return_plan:
        return dist, plan.detach()
    return dist


@torch.no_grad()
def transport_plan(local_feats: torch.Tensor, text_feats: torch.Tensor, reg: float = 1.0, max_iter: int = 100,
                   tol: float = 1e-5, check_every: int = DEFAULT_CHECK_EVERY) -> torch.Tensor:
    """The entropic transport plan ``T*`` (no gradient), e.g. for the paper's Fig. 3 heatmaps.

    Args:
        local_feats: ``[B, N, d]``.
        text_feats: ``[B, M, d]``.
        reg, max_iter, tol, check_every: as in :func:`ot_distance`.

    Returns:
        ``T* [B, N, M]`` in float32/float64; row sums ``~1/N``, column sums ``1/M``. Reshape
        ``T*[b, :, m]`` to the feature-map grid (``h x w``) to view where descriptor ``m`` is transported.
    """
    _, plan = ot_distance(local_feats, text_feats, reg, max_iter, tol, "envelope", check_every, return_plan=True)
    return plan


class OTLoss(nn.Module):
    """``L_OT``: batch mean of :func:`ot_distance` (paper Sec. 3.2).

    Args:
        reg: entropic weight (``cfg.ot.reg``).
        max_iter: iteration cap (``cfg.ot.max_iter``).
        tol: marginal-violation tolerance (``cfg.ot.tol``).
        grad: ``'autodiff'`` or ``'envelope'`` (``cfg.ot.grad``).
        check_every: iterations between convergence tests.
        huge_pages: huge pages for the local-feature gradient (``cfg.ot.huge_pages``; see :func:`cosine_cost`).
        host_checks: see :func:`sinkhorn_log` (default: on the CPU only).
    """

    def __init__(self, reg: float = 1.0, max_iter: int = 100, tol: float = 1e-5, grad: str = "autodiff",
                 check_every: int = DEFAULT_CHECK_EVERY, huge_pages: bool = True,
                 host_checks: Optional[bool] = None):
        super().__init__()
        reg, tol = _check_params(reg, max_iter, tol, grad, check_every)
        self.reg, self.max_iter, self.tol, self.grad, self.check_every = reg, max_iter, tol, grad, check_every
        self.huge_pages = bool(huge_pages)
        self.host_checks = host_checks

    @classmethod
    def from_cfg(cls, cfg) -> "OTLoss":
        """Builds the loss from ``cfg.ot`` (keys ``reg``, ``max_iter``, ``tol``, ``grad``, ``huge_pages``)."""
        c = cfg.ot
        return cls(reg=c.reg, max_iter=c.max_iter, tol=c.tol, grad=c.grad, huge_pages=c.huge_pages)

    def forward(self, local_feats: torch.Tensor, text_feats: torch.Tensor) -> torch.Tensor:
        """Mean OT distance over the batch.

        Args:
            local_feats: ``[B, N, d]``.
            text_feats: ``[B, M, d]``.

        Returns:
            Scalar loss (float32, or float64 for float64 inputs).
        """
        dist = ot_distance(local_feats, text_feats, self.reg, self.max_iter, self.tol, self.grad, self.check_every,
                           huge_pages=self.huge_pages, host_checks=self.host_checks)
        return dist.mean()

    def extra_repr(self) -> str:
        return (f"reg={self.reg}, max_iter={self.max_iter}, tol={self.tol}, grad='{self.grad}', "
                f"huge_pages={self.huge_pages}")
