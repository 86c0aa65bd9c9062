"""The 3D term: L_3D is zero for a perfect prediction, reaches phi, and training on synthetic meshes lowers it."""
from __future__ import annotations

import copy
import os.path as osp

import pytest
import torch
from fixtures.tiny_clip import tiny_clip

from clip3dreid_plugin.body.genders import GENDER_IDS
from clip3dreid_plugin.body.procedural import write_procedural_smpl
from clip3dreid_plugin.body.smpl_io import load_body_model
from clip3dreid_plugin.body.meshset import render_synthetic_set
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data.meshset import SyntheticMeshDataset, synthetic_batch_size
from clip3dreid_plugin.engine.clip3dreid_engine import LossSwitches
from clip3dreid_plugin.engine.loss_terms import LOSS_TERMS
from clip3dreid_plugin.losses.shape3d import ShapeLoss
from clip3dreid_plugin.models.clip3dreid import CLIP3DReID
from clip3dreid_plugin.teacher.cache import build_teacher_cache, cache_file_path
from clip3dreid_plugin.teacher.source import build_teacher
from clip3dreid_plugin.tools import train_net

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")


@pytest.fixture(scope="module")
def body_dir(tmp_path_factory):
    return write_procedural_smpl(str(tmp_path_factory.mktemp("body")), num_vertices=400)


@pytest.fixture(scope="module")
def synthetic_dir(tmp_path_factory, body_dir):
    out = str(tmp_path_factory.mktemp("syn"))
    render_synthetic_set(body_dir, out, num_female=3, num_male=3, poses_per_subject=2, height=64, width=32,
                         show_progress=False)
    return out


def test_shape_loss_zero_for_perfect_prediction_and_gradient_reaches_phi(body_dir):
    neutral = load_body_model(body_dir, "neutral")
    loss_fn = ShapeLoss(neutral, {GENDER_IDS["neutral"]: neutral})
    betas = torch.randn(4, 10)
    genders = torch.full((4,), GENDER_IDS["neutral"])
    assert float(loss_fn(betas, betas, genders)) == pytest.approx(0.0, abs=1e-10)
    assert float(loss_fn(betas + 0.5, betas, genders)) > 1e-6

    model = CLIP3DReID(3, local_dim=32, agg_hidden_dim=16, head_hidden_dim=16, teacher_dim=8).train()
    out = model(torch.randn(2, 3, 64, 32), return_dict=True, with_betas=True)
    loss_fn(out["betas"], torch.zeros(2, 10), genders[:2]).backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.shape_head.parameters())


def test_targets_use_each_images_gendered_body(body_dir):
    models = {GENDER_IDS[g]: load_body_model(body_dir, g) for g in ("female", "male", "neutral")}
    loss_fn = ShapeLoss(models[GENDER_IDS["neutral"]], models)
    betas = torch.zeros(2, 10)
    genders = torch.tensor([GENDER_IDS["female"], GENDER_IDS["male"]])
    diff = models[2].canonical_vertices(betas) - torch.cat(
        [models[0].canonical_vertices(betas[:1]), models[1].canonical_vertices(betas[1:])])
    # Paper Sec. 3.4: squared norm of the whole vertex array per body, then the batch mean.
    per_body = [float((diff[i] ** 2).sum()) for i in range(2)]
    assert float(loss_fn(betas, betas, genders)) == pytest.approx(sum(per_body) / 2, rel=1e-6)
    mean_fn = ShapeLoss(models[GENDER_IDS["neutral"]], models, reduction="mean")
    num_vertices = diff.shape[1]
    assert float(mean_fn(betas, betas, genders)) == pytest.approx(sum(per_body) / 2 / num_vertices, rel=1e-6)
    # The loss names its argument; the table of loss terms names the option.
    with pytest.raises(ValueError, match="reduction must be one of"):
        ShapeLoss(models[GENDER_IDS["neutral"]], models, reduction="max")
    with pytest.raises(ConfigError, match="loss.clip3dreid.shape_reduction"):
        LOSS_TERMS.check(LossSwitches(shape_reduction="max"))


def test_gendered_targets_need_no_host_sync_and_match_each_rows_own_body(body_dir):
    """Each target row through its own gender's body, computed row by row here, equals the loss's device-side pick
    (every body on every row, torch.where), which reads nothing back; the gradient reaches the prediction. A gender
    without a model gives NaN, and check_genders refuses such a set up front."""
    from fixtures.host_syncs import count_host_syncs

    models = {GENDER_IDS[g]: load_body_model(body_dir, g) for g in ("female", "male", "neutral")}
    loss_fn = ShapeLoss(models[GENDER_IDS["neutral"]], models)
    gen = torch.Generator().manual_seed(3)
    pred = torch.randn(6, 10, generator=gen).requires_grad_()
    true = torch.randn(6, 10, generator=gen)
    genders = torch.tensor([0, 1, 2, 1, 1, 0])
    with count_host_syncs() as syncs:
        loss = loss_fn(pred, true, genders)
        (grad,) = torch.autograd.grad(loss, pred)
    assert syncs.calls == []
    by_row = [float(((models[2].canonical_vertices(pred[i:i + 1].detach())
                      - models[int(genders[i])].canonical_vertices(true[i:i + 1])) ** 2).sum()) for i in range(6)]
    assert float(loss) == pytest.approx(sum(by_row) / 6, rel=1e-5)
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0

    partial = ShapeLoss(models[GENDER_IDS["neutral"]], {0: models[0], 1: models[1]})
    assert torch.isnan(partial(pred, true, genders))
    with pytest.raises(KeyError, match=r"gender id\(s\) \[2\]"):
        partial.check_genders(genders)
    loss_fn.check_genders(genders)


def test_synthetic_dataset_and_batch_ratio(synthetic_dir):
    ds = SyntheticMeshDataset(synthetic_dir)
    assert len(ds) == 12
    item = ds[0]
    assert item["labels"].shape == (16,) and item["betas"].shape == (10,)
    assert synthetic_batch_size(8, 0.2) == 2 and synthetic_batch_size(6, 0.5) == 6
    with pytest.raises(ValueError, match="synthetic_ratio"):
        synthetic_batch_size(8, 1.0)


@pytest.mark.parametrize("data_type, expected", [("image", 1), ("video", 6)])
def test_synthetic_share_counts_the_frames_of_video_clips(synthetic_dir, data_type, expected):
    """A video step trains on batch_size x seq_len frames; synthetic images are ratio (1/4) of that mixed batch."""
    import torchvision.transforms as T

    from clip3dreid_plugin.config.defaults import get_cfg
    from clip3dreid_plugin.data.meshset import build_synthetic_stream

    cfg = get_cfg()
    cfg.data.type, cfg.train.batch_size, cfg.video.seq_len = data_type, 2, 9
    cfg.body.synthetic_dir, cfg.body.synthetic_ratio, cfg.data.workers = synthetic_dir, 0.25, 0

    class _DM:
        transform_tr = T.ToTensor()

    batch = next(build_synthetic_stream(cfg, _DM()))
    # image: round(2 * 0.25 / 0.75) = 1; video: 2 clips x 9 frames -> round(18 * 0.25 / 0.75) = 6
    assert batch["img"].size(0) == expected


def test_training_with_the_3d_term_lowers_it(tmp_path, toy_market_root, body_dir, synthetic_dir):
    name, weights = tiny_clip(str(tmp_path))
    root, _ = toy_market_root
    argv = ["--config-file", TOY, "--device", "cpu", "--output-dir", str(tmp_path / "o"), "data.root", root,
            "model.name", "clip3dreid", "clip3dreid.local_dim", "64", "clip3dreid.agg_hidden_dim", "32",
            "clip3dreid.head_hidden_dim", "32", "clip3dreid.teacher_dim", "64", "teacher.name", name,
            "teacher.pretrained", weights, "teacher.cache_dir", str(tmp_path / "cache"), "train.lr", "0.001",
            "loss.clip3dreid.use_3d", "True", "body.model_dir", body_dir, "body.synthetic_dir", synthetic_dir,
            "body.synthetic_ratio", "0.5", "data.workers", "0"]
    cfg = train_net.setup_cfg(train_net.build_parser().parse_args(argv))
    import torchreid

    teacher = build_teacher(cfg)
    paths = [it[0] for it in torchreid.data.datasets.init_image_dataset(
        "market1501", root=root, mode="train", verbose=False).train]
    build_teacher_cache(teacher, paths, cache_file_path(cfg.teacher.cache_dir, "market1501", name,
                                                        teacher.weights_label()), progress=False)
    engine = train_net.build(cfg)
    engine.set_model_mode("train")
    batch = next(iter(engine.train_loader))
    fixed = next(engine.synthetic)
    engine.synthetic = iter(lambda: fixed, None)  # the same synthetic batch every step
    first = {k: float(v.detach()) for k, v in engine.compute_losses(batch).items()}
    assert {"ot_syn", "3d"} <= set(first)
    for _ in range(6):
        engine.forward_backward(batch)
    last = {k: float(v.detach()) for k, v in engine.compute_losses(batch).items()}
    assert last["3d"] < first["3d"]
    assert last["ot_syn"] < first["ot_syn"]

    # A step with the 3D term makes no call that would make the host wait for a GPU (see test_clip3dreid_engine).
    from fixtures.host_syncs import count_host_syncs, optimizer_host_tensors

    engine.ot_loss.host_checks = False
    with count_host_syncs(host_tensors=optimizer_host_tensors(engine.optimizer)) as syncs:
        engine.forward_backward(batch)
    assert syncs.calls == [], syncs.calls
    engine.ot_loss.host_checks = None

    # The real and synthetic rows reach the OT loss as the two parts of one split of the model's local map
    # (slices would each zero-fill a gradient the size of the whole map in the backward).
    seen = []
    ot_loss = engine.ot_loss
    engine.ot_loss = lambda local, text: seen.append(local) or ot_loss(local, text)
    engine.compute_losses(batch)
    (real, syn), n_real = seen, batch["img"].size(0)
    assert real.size(0) == n_real and syn.size(0) == len(fixed["img"])
    assert type(real.grad_fn).__name__.startswith("SplitWithSizesBackward") and real.grad_fn is syn.grad_fn


def test_3d_term_trains_with_video_clips(tmp_path, body_dir, synthetic_dir):
    """data.type video + the 3D term: synthetic meshes join the clip frames (a share of B x S) and L_3D trains."""
    from fixtures.dataset_trees import make_ccvid

    from clip3dreid_plugin.data.frames import item_image_paths

    name, weights = tiny_clip(str(tmp_path))
    root = str(tmp_path / "data")
    make_ccvid(root)
    argv = ["--config-file", TOY, "--device", "cpu", "--output-dir", str(tmp_path / "o"), "data.root", root,
            "data.type", "video", "data.sources", "['ccvid']", "data.targets", "['ccvid']", "video.seq_len", "3",
            "train.batch_size", "2", "model.name", "clip3dreid", "clip3dreid.local_dim", "64",
            "clip3dreid.agg_hidden_dim", "32", "clip3dreid.head_hidden_dim", "32", "clip3dreid.teacher_dim", "64",
            "teacher.name", name, "teacher.pretrained", weights, "teacher.cache_dir", str(tmp_path / "cache"),
            "train.lr", "0.001", "loss.clip3dreid.use_3d", "True", "body.model_dir", body_dir,
            "body.synthetic_dir", synthetic_dir, "body.synthetic_ratio", "0.5", "data.workers", "0"]
    cfg = train_net.setup_cfg(train_net.build_parser().parse_args(argv))
    import torchreid

    teacher = build_teacher(cfg)
    train = torchreid.data.datasets.init_video_dataset("ccvid", root=root, mode="train", verbose=False,
                                                       transform=lambda img: img).train
    build_teacher_cache(teacher, item_image_paths(train), cache_file_path(cfg.teacher.cache_dir, "ccvid", name,
                                                                          teacher.weights_label()), progress=False)
    engine = train_net.build(cfg)
    engine.set_model_mode("train")
    batch = next(iter(engine.train_loader))
    fixed = next(engine.synthetic)
    assert fixed["img"].size(0) == 2 * 3  # ratio 0.5 of the mixed batch: as many meshes as the 2 x 3 frames
    engine.synthetic = iter(lambda: fixed, None)
    assert {"ce", "ot", "global", "ot_syn", "3d"} <= set(engine.compute_losses(batch))
    # Train the 3D term alone: with every term on, the other terms move f_id too and a batch of near-average bodies
    # can see L_3D rise for a few steps, which says nothing about the 3D path.
    engine.switches = LossSwitches(use_ce=False, use_ot=False, use_global=False, use_3d=True)
    first = {k: float(v.detach()) for k, v in engine.compute_losses(batch).items()}
    for _ in range(6):
        engine.forward_backward(batch)
    last = {k: float(v.detach()) for k, v in engine.compute_losses(batch).items()}
    assert last["3d"] < first["3d"]
    assert last["ot_syn"] < first["ot_syn"]


def test_eval_shape_reconstructs_from_images(tmp_path, body_dir, synthetic_dir):
    import importlib
    import json

    import numpy as np

    from clip3dreid_plugin.body.shape_eval import evaluate_shapes
    from clip3dreid_plugin.config import load_config
    from clip3dreid_plugin.models.build import build_inference_model

    mod = importlib.import_module("clip3dreid_plugin.tools.eval_shape")
    opts = ["clip3dreid.local_dim", "32", "clip3dreid.agg_hidden_dim", "16", "clip3dreid.head_hidden_dim", "16",
            "model.pretrained", "False", "data.height", "64", "data.width", "32"]
    torch.manual_seed(0)
    cfg = load_config(None, ["model.name", "clip3dreid", *opts])
    model = build_inference_model(cfg)
    ckpt = str(tmp_path / "student.pth")
    torch.save({"state_dict": model.state_dict()}, ckpt)
    out = mod.predict_from_images("", ckpt, synthetic_dir, opts)
    assert out["pred"].shape == (12, 10) and set(out["gender"]) == {"female", "male"}
    # The student's phi head on the first image, recomputed by hand.
    ds = SyntheticMeshDataset(synthetic_dir)
    import torchreid

    _, tf = torchreid.data.transforms.build_transforms(64, 32, transforms=None)
    from datasets_ext.image_io import read_image

    with torch.no_grad():
        ref = model.shape_head(model(tf(read_image(ds.paths[0]))[None]))[0].numpy()
    assert np.allclose(out["pred"][0], ref, atol=1e-5)
    # The script's per-image Chamfer equals evaluate_shapes on the same predictions with each gendered body.
    j = str(tmp_path / "r.json")
    assert mod.main(["--body-model", body_dir, "--images-dir", synthetic_dir, "--weights", ckpt, "--json", j,
                     "--num-points", "500", *opts]) == 0
    got = json.load(open(j))["chamfer_mm"]
    neutral = load_body_model(body_dir, "neutral")
    idx = np.flatnonzero(out["gender"] == "male")
    ref = evaluate_shapes(out["pred"][idx], out["gt"][idx], neutral, gt_body_model=load_body_model(body_dir, "male"),
                          num_points=500, seed=0)["chamfer_mm"]
    assert np.all(ref > 0)
    assert np.allclose(np.asarray(got)[idx], ref, rtol=1e-9)


def test_synthetic_rows_get_their_own_batch_statistics_and_leave_running_stats_to_real_images():
    torch.manual_seed(0)
    model = CLIP3DReID(3, local_dim=32, agg_hidden_dim=16, head_hidden_dim=16, teacher_dim=8).train()
    reference = copy.deepcopy(model)
    real, syn = torch.randn(4, 3, 64, 32), 3.0 + 2.0 * torch.randn(2, 3, 64, 32)
    out = model(torch.cat([real, syn]), num_real=4, return_dict=True)
    ref_real = reference(real, return_dict=True)
    # Real rows are normalised with real-only batch statistics, and only they update the running stats.
    assert torch.allclose(out["f_id"][:4], ref_real["f_id"], atol=1e-5)
    for (name, buf), (_, ref_buf) in zip(model.named_buffers(), reference.named_buffers()):
        if "running" in name:
            assert torch.allclose(buf, ref_buf, atol=1e-6), name
    # Synthetic rows are normalised with their own batch statistics.
    assert torch.allclose(out["f_id"][4:], copy.deepcopy(reference)(syn, return_dict=True)["f_id"], atol=1e-5)
    # The momenta are restored, and the shared path (num_real=None) mixes both into the running stats.
    assert all(m.momentum == 0.1 for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    mixed = copy.deepcopy(reference)
    mixed(torch.cat([real, syn]))
    bn = "backbone.1.running_mean"
    assert not torch.allclose(dict(mixed.named_buffers())[bn], dict(model.named_buffers())[bn], atol=1e-4)
