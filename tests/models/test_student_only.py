"""Evaluation and inference need only the student: a trained clip3dreid checkpoint evaluates, extracts features and
exports with no teacher cache, no teacher weights and no ImageNet file on disk, and every run folder holds the
config it ran with."""
from __future__ import annotations

import json
import os
import os.path as osp
import shutil

import numpy as np
import pytest
import torch
import torchreid

from clip3dreid_plugin.config import load_config
from clip3dreid_plugin.teacher.cache import build_teacher_cache, cache_file_path
from clip3dreid_plugin.teacher.source import build_teacher
from clip3dreid_plugin.tools import extract_features, train_net
from fixtures.tiny_clip import tiny_clip

pytestmark = pytest.mark.slow  # trains models end to end or starts processes

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")
# Nothing listens on port 9 of this host: a download from there is refused at once, i.e. "no network".
DEAD_URL = "http://127.0.0.1:9/resnet50-19c8e357.pth"
STUDENT = ["model.name", "clip3dreid", "clip3dreid.local_dim", "64", "clip3dreid.agg_hidden_dim", "32",
           "clip3dreid.head_hidden_dim", "32", "clip3dreid.teacher_dim", "64", "sampler.train_sampler",
           "RandomIdentitySampler"]


@pytest.fixture(scope="module")
def trained_student(tmp_path_factory, toy_market_root):
    """A clip3dreid student trained one epoch with CE + L_OT + L_global from a teacher cache (random trunk)."""
    root, _ = toy_market_root
    folder = tmp_path_factory.mktemp("student_only")
    name, weights = tiny_clip(str(folder))
    cache_dir = str(folder / "cache")
    teacher_opts = ["teacher.name", name, "teacher.pretrained", weights, "teacher.cache_dir", cache_dir]
    cfg = load_config(TOY, ["data.root", root, *STUDENT, *teacher_opts])
    teacher = build_teacher(cfg)
    paths = [it[0] for it in torchreid.data.datasets.init_image_dataset(
        "market1501", root=root, mode="train", verbose=False).train]
    build_teacher_cache(teacher, paths, cache_file_path(cache_dir, "market1501", name, teacher.weights_label()),
                        batch_size=16, progress=False, dataset="market1501")
    out = str(folder / "train")
    assert train_net.main(["--config-file", TOY, "--device", "cpu", "--output-dir", out, "--seed", "0",
                           "data.root", root, "train.max_epoch", "1", *STUDENT, *teacher_opts]) == 0
    return root, folder, out, cache_dir, teacher_opts


def _no_teacher(tmp_path, teacher_opts):
    """The run's teacher options with no CLIP weights and a teacher-cache folder that does not exist."""
    name = teacher_opts[1]
    return ["teacher.name", name, "teacher.pretrained", "", "teacher.cache_dir", str(tmp_path / "no_cache")]


def _offline(monkeypatch, tmp_path):
    """No ImageNet file in torch's cache and no way to download one: asking for it fails at once."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty_torch_home"))
    monkeypatch.setitem(torchreid.models.resnet.model_urls, "resnet50", DEAD_URL)


def test_eval_only_needs_no_teacher_cache_and_no_imagenet_file(trained_student, tmp_path, monkeypatch):
    root, _, out, _, teacher_opts = trained_student
    with open(osp.join(out, "metrics.json"), encoding="utf-8") as f:
        during_training = json.load(f)["last"]["metrics"]
    ckpt = osp.join(out, "model", "model.pth.tar-1")
    _offline(monkeypatch, tmp_path)
    ev = str(tmp_path / "eval")
    # The recipe's own model.pretrained True, and options after the overrides.
    rc = train_net.main(["--config-file", TOY, "data.root", root, *STUDENT, *_no_teacher(tmp_path, teacher_opts),
                         "model.pretrained", "True", "model.load_weights", ckpt, "--eval-only", "--device", "cpu",
                         "--output-dir", ev])
    assert rc == 0
    with open(osp.join(ev, "metrics.json"), encoding="utf-8") as f:
        evaluated = json.load(f)["last"]["metrics"]
    assert set(evaluated) == set(during_training) == {"market1501"}
    for k, v in during_training["market1501"].items():
        assert evaluated["market1501"][k] == pytest.approx(v, abs=1e-9), k


def test_inference_tools_need_no_imagenet_file(trained_student, tmp_path, monkeypatch):
    root, _, out, _, _ = trained_student
    _offline(monkeypatch, tmp_path)
    feats = str(tmp_path / "feats.npy")
    rc = extract_features.main(["--config-file", TOY, "--weights", osp.join(out, "model", "model.pth.tar-1"),
                                "--input", osp.join(root, "market1501", "query"), "--output", feats,
                                "--device", "cpu", *STUDENT, "model.pretrained", "True"])
    assert rc == 0
    assert np.isfinite(np.load(feats)).all()


def test_every_run_folder_holds_the_config_it_ran_with(trained_student, toy_market_root, tmp_path):
    _, _, out, _, _ = trained_student
    written = load_config(osp.join(out, "config.yaml"))
    assert written.model.name == "clip3dreid" and written.clip3dreid.local_dim == 64 and written.data.save_dir == out
    # train_net.run, what the quickstart and the method study call, writes it as well.
    run_dir = str(tmp_path / "run")
    args = train_net.build_parser().parse_args(["--config-file", TOY, "data.root", toy_market_root[0],
                                                "train.max_epoch", "1", "model.name", "resnet18",
                                                "--output-dir", run_dir, "--device", "cpu"])
    cfg = train_net.setup_cfg(args)
    train_net.run(cfg)
    assert load_config(osp.join(run_dir, "config.yaml")).dump() == cfg.dump()


def test_transport_tool_uses_the_checkpoints_phrase_features_and_no_teacher(trained_student, tmp_path, monkeypatch,
                                                                            caplog, capsys):
    from clip3dreid_plugin import compat
    from clip3dreid_plugin.teacher.cache import TeacherCache
    from clip3dreid_plugin.tools import visualize_transport

    root, _, out, cache_dir, teacher_opts = trained_student
    ckpt = osp.join(out, "model", "model.pth.tar-1")
    stored = compat.load_checkpoint(ckpt)["teacher_text"]
    (cache_file,) = [osp.join(cache_dir, f) for f in os.listdir(cache_dir)]
    assert torch.equal(stored["features"], TeacherCache.load(cache_file).text_features)  # [16, 2, 64]
    assert stored["pairs"][1] == ["Broad-Shouldered", "Narrow-Shouldered"] and cache_file in stored["teacher"]

    _offline(monkeypatch, tmp_path)
    image = osp.join(root, "market1501", "query", sorted(os.listdir(osp.join(root, "market1501", "query")))[0])
    png = str(tmp_path / "ot.png")
    with caplog.at_level("INFO"):
        # No --config-file: the run's own config.yaml; no CLIP weights and no cache for the teacher.
        rc = visualize_transport.main(["--weights", ckpt, "--image", image, "--output", png,
                                       *_no_teacher(tmp_path, teacher_opts)])
    assert rc == 0
    log = caplog.text
    assert "phrase features: stored in the checkpoint: teacher cache" in log
    assert "the student's own reading" in log and osp.join(out, "config.yaml") in log
    from PIL import Image

    assert Image.open(png).size[0] > 16 * visualize_transport.MIN_PANEL_WIDTH  # the image + 16 panels + the bar

    # A checkpoint without them, and nothing else to read them from: one line, no random CLIP.
    old = str(tmp_path / "run" / "model" / "old.pth.tar")
    os.makedirs(osp.dirname(old))
    shutil.copy(osp.join(out, "config.yaml"), str(tmp_path / "run" / "config.yaml"))
    state = compat.load_checkpoint(ckpt)
    del state["teacher_text"]
    compat.save_checkpoint(state, old)
    capsys.readouterr()
    assert visualize_transport.main(["--weights", old, "--image", image, "--output", png,
                                     *_no_teacher(tmp_path, teacher_opts)]) == 2
    assert capsys.readouterr().err.startswith("error: no phrase features for the transport plan")
