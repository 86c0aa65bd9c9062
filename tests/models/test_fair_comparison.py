"""The fair comparison with torchreid's baselines: one ImageNet file and one random start for both models, a clear
error offline, torchreid's own engines training clip3dreid, the full method built from objects
(docs/getting_started.md's two scripts, run as written apart from paths and sizes), and baseline/clip3dreid recipe
pairs that agree."""
from __future__ import annotations

import glob
import os
import os.path as osp
import re
import subprocess
import sys
import time

import pytest
import torch
import torchreid

from clip3dreid_plugin.config import ConfigError, load_config
from clip3dreid_plugin.engine import LOSS_TERMS, CLIP3DReIDEngine, LossSwitches
from clip3dreid_plugin.losses import global_distill_loss
from clip3dreid_plugin.models.build import build_model
from clip3dreid_plugin.models.clip3dreid import CLIP3DReID
from clip3dreid_plugin.models.imagenet import PretrainedWeightsError
from fixtures.dataset_trees import make_ccvid, write_image

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")
TRUNK = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
RESNET50_FILE = "resnet50-19c8e357.pth"
# Nothing listens on port 9 of this host: a connection there is refused at once, i.e. "no network", online or not.
DEAD_URL = "http://127.0.0.1:9/" + RESNET50_FILE
CC_FAMILIES = ("ltcc", "prcc", "celebreid", "celebreid_light", "celebreid_blur", "celebreid_light_blur", "deepchange",
               "ccda", "vcclothes", "last", "ccvid", "cross")


def _student_trunk(model: torch.nn.Module) -> dict:
    """The student's trunk tensors under torchreid's names (``backbone.4.0.conv1.weight`` -> ``layer1.0...``)."""
    out = {}
    for k, v in model.backbone.state_dict().items():
        i, rest = k.split(".", 1)
        out[f"{TRUNK[int(i)]}.{rest}"] = v
    return out


@pytest.fixture
def fake_imagenet(tmp_path, monkeypatch):
    """A TORCH_HOME whose model-zoo cache holds a seeded stand-in for torchreid's resnet50 ImageNet file."""
    torch_home = tmp_path / "torch_home"
    folder = torch_home / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    gen = torch.Generator().manual_seed(123)
    ref = torchreid.models.resnet50(num_classes=1000, pretrained=False)
    state = {k: (torch.randn(v.shape, generator=gen) if v.is_floating_point() else v)
             for k, v in ref.state_dict().items() if not k.startswith("classifier")}
    state["fc.weight"], state["fc.bias"] = torch.randn(1000, 2048, generator=gen), torch.zeros(1000)
    torch.save(state, folder / RESNET50_FILE)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return state


def test_pretrained_loads_torchreids_imagenet_file_into_both_trunks(fake_imagenet):
    base = torchreid.models.build_model("resnet50", num_classes=5, loss="softmax", pretrained=True)
    student = torchreid.models.build_model("clip3dreid", num_classes=5, loss="softmax", pretrained=True)
    trunk = _student_trunk(student)
    assert len(trunk) == 318
    base_state = base.state_dict()
    for k, v in trunk.items():
        # Both hold the file's tensors, value for value (not merely each other's).
        assert torch.equal(v, fake_imagenet[k]), k
        assert torch.equal(base_state[k], fake_imagenet[k]), k


def test_imagenet_weights_override_loads_a_local_file(fake_imagenet, tmp_path):
    local = {k: v + 1.0 if v.is_floating_point() else v for k, v in fake_imagenet.items()}
    torch.save(local, tmp_path / "mine.pth")
    cfg = load_config(None, ["model.name", "clip3dreid", "clip3dreid.imagenet_weights", str(tmp_path / "mine.pth")])
    trunk = _student_trunk(build_model(cfg, num_classes=3, use_gpu=False))
    assert all(torch.equal(v, local[k]) for k, v in trunk.items())


def test_same_seed_gives_the_same_random_trunk():
    torch.manual_seed(7)
    base = torchreid.models.build_model("resnet50", num_classes=9, loss="softmax", pretrained=False)
    torch.manual_seed(7)
    student = torchreid.models.build_model("clip3dreid", num_classes=9, loss="softmax", pretrained=False)
    torch.manual_seed(8)
    other = torchreid.models.build_model("clip3dreid", num_classes=9, loss="softmax", pretrained=False)
    base_state = base.state_dict()
    trunk, other_trunk = _student_trunk(student), _student_trunk(other)
    assert all(torch.equal(base_state[k], v) for k, v in trunk.items())
    assert not torch.equal(trunk["layer1.0.conv1.weight"], other_trunk["layer1.0.conv1.weight"])


@pytest.mark.parametrize("name", ["resnet50", "clip3dreid"])
def test_pretrained_without_file_or_network_fails_at_once_naming_file_and_folder(tmp_path, monkeypatch, name):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setitem(torchreid.models.resnet.model_urls, "resnet50", DEAD_URL)
    cfg = load_config(None, ["model.name", name])
    t0 = time.time()
    with pytest.raises(PretrainedWeightsError) as err:
        build_model(cfg, num_classes=3, use_gpu=False)
    assert time.time() - t0 < 10
    msg = str(err.value)
    assert "\n" not in msg and RESNET50_FILE in msg
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in msg and "model.pretrained False" in msg


def test_clip_baselines_with_pretrained_need_clip_weights():
    cfg = load_config(None, ["model.name", "clip_linear"])
    with pytest.raises(PretrainedWeightsError, match="teacher.pretrained is empty"):
        build_model(cfg, num_classes=3, use_gpu=False)


@pytest.mark.parametrize("name", ["resnet50", "clip3dreid"])
def test_train_script_offline_with_pretrained_ends_in_one_line(tmp_path, toy_market_root, name):
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "empty"), CLIP3DREID_PROGRESS="0",
               # urllib routes through this proxy; nothing listens there, so "no network" holds even online.
               https_proxy="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9")
    env.pop("CLIP3DREID_DEBUG", None)
    t0 = time.time()
    proc = subprocess.run([sys.executable, osp.join(REPO, "scripts", "train.py"), "--config-file", TOY,
                           "--device", "cpu", "--output-dir", str(tmp_path / "out"), "data.root", toy_market_root[0],
                           "model.name", name, "model.pretrained", "True"],
                          capture_output=True, text=True, env=env, timeout=300)
    elapsed = time.time() - t0
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: model.pretrained True") and RESNET50_FILE in last
    assert str(tmp_path / "empty" / "hub" / "checkpoints") in last
    assert elapsed < 90, elapsed  # torch + torchreid imports included; the failure itself is immediate


# ---------------------------------------------------------------------------------------------- torchreid engines
def _write_ltcc(root: str) -> str:
    """LTCC layout: 4 train ids x 4 images, 2 query ids on camera 1, 10 gallery images each on cameras 2-6.

    Query and gallery cameras differ, so torchreid's protocol drops nothing and every CMC has the same length.
    """
    d = osp.join(root, "LTCC_ReID")
    seed = 0
    for pid in range(1, 5):
        for k in range(4):
            seed += 1
            write_image(osp.join(d, "train", f"{pid:03d}_{k % 2 + 1}_c{k + 1}_{seed:06d}.png"), seed, (16, 32))
    for pid in (10, 11):
        for k in range(2):
            seed += 1
            write_image(osp.join(d, "query", f"{pid:03d}_1_c1_{seed:06d}.png"), seed, (16, 32))
        for k in range(10):
            seed += 1
            write_image(osp.join(d, "test", f"{pid:03d}_{k % 2 + 1}_c{k % 5 + 2}_{seed:06d}.png"), seed, (16, 32))
    return root


@pytest.fixture(scope="module")
def ltcc_root(tmp_path_factory):
    return _write_ltcc(str(tmp_path_factory.mktemp("ltcc_tree")))


def _readme_example(tag: str) -> str:
    text = open(osp.join(REPO, "docs", "getting_started.md"), encoding="utf-8").read()
    m = re.search(rf"<!-- example: {tag} -->\s*(?:<!-- doc-test: skip [^\n]*-->\s*)?```python\n(.*?)```", text, re.S)
    assert m, f"docs/getting_started.md has no example '{tag}'"
    return m.group(1)


def _substitute(code: str, replacements: dict) -> str:
    for old, new in replacements.items():
        assert old in code, f"the getting-started example no longer contains {old!r}"
        code = code.replace(old, new)
    return code


@torch.no_grad()
def _rank1_by_hand(model, datamanager, name: str, flip: bool = False) -> float:
    """Nearest-gallery rank-1 from eval-mode features; video clips average their frames."""
    model.eval()

    def feats(loader):
        fs, ps = [], []
        for data in loader:
            x = data["img"]
            if x.dim() == 5:
                b, s = x.shape[:2]
                f = model(x.flatten(0, 1)).view(b, s, -1).mean(1)
            else:
                f = model(x) + (model(torch.flip(x, dims=[-1])) if flip else 0)
            fs.append(f)
            ps.append(torch.as_tensor(data["pid"]))
        return torch.cat(fs), torch.cat(ps)

    qf, qp = feats(datamanager.test_loader[name]["query"])
    gf, gp = feats(datamanager.test_loader[name]["gallery"])
    return float((gp[torch.cdist(qf, gf).argmin(1)] == qp).float().mean())


def _params(model) -> dict:
    return {k: v.detach().clone() for k, v in model.named_parameters()}


@pytest.mark.parametrize("loss", ["softmax", "triplet"])
def test_torchreid_image_engines_train_and_evaluate_clip3dreid(ltcc_root, tmp_path, loss):
    code = _substitute(_readme_example("torchreid-engine"), {
        'root="reid-data"': f"root={ltcc_root!r}", "height=384, width=192": "height=64, width=32, workers=0",
        "batch_size_train=32": "batch_size_train=8", "pretrained=True": "pretrained=False",
        'save_dir="log/clip3dreid-ce-ltcc"': f"save_dir={str(tmp_path / 'log')!r}", "max_epoch=60": "max_epoch=1",
    })
    if loss == "triplet":
        code = _substitute(code, {'loss="softmax"': 'loss="triplet"',
                                  "torchreid.engine.ImageSoftmaxEngine(": "torchreid.engine.ImageTripletEngine("})
    seen = {}
    original_run = torchreid.engine.Engine.run

    def spy_run(self, *args, **kwargs):
        seen["engine"], seen["start"] = self, _params(self.model)
        return original_run(self, *args, **kwargs)

    torchreid.engine.Engine.run = spy_run
    try:
        ns = {}
        exec(compile(code, "docs/getting_started.md:torchreid-engine", "exec"), ns)
    finally:
        torchreid.engine.Engine.run = original_run
    engine, model = seen["engine"], ns["model"]
    assert type(engine).__module__.startswith("torchreid")  # torchreid's own engine, not a plugin subclass
    end = _params(model)
    for part in ("backbone.", "aggregator.", "classifier."):
        assert any(not torch.equal(seen["start"][k], v) for k, v in end.items() if k.startswith(part)), part
    # Heads that only the distillation terms reach stay untouched under CE (+ triplet).
    assert all(torch.equal(seen["start"][k], v) for k, v in end.items() if k.startswith(("text_head", "image_head")))
    rank1 = engine.test(ranks=[1])
    assert rank1 == pytest.approx(_rank1_by_hand(model, ns["datamanager"], "ltcc"), abs=1e-6)


def test_torchreid_video_engine_trains_and_evaluates_clip3dreid(tmp_path):
    root = str(tmp_path / "data")
    make_ccvid(root)
    datamanager = torchreid.data.VideoDataManager(root=root, sources="ccvid", height=32, width=16, workers=0,
                                                  batch_size_train=3, batch_size_test=3, seq_len=2)
    model = torchreid.models.build_model("clip3dreid", num_classes=datamanager.num_train_pids, loss="softmax",
                                         pretrained=False)
    optimizer = torchreid.optim.build_optimizer(model, optim="adam", lr=0.001)
    scheduler = torchreid.optim.build_lr_scheduler(optimizer, lr_scheduler="single_step", stepsize=5)
    engine = torchreid.engine.VideoSoftmaxEngine(datamanager, model, optimizer=optimizer, scheduler=scheduler,
                                                 use_gpu=False)
    start = _params(model)
    engine.run(save_dir=str(tmp_path / "log"), max_epoch=1, ranks=[1])
    assert not torch.equal(start["classifier.weight"], model.classifier.weight)
    assert engine.test(ranks=[1]) == pytest.approx(_rank1_by_hand(model, datamanager, "ccvid"), abs=1e-6)


def test_train_mode_returns_what_torchreids_losses_expect():
    torch.manual_seed(0)
    x = torch.randn(4, 3, 64, 32)
    for loss in ("softmax", "triplet"):
        torch.manual_seed(0)
        model = CLIP3DReID(5, loss=loss, local_dim=32, agg_hidden_dim=16, head_hidden_dim=16, teacher_dim=8).train()
        full = model(x, return_dict=True)
        out = model(x)
        if loss == "softmax":
            assert torch.allclose(out, full["logits"], atol=1e-6)
        else:
            logits, f_id = out
            assert torch.allclose(logits, full["logits"], atol=1e-6) and torch.allclose(f_id, full["f_id"], atol=1e-6)
    with pytest.raises(ValueError, match="return_dict"):
        model(x, text_feats=torch.randn(4, 2, 8))


# ------------------------------------------------------------------------------- the full method, from objects
@pytest.fixture(scope="module")
def clip64(tmp_path_factory):
    """A tiny CLIP with 64-d features: not ViT-L/14's 768, the width torchreid's build_model gives the student."""
    from fixtures.tiny_clip import tiny_clip

    return tiny_clip(str(tmp_path_factory.mktemp("clip64")))


@pytest.fixture(scope="module")
def body_and_meshes(tmp_path_factory):
    from clip3dreid_plugin.body.procedural import write_procedural_smpl
    from clip3dreid_plugin.body.meshset import render_synthetic_set

    body = write_procedural_smpl(str(tmp_path_factory.mktemp("body")), num_vertices=400)
    meshes = str(tmp_path_factory.mktemp("meshes"))
    render_synthetic_set(body, meshes, num_female=2, num_male=2, poses_per_subject=2, height=64, width=32,
                         show_progress=False)
    return body, meshes


def test_clip3dreid_engine_from_objects_trains_every_term(ltcc_root, tmp_path, clip64, body_and_meshes):
    from clip3dreid_plugin.data.frames import item_image_paths
    from clip3dreid_plugin.teacher.cache import build_teacher_cache
    from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher

    body, meshes = body_and_meshes
    dm = torchreid.data.ImageDataManager(root=ltcc_root, sources="ltcc", height=64, width=32, workers=0)
    cache = str(tmp_path / "ltcc_cache.pt")
    build_teacher_cache(CLIPTeacher(clip64[0], clip64[1]), item_image_paths(dm.train_loader.dataset.train), cache,
                        progress=False, dataset="ltcc")
    code = _substitute(_readme_example("clip3dreid-engine"), {
        'root="reid-data"': f"root={ltcc_root!r}", "height=384, width=192": "height=64, width=32, workers=0",
        "batch_size_train=32": "batch_size_train=8", "pretrained=True": "pretrained=False",
        '"teacher_cache/ltcc__ViT-L-14-quickgelu__ViT-L-14.pt"': repr(cache),
        '"work_dirs/synthetic_meshes"': repr(meshes), "batch_size=11": "batch_size=3",
        '"pretrained/body_models"': repr(body),
        'save_dir="log/clip3dreid-ltcc"': f"save_dir={str(tmp_path / 'log')!r}", "max_epoch=60": "max_epoch=1",
    })
    summaries, seen = [], {}
    original = CLIP3DReIDEngine.forward_backward

    def spy(self, data):
        seen.setdefault("start", _params(self.model))
        summaries.append(original(self, data))
        return summaries[-1]

    CLIP3DReIDEngine.forward_backward = spy
    try:
        ns = {}
        exec(compile(code, "docs/getting_started.md:clip3dreid-engine", "exec"), ns)
    finally:
        CLIP3DReIDEngine.forward_backward = original
    engine, model = ns["engine"], ns["model"]
    # build_model gave Psi and Phi 768-d inputs; the engine sized them to the cache's 64-d teacher before training.
    assert model.teacher_dim == 64 and model.image_head[0].in_features == model.text_head[0].in_features == 64
    trained = {id(p) for group in engine.optimizer.param_groups for p in group["params"]}
    assert all(id(p) in trained for p in model.parameters())
    assert len(summaries) == 2  # 16 training images, batches of 8
    s = {k: float(v) for k, v in summaries[0].items()}  # the terms stay device tensors until the loop reads them
    assert {"ce", "ot", "global", "ot_syn", "3d", "loss"} <= set(s)
    sw = LossSwitches(alpha=0.3, beta=0.5, gamma=0.3)
    assert s["w_ot"] == pytest.approx(sw.alpha * s["ot"]) and s["w_global"] == pytest.approx(sw.beta * s["global"])
    assert s["w_3d"] == pytest.approx(sw.gamma * s["3d"]) and s["w_ot_syn"] == pytest.approx(sw.gamma * s["ot_syn"])
    assert s["loss"] == pytest.approx(sum(v for k, v in s.items() if k.startswith("w_")), rel=1e-5)
    # Collapse diagnostics on the first step (then every 50): cosines in [-1, 1], an effective rank within the batch.
    assert -1 <= s["diag_local_cos"] <= 1 and -1 <= s["diag_psi_cos"] <= 1 and 1 <= s["diag_fid_erank"] <= 8
    assert "diag_fid_erank" not in summaries[1]
    end = _params(model)
    for part in ("backbone.", "aggregator.", "classifier.", "text_head.", "image_head.", "shape_head."):
        assert any(not torch.equal(seen["start"][k], v) for k, v in end.items() if k.startswith(part)), part
    # The engine evaluated with flip-averaged features; recompute its rank-1 by hand.
    rank1 = engine.last_metrics["ltcc"]["general_rank1"]
    assert rank1 == pytest.approx(_rank1_by_hand(model, ns["datamanager"], "ltcc", flip=True), abs=1e-6)
    assert not any(k.startswith("teacher") for k in model.state_dict())


def test_a_width_mismatch_after_training_started_is_one_line(ltcc_root, clip64):
    from clip3dreid_plugin.teacher.clip_teacher import CLIPTeacher

    dm = torchreid.data.ImageDataManager(root=ltcc_root, sources="ltcc", height=64, width=32, workers=0)
    model = CLIP3DReID(dm.num_train_pids, local_dim=32, agg_hidden_dim=16, head_hidden_dim=16, teacher_dim=8)
    opt = torchreid.optim.build_optimizer(model, optim="adam", lr=0.001)
    model(torch.randn(2, 3, 64, 32)).sum().backward()
    opt.step()  # the optimizer has state: its heads can no longer be swapped
    with pytest.raises(ConfigError, match="teacher's features are 64-d but the student's Psi and Phi take 8-d"):
        CLIP3DReIDEngine(dm, model, opt, use_gpu=False, teacher=CLIPTeacher(clip64[0], clip64[1]))


def test_a_plain_script_driving_the_engine_prints_its_evaluation(ltcc_root, tmp_path):
    """No logging set-up in the script: the engine's evaluation table still reaches the console."""
    script = f"""
import torchreid
import clip3dreid_plugin
from clip3dreid_plugin.engine import CLIP3DReIDEngine, LossSwitches

clip3dreid_plugin.register()
dm = torchreid.data.ImageDataManager(root={ltcc_root!r}, sources="ltcc", height=64, width=32, workers=0,
                                     batch_size_train=8)
model = torchreid.models.build_model("clip3dreid", num_classes=dm.num_train_pids, loss="softmax", pretrained=False)
opt = torchreid.optim.build_optimizer(model, optim="adam", lr=0.001)
engine = CLIP3DReIDEngine(dm, model, opt, use_gpu=False, switches=LossSwitches(use_ot=False, use_global=False))
engine.run(save_dir={str(tmp_path / "log")!r}, max_epoch=1)
"""
    env = dict(os.environ, CLIP3DREID_PROGRESS="0", PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "** ltcc **" in proc.stdout and "protocol |   mAP" in proc.stdout, proc.stdout[-2000:]


def test_engine_needs_a_teacher_for_distillation_terms(ltcc_root):
    dm = torchreid.data.ImageDataManager(root=ltcc_root, sources="ltcc", height=64, width=32, workers=0)
    model = CLIP3DReID(dm.num_train_pids, local_dim=32, agg_hidden_dim=16, head_hidden_dim=16, teacher_dim=8)
    opt = torchreid.optim.build_optimizer(model, optim="adam", lr=0.001)
    with pytest.raises(ValueError, match="need a teacher"):
        CLIP3DReIDEngine(dm, model, opt, use_gpu=False)
    with pytest.raises(TypeError, match="teacher-cache file"):
        CLIP3DReIDEngine(dm, model, opt, use_gpu=False, teacher=3)
    # CE only needs no teacher.
    CLIP3DReIDEngine(dm, model, opt, use_gpu=False, switches=LossSwitches(use_ot=False, use_global=False))


# ------------------------------------------------------------------------------------- recipe fidelity and pairs
def test_global_loss_reduction_sum_is_mean_times_width():
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 2048, generator=gen), torch.randn(3, 2048, generator=gen)
    by_hand = sum(float(((a[i] - b[i]) ** 2).sum()) for i in range(3)) / 3
    assert float(global_distill_loss(a, b)) == pytest.approx(by_hand, rel=1e-5)
    assert float(global_distill_loss(a, b, "mean")) == pytest.approx(by_hand / 2048, rel=1e-5)
    # The loss names its argument; the table of loss terms names the option.
    with pytest.raises(ValueError, match="reduction must be one of"):
        global_distill_loss(a, b, "max")
    with pytest.raises(ConfigError, match="loss.clip3dreid.global_reduction"):
        LOSS_TERMS.check(LossSwitches(global_reduction="max"))
    cfg = load_config(None, ["loss.clip3dreid.global_reduction", "mean"])
    assert LossSwitches.from_cfg(cfg).global_reduction == "mean"


def _recipe_pairs():
    pairs = []
    for folder in sorted(glob.glob(osp.join(REPO, "configs", "*"))):
        if osp.basename(folder) == "_base_":
            continue
        baselines = {}
        for f in glob.glob(osp.join(folder, "resnet50_*.yaml")):
            baselines[re.sub(r"^resnet50_(baseline_)?", "", osp.basename(f))] = f
        for f in sorted(glob.glob(osp.join(folder, "clip3dreid_*.yaml"))):
            tail = re.sub(r"^clip3dreid_r50_vit[a-z0-9]+_", "", osp.basename(f))
            pairs.append((baselines.get(tail), f))
    return pairs


RECIPE_KEYS = ["model.pretrained", "clip3dreid.imagenet_weights", "data.sources", "data.targets", "data.height",
               "data.width", "data.transforms", "data.norm_mean", "data.norm_std", "data.type", "video.seq_len",
               "sampler.train_sampler", "sampler.num_instances", "train.optim", "train.lr", "train.weight_decay",
               "train.max_epoch", "train.batch_size", "train.lr_scheduler", "train.stepsize", "train.seed",
               "test.dist_metric", "test.normalize_feature", "eval.flip", "loss.softmax.label_smooth"]


def _get(cfg, key):
    for part in key.split("."):
        cfg = cfg[part]
    return cfg


def test_every_clip3dreid_recipe_has_a_baseline_with_the_same_start_and_recipe(fake_imagenet):
    pairs = _recipe_pairs()
    assert len(pairs) >= 17
    for baseline, student in pairs:
        assert baseline is not None, f"{student} has no resnet50 baseline beside it"
        cb, cs = load_config(baseline), load_config(student)
        for key in RECIPE_KEYS:
            assert _get(cb, key) == _get(cs, key), (osp.relpath(student, REPO), key, _get(cb, key), _get(cs, key))
        family = osp.basename(osp.dirname(student))
        if family in CC_FAMILIES:
            assert "random_erase" in cs.data.transforms, student
        # The same seed and weights source give the same trunk, tensor for tensor.
        torch.manual_seed(cs.train.seed)
        base = build_model(cb, num_classes=4, use_gpu=False).state_dict()
        torch.manual_seed(cs.train.seed)
        trunk = _student_trunk(build_model(cs, num_classes=4, use_gpu=False))
        assert all(torch.equal(base[k], v) for k, v in trunk.items()), student
        if cs.model.pretrained:
            assert torch.equal(trunk["conv1.weight"], fake_imagenet["conv1.weight"]), student


def _recipe_triples():
    """``(baseline, cal, clip3dreid or None)`` for every CAL recipe, matched by the size at the end of the name."""
    triples = []
    for cal in sorted(glob.glob(osp.join(REPO, "configs", "*", "cal_*.yaml"))):
        folder, size = osp.dirname(cal), re.sub(r"^cal_r50_", "", osp.basename(cal))
        baseline = [f for f in glob.glob(osp.join(folder, f"resnet50_*{size}"))]
        students = [f for f in glob.glob(osp.join(folder, f"clip3dreid_r50_vit*_{size}"))]
        triples.append((baseline[0] if len(baseline) == 1 else None, cal, students[0] if students else None))
    return triples


def test_every_cal_recipe_has_the_start_and_recipe_of_its_baseline_and_clip3dreid(fake_imagenet):
    triples = _recipe_triples()
    families = {osp.basename(osp.dirname(cal)) for _, cal, _ in triples}
    assert {"ltcc", "prcc", "vcclothes", "deepchange", "last", "ccvid", "celebreid", "celebreid_light",
            "celebreid_blur", "celebreid_light_blur", "synthcc"} <= families, families
    for baseline, cal, student in triples:
        assert baseline is not None, f"{cal} has no resnet50 baseline of its size beside it"
        cb, cc = load_config(baseline), load_config(cal)
        assert cc.model.name == "cal"
        for other in [cb] + ([load_config(student)] if student else []):
            for key in RECIPE_KEYS:
                assert _get(other, key) == _get(cc, key), (osp.relpath(cal, REPO), key, _get(other, key),
                                                           _get(cc, key))
        torch.manual_seed(cc.train.seed)
        base = build_model(cb, num_classes=4, use_gpu=False).state_dict()
        torch.manual_seed(cc.train.seed)
        trunk = _student_trunk(build_model(cc, num_classes=4, use_gpu=False, num_clothes=6))
        assert all(torch.equal(base[k], v) for k, v in trunk.items()), cal
        if cc.model.pretrained:
            assert torch.equal(trunk["conv1.weight"], fake_imagenet["conv1.weight"]), cal
    # The triple is real where both methods have a recipe of that size.
    assert sum(student is not None for _, _, student in triples) >= 9


def test_clip_baseline_recipes_name_their_clip_weights():
    files = glob.glob(osp.join(REPO, "configs", "*", "clip_*.yaml"))
    assert files
    for f in files:
        cfg = load_config(f)
        weights = cfg.clip_reid.clip_pretrained if cfg.model.name == "clip_reid" else cfg.teacher.pretrained
        assert not cfg.model.pretrained or weights, f
