"""Issue 16's instruments: the student's head options, the ideal teacher, the shape probe and the study's statistics."""
from __future__ import annotations

import copy
import importlib.util
import json
import logging
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F
import torchreid

from clip3dreid_plugin.body import procedural
from clip3dreid_plugin.body.synthcc import build_synthcc, synthcc_ground_truth
from clip3dreid_plugin.config import get_cfg
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.models.clip3dreid import CLIP3DReID
from clip3dreid_plugin.study.ideal_teacher import IdealTeacherSource, orthonormal_phrase_features, shape_projection
from clip3dreid_plugin.study.shape_probe_model import ShapeProbe
from clip3dreid_plugin.teacher.source import build_teacher_source
from clip3dreid_plugin.tools import train_net

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
logger = logging.getLogger(__name__)


def _load_study():
    spec = importlib.util.spec_from_file_location("method_study", osp.join(REPO, "benchmarks", "method_study.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def synthcc_root(tmp_path_factory):
    """8 identities (4 train), 2 outfits, 2 cameras: enough for an identity sampler of 2 x 4 images."""
    body = str(tmp_path_factory.mktemp("ideal_body"))
    procedural.write_procedural_smpl(body, num_vertices=400)
    root = str(tmp_path_factory.mktemp("ideal_data"))
    build_synthcc(root, body, num_ids=8, outfits_per_id=2, num_cameras=2, poses_per_view=1, height=64, width=32,
                  seed=0, progress=False)
    return root, body


# ----------------------------------------------------------------------------------------------- ideal teacher
def test_ideal_phrase_features_are_deterministic_and_orthonormal():
    t = orthonormal_phrase_features(16, 64, seed=0)
    assert torch.equal(t, orthonormal_phrase_features(16, 64, seed=0))
    assert not torch.allclose(t, orthonormal_phrase_features(16, 64, seed=1))
    flat = t.reshape(32, 64).double()
    gram = flat @ flat.T
    max_cos = (gram - torch.eye(32, dtype=torch.float64)).abs().max().item()
    logger.info("ideal teacher: max |cosine| between distinct phrases = %.2e", max_cos)
    print(f"ideal teacher: max |cosine| between distinct phrases = {max_cos:.2e}")
    assert max_cos < 1e-6
    assert torch.allclose(flat.norm(dim=1), torch.ones(32, dtype=torch.float64), atol=1e-6)
    with pytest.raises(ConfigError, match="teacher_dim >= 32"):
        orthonormal_phrase_features(16, 31)


def test_ideal_teacher_reads_synthcc_ground_truth(synthcc_root):
    root, _ = synthcc_root
    src = IdealTeacherSource.from_synthcc(root, 64, seed=0)
    paths, labels = synthcc_ground_truth(root)
    # The true shapes, read from meta.json by hand.
    meta = json.load(open(osp.join(root, "synthcc", "meta.json")))
    betas = {r["pid"]: torch.tensor(r["betas"]) for r in meta["identities"]}
    pid_of = {osp.join(root, "synthcc", im["file"]): im["pid"] for im in meta["images"]}
    g, got = src.lookup(paths)
    assert torch.equal(got, labels)
    expect = F.normalize(torch.stack([betas[pid_of[p]] for p in paths]) @ shape_projection(10, 64, 0).T, dim=-1)
    assert torch.allclose(g, expect, atol=1e-6)
    assert torch.allclose(src.shapes(paths), torch.stack([betas[pid_of[p]] for p in paths]))
    # One g per identity, and distinct identities are told apart.
    pids = torch.tensor([pid_of[p] for p in paths])
    same = pids[:, None] == pids[None]
    cos = g @ g.T
    assert torch.allclose(cos[same], torch.ones(int(same.sum())), atol=1e-5)
    assert cos[~same].max() < 0.999
    # Text features: phrase labels[b, m] of pair m.
    h = src.gather_text(labels[:3])
    t = src.text_features()
    for b in range(3):
        for m in range(16):
            assert torch.equal(h[b, m], t[m, labels[b, m]])
    with pytest.raises(KeyError, match="nope.png"):
        src.lookup(["/nope.png"])


def test_teacher_mode_ideal_is_for_synthcc_only():
    cfg = get_cfg()
    cfg.teacher.mode = "ideal"
    with pytest.raises(ConfigError, match="synthcc only.*ltcc"):
        build_teacher_source(cfg, [("ltcc", [])])


# ------------------------------------------------------------------------------------------------- head options
def _student(**kw) -> CLIP3DReID:
    torch.manual_seed(0)
    return CLIP3DReID(30, backbone="resnet18", local_dim=512, agg_hidden_dim=64, teacher_dim=64, **kw)


def test_classifier_init_matches_torchreid_by_default():
    torch.manual_seed(0)
    ref = torchreid.models.build_model("resnet18", 30, pretrained=False).classifier
    head = _student().classifier
    assert head.bias is not None and torch.equal(head.bias, torch.zeros(30)) and torch.equal(ref.bias, head.bias)
    # Same distribution as torchreid's (std 0.01); 15360 draws put the estimate within a few per cent.
    assert head.weight.std().item() == pytest.approx(ref.weight.std().item(), rel=0.05)
    assert head.weight.std().item() == pytest.approx(0.01, rel=0.05)
    small = _student(classifier_init="small").classifier
    assert small.bias is None and small.weight.std().item() == pytest.approx(0.001, rel=0.05)
    with pytest.raises(ConfigError, match="classifier_init"):
        _student(classifier_init="xavier")


def test_residual_aggregator_starts_at_the_pooled_feature():
    model = _student(agg_residual=True).eval()
    x = torch.randn(2, 3, 64, 32)
    pooled = model.local_features(x).mean(dim=1)
    assert torch.equal(model(x), pooled)
    with torch.no_grad():
        model.aggregator[3].weight.normal_()
    mlp = torch.nn.Sequential(*list(model.aggregator))
    assert torch.allclose(model(x), pooled + mlp(pooled), atol=1e-5)
    # Same parameter names as the plain aggregator: earlier checkpoints load.
    assert set(_student().state_dict()) == set(model.state_dict())


def test_bnneck_feeds_the_classifier_and_retrieval():
    model = _student(bnneck=True)
    x = torch.randn(6, 3, 64, 32)
    model.train()
    out = model(x, return_dict=True)
    f = out["f_id"]
    bn = model.bnneck
    by_hand = (f - f.mean(0)) / torch.sqrt(f.var(0, unbiased=False) + bn.eps) * bn.weight + bn.bias
    assert torch.allclose(out["logits"], model.classifier(by_hand), atol=1e-4)
    assert torch.equal(bn.bias, torch.zeros(512))
    # Fixed at zero even after torchreid's open_all_layers, which its engines call every epoch.
    from torchreid.reid.utils.torchtools import open_all_layers

    open_all_layers(model)
    assert [n for n, _ in model.named_parameters() if n.startswith("bnneck.")] == ["bnneck.weight"]
    model.eval()
    f_eval = model._identity(x)[1]
    expect = (f_eval - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight
    assert torch.allclose(model(x), expect, atol=1e-4)


def test_fixed_text_head_keeps_phrase_cosines_and_never_trains():
    """clip3dreid.fixed_text_head: Psi(H) has exactly H's pairwise cosines (orthonormal phrases stay orthonormal,
    where a randomly initialised trained MLP head maps them to cosines near 0.9), nothing in it trains, not even after
    torchreid's open_all_layers (which its engines call every epoch), and every other layer starts from the weights
    the paper's trained head gives under the same seed."""
    from torchreid.reid.utils.torchtools import open_all_layers

    from clip3dreid_plugin.models.clip3dreid import FixedIsometry

    fixed, trained = _student(fixed_text_head=True), _student()
    h = orthonormal_phrase_features(16, 64).reshape(32, 64)  # 32 orthonormal phrases
    with torch.no_grad():
        cos_fixed = F.normalize(fixed.text_head(h), dim=1) @ F.normalize(fixed.text_head(h), dim=1).t()
        cos_trained = F.normalize(trained.text_head(h), dim=1) @ F.normalize(trained.text_head(h), dim=1).t()
    off = ~torch.eye(32, dtype=torch.bool)
    assert torch.allclose(cos_fixed, h @ h.t(), atol=1e-5)
    assert cos_trained[off].mean() > 0.5  # the trained head's start: far from orthogonal
    w = fixed.text_head.weight
    assert w.shape == (512, 64) and torch.allclose(w.t() @ w, torch.eye(64), atol=1e-5)
    assert torch.equal(w, FixedIsometry(64, 512).weight)  # the seed's map alone, whatever the global RNG did
    narrow = FixedIsometry(64, 16).weight  # fewer outputs than inputs: orthonormal rows, a projection
    assert torch.allclose(narrow @ narrow.t(), torch.eye(16), atol=1e-5)
    ref = trained.state_dict()
    for k, v in fixed.state_dict().items():
        if not k.startswith("text_head."):
            assert torch.equal(v, ref[k]), k
    assert "text_head.weight" in fixed.state_dict()  # checkpoints keep the map
    open_all_layers(fixed)
    assert not [n for n, _ in fixed.named_parameters() if n.startswith("text_head.")]
    out = fixed(torch.randn(4, 3, 64, 32), text_feats=h[None].expand(4, -1, -1)[:, :16], return_dict=True)
    assert not out["text_proj"].requires_grad  # nothing upstream of the OT cost's text side trains


# ---------------------------------------------------------------------------------------------------- the probe
def test_shape_probe_ranks_by_the_regressor_output():
    torch.manual_seed(0)
    probe = ShapeProbe(10, backbone="resnet18").eval()
    x = torch.randn(3, 3, 64, 32)
    net = probe.net
    pooled = net.global_avgpool(net.featuremaps(x)).flatten(1)
    assert torch.allclose(probe(x), net.classifier(pooled), atol=1e-5)
    assert probe(x).shape == (3, 10)


def _run(root: str, body: str, out: str, cfg_name: str, *opts: str) -> dict:
    args = train_net.build_parser().parse_args(
        ["--config-file", cfg_name, "--device", "cpu", "--output-dir", out, "--seed", "1",
         "data.root", root, "body.model_dir", body, "train.max_epoch", "1", "train.batch_size", "8",
         "sampler.num_instances", "2", "clip3dreid.backbone", "resnet18", "data.height", "64", "data.width", "32",
         "runtime.ckpt_freq", "0", "runtime.progress", "False", *opts])
    return train_net.run(train_net.setup_cfg(args))


def test_shape_probe_engine_regresses_true_shapes(synthcc_root, tmp_path):
    from clip3dreid_plugin.study.shape_probe_engine import ShapeProbeEngine
    from clip3dreid_plugin.body.synthcc import synthcc_shapes_by_path

    root, _ = synthcc_root
    shapes = synthcc_shapes_by_path(root)
    paths = sorted(shapes)[:4]
    torch.manual_seed(0)
    model = ShapeProbe(10, backbone="resnet18")
    opt = torch.optim.SGD(model.parameters(), lr=0.0)

    class _DM:  # the engine reads only these from a datamanager
        train_loader = test_loader = None
        num_train_pids = 4
        sources = targets = ["synthcc"]

    engine = ShapeProbeEngine(_DM(), model, opt, shapes, use_gpu=False)
    imgs = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        expect = F.mse_loss(copy.deepcopy(model).train()(imgs), torch.tensor([shapes[p] for p in paths]))
    got = float(engine.forward_backward({"img": imgs, "impath": paths, "pid": torch.zeros(4)})["shape_mse"])
    assert got == pytest.approx(float(expect), rel=1e-5)
    with pytest.raises(KeyError, match="elsewhere.png"):
        engine.targets(["/elsewhere.png"])
    # runtime.amp reaches the probe's step too: bf16 autocast on the CPU, a float32 loss close to float32's.
    bf16 = ShapeProbeEngine(_DM(), model, opt, shapes, use_gpu=False, amp="bf16")
    low = bf16.forward_backward({"img": imgs, "impath": paths, "pid": torch.zeros(4)})["shape_mse"]
    assert low.dtype == torch.float32 and float(low) != got
    assert float(low) == pytest.approx(float(expect), rel=0.05)
    assert not bf16.scaler.is_enabled()  # a scaler only for fp16 on CUDA


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_shape_probe_trains_in_fp16_with_a_grad_scaler(synthcc_root):
    """The shape probe's engine under --amp fp16 on a GPU: an enabled GradScaler and steps that lower the loss."""
    from clip3dreid_plugin.body.synthcc import synthcc_shapes_by_path
    from clip3dreid_plugin.study.shape_probe_engine import ShapeProbeEngine

    root, _ = synthcc_root
    shapes = synthcc_shapes_by_path(root)
    paths = sorted(shapes)[:8]
    torch.manual_seed(0)
    model = ShapeProbe(10, backbone="resnet18").cuda().train()

    class _DM:
        train_loader = test_loader = None
        num_train_pids = 4
        sources = targets = ["synthcc"]

    engine = ShapeProbeEngine(_DM(), model, torch.optim.Adam(model.parameters(), lr=1e-3), shapes, use_gpu=True,
                              amp="fp16", device=torch.device("cuda", torch.cuda.current_device()))
    assert engine.scaler.is_enabled()
    batch = {"img": torch.randn(8, 3, 64, 32, generator=torch.Generator().manual_seed(1)), "impath": paths,
             "pid": torch.zeros(8)}
    losses = [float(engine.forward_backward(batch)["shape_mse"]) for _ in range(10)]
    assert all(math.isfinite(v) for v in losses) and losses[-1] < losses[0], losses
    assert 0 < engine.scaler.get_scale() < float("inf")


def test_probe_and_ideal_teacher_train_through_the_cli(synthcc_root, tmp_path, caplog):
    root, body = synthcc_root
    with caplog.at_level(logging.INFO):
        probe = _run(root, body, str(tmp_path / "probe"), "synthcc/shape_probe_r50_128x64",
                     "model.name", "shape_probe")
        ideal = _run(root, body, str(tmp_path / "ideal"), "synthcc/clip3dreid_r50_vitb32_128x64",
                     "teacher.mode", "ideal", "loss.clip3dreid.use_3d", "False", "clip3dreid.local_dim", "512",
                     "clip3dreid.teacher_dim", "64")
    assert {"general_mAP", "cc_mAP", "sc_mAP"} <= set(probe["synthcc"]) and set(probe) == set(ideal)
    epochs = [r.getMessage() for r in caplog.records if " done in " in r.getMessage()]
    assert len(epochs) == 2 and "shape_mse" in epochs[0]
    assert all(f" {k} " in epochs[1] for k in ("ce", "ot", "global")) and "diag_psi_cos" in epochs[1]
    assert any("teacher.mode ideal" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


# --------------------------------------------------------------------------------------------------- statistics
def test_study_confidence_interval_by_hand():
    study = _load_study()
    mean, hw = study.mean_ci([1.0, 2.0, 3.0])
    # t(0.975, 2) = 4.303 from a printed table; sd = 1.
    assert mean == 2.0 and hw == pytest.approx(4.303 / math.sqrt(3), rel=1e-3)
    assert math.isnan(study.mean_ci([5.0])[1])


def test_study_summary_pairs_rows_with_the_baseline_by_seed():
    study = _load_study()

    def rec(row, seed, cc):
        return {"row": row, "seed": seed, "metrics": {"general_mAP": 0.2, "general_rank1": 0.5, "cc_mAP": cc,
                                                      "cc_rank1": cc}}

    runs = [rec("baseline", 1, 0.10), rec("baseline", 2, 0.20), rec("baseline", 3, 0.12),
            rec("ce_only", 1, 0.12), rec("ce_only", 2, 0.23), rec("ce_only", 4, 0.50)]
    s = study.summarise(runs)["rows"]
    p = s["ce_only"]["paired"]["cc_mAP"]
    # Seeds 1 and 2 only (seed 4 has no baseline): differences 2 and 3 points, sd sqrt(0.5), t(0.975, 1) = 12.706.
    assert p["n"] == 2 and p["mean"] == pytest.approx(2.5) and p["sd"] == pytest.approx(math.sqrt(0.5))
    assert p["ci95"] == pytest.approx(12.706 * math.sqrt(0.5) / math.sqrt(2), rel=1e-3)
    assert s["ce_only"]["metrics"]["cc_mAP"][0] == pytest.approx((12 + 23 + 50) / 3)
    assert s["baseline"]["paired"] == {}
    table = study.markdown({"rows": s, "chance": {}})
    assert "| ce_only | - | 3 |" in table and "+2.5 [" in table


def test_study_opts_reach_every_row_and_its_record(monkeypatch, tmp_path):
    """``--opts`` (a synthcc variant's image size) is applied after the row's options and recorded with them."""
    study = _load_study()
    seen = []

    def fake_run(cfg, cfg_name):
        seen.append(cfg)
        return {"synthcc": {"cc_mAP": 0.1}}

    monkeypatch.setattr(train_net, "run", fake_run)
    rec = study.run_row(str(tmp_path), "ot_ideal", 3, "cpu", extra_opts=["data.height", "256", "data.width", "128"])
    cfg = seen[0]
    assert (cfg.data.height, cfg.data.width, cfg.teacher.mode, cfg.train.seed) == (256, 128, "ideal", 3)
    assert rec["opts"][-4:] == ["data.height", "256", "data.width", "128"] and "teacher.mode" in rec["opts"]
    with pytest.raises(SystemExit):  # KEY without VALUE
        study.main(["--work-dir", str(tmp_path), "--opts", "data.height"])


def test_shape_visibility_measures_the_outline_a_coefficient_moves(tmp_path):
    """The change is 0 for an unchanged body; in front and side views girth (beta 1, soft-tissue radii +10% per unit) moves more of the
    outline than chest depth (beta 8, +0.6 cm), and a heavier body covers more pixels of the same frame height."""
    from clip3dreid_plugin.body.render import MeshRenderer
    from clip3dreid_plugin.body.smpl_io import load_body_model

    spec = importlib.util.spec_from_file_location("shape_visibility",
                                                  osp.join(REPO, "benchmarks", "shape_visibility.py"))
    vis = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(vis)
    body = str(tmp_path / "body")
    procedural.write_procedural_smpl(body, num_vertices=400)
    model = load_body_model(body, "female")
    with MeshRenderer(height=64, width=32) as renderer:
        assert vis.coefficient_visibility(model, 1, 0.0, (0,), (0.0,), renderer) == (0.0, 0.0)
        girth = vis.coefficient_visibility(model, 1, 1.25, (0,), (0.0, 90.0), renderer)
        chest = vis.coefficient_visibility(model, 8, 1.25, (0,), (0.0, 90.0), renderer)  # depth: seen from the side
        thin, heavy = (vis.silhouettes(model, b, (0,), (0.0,), renderer) for b in
                       (-1.25 * torch.eye(10)[1].numpy(), 1.25 * torch.eye(10)[1].numpy()))
    assert girth[1] > 2 * chest[1] > 0
    assert heavy.sum() > thin.sum()
    table = vis.markdown({"64x32": {"female": [girth, chest]}})
    assert f"| 1 | {chest[0]:.1f} (" in table and "| beta | 64x32 female |" in table


def test_transport_tool_reads_the_standin_teachers_own_cache_file():
    """clip3dreid-visualize-transport finds the phrase features and labels of a stand-in run in the stand-in's file,
    not in the CLIP cache beside it."""
    from clip3dreid_plugin.study.standin_teacher import standin_cache_path
    from clip3dreid_plugin.teacher.cache import cache_file_path
    from clip3dreid_plugin.tools import visualize_transport

    cfg = get_cfg()
    cfg.data.sources = ["synthcc"]
    cfg.teacher.cache_dir = "/caches"
    clip = cache_file_path("/caches", "synthcc", cfg.teacher.name, "random")
    assert visualize_transport._run_cache_path(cfg) == clip
    cfg.teacher.mode = "stand-in"
    assert visualize_transport._run_cache_path(cfg) == standin_cache_path(cfg) == clip[:-3] + "-standin.pt"


def test_the_cal_row_keeps_the_reference_fraction_of_epochs_before_its_clothes_terms(monkeypatch, tmp_path):
    """The positive control runs CAL's synthcc recipe; a shorter run starts the clothes terms at the same share of
    its epochs as the reference (25 of 60), so they are never silently off."""
    study = _load_study()
    seen = []
    monkeypatch.setattr(train_net, "run", lambda cfg, name: seen.append(cfg) or {"synthcc": {"cc_mAP": 0.1}})
    study.run_row(str(tmp_path), "cal", 2, "cpu")
    study.run_row(str(tmp_path), "cal", 2, "cpu", epochs=3)
    full, short = seen
    assert (full.model.name, full.train.max_epoch, full.cal.start_epoch_adv, full.cal.start_epoch_cc) == \
        ("cal", 12, 5, 5)
    assert (short.train.max_epoch, short.cal.start_epoch_adv, short.cal.start_epoch_cc) == (3, 1, 1)
