"""Model complexity against the supplement's Table 2 and a hand count."""
from __future__ import annotations

import pytest
import torch

from clip3dreid_plugin.tools.complexity import count_complexity, student_complexity, teacher_complexity


def test_counter_matches_a_hand_count():
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1, bias=False)
    r = count_complexity(conv, torch.randn(1, 3, 10, 6))
    assert r["GMACs"] * 1e9 == pytest.approx(8 * 10 * 6 * 3 * 3 * 3)  # out positions x kernel volume
    assert r["params_M"] * 1e6 == 8 * 3 * 3 * 3


def test_student_matches_supplement_table2():
    r = student_complexity(384, 192, num_classes=77, last_stride=1)
    assert r["GMACs"] == pytest.approx(9.12, rel=0.02)
    assert r["params_M"] == pytest.approx(25.87, rel=0.02)


def test_vit_l14_teacher_matches_paper():
    r = teacher_complexity("ViT-L-14")
    assert r["GMACs"] == pytest.approx(81.01, rel=0.02)
