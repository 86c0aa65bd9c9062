#!/usr/bin/env python
"""Forward+backward time of the OT distillation loss: per-sample POT loop vs batched solvers.

Example::

    PYTHONPATH=. python benchmarks/bench_ot.py                      # B=64, N=288 (24x12), M=16, d=2048
    PYTHONPATH=. python benchmarks/bench_ot.py --dim 512 --regs 1.0 0.1 --json out.json
    PYTHONPATH=. python benchmarks/bench_ot.py --device cuda        # on a GPU (synchronised timings)

Every method gets the same cosine cost ``C = 1 - cos`` of the same features, the same iteration cap
(``--max-iter``) and the same tolerance (``--tol``, passed as POT's ``stopThr`` / ``ot.batch``'s ``tol``
/ ``ot_distance``'s ``tol``), and is timed up to the gradient of ``sum_b <T*_b, C_b>``. Methods:

* ``pot_loop``: ``ot.sinkhorn2`` on each sample in a Python loop (POT's default scaling-domain
  Sinkhorn, autodiff through its iterations).
* ``ot_batch``: ``ot.batch.solve_batch(..., method='log_sinkhorn', grad='autodiff')``, its
  ``value_linear``.
* ``batched``: the plugin's solver (``ot_distance_from_cost``, the part of ``ot_distance`` after the
  cost), ``grad='autodiff'``.
* ``batched_envelope``: the same with ``grad='envelope'`` (gradient of the regularised objective).
* ``batched_host_checks``: ``batched`` reading each convergence test back on the host and stopping there, its CPU
  default; off the CPU ``batched`` keeps the tests on the device and runs every ``--max-iter`` iteration (see
  ``losses/ot.py``), so on a GPU this row says what the syncs cost against the extra iterations.
* ``pot_loop_own_cost`` (``full`` scope only): the whole loss as a per-sample reference
  implementation writes it, cost included: for each sample ``F.normalize`` both feature sets, take
  ``1 - x y^T`` and call ``ot.sinkhorn2``. Everything else in the table shares the plugin's batched
  cosine cost, so only this row compares the complete loss against a per-sample loop.
* ``batched_4k_pages`` (``full`` scope only): the plugin's whole loss (``ot_distance``) with
  ``huge_pages=False``, i.e. its ``[B,N,d]`` gradient in ordinary 4 KiB pages like every other buffer here;
  the other ``full`` rows that share the plugin's cosine cost get the huge-page hint (the default).
* ``shared_products`` (``full`` scope only; not an OT loss, so it has no value to compare): the three
  matrix products every exact implementation of the full loss computes whatever its solver, timed
  alone: ``x y^T`` forward and ``G y`` (into a freshly allocated ``[B,N,d]`` gradient) and ``G^T x``
  backward, as one ``bmm`` and its autograd backward. A loss that takes about as long as this row spends
  almost nothing on normalisation and Sinkhorn, and ``pot_loop_own_cost / shared_products`` is about the
  most that computing the loss differently can gain over the loop while torch computes these products.

Two scopes are timed:

* ``full``: from the features ``[B,N,d]``, ``[B,M,d]`` to their gradients (what a training step pays);
  every method uses the plugin's cosine cost, so at d=2048 this shared part weighs a lot.
* ``solver``: from a cost tensor ``[B,N,M]`` (a leaf) to its gradient: the solvers alone.

The stopping tests differ in detail (POT's loop tests the column marginal every 10 iterations,
``ot.batch`` the row marginal every 10, ``ot_distance`` the row marginal every 5), all with the L2 norm;
the table reports the iterations each method ran. Runs are interleaved across methods so that load from
other processes falls on all of them alike; the median (and minimum) over ``--repeats`` timed runs after
one warm-up is reported. On a shared machine compare ratios rather than absolute times.
"""
from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import time
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import ot
import torch
import torch.nn.functional as F

from clip3dreid_plugin.losses.ot import cosine_cost, ot_distance, ot_distance_from_cost, sinkhorn_log

logger = logging.getLogger("bench_ot")

Features = Tuple[torch.Tensor, torch.Tensor]
SCOPES = ("full", "solver")


def _uniform(n: int, like: torch.Tensor) -> torch.Tensor:
    return torch.full((n,), 1.0 / n, dtype=like.dtype, device=like.device)


def _pot_loop(cost: torch.Tensor, reg: float, max_iter: int, tol: float) -> torch.Tensor:
    """Per-sample ``ot.sinkhorn2`` (autodiff); values [B]."""
    a, b = _uniform(cost.size(1), cost), _uniform(cost.size(2), cost)
    return torch.stack([ot.sinkhorn2(a, b, c, reg, numItermax=max_iter, stopThr=tol) for c in cost])


def _pot_loop_iters(cost: torch.Tensor, reg: float, max_iter: int, tol: float) -> float:
    a, b = _uniform(cost.size(1), cost), _uniform(cost.size(2), cost)
    iters = [ot.sinkhorn2(a, b, c, reg, numItermax=max_iter, stopThr=tol, log=True)[1]["niter"] for c in cost]
    return float(statistics.mean(iters))


def _ot_batch(cost: torch.Tensor, reg: float, max_iter: int, tol: float) -> torch.Tensor:
    """``ot.batch.solve_batch`` (log-domain Sinkhorn, autodiff); ``value_linear`` [B]."""
    return ot.batch.solve_batch(cost, reg, max_iter=max_iter, tol=tol, method="log_sinkhorn",
                                grad="autodiff").value_linear


def _ot_batch_iters(cost: torch.Tensor, reg: float, max_iter: int, tol: float) -> float:
    res = ot.batch.solve_batch(cost, reg, max_iter=max_iter, tol=tol, method="log_sinkhorn", grad="detach")
    return float(res.log["n_iter"] + 1)  # POT logs the index of the last iteration


def _batched(grad: str, host_checks: Optional[bool] = None) -> Callable:
    def run(cost: torch.Tensor, reg: float, max_iter: int, tol: float) -> torch.Tensor:
        return ot_distance_from_cost(cost, reg, max_iter, tol, grad=grad, host_checks=host_checks)
    return run


def _batched_iters(cost: torch.Tensor, reg: float, max_iter: int, tol: float) -> float:
    return float(sinkhorn_log(cost, reg, max_iter, tol)[1])


def _pot_loop_own_cost(x: torch.Tensor, y: torch.Tensor, reg: float, max_iter: int, tol: float) -> torch.Tensor:
    """Per-sample reference loss from the features: normalise, cosine cost, ``ot.sinkhorn2``; values [B]."""
    a, b = _uniform(x.size(1), x), _uniform(y.size(1), y)
    vals = []
    for xb, yb in zip(x, y):
        cost = 1.0 - F.normalize(xb, dim=-1) @ F.normalize(yb, dim=-1).T
        vals.append(ot.sinkhorn2(a, b, cost, reg, numItermax=max_iter, stopThr=tol))
    return torch.stack(vals)


def _batched_4k_pages(x: torch.Tensor, y: torch.Tensor, reg: float, max_iter: int, tol: float) -> torch.Tensor:
    """The plugin's whole loss without the huge-page hint on the feature gradient; values [B]."""
    return ot_distance(x, y, reg, max_iter, tol, huge_pages=False)


def _shared_products(x: torch.Tensor, y: torch.Tensor, reg: float, max_iter: int, tol: float) -> torch.Tensor:
    """``sum_nm (x y^T)[b]`` [B]: one ``bmm`` forward, two in its backward; not an OT value."""
    return torch.bmm(x, y.transpose(1, 2)).sum(dim=(1, 2))


def _no_iterations(cost: torch.Tensor, reg: float, max_iter: int, tol: float) -> float:
    return 0.0


# name -> features [B,N,d], [B,M,d] -> values [B] with autograd (own cost; ``full`` scope only)
FEATURE_METHODS: Dict[str, Callable] = {"pot_loop_own_cost": _pot_loop_own_cost, "batched_4k_pages": _batched_4k_pages,
                                        "shared_products": _shared_products}
# Methods that time shared work rather than compute the loss: their values are not compared.
NOT_A_LOSS = ("shared_products",)

# name -> (cost [B,N,M] -> values [B] with autograd, cost -> iterations run)
METHODS: Dict[str, Tuple[Callable, Callable]] = {
    "pot_loop": (_pot_loop, _pot_loop_iters),
    "ot_batch": (_ot_batch, _ot_batch_iters),
    "batched": (_batched("autodiff"), _batched_iters),
    "batched_envelope": (_batched("envelope"), _batched_iters),
    "batched_host_checks": (_batched("autodiff", host_checks=True), _batched_iters),
    "pot_loop_own_cost": (None, _pot_loop_iters),
    "batched_4k_pages": (None, _batched_iters),
    "shared_products": (None, _no_iterations),
}


def make_features(batch: int, n: int, m: int, dim: int, rank: int, seed: int) -> Features:
    """Random features whose cosines spread over [-1, 1].

    Isotropic Gaussian features in high dimension are nearly orthogonal (cos ~ +-1/sqrt(d)), so the
    cost is almost constant and Sinkhorn converges in one or two iterations, which would time only
    per-call overheads. Features drawn from a ``rank``-dimensional subspace (plus 10% noise) have
    widely spread cosines and make the solvers iterate. ``rank=0`` gives isotropic features.
    """
    gen = torch.Generator().manual_seed(seed)
    if rank <= 0:
        return torch.randn(batch, n, dim, generator=gen), torch.randn(batch, m, dim, generator=gen)
    basis = torch.randn(rank, dim, generator=gen) / rank ** 0.5
    x = torch.randn(batch, n, rank, generator=gen) @ basis + 0.1 * torch.randn(batch, n, dim, generator=gen)
    y = torch.randn(batch, m, rank, generator=gen) @ basis + 0.1 * torch.randn(batch, m, dim, generator=gen)
    return x, y


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _one_run(name: str, scope: str, feats: Features, cost: torch.Tensor, reg: float, max_iter: int,
             tol: float) -> Tuple[float, torch.Tensor]:
    """Seconds of one forward+backward from fresh leaves (features or cost, per ``scope``), and the values.

    On CUDA the clock stops after a device synchronisation, so queued kernels are counted.
    """
    fn = METHODS[name][0]
    device = cost.device
    if scope == "full":
        x = feats[0].detach().clone().requires_grad_()
        y = feats[1].detach().clone().requires_grad_()
        _sync(device)
        t0 = time.perf_counter()
        if name in FEATURE_METHODS:
            vals = FEATURE_METHODS[name](x, y, reg, max_iter, tol)
        else:
            vals = fn(cosine_cost(x, y), reg, max_iter, tol)
    else:
        c = cost.detach().clone().requires_grad_()
        _sync(device)
        t0 = time.perf_counter()
        vals = fn(c, reg, max_iter, tol)
    vals.sum().backward()
    _sync(device)
    return time.perf_counter() - t0, vals.detach()


def run_benchmark(batch: int, n: int, m: int, dim: int, regs: Sequence[float], max_iter: int, tol: float,
                  repeats: int, methods: Sequence[str], scopes: Sequence[str] = SCOPES, rank: int = 8,
                  seed: int = 0, device: str = "cpu") -> List[dict]:
    """Times each method at each ``reg`` and scope; one row per (scope, reg, method).

    The first method is the reference of the ``speedup`` and ``max_abs_value_diff`` fields. The features
    are drawn on the CPU (the same numbers on every device) and moved to ``device``.
    """
    feats = tuple(f.to(device) for f in make_features(batch, n, m, dim, rank, seed))
    with torch.no_grad():
        cost = cosine_cost(*feats)
    rows = []
    ref = methods[0]
    if ref in NOT_A_LOSS:
        raise ValueError(f"'{ref}' computes no OT value and cannot be the reference; put another first")
    for scope in scopes:
        scope_methods = [m for m in methods if scope == "full" or m not in FEATURE_METHODS]
        if ref not in scope_methods:
            raise ValueError(f"the reference method '{ref}' has no '{scope}' scope; put another first")
        for reg in regs:
            times: Dict[str, List[float]] = {name: [] for name in scope_methods}
            vals: Dict[str, torch.Tensor] = {}
            for r in range(repeats + 1):  # r == 0 is the untimed warm-up
                for name in scope_methods:
                    sec, vals[name] = _one_run(name, scope, feats, cost, reg, max_iter, tol)
                    if r > 0:
                        times[name].append(sec)
            ref_sec = statistics.median(times[ref])
            for name in scope_methods:
                sec = statistics.median(times[name])
                with torch.no_grad():  # counted outside the timed runs: the value APIs do not return it
                    iters = METHODS[name][1](cost, reg, max_iter, tol)
                rows.append({
                    "scope": scope, "reg": reg, "method": name, "median_ms": 1e3 * sec,
                    "min_ms": 1e3 * min(times[name]), "iterations": iters, "speedup": ref_sec / sec,
                    "max_abs_value_diff": (float("nan") if name in NOT_A_LOSS
                                           else float((vals[name] - vals[ref]).abs().max())),
                })
                logger.debug("%s reg=%g %s: %.1f ms", scope, reg, name, 1e3 * sec)
    return rows


def markdown_table(rows: List[dict], first: str) -> str:
    """Rows as a markdown table."""
    lines = [f"| scope | reg | method | median fwd+bwd (ms) | min (ms) | iterations | speed-up vs {first} | "
             f"max abs value diff vs {first} |",
             "|---|---:|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['scope']} | {r['reg']:g} | {r['method']} | {r['median_ms']:.1f} | {r['min_ms']:.1f} | "
                     f"{r['iterations']:.1f} | {r['speedup']:.2f}x | {r['max_abs_value_diff']:.1e} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> List[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--n", type=int, default=288, help="local features per image (24x12 = 288)")
    parser.add_argument("--m", type=int, default=16, help="text descriptors per image")
    parser.add_argument("--dim", type=int, default=2048, help="feature width d'")
    parser.add_argument("--regs", type=float, nargs="+", default=[1.0, 0.1])
    parser.add_argument("--max-iter", type=int, default=100)
    parser.add_argument("--tol", type=float, default=1e-5)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS),
                        help="the first one is the reference of the speed-up column")
    parser.add_argument("--scopes", nargs="+", default=list(SCOPES), choices=list(SCOPES))
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rank", type=int, default=8,
                        help="features drawn from a subspace of this rank plus noise (0 = isotropic)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the rows and settings to this file")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")
    machine = (torch.cuda.get_device_name() if args.device == "cuda"
               else platform.processor() or platform.machine())
    settings = {"batch": args.batch, "n": args.n, "m": args.m, "dim": args.dim, "rank": args.rank,
                "max_iter": args.max_iter, "tol": args.tol, "repeats": args.repeats, "dtype": "float32",
                "device": args.device, "threads": torch.get_num_threads(), "torch": torch.__version__,
                "pot": ot.__version__, "machine": machine}
    logger.info("B=%d N=%d M=%d d=%d (rank %d), max_iter=%d, tol=%g (L2 marginal violation), float32 on %s (%s), "
                "%d CPU threads, median of %d", args.batch, args.n, args.m, args.dim, args.rank, args.max_iter,
                args.tol, args.device, machine, settings["threads"], args.repeats)
    rows = run_benchmark(args.batch, args.n, args.m, args.dim, args.regs, args.max_iter, args.tol, args.repeats,
                         args.methods, args.scopes, args.rank, args.seed, args.device)
    logger.info("\n%s", markdown_table(rows, args.methods[0]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"settings": settings, "rows": rows}, f, indent=2)
        logger.info("wrote %s", args.json)
    return rows


if __name__ == "__main__":
    main()
