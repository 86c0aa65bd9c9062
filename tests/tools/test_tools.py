"""User tools: CC visrank, feature extraction to .npy, ONNX export with parity, curves to CSV, benchmark."""
from __future__ import annotations

import csv
import json
import os
import os.path as osp

import numpy as np
import pytest
import torch
from fixtures.dataset_trees import make_ltcc

from clip3dreid_plugin.evaluation.visrank import protocol_masks
from clip3dreid_plugin.tools import benchmark, export_curves, export_onnx, extract_features, train_net

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")


@pytest.fixture(scope="module")
def trained(toy_market_root, tmp_path_factory):
    root, _ = toy_market_root
    out = str(tmp_path_factory.mktemp("trained"))
    assert train_net.main(["--config-file", TOY, "--device", "cpu", "--output-dir", out, "data.root", root,
                           "train.max_epoch", "1"]) == 0
    return root, out, osp.join(out, "model", "model.pth.tar-1")


def test_protocol_masks_hand_example():
    q = [("q", 1, 0, 0, 10)]
    g = [("a", 1, 0, 0, 10), ("b", 1, 1, 0, 10), ("c", 1, 1, 0, 11), ("d", 2, 1, 0, 11)]
    good, junk = protocol_masks(q, g, "cc")
    assert good.tolist() == [[False, False, True, False]] and junk.tolist() == [[True, True, False, False]]
    good, junk = protocol_masks(q, g, "sc")
    assert good.tolist() == [[False, True, False, False]] and junk.tolist() == [[True, False, True, False]]


def test_visrank_writes_one_grid_per_valid_query_of_each_protocol(tmp_path):
    root = str(tmp_path / "data")
    make_ltcc(root)
    out = str(tmp_path / "vis")
    rc = train_net.main(["--config-file", TOY, "--device", "cpu", "--output-dir", out, "--eval-only",
                         "data.root", root, "data.sources", "['ltcc']", "data.targets", "['ltcc']",
                         "test.visrank", "True", "test.visrank_topk", "3"])
    assert rc == 0
    # LTCC fixture: query 020_1_c1 has general+CC matches (c2 same clothes, c5 other clothes);
    # query 021_2_c4 has 021_1_c4 (same cam: junk) and 021_2_c6 (same clothes) -> general only.
    assert len(os.listdir(osp.join(out, "visrank_ltcc_general"))) == 2
    assert len(os.listdir(osp.join(out, "visrank_ltcc_cc"))) == 1


def _visrank_items(folder, num, seed, num_ids, num_cams, num_clothes):
    """``num`` items ``(path, pid, camid, dsetid, clothes)`` with a small image each (a colour per item)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    items = []
    for i in range(num):
        path = osp.join(folder, f"s{seed}_{i:03d}.png")
        Image.fromarray(rng.integers(0, 255, size=(16, 8, 3), dtype=np.uint8)).save(path)
        items.append((path, int(rng.integers(num_ids)), int(rng.integers(num_cams)), 0, int(rng.integers(num_clothes))))
    return items


def _brute_force_shown(d, query, gallery, mode, topk):
    """Each valid query's scored items by a full stable sort of its row: junk never shows, the gallery index breaks
    ties; with their distances and good flags."""
    good, junk = protocol_masks(query, gallery, mode)
    keep = np.flatnonzero(good.any(1))
    rows = []
    for i in keep:
        order = [int(j) for j in np.lexsort((np.arange(len(gallery)), d[i])) if not junk[i, j]][:topk]
        rows.append([(j, float(d[i, j]), bool(good[i, j])) for j in order])
    return keep, rows


@pytest.mark.parametrize("mode", ["general", "cc", "sc"])
def test_blockwise_ranked_gallery_equals_a_brute_force_ranking(tmp_path, mode, monkeypatch):
    """The items each strip shows, found a block of queries at a time (a block of 7 here), equal a full stable
    sort of every row; on a gallery this small some queries have fewer than topk scored items."""
    from clip3dreid_plugin.evaluation import visrank
    from clip3dreid_plugin.evaluation.distance import FeatureDistances

    query = _visrank_items(str(tmp_path), 40, 1, 12, 3, 3)
    gallery = _visrank_items(str(tmp_path), 60, 2, 12, 3, 3)
    gen = torch.Generator().manual_seed(0)
    qf, gf = torch.randn(40, 8, generator=gen, dtype=torch.float64), torch.randn(60, 8, generator=gen,
                                                                                 dtype=torch.float64)
    distances = FeatureDistances(qf, gf)
    d = distances[0:40].numpy()
    monkeypatch.setattr(visrank, "_RANK_BLOCK_ELEMS", 7 * 60)
    for topk in (5, 60):
        keep, items, dists, good = visrank.ranked_gallery(distances, query, gallery, mode, topk)
        want_keep, want_rows = _brute_force_shown(d, query, gallery, mode, topk)
        assert keep.tolist() == want_keep.tolist() and len(keep) > 5
        got = [[(j, dist, ok) for j, dist, ok in zip(*row) if j >= 0] for row in zip(items.tolist(), dists.tolist(),
                                                                                    good.tolist())]
        assert [[(j, ok) for j, _, ok in row] for row in got] == [[(j, ok) for j, _, ok in row] for row in want_rows]
        # a block's distances are computed apart from the whole matrix's: equal up to the last bits
        np.testing.assert_allclose([x for row in got for _, x, _ in row], [x for row in want_rows for _, x, _ in row],
                                   rtol=1e-12)
        if topk == 60:
            assert any(len(r) < 60 for r in want_rows)  # junk is never shown
        assert any(not ok for row in want_rows for _, _, ok in row)  # strangers rank among the top items


@pytest.mark.parametrize("mode", ["general", "cc", "sc"])
def test_ranked_strips_from_blocks_equal_those_of_the_whole_matrix(tmp_path, mode, monkeypatch):
    """Strips drawn from blocks of 6 queries are, byte for byte, those drawn from one block holding every query."""
    from clip3dreid_plugin.evaluation import visrank
    from clip3dreid_plugin.evaluation.distance import FeatureDistances

    query = _visrank_items(str(tmp_path), 20, 3, 5, 4, 2)
    gallery = _visrank_items(str(tmp_path), 150, 4, 5, 4, 2)
    gen = torch.Generator().manual_seed(1)
    distances = FeatureDistances(torch.randn(20, 8, generator=gen), torch.randn(150, 8, generator=gen))
    written = {}
    for name, block in (("whole", 1 << 22), ("blocks", 6 * 150)):
        monkeypatch.setattr(visrank, "_RANK_BLOCK_ELEMS", block)
        out = str(tmp_path / name)
        written[name] = visrank.visualize_ranked_results_protocol(distances, query, gallery, mode, out, width=8,
                                                                  height=16, topk=4)
    assert written["whole"] == written["blocks"] > 6
    names = sorted(os.listdir(tmp_path / "whole"))
    assert names == sorted(os.listdir(tmp_path / "blocks")) and len(names) == written["whole"]
    for name in names:
        assert (tmp_path / "whole" / name).read_bytes() == (tmp_path / "blocks" / name).read_bytes(), name


def test_extract_features_matches_the_model(trained, tmp_path):
    root, _, ckpt = trained
    folder = osp.join(root, "market1501", "query")
    out = str(tmp_path / "f" / "feats.npy")
    assert extract_features.main(["--config-file", TOY, "--weights", ckpt, "--input", folder, "--output", out,
                                  "--device", "cpu", "data.root", root]) == 0
    feats = np.load(out)
    paths = open(osp.splitext(out)[0] + ".txt").read().split()
    assert len(paths) == feats.shape[0] == len(os.listdir(folder))
    assert np.allclose(np.linalg.norm(feats, axis=1), 1.0, atol=1e-5)
    # Independent recomputation of the first row through torchreid's own transform and model.
    import torchreid

    from clip3dreid_plugin.config import load_config
    from clip3dreid_plugin.models.build import build_inference_model
    from datasets_ext.image_io import read_image

    cfg = load_config(TOY, ["data.root", root])
    model = build_inference_model(cfg, ckpt)
    _, tf = torchreid.data.transforms.build_transforms(64, 32, transforms=None)
    with torch.no_grad():
        ref = torch.nn.functional.normalize(model(tf(read_image(paths[0]))[None]), dim=1)[0].numpy()
    assert np.allclose(feats[0], ref, atol=1e-5)
    assert extract_features.main(["--config-file", TOY, "--input", str(tmp_path / "nothing"), "--output", out]) == 2


def test_onnx_export_matches_pytorch(tmp_path):
    out = str(tmp_path / "student.onnx")
    rc = export_onnx.main(["--config-file", TOY, "--output", out, "model.name", "clip3dreid",
                           "clip3dreid.local_dim", "64", "clip3dreid.agg_hidden_dim", "32",
                           "model.pretrained", "False"])
    assert rc == 0 and osp.getsize(out) > 0
    from clip3dreid_plugin.config import load_config
    from clip3dreid_plugin.models.build import build_inference_model

    cfg = load_config(TOY, ["model.name", "clip3dreid", "clip3dreid.local_dim", "64", "clip3dreid.agg_hidden_dim",
                            "32", "model.pretrained", "False"])
    torch.manual_seed(0)
    model = build_inference_model(cfg)
    export_onnx.export_onnx(model, out, 64, 32)
    assert export_onnx.onnx_parity(model, out, 64, 32, batch=5) < 1e-4


def test_curves_csv_has_every_logged_step(trained, tmp_path):
    _, logdir, _ = trained
    out = str(tmp_path / "curves.csv")
    assert export_curves.main(["--logdir", logdir, "--output", out]) == 0
    rows = list(csv.DictReader(open(out)))
    loss = [r for r in rows if r["tag"] == "Train/loss"]
    assert [int(r["step"]) for r in loss] == list(range(4))  # 36 images / batch 8 -> 4 iterations
    assert any(r["tag"] == "Test/market1501/general_mAP" for r in rows)
    assert export_curves.main(["--logdir", str(tmp_path / "none"), "--output", out]) == 2


def test_benchmark_tool_reports_consistent_ratios(tmp_path):
    out = str(tmp_path / "b.json")
    assert benchmark.main(["--device", "cpu", "--batch-size", "4", "--height", "64", "--width", "32", "--teacher",
                           "ViT-B-32", "--repeats", "1", "--warmup", "0", "--no-online", "--eval-size", "30", "300",
                           "--json", out]) == 0
    res = json.load(open(out))
    base = res["train"]["torchreid resnet50 (last stride 2)"]["median_s"]
    for r in res["train"].values():
        assert r["images_per_s"] == pytest.approx(4 / r["median_s"])
        assert r["time_vs_resnet50"] == pytest.approx(r["median_s"] / base)
    ev = res["eval"]
    ratio = ev["torchreid evaluate_rank"]["median_s"] / ev["plugin general+cc"]["median_s"]
    assert ev["speedup"] == pytest.approx(ratio)


def test_transport_heatmaps_are_plan_columns(tmp_path, toy_market_root):
    from clip3dreid_plugin.losses import transport_plan
    from clip3dreid_plugin.models.clip3dreid import CLIP3DReID
    from clip3dreid_plugin.tools.visualize_transport import transport_heatmaps

    torch.manual_seed(0)
    model = CLIP3DReID(3, local_dim=32, agg_hidden_dim=16, head_hidden_dim=16, teacher_dim=8).eval()
    x, text = torch.randn(3, 64, 32), torch.randn(16, 8)
    heat = transport_heatmaps(model, x, text)
    assert heat.shape == (16, 4, 2)  # 64x32 / 16 (last stride 1)
    assert torch.allclose(heat.sum(dim=(1, 2)), torch.full((16,), 1 / 16), atol=1e-4)
    with torch.no_grad():
        local = model.local_features(x[None])
        ref = transport_plan(local, model.text_head(text[None]))[0]
    assert torch.allclose(heat[5].flatten(), ref[:, 5], atol=1e-6)


def test_visualize_transport_script(tmp_path, toy_market_root):
    from fixtures.tiny_clip import tiny_clip

    from clip3dreid_plugin.tools import visualize_transport

    name, weights = tiny_clip(str(tmp_path))
    root, _ = toy_market_root
    img = sorted(os.listdir(osp.join(root, "market1501", "query")))[0]
    out = str(tmp_path / "ot.png")
    rc = visualize_transport.main(["--config-file", TOY, "--image", osp.join(root, "market1501", "query", img),
                                   "--output", out, "--descriptor", "3", "clip3dreid.local_dim", "32",
                                   "clip3dreid.teacher_dim", "64", "teacher.name", name, "teacher.pretrained",
                                   weights, "model.pretrained", "False"])
    assert rc == 0
    from PIL import Image

    # The 64x32 image and one panel, both scaled 4x to 128 px wide, each followed by a gap; then the colour bar.
    v = visualize_transport
    assert Image.open(out).size == (2 * (128 + v.GAP) + v.BAR_WIDTH + v.LABEL_WIDTH, 4 * 64 + v.CAPTION_HEIGHT)


def test_time_interleaved_runs_round_robin_and_times_only_after_warmup():
    calls = []
    fns = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    out = benchmark.time_interleaved(fns, repeats=3, warmup=2, device=torch.device("cpu"))
    assert calls == ["a", "b", "c"] * 5
    assert set(out) == {"a", "b", "c"}
    for r in out.values():
        assert r["repeats"] == 3 and 0 <= r["min_s"] <= r["median_s"] <= r["max_s"]


def test_benchmark_training_step_is_the_engine_step_in_the_asked_layout(tmp_path):
    """The step ``scripts/benchmark.py`` times is CLIP3DReIDEngine.forward_backward: repeating it on its batch
    lowers the loss and updates every part of the student, which runs in the layout the row names."""
    from fixtures.tiny_clip import tiny_clip

    from clip3dreid_plugin.config.defaults import get_cfg
    from clip3dreid_plugin.teacher.cache import TeacherCache
    from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher
    from clip3dreid_plugin.teacher.source import CacheTeacherSource

    name, weights = tiny_clip(str(tmp_path))
    teacher = CLIPTeacher(name, weights, device="cpu")
    cfg = get_cfg()
    cfg.clip3dreid.teacher_dim = teacher.embed_dim
    cfg.clip3dreid.local_dim, cfg.clip3dreid.agg_hidden_dim, cfg.clip3dreid.head_hidden_dim = 64, 32, 32
    cpu = torch.device("cpu")
    batch = benchmark._batch(8, 64, 32, 2, cpu)
    g = torch.nn.functional.normalize(torch.randn(8, teacher.embed_dim, generator=torch.Generator().manual_seed(0)))
    cache = TeacherCache(batch["impath"], g, teacher.label(g), teacher.descriptor_text_features(), {"teacher": name})
    for nhwc in (False, True):
        torch.manual_seed(0)
        step = benchmark.clip3dreid_step(cfg, 2, batch, CacheTeacherSource(cache), cpu, nhwc)
        engine = step.func.__self__
        assert engine.channels_last is nhwc
        assert engine.model.backbone[0].weight.is_contiguous(memory_format=torch.channels_last) is nhwc
        start = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
        with torch.no_grad():
            before = {k: float(v) for k, v in engine.compute_losses(batch).items()}
        for _ in range(4):
            step()
        with torch.no_grad():
            after = {k: float(v) for k, v in engine.compute_losses(batch).items()}
        assert set(before) == {"loss", "ce", "ot", "global"}
        assert after["loss"] < before["loss"], (nhwc, before, after)
        # Every head of the three terms trained (the shape head only serves the 3D term, off in this row).
        for part in ("backbone", "aggregator", "classifier", "text_head", "image_head"):
            moved = [not torch.equal(p, start[n]) for n, p in engine.model.named_parameters() if n.startswith(part)]
            assert moved and all(moved), (nhwc, part)


def test_benchmark_cal_step_is_calengines_step_with_both_clothes_terms():
    """The CAL row times CALEngine.forward_backward with the clothes step and the adversarial term: both logged,
    the clothes classifier and the network each moved by their own optimiser."""
    cpu = torch.device("cpu")
    batch = benchmark._batch(8, 64, 32, 2, cpu)
    assert batch["clothes_id"].tolist() == [0, 1, 0, 1, 2, 3, 2, 3]
    torch.manual_seed(0)
    step = benchmark.cal_step(2, batch, cpu)
    engine = step.func.__self__
    start = {n: p.detach().clone() for n, p in engine.model.named_parameters()}
    terms = step()
    assert set(terms) == {"ce", "clothes", "cal"}
    for part in ("backbone", "bnneck", "classifier", "clothes_classifier"):
        moved = [not torch.equal(p, start[n]) for n, p in engine.model.named_parameters() if n.split(".")[0] == part]
        assert moved and all(moved), part
    assert engine.outfits.tolist() == [[True, True, False, False], [False, False, True, True]]
