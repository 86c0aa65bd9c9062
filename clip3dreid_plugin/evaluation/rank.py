"""Vectorised CMC / mAP evaluation for the general, clothes-changing (CC) and same-clothes (SC) protocols.

Protocols (per query ``q``, over the gallery items ``g``; CAL / Simple-CCReID semantics)::

    mode       good (true match)                               junk (removed from the ranking)
    general    same pid & diff cam                             same pid & same cam
    cc         same pid & diff cam & diff clothes              same pid & (same cam | same clothes)
    sc         same pid & diff cam & same clothes              same pid & (same cam | diff clothes)

Junk items are dropped from the ranking first.  With ``rank_i`` the 0-based position of the i-th good
match among the remaining items, ``AP = mean_i (i + 1) / (rank_i + 1)`` and ``CMC[k] = 1`` from the first
good match on.  Queries without any good match are skipped; CMC and mAP average over the other queries.
``general`` is exactly torchreid's ``evaluate_rank`` (Market-1501 protocol, ``use_metric_cuhk03=False``).

Decisions the reference leaves open:

* Ties: the ranking is the *stable* ascending order of the distances, i.e. equal distances are ordered
  by gallery index.  (torchreid uses ``np.argsort``'s default introsort, whose order among ties is
  unspecified, so results may differ from it only when a match is tied with another item.)
* Short galleries: the CMC always has ``max_rank`` entries.  ``CMC[k]`` is the fraction of valid queries
  whose first good match is at 0-based position ``<= k``, which past the end of a ranking equals its
  last value (1.0).  torchreid instead truncates the CMC to the gallery size, or fails when junk removal
  leaves fewer than ``max_rank`` items; where it returns, its CMC equals our first entries.
* No valid query: ``ValueError`` (torchreid asserts).  NaN distances: ``ValueError``.

Algorithm.  In every mode each gallery item of the query's identity is either good or junk, and every
item of another identity is neither.  So, with the query's same-identity items sorted by
``(distance, index)`` as ``s = 0..K-1`` and ``C[s]`` the number of other-identity items ranked before the
s-th of them, a good item that is the j-th good one sits at ``rank = C[s] + j`` among the non-junk items.
``C`` does not depend on the mode: it is computed once (the expensive ``O(Q*G)`` part) and every mode
then costs ``O(Q*K)``.  Two exact ways to get ``C``:

* ``'sort'``: stable row sort of the distances, positions of the same-identity items in it.
* ``'bins'`` (default on CPU, where it is faster than sorting, see BENCHMARKS.md): quantise each row into
  ``G // 2`` equal-width bins (a monotone map, so an item in a lower bin is strictly closer), count the
  items per bin with one ``bincount`` and a cumulative sum, and resolve only the other-identity items
  that share a bin with a same-identity item by exact ``(distance, index)`` comparison.  Chunks with
  infinite distances, or with bins too crowded for that fix-up to be cheap (e.g. many equal distances),
  fall back to ``'sort'``.

Rows are processed in chunks so memory stays ``O(chunk * G)`` for any number of queries: the evaluator never needs
the whole ``[Q, G]`` matrix at once.  Given a :class:`~clip3dreid_plugin.evaluation.distance.FeatureDistances`
instead of a matrix, it computes each chunk's distances from the features when it ranks them, so the matrix is
never built.  Under ``torch.distributed`` (``shard``) each rank ranks its own block of queries and the per-query
sums are added over the ranks: every rank works, none waits alone, and all get the same metrics.
"""
from __future__ import annotations

import logging
from typing import Any, Dict, Iterable, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch

from clip3dreid_plugin.evaluation.distance import FeatureDistances
from clip3dreid_plugin.utils.distributed import all_reduce_sum

logger = logging.getLogger(__name__)

__all__ = ["evaluate", "evaluate_all", "MODES"]

MODES: Tuple[str, ...] = ("general", "cc", "sc")
_METHODS = ("auto", "bins", "sort")

ArrayLike = Union[np.ndarray, torch.Tensor, Sequence[Any]]

# Distances handled per chunk: on CPU a chunk whose temporaries stay in cache; on accelerators larger chunks keep
# the device busy (both sizes chosen by bench_eval.py, see BENCHMARKS.md).
_CHUNK_ELEMS_CPU = 1 << 20
_CHUNK_ELEMS_OTHER = 1 << 24
# Bins per row = gallery size // _BIN_DIV: about two items per bin trades histogram work for a few more exact
# comparisons (chosen by bench_eval.py).
_BIN_DIV = 2


# ----------------------------------------------------------------------------------------- input checks
def _resolve_device(distmat: ArrayLike, device: Optional[Union[str, torch.device]]) -> torch.device:
    if device is not None:
        return torch.device(device)
    if isinstance(distmat, torch.Tensor):
        return distmat.device
    return torch.device("cpu")


def _as_distmat(distmat: ArrayLike, device: torch.device) -> torch.Tensor:
    d = torch.as_tensor(distmat).detach()
    if d.dim() != 2:
        raise ValueError(f"distmat must be 2-D (num_query, num_gallery), got shape {tuple(d.shape)}")
    if d.shape[0] == 0 or d.shape[1] == 0:
        raise ValueError(f"distmat must have at least one query and one gallery item, got {tuple(d.shape)}")
    # float32/float64 are kept as given (casting could merge distinct distances); the rest are widened
    # to float64, which orders half precision and realistic integer distances exactly.
    if d.dtype not in (torch.float32, torch.float64):
        d = d.to(torch.float64)
    return d.to(device).contiguous()


def _check_no_nan(d: torch.Tensor) -> None:
    if bool(torch.isnan(d).any()):
        raise ValueError("distmat contains NaN distances; their rank is undefined")


def _as_labels(q: Optional[ArrayLike], g: Optional[ArrayLike], q_name: str, g_name: str,
               num_q: int, num_g: int, device: torch.device) -> Tuple[torch.Tensor, torch.Tensor]:
    """Query/gallery label pair -> 1-D tensors on ``device`` that compare equal iff the labels do."""
    arrs = []
    for val, name, n in ((q, q_name, num_q), (g, g_name, num_g)):
        if val is None:
            raise ValueError(f"{name} is required")
        a = val.detach().cpu().numpy() if isinstance(val, torch.Tensor) else np.asarray(val)
        a = a.reshape(-1) if a.ndim > 1 and a.size == n else a
        if a.ndim != 1 or a.shape[0] != n:
            side = "rows (queries)" if name.startswith("q") else "columns (gallery items)"
            raise ValueError(f"{name} must be 1-D with {n} entries to match the distmat {side}, "
                             f"got shape {a.shape}")
        arrs.append(a)
    qa, ga = arrs
    if qa.dtype.kind in "biu" and ga.dtype.kind in "biu":
        # One common dtype for both sides: the gallery index searches query labels among gallery labels.
        return (torch.as_tensor(qa.astype(np.int64)).to(device), torch.as_tensor(ga.astype(np.int64)).to(device))
    if qa.dtype.kind in "biuf" and ga.dtype.kind in "biuf":
        return (torch.as_tensor(qa.astype(np.float64)).to(device),
                torch.as_tensor(ga.astype(np.float64)).to(device))
    # Strings / objects (e.g. clothes keys like "001_1"): encode both sides with one shared vocabulary.
    _, inv = np.unique(np.concatenate([qa.astype(object).astype(str), ga.astype(object).astype(str)]),
                       return_inverse=True)
    inv = torch.as_tensor(inv.reshape(-1).astype(np.int64))
    return inv[:num_q].to(device), inv[num_q:].to(device)


def _check_modes(modes: Iterable[str]) -> Tuple[str, ...]:
    if isinstance(modes, str):
        modes = (modes,)
    out = tuple(dict.fromkeys(modes))  # drop repeats, keep the caller's order
    if not out:
        raise ValueError("modes must name at least one of " + ", ".join(MODES))
    for m in out:
        if m not in MODES:
            raise ValueError(f"unknown mode {m!r}; expected one of {MODES}")
    return out


# ------------------------------------------------------------------------------- same-identity ranking
class _PidIndex:
    """Gallery items grouped by identity (CSR layout), so a query's positives are found without a
    ``[Q, G]`` comparison."""

    def __init__(self, g_pids: torch.Tensor) -> None:
        # Stable, so the items of one identity keep ascending gallery order.
        self.order = torch.sort(g_pids, stable=True).indices
        self.pids, self.counts = torch.unique_consecutive(g_pids[self.order], return_counts=True)
        self.starts = self.counts.cumsum(0) - self.counts

    def lookup(self, q_pids: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(start, count)`` of each query's identity in :attr:`order` (count 0 if absent)."""
        pos = torch.searchsorted(self.pids, q_pids).clamp(max=self.pids.numel() - 1)
        hit = self.pids[pos] == q_pids
        zero = torch.zeros_like(pos)
        return torch.where(hit, self.starts[pos], zero), torch.where(hit, self.counts[pos], zero)


def _same_pid_lists(d: torch.Tensor, start: torch.Tensor, count: torch.Tensor,
                    index: _PidIndex) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per row, the same-identity gallery items sorted by ``(distance, index)``.

    Args:
        d: ``[R, G]`` distances.
        start, count: ``[R]`` from :meth:`_PidIndex.lookup`; at least one count must be positive.
        index: the gallery's :class:`_PidIndex`.

    Returns:
        ``p_d [R, K]`` their distances (padding ``+inf``), ``p_idx [R, K]`` int64 gallery indices
        (padding ``G``), ``valid [R, K]`` bool (False on padding), with ``K`` the largest count in a row.
    """
    g = d.shape[1]
    k = int(count.max())
    slots = torch.arange(k, device=d.device)[None, :]
    valid = slots < count[:, None]
    pos = torch.where(valid, start[:, None] + slots, torch.zeros_like(slots))
    p_idx = torch.where(valid, index.order[pos], torch.full_like(pos, g))
    p_d = torch.where(valid, d.gather(1, p_idx.clamp(max=g - 1)), torch.full((), float("inf"), dtype=d.dtype,
                                                                                device=d.device))
    # Stable on distance with indices already ascending -> (distance, index) order; padding (+inf, G)
    # stays after any real +inf item because it comes later in the row.
    p_d, perm = torch.sort(p_d, dim=1, stable=True)
    return p_d, p_idx.gather(1, perm), valid


def _counts_by_sort(d: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor,
                    count: torch.Tensor, k: int) -> torch.Tensor:
    """``C [R, K]``: other-identity items ranked before each same-identity item, via a stable sort."""
    order = torch.sort(d, dim=1, stable=True).indices
    same_sorted = g_pids[order] == q_pids[:, None]
    r, pos = same_sorted.nonzero(as_tuple=True)  # row-major: positions ascend inside each row
    slot = torch.arange(r.numel(), device=d.device) - (count.cumsum(0) - count)[r]
    out = torch.zeros((d.shape[0], k), dtype=torch.long, device=d.device)
    # The s-th same-identity item of the stable order is at `pos`: the other `pos - s` before it differ.
    out[r, slot] = pos - slot
    return out


def _counts_by_bins(d: torch.Tensor, q_pids: torch.Tensor, g_pids: torch.Tensor, p_d: torch.Tensor,
                    p_idx: torch.Tensor, valid: torch.Tensor) -> Optional[torch.Tensor]:
    """Same result as :func:`_counts_by_sort` without sorting rows; ``None`` when it should not be used."""
    rows, g = d.shape
    k = p_d.shape[1]
    nbins = max(1, g // _BIN_DIV)
    if rows * (nbins + 1) >= 2 ** 31:
        return None  # flat int32 bin ids would overflow (only with a huge chunk_size)
    lo, hi = torch.aminmax(d, dim=1)
    span = hi - lo
    if not bool(torch.isfinite(span).all()):
        return None  # NaN / infinite distances (or an overflowing range) break the affine bin map
    scale = torch.where(span > 0, (nbins - 1) / span, torch.zeros_like(span))
    if not bool(torch.isfinite(scale).all()):
        return None  # a subnormal span overflows the scale; (d - lo) * inf would give NaN bins
    # (d - lo) * scale is non-decreasing in d under IEEE rounding and truncation is monotone, so an
    # item in a lower bin is strictly closer; equal distances share a bin.
    x = d - lo[:, None]
    x.mul_(scale[:, None])
    flat = x.to(torch.int32).clamp_(0, nbins - 1)  # the clamp only absorbs rounding at the top edge
    del x
    # Flat (row, bin) ids in one int32 tensor: bincount and index_select take it without a copy.
    flat.add_(torch.arange(rows, device=d.device, dtype=torch.int32)[:, None] * nbins)
    flat = flat.view(-1)
    hist = torch.bincount(flat, minlength=rows * nbins).view(rows, nbins)
    below = hist.cumsum(1) - hist  # items of any identity in strictly lower bins

    p_b = torch.where(valid, flat.view(rows, g).gather(1, p_idx.clamp(max=g - 1))
                      - torch.arange(rows, device=d.device)[:, None] * nbins, torch.full_like(p_idx, nbins))
    # p_b is non-decreasing along the slots (sorted keys, monotone bins): searchsorted counts the
    # same-identity items in strictly lower bins, which `below` must not include.
    out = below.gather(1, p_b.clamp(max=nbins - 1)) - torch.searchsorted(p_b, p_b)

    # Items sharing a bin with a same-identity item need an exact (distance, index) comparison.
    hot = torch.zeros((rows, nbins + 1), dtype=torch.bool, device=d.device)
    hot.scatter_(1, p_b, True)
    hit = hot[:, :nbins].reshape(-1).index_select(0, flat).nonzero().squeeze(1)
    r, n = hit // g, hit % g
    other = g_pids[n] != q_pids[r]
    r, n = r[other], n[other]
    if r.numel() * k > 4 * rows * g:
        return None  # crowded bins (e.g. many equal distances): the [M, K] comparison would cost more than sorting
    if r.numel():
        dn, bn = d[r, n][:, None], (flat[r * g + n] - r * nbins)[:, None]
        pd_r, pidx_r, pb_r = p_d[r], p_idx[r], p_b[r]
        # Item n precedes exactly the same-identity keys larger than its (distance, index) key; those
        # in its own bin are the slots [first_after, end_of_bin).
        first_after = ((pd_r < dn) | ((pd_r == dn) & (pidx_r < n[:, None]))).sum(1)
        end_of_bin = (pb_r <= bn).sum(1)
        delta = torch.zeros((rows, k + 1), dtype=torch.long, device=d.device)
        ones = torch.ones_like(r)
        delta.index_put_((r, first_after), ones, accumulate=True)
        delta.index_put_((r, end_of_bin), -ones, accumulate=True)
        out += delta.cumsum(1)[:, :k]
    return out


class _Labels(NamedTuple):
    """Query / gallery labels as tensors on the evaluation device (clothes None in general mode)."""

    qp: torch.Tensor
    gp: torch.Tensor
    qc: torch.Tensor
    gc: torch.Tensor
    qclo: Optional[torch.Tensor]
    gclo: Optional[torch.Tensor]


class _Sums:
    """Per-protocol sums over the ranked queries, from which CMC and mAP follow: the AP sum, the number of valid
    queries and the histogram of first-hit positions (index ``max_rank``: later)."""

    def __init__(self, modes: Tuple[str, ...], max_rank: int, dev: torch.device):
        self.modes = modes
        self.ap = {m: torch.zeros((), dtype=torch.float64, device=dev) for m in modes}
        self.valid = {m: torch.zeros((), dtype=torch.long, device=dev) for m in modes}
        self.first_hits = {m: torch.zeros(max_rank + 1, dtype=torch.long, device=dev) for m in modes}

    def all_reduce(self, error: str) -> None:
        """Sums every rank's partial results in place (one all-reduce); raises on every rank if one rank failed."""
        modes = self.modes
        dev = self.ap[modes[0]].device
        # float64 holds the counts exactly (< 2**53); one flat tensor keeps it to one collective.
        flat = all_reduce_sum(torch.cat([torch.stack([self.ap[m] for m in modes]).double(),
                                         torch.stack([self.valid[m] for m in modes]).double(),
                                         torch.cat([self.first_hits[m] for m in modes]).double(),
                                         torch.tensor([1.0 if error else 0.0], dtype=torch.float64, device=dev)]))
        if flat[-1] > 0:
            raise ValueError(error or "evaluation failed on another rank (see its log)")
        k = len(modes)
        hits = flat[2 * k:-1].view(k, -1)
        for i, m in enumerate(modes):
            self.ap[m], self.valid[m], self.first_hits[m] = flat[i], flat[k + i].long(), hits[i].long()


def _rank_rows(d, rows: range, chunk_size: int, method: str, max_rank: int, lab: _Labels, index: _PidIndex,
               q_start: torch.Tensor, q_count: torch.Tensor, sums: _Sums) -> None:
    """Ranks the query rows ``rows`` of ``d`` (a tensor or FeatureDistances), ``chunk_size`` at a time, into
    ``sums``."""
    qp, gp, qc, gc, qclo, gclo = lab
    dev = q_count.device
    fallbacks = 0
    for r0 in range(rows.start, rows.stop, chunk_size):
        r1 = min(rows.stop, r0 + chunk_size)
        count = q_count[r0:r1]
        dc = d[r0:r1]
        if not bool((count > 0).any()):
            _check_no_nan(dc)  # same contract for every row, ranked or not
            continue  # no query of this chunk has its identity in the gallery: none is valid
        p_d, p_idx, valid = _same_pid_lists(dc, q_start[r0:r1], count, index)
        before = None
        if method == "bins":
            before = _counts_by_bins(dc, qp[r0:r1], gp, p_d, p_idx, valid)
            fallbacks += before is None
        if before is None:
            # The bins path has no NaN (aminmax propagates it and it then returns None), so only
            # chunks ranked here need the check.
            _check_no_nan(dc)
            before = _counts_by_sort(dc, qp[r0:r1], gp, count, p_d.shape[1])
        for m in sums.modes:
            good = _mode_good(m, p_idx, valid, qc[r0:r1], gc,
                              None if qclo is None else qclo[r0:r1], gclo)
            n_good = good.sum(1)
            ok = n_good > 0
            if not bool(ok.any()):
                continue
            j = good.cumsum(1) - 1  # j-th good match (0-based) in the slots where good is True
            rank = before + j  # its position after junk removal
            prec = torch.where(good, (j + 1).double() / (rank + 1).double(), torch.zeros((), dtype=torch.float64,
                                                                                        device=dev))
            sums.ap[m] += (prec.sum(1)[ok] / n_good[ok].double()).sum()
            sums.valid[m] += ok.sum()
            # `before` is non-decreasing along the slots, so the first good match has the smallest.
            big = torch.full_like(before, max_rank)
            first = torch.where(good, before, big).amin(1)[ok].clamp(max=max_rank)
            sums.first_hits[m] += torch.bincount(first, minlength=max_rank + 1)
    if fallbacks:
        logger.debug("evaluate: %d chunk(s) ranked by sorting instead of bins", fallbacks)


# ------------------------------------------------------------------------------------------- the metric
def _mode_good(mode: str, p_idx: torch.Tensor, valid: torch.Tensor, qcam: torch.Tensor, gcam: torch.Tensor,
               qclo: Optional[torch.Tensor], gclo: Optional[torch.Tensor]) -> torch.Tensor:
    """Which same-identity slots are good matches (the rest of them are junk)."""
    idx = p_idx.clamp(max=gcam.numel() - 1)
    good = valid & (gcam[idx] != qcam[:, None])
    if mode == "cc":
        good &= gclo[idx] != qclo[:, None]
    elif mode == "sc":
        good &= gclo[idx] == qclo[:, None]
    return good


def evaluate_all(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    q_clothes: Optional[ArrayLike] = None,
    g_clothes: Optional[ArrayLike] = None,
    modes: Iterable[str] = ("general", "cc"),
    max_rank: int = 50,
    device: Optional[Union[str, torch.device]] = None,
    method: str = "auto",
    chunk_size: Optional[int] = None,
    shard: Optional[Tuple[int, int]] = None,
) -> Dict[str, Tuple[np.ndarray, float]]:
    """CMC and mAP for several protocols, ranking the gallery once for all of them.

    Args:
        distmat: ``[Q, G]`` distances (smaller = more similar); numpy array or tensor of any real dtype, or a
            :class:`~clip3dreid_plugin.evaluation.distance.FeatureDistances` (distances computed per chunk).
        q_pids: ``[Q]`` query identities.
        g_pids: ``[G]`` gallery identities.
        q_camids: ``[Q]`` query camera ids.
        g_camids: ``[G]`` gallery camera ids.
        q_clothes: ``[Q]`` query clothes labels (ints or strings); required by ``'cc'`` and ``'sc'``.
        g_clothes: ``[G]`` gallery clothes labels, on the same scale as ``q_clothes``.
        modes: protocols among ``'general'``, ``'cc'``, ``'sc'``.
        max_rank: length of the returned CMC curves.
        device: where to compute; ``None`` = the distmat's device if it is a tensor, else CPU.
        method: ``'bins'``, ``'sort'`` or ``'auto'`` (``'bins'`` on CPU, ``'sort'`` elsewhere); both are
            exact and give identical results.
        chunk_size: query rows per chunk; ``None`` picks about 1M distances per chunk on CPU and 16M on
            other devices.
        shard: ``(rank, world)`` under ``torch.distributed``: this rank ranks the ``rank``-th of ``world`` equal
            blocks of queries and the sums are all-reduced, so every rank must call with the same arguments and
            gets the same result. ``None`` or a world of 1: every query here.

    Returns:
        ``{mode: (cmc, mAP)}`` with ``cmc`` a float64 numpy array of shape ``[max_rank]`` and ``mAP`` a
        Python float, both fractions in ``[0, 1]``.

    Raises:
        ValueError: bad shapes or lengths, a missing clothes array, an unknown mode or method, NaN
            distances, or a mode in which no query has a good match.
    """
    modes = _check_modes(modes)
    if isinstance(max_rank, bool) or not isinstance(max_rank, (int, np.integer)) or max_rank < 1:
        raise ValueError(f"max_rank must be a positive int, got {max_rank!r}")
    max_rank = int(max_rank)
    if method not in _METHODS:
        raise ValueError(f"method must be one of {_METHODS}, got {method!r}")
    dev = _resolve_device(distmat, device)
    d = distmat.to(dev) if isinstance(distmat, FeatureDistances) else _as_distmat(distmat, dev)
    num_q, num_g = d.shape
    if num_q == 0 or num_g == 0:
        raise ValueError(f"distmat must have at least one query and one gallery item, got {(num_q, num_g)}")
    qp, gp = _as_labels(q_pids, g_pids, "q_pids", "g_pids", num_q, num_g, dev)
    qc, gc = _as_labels(q_camids, g_camids, "q_camids", "g_camids", num_q, num_g, dev)
    qclo = gclo = None
    needs_clothes = [m for m in modes if m != "general"]
    if needs_clothes or q_clothes is not None or g_clothes is not None:
        # Given clothes are validated even in general mode: a wrong length there is still a caller bug.
        why = f"for mode {needs_clothes[0]!r}" if needs_clothes else "when the other clothes array is given"
        if q_clothes is None:
            raise ValueError(f"q_clothes is required {why}")
        if g_clothes is None:
            raise ValueError(f"g_clothes is required {why}")
        qclo, gclo = _as_labels(q_clothes, g_clothes, "q_clothes", "g_clothes", num_q, num_g, dev)
    if method == "auto":
        method = "bins" if dev.type == "cpu" else "sort"
    if chunk_size is None:
        chunk_size = max(1, (_CHUNK_ELEMS_CPU if dev.type == "cpu" else _CHUNK_ELEMS_OTHER) // num_g)
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")

    sums = _Sums(modes, max_rank, dev)
    index = _PidIndex(gp)
    q_start, q_count = index.lookup(qp)
    rank, world = shard if shard is not None else (0, 1)
    error = ""
    try:
        _rank_rows(d, range(rank * num_q // world, (rank + 1) * num_q // world), chunk_size, method, max_rank,
                   _Labels(qp, gp, qc, gc, qclo, gclo), index, q_start, q_count, sums)
    except ValueError as err:
        if world == 1:
            raise
        # Raised on every rank after the reduction: raising here would leave the others waiting in it.
        error = str(err)
        logger.error("evaluation failed on rank %d: %s", rank, error)
    if world > 1:
        sums.all_reduce(error)

    out: Dict[str, Tuple[np.ndarray, float]] = {}
    for m in modes:
        nv = int(sums.valid[m])
        if nv == 0:
            raise ValueError(f"no valid query in mode {m!r}: no query has a good match in the gallery "
                             "(check pids, camids and clothes labels)")
        cmc = sums.first_hits[m][:max_rank].double().cumsum(0) / nv
        out[m] = (cmc.cpu().numpy(), float(sums.ap[m]) / nv)
    return out


def evaluate(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    q_clothes: Optional[ArrayLike] = None,
    g_clothes: Optional[ArrayLike] = None,
    mode: str = "general",
    max_rank: int = 50,
    device: Optional[Union[str, torch.device]] = None,
    method: str = "auto",
    chunk_size: Optional[int] = None,
) -> Tuple[np.ndarray, float]:
    """CMC and mAP for one protocol; see :func:`evaluate_all` for the arguments.

    ``mode='general'`` reproduces ``torchreid.metrics.evaluate_rank(..., use_metric_cuhk03=False)``
    (up to the tie-breaking and short-gallery conventions in the module docstring).

    Returns:
        ``(cmc, mAP)``: float64 numpy array of shape ``[max_rank]`` and a Python float.
    """
    if not isinstance(mode, str):
        raise ValueError(f"mode must be a string, one of {MODES}, got {mode!r}")
    res = evaluate_all(distmat, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, modes=(mode,),
                       max_rank=max_rank, device=device, method=method, chunk_size=chunk_size)
    return res[mode]
