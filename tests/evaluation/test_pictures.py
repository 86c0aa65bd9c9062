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


# ------------------------------------------------------------------------------------------- CMC and chance
def test_chance_cmc_is_the_mean_over_every_gallery_order():
    """Exact: the CMC averaged over all 6! orders of a 6-item gallery, scored by the plugin's own evaluator."""
    import itertools

    from clip3dreid_plugin.evaluation.chance import chance_cmc
    from clip3dreid_plugin.evaluation.rank import evaluate_all

    q_pids, q_cams, q_clo = np.array([1, 1, 2]), np.array([0, 0, 1]), np.array([5, 6, 7])
    g_pids = np.array([1, 1, 1, 2, 3, 3])
    g_cams = np.array([0, 1, 2, 2, 1, 0])  # gallery item 0 shares query 0/1's camera: junk
    g_clo = np.array([5, 5, 6, 7, 8, 9])
    for mode in ("general", "cc", "sc"):
        curves = []
        for order in itertools.permutations(range(6)):
            dist = np.tile(np.array(order, np.float64), (3, 1))
            out = evaluate_all(dist, q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, modes=(mode,), max_rank=6)
            curves.append(out[mode][0])
        expected = np.mean(curves, axis=0)
        got = chance_cmc(q_pids, g_pids, q_cams, g_cams, q_clo, g_clo, mode, 6)
        assert np.allclose(got, expected, atol=1e-12), (mode, got, expected)


def test_cmc_plot_has_the_chance_curve_and_each_runs_scores(tmp_path):
    from clip3dreid_plugin.tools import compare

    chance = [0.1, 0.2, 0.3]
    ev = {"epoch": 2, "metrics": {"ltcc": {"cc_mAP": 0.081, "cc_rank1": 0.25}}, "cmc": {"ltcc": {"cc": [0.25, 0.5, 1]}},
          "chance_cmc": {"ltcc": {"cc": chance}}}
    runs = [("base", {"model": "resnet50", "last": ev})]
    fig = compare.plot_cmc(runs, "last", "ltcc", "cc", str(tmp_path / "cmc.png"))
    run_line, chance_line = fig.axes[0].lines
    assert run_line.get_label() == "base (mAP 8.1, R1 25.0)"
    assert chance_line.get_label() == "chance: random ranking (R1 10.0)"
    assert list(chance_line.get_ydata()) == [10.0, 20.0, 30.0] and chance_line.get_linestyle() == "--"
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == [run_line.get_label(),
                                                                            chance_line.get_label()]


# ------------------------------------------------------------------------------------------- ranked strips
def _items(tmp_path):
    from fixtures.dataset_trees import write_image

    def item(name, pid, cam, clothes):
        return (write_image(str(tmp_path / f"{name}.png"), seed=len(name) + pid, size=(16, 32)), pid, cam, 0, clothes)

    q = [item("q", 1, 0, 10)]
    g = [item("same_cam", 1, 0, 11), item("same_clothes", 1, 1, 10), item("other_clothes", 1, 2, 11),
         item("stranger", 2, 1, 12)]
    return q, g


def _entries(dist, q, g, mode, topk):
    from clip3dreid_plugin.evaluation.visrank import ranked_entries, ranked_gallery

    keep, items, dists, good = ranked_gallery(dist, q, g, mode, topk)
    return [ranked_entries(*row) for row in zip(items, dists, good)]


def test_ranked_entries_skip_what_the_protocol_does_not_score(tmp_path):
    q, g = _items(tmp_path)
    dist = np.array([[0.1, 0.2, 0.4, 0.3]])
    # cc: the same-camera and the same-clothes items of the query's identity are junk, not ranks.
    assert _entries(dist, q, g, "cc", 10) == [[(1, 3, 0.3, False), (2, 2, 0.4, True)]]
    assert _entries(dist, q, g, "general", 2) == [[(1, 1, 0.2, True), (2, 3, 0.3, False)]]


def test_ranked_strip_frames_good_green_and_strangers_red(tmp_path):
    from clip3dreid_plugin.evaluation import visrank

    q, g = _items(tmp_path)
    dist = np.array([[0.1, 0.2, 0.4, 0.3]])
    entries = _entries(dist, q, g, "cc", 10)
    (path,) = visrank.write_ranked_strips(q, g, entries, "cc", str(tmp_path / "vis"), 16, 32)
    assert path.endswith("q.jpg")
    strip = visrank.draw_ranked_strip(q[0], g, entries[0], "cc", 16, 32)
    tw = 16 * 6 + 2 * visrank._BORDER  # 16 px tiles scaled 6x to reach _MIN_TILE_WIDTH
    step = tw + visrank._GAP
    assert strip.shape[1] == 3 * step + visrank._GAP  # the query and the two scored items
    y = visrank._HEADER + 1  # inside the top border
    for i, colour in ((1, visrank._RED), (2, visrank._GREEN)):  # rank 1: the stranger; rank 2: other clothes
        assert tuple(strip[y, i * step + visrank._GAP + tw // 2]) == colour
