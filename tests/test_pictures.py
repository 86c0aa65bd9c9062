"""Pictures that cannot mislead: the transport figure on one absolute scale, CMC plots with the chance curve and
the scores in the legend, ranked strips that carry what a protocol judges by."""
from __future__ import annotations

import numpy as np

from clip3dreid_plugin.tools.visualize_transport import GAP, colourise, transport_figure, uniform_share


def _colours(figure: np.ndarray, box) -> np.ndarray:
    x0, y0, x1, y1 = box
    return np.unique(figure[y0:y1, x0:x1].reshape(-1, 3), axis=0)


def test_transport_figure_of_a_uniform_plan_is_flat_in_every_panel():
    m, h, w = 16, 8, 4
    plan = np.full((m, h, w), 1.0 / (m * h * w))  # each column sums to 1/M: the uniform plan
    share = uniform_share(plan)
    assert np.allclose(share, 1.0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (128, 64, 3), dtype=np.uint8)  # a busy image must not leak into the panels
    figure, boxes, vmax = transport_figure(image, share, [f"phrase {i}" for i in range(m)])
    assert len(boxes) == m and vmax == 1.0
    flat = [_colours(figure, b) for b in boxes]
    assert all(len(c) == 1 for c in flat), [len(c) for c in flat]
    assert all(np.array_equal(c, flat[0]) for c in flat)
    assert np.array_equal(flat[0][0], colourise(np.array(1.0), 1.0))


def test_transport_panels_share_one_absolute_scale():
    m, h, w = 2, 2, 2
    share = np.array([[[3.0, 1.0], [0.0, 0.0]],       # descriptor 0: its mass on two cells
                      [[1.1, 0.9], [1.0, 1.0]]])      # descriptor 1: almost even
    figure, boxes, vmax = transport_figure(np.zeros((32, 16, 3), np.uint8), share, ["a", "b"])
    assert vmax == 3.0
    (a0, ay0, a1, ay1), (b0, by0, b1, by1) = boxes
    cell = lambda x0, y0, x1, y1, r, c: figure[y0 + (2 * r + 1) * (y1 - y0) // 4, x0 + (2 * c + 1) * (x1 - x0) // 4]
    # A value is one colour wherever it stands: 1.0 in panel a and 1.0 in panel b.
    assert np.array_equal(cell(a0, ay0, a1, ay1, 0, 1), cell(b0, by0, b1, by1, 1, 0))
    assert np.array_equal(cell(a0, ay0, a1, ay1, 0, 1), colourise(np.array(1.0), 3.0))
    # The nearly even panel is not stretched over the whole colour map, as a per-panel min-max scaling would.
    lo, hi = colourise(np.array([0.9, 1.1]), 3.0)
    assert np.abs(lo.astype(int) - hi.astype(int)).max() < 40
    # The colour bar's top row is the largest value's colour.
    bar_x = boxes[-1][2] + GAP
    assert np.array_equal(figure[0, bar_x + 2], colourise(np.array(3.0), 3.0))

