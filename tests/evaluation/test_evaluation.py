"""Tests of the vectorised evaluator against torchreid, a hand-worked example and a naive reference."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import pytest
import torch
import torchreid

from clip3dreid_plugin.evaluation import evaluate, evaluate_all

METHODS = ("bins", "sort")


# ------------------------------------------------------------------------------------------ helpers
def _torchreid_general(distmat, q_pids, g_pids, q_camids, g_camids, max_rank):
    """torchreid's Python Market-1501 evaluator (what the PyPI package runs: no Cython ranker)."""
    return torchreid.metrics.evaluate_rank(distmat, q_pids, g_pids, q_camids, g_camids, max_rank=max_rank,
                                           use_metric_cuhk03=False, use_cython=False)


def _naive(distmat, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode, max_rank
           ) -> Optional[Tuple[np.ndarray, float]]:
    """Per-query loop written straight from the protocol definition (stable order among ties)."""
    cmcs, aps = [], []
    for i in range(distmat.shape[0]):
        order = np.argsort(distmat[i], kind="stable")
        same_pid = g_pids[order] == q_pids[i]
        diff_cam = g_camids[order] != q_camids[i]
        if mode == "general":
            good = same_pid & diff_cam
        else:
            same_clo = g_clothes[order] == q_clothes[i]
            good = same_pid & diff_cam & (~same_clo if mode == "cc" else same_clo)
        junk = same_pid & ~good  # every same-identity item that is not good is junk, in every mode
        hits = np.flatnonzero(good[~junk])
        if hits.size == 0:
            continue
        aps.append(np.mean(np.arange(1, hits.size + 1) / (hits + 1)))
        cmc = np.zeros(max_rank)
        cmc[min(hits[0], max_rank):] = 1
        cmcs.append(cmc)
    if not aps:
        return None
    return np.mean(cmcs, axis=0), float(np.mean(aps))


def _random_problem(seed, num_q, num_g, num_ids, num_cams, num_clothes=3, ties=False, absent_ids=0):
    """Random labels; continuous distances unless ``ties`` (then few distinct values, many ties).

    ``absent_ids`` extra identities appear only among the queries, so those queries have no match.
    """
    rng = np.random.default_rng(seed)
    q_pids = rng.integers(0, num_ids + absent_ids, num_q)
    g_pids = rng.integers(0, num_ids, num_g)
    q_camids, g_camids = rng.integers(0, num_cams, num_q), rng.integers(0, num_cams, num_g)
    q_clothes, g_clothes = rng.integers(0, num_clothes, num_q), rng.integers(0, num_clothes, num_g)
    if ties:
        distmat = rng.integers(0, 6, (num_q, num_g)).astype(np.float32)
    else:
        distmat = rng.random((num_q, num_g))
    return distmat, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes


def _assert_same(a, b, atol=1e-6):
    np.testing.assert_allclose(a[0], b[0], rtol=0, atol=atol)
    assert a[1] == pytest.approx(b[1], abs=1e-12)


# ------------------------------------------------------------------------- (1) equals torchreid
@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("seed,num_q,num_g,num_ids,num_cams,max_rank", [
    (0, 40, 300, 12, 2, 20),
    (1, 64, 500, 40, 6, 50),
    (2, 25, 200, 5, 3, 10),
    (3, 50, 400, 100, 4, 50),  # many queries without any match
])
def test_general_equals_torchreid(method, seed, num_q, num_g, num_ids, num_cams, max_rank):
    distmat, qp, gp, qc, gc, _, _ = _random_problem(seed, num_q, num_g, num_ids, num_cams, absent_ids=3)
    ref_cmc, ref_map = _torchreid_general(distmat, qp, gp, qc, gc, max_rank)
    assert len(ref_cmc) == max_rank  # the gallery is long enough for torchreid to keep every rank
    cmc, mAP = evaluate(distmat, qp, gp, qc, gc, mode="general", max_rank=max_rank, method=method)
    assert isinstance(mAP, float) and cmc.shape == (max_rank,) and cmc.dtype == np.float64
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)  # torchreid's CMC is float32
    assert mAP == pytest.approx(float(ref_map), abs=1e-12)


def test_skipped_queries_match_torchreid():
    distmat, qp, gp, qc, gc, _, _ = _random_problem(11, 30, 240, 6, 3)
    # Query 0: all gallery items of its identity share its camera -> all junk, no good match.
    gc[gp == qp[0]] = qc[0]
    # Queries 1-2: identities absent from the gallery.
    qp[1:3] = 99
    # A query is valid iff some gallery item has its identity and another camera.
    keep = np.flatnonzero([np.any((gp == qp[i]) & (gc != qc[i])) for i in range(30)])
    assert 0 not in keep and 1 not in keep and 2 not in keep and 10 < len(keep) < 30
    ref_cmc, ref_map = _torchreid_general(distmat, qp, gp, qc, gc, 20)
    cmc, mAP = evaluate(distmat, qp, gp, qc, gc, max_rank=20)
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    assert mAP == pytest.approx(float(ref_map), abs=1e-12)
    # Averages run over valid queries only: evaluating just those gives the same numbers.
    sub = evaluate(distmat[keep], qp[keep], gp, qc[keep], gc, max_rank=20)
    _assert_same(sub, (cmc, mAP), atol=1e-12)


def test_chunking_does_not_change_results():
    distmat, qp, gp, qc, gc, qcl, gcl = _random_problem(4, 37, 250, 9, 3)
    ref = evaluate_all(distmat, qp, gp, qc, gc, qcl, gcl, modes=("general", "cc", "sc"), max_rank=20)
    for method in METHODS:
        for chunk_size in (1, 5, 36, 1000):
            out = evaluate_all(distmat, qp, gp, qc, gc, qcl, gcl, modes=("general", "cc", "sc"), max_rank=20,
                               method=method, chunk_size=chunk_size)
            for m in ref:
                _assert_same(out[m], ref[m], atol=1e-12)


# -------------------------------------------------- (2)+(3) hand-worked example, skipped queries
# Gallery items:      g0   g1   g2   g3   g4   g5   g6   g7
_G_PIDS = np.array([1, 3, 1, 1, 2, 4, 1, 1])
_G_CAMS = np.array([0, 1, 1, 2, 1, 2, 1, 0])
_G_CLOTHES = np.array([0, 0, 0, 1, 1, 1, 1, 1])
# q0: pid 1 cam 0 clothes 0 | q1: pid 2 cam 1 clothes 1 | q2: pid 4 cam 0 clothes 0
_Q_PIDS, _Q_CAMS, _Q_CLOTHES = np.array([1, 2, 4]), np.array([0, 1, 0]), np.array([0, 1, 0])
_DISTMAT = np.array([
    [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8],  # q0 ranks g0 g1 g2 g3 g4 g5 g6 g7
    [0.5, 0.4, 0.3, 0.2, 0.1, 0.6, 0.7, 0.8],  # q1 ranks g4 first
    [0.9, 0.1, 0.8, 0.2, 0.3, 0.4, 0.7, 0.6],  # q2 ranks g1 g3 g4 g5 g7 g6 g2 g0
])
# q0 (pid 1): g0 same cam -> junk in every mode; g7 same cam -> junk in every mode.
#   general: ranking minus junk = g1 x, g2 OK, g3 OK, g4 x, g5 x, g6 OK -> good at 1, 2, 5
#            AP = (1/2 + 2/3 + 3/6) / 3 = 5/9; first good at rank 1.
#   cc: g2 has the query's clothes -> junk too; g1 x, g3 OK, g4 x, g5 x, g6 OK -> good at 1, 4
#            AP = (1/2 + 2/5) / 2 = 0.45; first good at rank 1.
#   sc: g3, g6 wear other clothes -> junk; g1 x, g2 OK, g4 x, g5 x -> good at 1; AP = 1/2; first at 1.
# q1 (pid 2): its only gallery item g4 shares its camera -> junk; no good match in any mode -> skipped.
# q2 (pid 4): g5 (cam 2, clothes 1) is its only item, at position 3 of g1 g3 g4 g5 ...; nothing is junk.
#   general and cc: AP = 1/4, first good at rank 3.  sc: g5 wears other clothes -> junk -> skipped.
_EXPECTED = {
    # mode: (CMC over ranks 1..8, mAP)
    "general": ([0, 0.5, 0.5, 1, 1, 1, 1, 1], (5 / 9 + 1 / 4) / 2),  # 2 valid queries (q0, q2)
    "cc": ([0, 0.5, 0.5, 1, 1, 1, 1, 1], (0.45 + 0.25) / 2),  # 2 valid queries (q0, q2)
    "sc": ([0, 1, 1, 1, 1, 1, 1, 1], 0.5),  # 1 valid query (q0)
}


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["general", "cc", "sc"])
def test_worked_example(mode, method):
    cmc, mAP = evaluate(_DISTMAT, _Q_PIDS, _G_PIDS, _Q_CAMS, _G_CAMS, _Q_CLOTHES, _G_CLOTHES, mode=mode,
                        max_rank=8, method=method)
    exp_cmc, exp_map = _EXPECTED[mode]
    np.testing.assert_allclose(cmc, exp_cmc, rtol=0, atol=1e-12)
    assert mAP == pytest.approx(exp_map, abs=1e-12)


def test_worked_example_general_matches_torchreid():
    ref_cmc, ref_map = _torchreid_general(_DISTMAT, _Q_PIDS, _G_PIDS, _Q_CAMS, _G_CAMS, max_rank=5)
    cmc, mAP = evaluate(_DISTMAT, _Q_PIDS, _G_PIDS, _Q_CAMS, _G_CAMS, mode="general", max_rank=5)
    np.testing.assert_allclose(cmc, ref_cmc, rtol=0, atol=1e-6)
    assert mAP == pytest.approx(float(ref_map), abs=1e-12)


def test_short_gallery_cmc_is_padded_with_its_last_value():
    # max_rank beyond the 8-item gallery: the CMC keeps max_rank entries; past the end of the
    # ranking it stays at its last value (every valid query has been matched by then).
    cmc, _ = evaluate(_DISTMAT, _Q_PIDS, _G_PIDS, _Q_CAMS, _G_CAMS, _Q_CLOTHES, _G_CLOTHES, mode="cc",
                      max_rank=12)
    np.testing.assert_allclose(cmc, [0, 0.5, 0.5] + [1] * 9, rtol=0, atol=1e-12)


def test_ties_are_broken_by_gallery_index():
    # g0 (other identity) and g1 (match) tie at 0.5: the stable order puts g0 first, so the match is
    # at rank 1 -> AP 1/2, CMC [0, 1]; listing the match first makes it rank 0 -> AP 1, CMC [1, 1].
    q_pids, q_cams = np.array([7]), np.array([0])
    for method in METHODS:
        cmc, mAP = evaluate(np.array([[0.5, 0.5, 0.9]]), q_pids, np.array([1, 7, 2]), q_cams,
                            np.array([1, 1, 1]), max_rank=2, method=method)
        assert mAP == pytest.approx(0.5) and list(cmc) == [0, 1]
        cmc, mAP = evaluate(np.array([[0.5, 0.5, 0.9]]), q_pids, np.array([7, 1, 2]), q_cams,
                            np.array([1, 1, 1]), max_rank=2, method=method)
        assert mAP == pytest.approx(1.0) and list(cmc) == [1, 1]


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("mode", ["general", "cc", "sc"])
def test_matches_naive_reference(mode, ties):
    for seed in range(6):
        problem = _random_problem(100 + seed, 30, 120, 8, 3, ties=ties, absent_ids=2)
        ref = _naive(*problem, mode=mode, max_rank=15)
        assert ref is not None  # 30 queries over 8 identities: some are always valid
        for method in METHODS:
            _assert_same(evaluate(*problem, mode=mode, max_rank=15, method=method), ref, atol=1e-12)


def test_infinite_distances_are_ranked_last():
    distmat, qp, gp, qc, gc, qcl, gcl = _random_problem(7, 20, 100, 6, 3)
    distmat[:, ::7] = np.inf  # the bins path falls back to sorting for such chunks
    distmat[3, :] = np.inf
    ref = _naive(distmat, qp, gp, qc, gc, qcl, gcl, "cc", 10)
    for method in METHODS:
        _assert_same(evaluate(distmat, qp, gp, qc, gc, qcl, gcl, mode="cc", max_rank=10, method=method), ref,
                     atol=1e-12)


# ------------------------------------------------------------------------ (4) no valid query
def test_all_queries_invalid_raises():
    distmat, qp, gp, qc, gc, qcl, gcl = _random_problem(5, 10, 50, 5, 3)
    with pytest.raises(ValueError, match="no valid query"):
        evaluate(distmat, qp + 100, gp, qc, gc)  # no query identity is in the gallery
    with pytest.raises(ValueError, match="no valid query in mode 'cc'"):
        # Everyone wears the same clothes: every same-identity item is junk under CC.
        evaluate_all(distmat, qp, gp, qc, gc, np.zeros(10), np.zeros(50), modes=("general", "cc"))
    with pytest.raises(ValueError, match="no valid query"):
        evaluate(distmat, qp, gp, np.zeros(10), np.zeros(50))  # one camera: all matches are junk


# --------------------------------------------------------------------------------- (5) bad input
def test_bad_inputs_name_the_argument():
    distmat, qp, gp, qc, gc, qcl, gcl = _random_problem(6, 10, 50, 5, 3)
    with pytest.raises(ValueError, match="q_clothes"):
        evaluate(distmat, qp, gp, qc, gc, qcl[:-1], gcl, mode="cc")
    with pytest.raises(ValueError, match="g_clothes"):
        evaluate(distmat, qp, gp, qc, gc, qcl, np.append(gcl, 0), mode="sc")
    with pytest.raises(ValueError, match="q_clothes is required for mode 'cc'"):
        evaluate(distmat, qp, gp, qc, gc, mode="cc")
    with pytest.raises(ValueError, match="g_clothes is required for mode 'sc'"):
        evaluate(distmat, qp, gp, qc, gc, q_clothes=qcl, mode="sc")
    with pytest.raises(ValueError, match="q_pids"):
        evaluate(distmat, qp[:-1], gp, qc, gc)
    with pytest.raises(ValueError, match="g_pids"):
        evaluate(distmat, qp, gp[:-1], qc, gc)
    with pytest.raises(ValueError, match="q_camids"):
        evaluate(distmat, qp, gp, np.append(qc, 0), gc)
    with pytest.raises(ValueError, match="g_camids"):
        evaluate(distmat, qp, gp, qc, gc[:10])
    with pytest.raises(ValueError, match="distmat"):
        evaluate(distmat[0], qp, gp, qc, gc)
    with pytest.raises(ValueError, match="NaN"):
        bad = distmat.copy()
        bad[2, 3] = np.nan
        evaluate(bad, qp, gp, qc, gc)
    with pytest.raises(ValueError, match="mode"):
        evaluate(distmat, qp, gp, qc, gc, mode="clothes")
    with pytest.raises(ValueError, match="max_rank"):
        evaluate(distmat, qp, gp, qc, gc, max_rank=0)
    with pytest.raises(ValueError, match="method"):
        evaluate(distmat, qp, gp, qc, gc, method="quick")


# ------------------------------------------------------------------------ (6) tensor vs numpy
def test_tensor_and_numpy_inputs_agree():
    distmat, qp, gp, qc, gc, qcl, gcl = _random_problem(8, 30, 200, 10, 4)
    distmat = distmat.astype(np.float32)
    ref = evaluate_all(distmat, qp, gp, qc, gc, qcl, gcl, modes=("general", "cc", "sc"), max_rank=20)
    as_t = [torch.from_numpy(a) for a in (distmat, qp, gp, qc, gc, qcl, gcl)]
    variants = [
        evaluate_all(*as_t, modes=("general", "cc", "sc"), max_rank=20),
        evaluate_all(*as_t, modes=("general", "cc", "sc"), max_rank=20, device="cpu"),
        # Mixed: tensor distances with numpy / list labels (and int32 vs int64 labels).
        evaluate_all(as_t[0], qp.astype(np.int32), gp.tolist(), qc, torch.as_tensor(gc), qcl.tolist(), gcl,
                     modes=("general", "cc", "sc"), max_rank=20),
        # Clothes given as string keys, as some loaders build them ("<pid>_<outfit>").
        evaluate_all(distmat, qp, gp, qc, gc, [f"c{x}" for x in qcl], np.array([f"c{x}" for x in gcl]),
                     modes=("general", "cc", "sc"), max_rank=20),
    ]
    for out in variants:
        for m in ref:
            assert isinstance(out[m][1], float)
            _assert_same(out[m], ref[m], atol=1e-12)


# --------------------------------------------------------------------------- (7) re-ranking
def test_reranked_distances_in_every_mode():
    rng = np.random.default_rng(9)
    num_q, num_g, num_ids = 20, 120, 10
    centers = rng.normal(size=(num_ids, 32))
    q_pids, g_pids = rng.integers(0, num_ids, num_q), rng.integers(0, num_ids, num_g)
    qf = torch.as_tensor(centers[q_pids] + rng.normal(size=(num_q, 32)), dtype=torch.float32)
    gf = torch.as_tensor(centers[g_pids] + rng.normal(size=(num_g, 32)), dtype=torch.float32)
    q_cams, g_cams = rng.integers(0, 3, num_q), rng.integers(0, 3, num_g)
    q_clo, g_clo = rng.integers(0, 2, num_q), rng.integers(0, 2, num_g)
    dist = torchreid.metrics.compute_distance_matrix
    distmat = torchreid.utils.re_ranking(dist(qf, gf).numpy(), dist(qf, qf).numpy(), dist(gf, gf).numpy())
    assert distmat.shape == (num_q, num_g)
    # torchreid's argsort order among ties is unspecified: the exact comparison needs tie-free rows.
    assert all(len(np.unique(row)) == num_g for row in distmat)
    out = evaluate_all(distmat, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, modes=("general", "cc", "sc"),
                       max_rank=10)
    for m, (cmc, mAP) in out.items():
        assert cmc.shape == (10,) and np.all(np.diff(cmc) >= 0) and 0 <= cmc[0] <= cmc[-1] <= 1
        assert 0 < mAP <= 1
        _assert_same((cmc, mAP), _naive(distmat, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, m, 10),
                     atol=1e-12)
    ref_cmc, ref_map = _torchreid_general(distmat, q_pids, g_pids, q_cams, g_cams, 10)
    np.testing.assert_allclose(out["general"][0], ref_cmc, rtol=0, atol=1e-6)
    assert out["general"][1] == pytest.approx(float(ref_map), abs=1e-12)


def test_rerank_distances_equal_torchreids_from_the_full_matrices():
    """The plugin's re-ranking writes the three distance matrices into host memory a block at a time: the result is
    torchreid's re_ranking of the matrices torchreid's compute_distance_matrix gives."""
    from clip3dreid_plugin.evaluation import rerank

    gen = torch.Generator().manual_seed(4)
    qf, gf = torch.randn(15, 16, generator=gen), torch.randn(70, 16, generator=gen)
    dist = torchreid.metrics.compute_distance_matrix
    want = torchreid.utils.re_ranking(dist(qf, gf).numpy(), dist(qf, qf).numpy(), dist(gf, gf).numpy())
    old_block = rerank._BLOCK_ELEMS
    rerank._BLOCK_ELEMS = 7 * 70  # several blocks per matrix
    try:
        got = rerank.rerank_distances(qf, gf)
    finally:
        rerank._BLOCK_ELEMS = old_block
    assert got.shape == (15, 70) and got.dtype == torch.from_numpy(want).dtype
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-5, atol=1e-6)


def test_rerank_memory_estimate_covers_torchreids_measured_peak():
    """rerank_memory_bytes against tracemalloc's peak of a real re-ranking (its numpy arrays, inputs included), with
    fewer and with more queries than gallery items: never below it, and within 10% above."""
    import tracemalloc

    from clip3dreid_plugin.evaluation.rerank import rerank_distances, rerank_memory_bytes

    gen = torch.Generator().manual_seed(5)
    for nq, ng in ((100, 500), (450, 150)):
        qf, gf = torch.randn(nq, 16, generator=gen), torch.randn(ng, 16, generator=gen)
        tracemalloc.start()
        try:
            rerank_distances(qf, gf)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert 0.9 * rerank_memory_bytes(nq, ng) < peak <= rerank_memory_bytes(nq, ng), (nq, ng, peak)


def test_rerank_beyond_memory_is_one_line_naming_the_size_and_the_need():
    from clip3dreid_plugin.evaluation.rerank import rerank_memory_error

    sizes = {"prcc": (100, 200), "last": (10176, 125353)}
    msg = rerank_memory_error(sizes, available=64 * 10 ** 9)
    assert msg.startswith("test.rerank True: re-ranking last's 10176 queries x 125353 gallery items needs about "
                          "435.9 GB of host memory") and "64.0 GB are available" in msg and "\n" not in msg
    assert rerank_memory_error({"prcc": (100, 200)}, available=64 * 10 ** 9) is None


# --------------------------------------------------------------- (8) evaluate_all vs evaluate
@pytest.mark.parametrize("method", METHODS)
def test_evaluate_all_equals_separate_calls(method):
    problem = _random_problem(10, 45, 300, 15, 4)
    modes = ("general", "cc", "sc")
    out = evaluate_all(*problem, modes=modes, max_rank=30, method=method)
    assert list(out) == list(modes)
    for m in modes:
        single = evaluate(*problem, mode=m, max_rank=30, method=method)
        np.testing.assert_array_equal(out[m][0], single[0])
        assert out[m][1] == single[1]
    # The default modes are what the engine asks for on clothes-changing datasets.
    assert list(evaluate_all(*problem)) == ["general", "cc"]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_ranking_equals_cpu_ranking():
    distmat, qp, gp, qc, gc, qcl, gcl = _random_problem(7, 40, 300, 12, 3, ties=True)
    modes = ("general", "cc", "sc")
    ref = evaluate_all(distmat, qp, gp, qc, gc, qcl, gcl, modes=modes, max_rank=20, device="cpu")
    out = evaluate_all(torch.as_tensor(distmat).cuda(), qp, gp, qc, gc, qcl, gcl, modes=modes, max_rank=20,
                       device="cuda")
    for m in modes:
        _assert_same(out[m], ref[m], atol=1e-12)


# ----------------------------------------------------------------------------- distances in blocks
class _FreshAllocations(torch.utils._python_dispatch.TorchDispatchMode):
    """Records the element count of every tensor an op allocates (outputs that share no input's storage)."""

    def __init__(self):
        super().__init__()
        self.numels = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = [a for a in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(a, torch.Tensor)]
        used = {a.untyped_storage().data_ptr() for a in inputs}
        for o in torch.utils._pytree.tree_leaves(out):
            if isinstance(o, torch.Tensor) and o.untyped_storage().data_ptr() not in used:
                self.numels.append(o.numel())
        return out


@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a GPU"))])
@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_chunked_distances_equal_the_full_matrix(metric, device):
    """Blocks of rows computed on ``device`` equal torchreid's full matrix computed on the CPU."""
    from clip3dreid_plugin.evaluation.distance import FeatureDistances, chunked_distmat

    g = torch.Generator().manual_seed(3)
    qf, gf = torch.randn(37, 16, generator=g) * 3, torch.randn(53, 16, generator=g) * 3
    full = torchreid.metrics.compute_distance_matrix(qf, gf, metric)
    for chunk in (1, 5, 36, 37, 100):
        got = chunked_distmat(qf.to(device), gf.to(device), metric, chunk)
        assert got.shape == full.shape and got.dtype == full.dtype and got.device.type == device
        torch.testing.assert_close(got.cpu(), full, rtol=1e-5, atol=1e-4)
    block = FeatureDistances(qf.to(device), gf.to(device), metric)[4:11]
    torch.testing.assert_close(block.cpu(), full[4:11], rtol=1e-5, atol=1e-4)
    # Not a tautology: the two metrics order this gallery differently.
    other = torchreid.metrics.compute_distance_matrix(qf, gf, "cosine" if metric == "euclidean" else "euclidean")
    assert not torch.equal(full.argsort(1), other.argsort(1))


def test_chunked_distances_allocate_one_block_at_a_time():
    """Besides the [Q, G] result, no op allocates more than one block of rows or the gallery terms; ranking a
    FeatureDistances never allocates a [Q, G] matrix at all, and gives the metrics of the full matrix."""
    from clip3dreid_plugin.evaluation.distance import FeatureDistances, chunked_distmat

    n_q, n_g, dim, chunk = 400, 60, 8, 5
    g = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(n_q, dim, generator=g), torch.randn(n_g, dim, generator=g)
    bound = max(chunk * (n_g + 1), n_g * dim)  # one block (the bins ranker adds a column) or the gallery terms
    with _FreshAllocations() as rec:
        full = chunked_distmat(qf, gf, "euclidean", chunk)
    sizes = sorted(rec.numels)
    assert sizes[-1] == n_q * n_g and sizes[-2] <= bound, sizes[-3:]

    q_pids, g_pids = torch.arange(n_q) % 20, torch.arange(n_g) % 20
    q_cams, g_cams = torch.zeros(n_q, dtype=torch.long), torch.ones(n_g, dtype=torch.long)
    expected = evaluate_all(full, q_pids, g_pids, q_cams, g_cams, modes=("general",), chunk_size=chunk)
    with _FreshAllocations() as rec:
        got = evaluate_all(FeatureDistances(qf, gf, "euclidean"), q_pids, g_pids, q_cams, g_cams,
                           modes=("general",), chunk_size=chunk)
    assert max(rec.numels) <= bound < n_q * n_g // 10
    np.testing.assert_allclose(got["general"][0], expected["general"][0], rtol=0, atol=1e-12)
    assert got["general"][1] == pytest.approx(expected["general"][1], abs=1e-12)
    assert 0.0 < got["general"][1] < 1.0  # a real ranking, not a degenerate one
