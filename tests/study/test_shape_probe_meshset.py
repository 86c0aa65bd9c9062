"""Design 3's transfer probe (``model.name shape_probe_meshset``): learns shape from mesh-set renders only."""
from __future__ import annotations

import logging
import os.path as osp

import numpy as np
import pytest
import torch
from PIL import Image

from clip3dreid_plugin.body import procedural
from clip3dreid_plugin.body.meshset import render_synthetic_set
from clip3dreid_plugin.body.synthcc import build_synthcc
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data.meshset import SyntheticMeshDataset, synthetic_stream
from clip3dreid_plugin.study.shape_probe_meshset import MeshSetSteps, MeshsetShapeProbeEngine
from clip3dreid_plugin.study.shape_probe_model import ShapeProbe
from clip3dreid_plugin.tools import train_net

H, W = 64, 32


@pytest.fixture(scope="module")
def probe_data(tmp_path_factory):
    """A procedural body, a tiny synthcc (8 identities), a training mesh set (128 bodies x 1) and 32 held-out
    bodies (another seed)."""
    body = str(tmp_path_factory.mktemp("probe_body"))
    procedural.write_procedural_smpl(body, num_vertices=400)
    root = str(tmp_path_factory.mktemp("probe_data"))
    build_synthcc(root, body, num_ids=8, outfits_per_id=2, num_cameras=2, poses_per_view=1, height=H, width=W,
                  seed=0, progress=False)
    train = str(tmp_path_factory.mktemp("probe_meshes"))
    render_synthetic_set(body, train, num_female=64, num_male=64, poses_per_subject=1, height=H, width=W, seed=0,
                         show_progress=False)
    held = str(tmp_path_factory.mktemp("probe_held_out"))
    render_synthetic_set(body, held, num_female=16, num_male=16, poses_per_subject=1, height=H, width=W, seed=1,
                         show_progress=False)
    return root, body, train, held


def _run(root: str, body: str, meshes: str, out: str, *opts: str) -> dict:
    args = train_net.build_parser().parse_args(
        ["--config-file", "synthcc/shape_probe_meshset_r50_128x64", "--device", "cpu", "--output-dir", out,
         "--seed", "1", "data.root", root, "body.model_dir", body, "body.synthetic_dir", meshes,
         "train.max_epoch", "1", "train.batch_size", "8", "sampler.num_instances", "2", "clip3dreid.backbone",
         "resnet18", "data.height", str(H), "data.width", str(W), "runtime.ckpt_freq", "0", "runtime.progress",
         "False", *opts])
    return train_net.run(train_net.setup_cfg(args))


class _DM:  # what the engine reads from a datamanager when it only trains
    train_loader = test_loader = None
    num_train_pids = 4
    sources = targets = ["synthcc"]


def _tensor(img: Image.Image) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(img.convert("RGB").resize((W, H)), dtype=np.float32) / 255.0)
    return (x.permute(2, 0, 1) - 0.5) / 0.25


@pytest.mark.slow
def test_the_probe_learns_shape_from_renders_and_beats_a_shuffled_control(probe_data):
    _, _, train, held = probe_data
    torch.manual_seed(0)
    model = ShapeProbe(10, backbone="resnet18")
    stream = synthetic_stream(train, _tensor, batch_size=16, seed=0)
    steps = MeshSetSteps(stream, 6)
    engine = MeshsetShapeProbeEngine(_DM(), model, torch.optim.Adam(model.parameters(), lr=1e-3), steps,
                                     use_gpu=False)
    engine.max_epoch = 20
    losses = []
    for engine.epoch in range(engine.max_epoch):
        losses.append(engine.train(print_freq=100)["shape_mse"])
    assert np.mean(losses[-3:]) < 0.5 * np.mean(losses[:2]), losses
    # held-out bodies (another seed): predicted betas against the true ones and against a shuffled assignment
    ds = SyntheticMeshDataset(held, transform=_tensor)
    model.eval()
    with torch.no_grad():
        pred = model(torch.stack([ds[i]["img"] for i in range(len(ds))])).numpy()
    true = ds.betas.numpy()
    shuffled = true[np.random.default_rng(0).permutation(len(true))]

    def mean_corr(target: np.ndarray) -> float:  # Pearson correlation per coefficient, averaged over the 10
        return float(np.mean([np.corrcoef(pred[:, k], target[:, k])[0, 1] for k in range(true.shape[1])]))

    corr, control = mean_corr(true), mean_corr(shuffled)
    assert corr > control + 0.1 and corr > 0.1, (corr, control)


def test_the_engine_targets_the_renders_own_betas_and_reseeds_each_epoch(probe_data):
    _, _, train, _ = probe_data
    stream = synthetic_stream(train, _tensor, batch_size=4, seed=3)
    steps = MeshSetSteps(stream, 3)
    engine = MeshsetShapeProbeEngine(_DM(), ShapeProbe(10, backbone="resnet18"), torch.optim.SGD(
        ShapeProbe(10, backbone="resnet18").parameters(), lr=0.0), steps, use_gpu=False)
    assert engine.train_loader is steps and len(steps) == 3
    batches = list(steps)
    assert len(batches) == 3 and all(b["img"].shape == (4, 3, H, W) for b in batches)
    assert torch.equal(engine.batch_targets(batches[0]), batches[0]["betas"])
    steps.set_epoch(0)
    again = list(steps)
    assert all(torch.equal(a["betas"], b["betas"]) for a, b in zip(batches, again))  # epoch 0 draws the same
    steps.set_epoch(1)
    assert not all(torch.equal(a["betas"], b["betas"]) for a, b in zip(batches, list(steps)))


@pytest.mark.slow
def test_training_never_opens_a_synthcc_training_image_and_evaluates(probe_data, tmp_path, monkeypatch, caplog):
    root, body, train, _ = probe_data
    opened = []
    real_open = Image.open

    def recording_open(fp, *args, **kwargs):
        opened.append(osp.abspath(str(fp)) if isinstance(fp, str) else repr(fp))
        return real_open(fp, *args, **kwargs)

    monkeypatch.setattr(Image, "open", recording_open)
    with caplog.at_level(logging.INFO):
        metrics = _run(root, body, train, str(tmp_path / "probe"), "train.max_epoch", "2")
    synthcc_train = osp.join(osp.abspath(root), "synthcc", "train") + osp.sep
    assert opened and not [p for p in opened if p.startswith(synthcc_train)]
    renders = [p for p in opened if p.startswith(osp.abspath(train) + osp.sep)]
    epochs = [r.getMessage() for r in caplog.records if " done in " in r.getMessage()]
    assert len(epochs) == 2 and all("shape_mse" in e for e in epochs)
    assert len(renders) >= 2 * 8  # at least one batch of 8 renders per epoch
    tested = [p for p in opened if p.startswith(osp.join(osp.abspath(root), "synthcc") + osp.sep)]
    assert tested and all("/query/" in p or "/gallery/" in p for p in tested)
    assert {"general_mAP", "sc_mAP", "cc_mAP"} <= set(metrics["synthcc"])


def test_no_mesh_set_or_the_wrong_one_is_one_line(probe_data, tmp_path):
    root, body, train, _ = probe_data
    with pytest.raises(ConfigError, match="shape_probe_meshset trains on body.synthetic_dir"):
        _run(root, body, "", str(tmp_path / "none"))
    with pytest.raises(ConfigError, match=r"body.check_set: .*body.num_female 40 \(set: 64\)"):
        _run(root, body, train, str(tmp_path / "wrong"), "body.check_set", "True")
