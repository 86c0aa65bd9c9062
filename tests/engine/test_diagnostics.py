"""Collapse diagnostics: hand-checked values on a collapsed and a healthy case, the engine logs them and warns once."""
from __future__ import annotations

import logging
import math

import pytest
import torch

from clip3dreid_plugin.engine.diagnostics import CollapseMonitor, effective_rank, mean_pairwise_cosine


def test_mean_pairwise_cosine_by_hand():
    collapsed = torch.ones(2, 5, 8) * torch.tensor([1.0, 3.0]).view(2, 1, 1)  # every row the same direction
    assert mean_pairwise_cosine(collapsed) == pytest.approx(1.0, abs=1e-6)
    basis = torch.eye(4).unsqueeze(0)  # orthogonal rows
    assert mean_pairwise_cosine(basis) == pytest.approx(0.0, abs=1e-7)
    # Three unit vectors at 120 degrees: each pair has cosine -1/2.
    ang = torch.tensor([0.0, 2 * math.pi / 3, 4 * math.pi / 3])
    tri = torch.stack([ang.cos(), ang.sin()], 1).unsqueeze(0)
    assert mean_pairwise_cosine(tri) == pytest.approx(-0.5, abs=1e-6)
    with pytest.raises(ValueError):
        mean_pairwise_cosine(torch.ones(2, 1, 3))


def test_effective_rank_by_hand():
    # Singular values 3, 1 -> p = (3/4, 1/4) -> exp(H) with H = -(3/4 ln 3/4 + 1/4 ln 1/4).
    f = torch.tensor([[3.0, 0.0], [0.0, 1.0]])
    h = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert effective_rank(f) == pytest.approx(math.exp(h), rel=1e-9)
    assert effective_rank(torch.randn(1, 16).repeat(8, 1) * torch.arange(1, 9.0).view(8, 1)) == pytest.approx(1.0)
    assert effective_rank(torch.eye(6)) == pytest.approx(6.0)


def test_monitor_warns_once_on_collapse_and_not_on_a_healthy_batch(caplog):
    gen = torch.Generator().manual_seed(0)
    healthy = dict(f_id=torch.randn(16, 32, generator=gen), local=torch.randn(16, 12, 32, generator=gen),
                   text_proj=torch.randn(16, 16, 32, generator=gen))
    same = torch.randn(32, generator=gen)
    collapsed = dict(f_id=same.repeat(16, 1), local=same.repeat(16, 12, 1), text_proj=same.repeat(16, 16, 1))
    mon = CollapseMonitor(every=2)
    with caplog.at_level(logging.WARNING, logger="clip3dreid_plugin.engine.diagnostics"):
        d = mon(**healthy)
        assert d["diag_fid_erank"] > 10 and abs(d["diag_local_cos"]) < 0.2 and abs(d["diag_psi_cos"]) < 0.2
        assert mon(**collapsed) == {}  # step 1: between measurements
        d = mon(**collapsed)
        assert d["diag_fid_erank"] == pytest.approx(1.0, abs=1e-6) and d["diag_local_cos"] > 0.999
        mon(**collapsed)
        mon(**collapsed)
    warnings = [r for r in caplog.records if "feature collapse" in r.getMessage()]
    assert len(warnings) == 1 and "diag_psi_cos" in warnings[0].getMessage()
    assert CollapseMonitor(every=0)(**collapsed) == {}


def test_monitor_flags_a_collapse_of_scale_that_the_effective_rank_cannot_see(caplog):
    """L_global's trivial minimiser: f_id shrinks (with Phi(g)); the directions, hence the effective rank, stay."""
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(16, 32, generator=gen)
    mon = CollapseMonitor(every=1)
    with caplog.at_level(logging.WARNING, logger="clip3dreid_plugin.engine.diagnostics"):
        first = mon(f_id=f)
        assert first["diag_fid_norm"] == pytest.approx(float(f.norm(dim=1).mean()))
        shrunk = mon(f_id=0.1 * f)  # 10% of the first norm: not yet flagged
        assert shrunk["diag_fid_erank"] == pytest.approx(first["diag_fid_erank"], rel=1e-6)
        assert not [r for r in caplog.records if "feature collapse" in r.getMessage()]
        mon(f_id=0.01 * f)
    warnings = [r.getMessage() for r in caplog.records if "feature collapse" in r.getMessage()]
    assert len(warnings) == 1 and "diag_fid_norm" in warnings[0] and "diag_fid_erank" not in warnings[0]
