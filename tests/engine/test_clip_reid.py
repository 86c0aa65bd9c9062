"""CLIP-ReID (AAAI 2023) as a registered baseline: the model, its prompt learner and text encoder, its losses and
its two-stage engine, on tiny open_clip encoders (``tests/fixtures/tiny_clip.py``) with random weights."""
from __future__ import annotations

import json
import math
import os.path as osp

import pytest
import torch
import torch.nn.functional as F

from clip3dreid_plugin import compat
from clip3dreid_plugin.config.defaults import get_cfg
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.teacher.clip_teacher import RANDOM_INIT_SEED
from fixtures.tiny_clip import register_tiny_reid_clips
from fixtures.torchreid_training import softmax_engine_lowers_ce

pytestmark = pytest.mark.slow  # trains models end to end or starts processes

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))


@pytest.fixture(scope="module")
def tiny_reid(tmp_path_factory):
    """``(vit_name, rn_name, folder)`` of the registered tiny encoders."""
    folder = str(tmp_path_factory.mktemp("tiny_reid_clip"))
    vit, rn = register_tiny_reid_clips(folder)
    return vit, rn, folder


def _cfg(name, height=32, width=16, **clip_reid):
    cfg = get_cfg()
    cfg.clip_reid.clip_model = name
    cfg.data.height, cfg.data.width = height, width
    for k, v in clip_reid.items():
        setattr(cfg.clip_reid, k, v)
    return cfg


def _build(cfg, num_classes=8, loss="softmax"):
    # torchreid's own model table, as torchreid.models.build_model reads it (which passes no cfg).
    return compat.model_factory()["clip_reid"](num_classes=num_classes, loss=loss, pretrained=False, use_gpu=False,
                                               cfg=cfg)


def _reference_clip(name):
    """An independent open_clip model with the weights clip_reid's random build draws (the same seeded draw)."""
    import open_clip

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(RANDOM_INIT_SEED)
        return open_clip.create_model(name).eval()


def _capture(module, store, key):
    return module.register_forward_hook(lambda m, i, o: store.__setitem__(key, o))


# ------------------------------------------------------------------------------------------------ the model
def test_vit_eval_feature_is_the_concatenation_of_open_clips_cls_features_and_train_returns_logits(tiny_reid):
    vit = tiny_reid[0]
    model = _build(_cfg(vit, 32, 32))  # the encoder's own 4x4 grid: nothing resized
    ref = _reference_clip(vit)
    x = torch.randn(3, 3, 32, 32)
    got = {}
    hooks = [_capture(ref.visual.ln_post, got, "post"), _capture(ref.visual.transformer.resblocks[-2], got, "b11")]
    model.eval()
    with torch.no_grad():
        feat = model(x)
        f_last, f, f_proj = model.image_features(x)
        proj = ref.encode_image(x)
    for h in hooks:
        h.remove()
    assert feat.shape == (3, 32 + 24)
    torch.testing.assert_close(f_proj, proj, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(feat, torch.cat([got["post"][:, 0], proj], dim=1), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(f_last, got["b11"][:, 0], rtol=1e-5, atol=1e-5)

    model.train()
    logits = model(x)
    bn, bnp = model.bottleneck, model.bottleneck_proj
    norm = lambda v, b: (v - v.mean(0)) / torch.sqrt(v.var(0, unbiased=False) + b.eps) * b.weight  # noqa: E731
    want = norm(f, bn) @ model.classifier.weight.t() + norm(f_proj, bnp) @ model.classifier_proj.weight.t()
    assert logits.shape == (3, 8)
    torch.testing.assert_close(logits, want, rtol=1e-4, atol=1e-6)
    logits, trip = _build(_cfg(vit, 32, 32), loss="triplet").train()(x)
    assert logits.shape == (3, 8) and trip.shape == (3, 56)


def test_rn_last_stride_1_and_its_eval_feature_is_layer4_pooled_with_the_attention_pool(tiny_reid):
    rn = tiny_reid[1]
    model = _build(_cfg(rn, 32, 16))
    x = torch.randn(2, 3, 32, 16)
    got = {}
    h = _capture(model.image_encoder.layer4, got, "l4")
    model.eval()
    with torch.no_grad():
        feat = model(x)
        pooled = model.image_encoder(x)  # open_clip's own ModifiedResNet.forward over the changed modules
    h.remove()
    assert got["l4"].shape[-2:] == (2, 1)  # output stride 16: layer4 at stride 1
    assert feat.shape == (2, 256 + 24) and model.feature_dim == 280
    torch.testing.assert_close(feat, torch.cat([got["l4"].mean((2, 3)), pooled], dim=1), rtol=1e-5, atol=1e-5)
    ref = _reference_clip(rn)
    assert ref.visual.layer4[0].avgpool.kernel_size == 2  # open_clip's own layer4 halves the map


def test_torchreid_build_model_gives_the_reference_test_feature_widths():
    import torchreid

    torch.manual_seed(0)
    model = torchreid.models.build_model("clip_reid", num_classes=8, loss="softmax", pretrained=False)
    assert model.grid == (16, 8)  # 256x128 with 16-px patches
    assert model.eval()(torch.randn(1, 3, 256, 128)).shape == (1, 1280)
    rn = _build(_cfg("RN50-quickgelu", 256, 128))
    assert rn.grid == (16, 8) and rn.feature_dim == 3072


def test_positional_embeddings_are_resized_bilinearly_with_cls_kept(tiny_reid):
    vit, rn = tiny_reid[:2]
    for name, get in ((vit, lambda v: v.positional_embedding), (rn, lambda v: v.attnpool.positional_embedding)):
        model, ref = _build(_cfg(name, 32, 16)), _reference_clip(name)
        old, new = get(ref.visual).detach(), get(model.image_encoder).detach()
        side = int(round((old.shape[0] - 1) ** 0.5))
        h, w = model.grid
        grid = old[1:].reshape(1, side, side, -1).permute(0, 3, 1, 2)
        want = F.interpolate(grid, size=(h, w), mode="bilinear").permute(0, 2, 3, 1).reshape(h * w, -1)
        assert new.shape == (1 + h * w, old.shape[1])
        torch.testing.assert_close(new[0], old[0], rtol=0, atol=0)
        torch.testing.assert_close(new[1:], want)
        # Independently: halving the width bilinearly (align_corners False) averages each pair of columns.
        if h == side and w * 2 == side:
            pairs = grid.reshape(1, -1, side, w, 2).mean(-1).permute(0, 2, 3, 1).reshape(h * w, -1)
            torch.testing.assert_close(new[1:], pairs, rtol=1e-6, atol=1e-6)


def test_the_overlapping_patch_stride_gives_the_reference_grid(tiny_reid):
    model = _build(_cfg(tiny_reid[0], 32, 16, stride=4))
    assert model.grid == ((32 - 8) // 4 + 1, (16 - 8) // 4 + 1) == (7, 3)
    assert model.image_encoder.conv1.stride == (4, 4)
    assert model.image_encoder.positional_embedding.shape[0] == 1 + 21
    assert model.eval()(torch.randn(1, 3, 32, 16)).shape == (1, 56)


def test_sie_changes_the_cls_token_only_and_another_camera_another_feature(tiny_reid):
    model = _build(_cfg(tiny_reid[0], 32, 16, sie_cameras=3, sie_coe=2.0)).eval()
    x = torch.randn(1, 3, 32, 16).repeat(2, 1, 1, 1)  # one image, seen by two cameras
    cams = torch.tensor([0, 2])
    with torch.no_grad():
        plain = model.vit_tokens(x, sie=False)
        sie = model.vit_tokens(x, cams)
        diff = sie - plain
        torch.testing.assert_close(diff[:, 0], 2.0 * model.cv_embed[cams])
        assert float(diff[:, 1:].abs().max()) == 0.0
        feat = model(x, cam_label=cams)
    assert float((feat[0] - feat[1]).abs().max()) > 1e-4  # the same image under cameras 0 and 2
    with pytest.raises(ValueError, match="sie_cameras 3"):
        model(x, cam_label=torch.tensor([0, 3]))
    with pytest.raises(ValueError, match="pass cam_label"):
        model(x)
    with pytest.raises(ConfigError, match="SIE is for ViT"):
        _build(_cfg(tiny_reid[1], sie_cameras=3))


def test_the_necks_bias_is_a_buffer_and_the_classifiers_have_none(tiny_reid):
    from torchreid.reid.utils import open_all_layers

    model = _build(_cfg(tiny_reid[0]))
    open_all_layers(model)  # what torchreid's engines do every epoch
    names = {n for n, _ in model.named_parameters()}
    assert "bottleneck.bias" not in names and "bottleneck_proj.bias" not in names
    assert float(model.bottleneck.bias.abs().max()) == 0.0 and model.bottleneck.weight.requires_grad
    assert model.classifier.bias is None and model.classifier_proj.bias is None
    assert 0.0005 < float(model.classifier.weight.std()) < 0.0015


def test_unknown_encoder_and_missing_weights_fail_in_one_line(tiny_reid):
    from clip3dreid_plugin.models.imagenet import PretrainedWeightsError
    from clip3dreid_plugin.teacher.weights import TeacherLoadError

    with pytest.raises(TeacherLoadError, match="clip_reid.clip_model='ViT-B-61'"):
        _build(_cfg("ViT-B-61"))
    table = compat.model_factory()
    with pytest.raises(PretrainedWeightsError, match="clip_reid.clip_pretrained is empty"):
        table["clip_reid"](num_classes=2, pretrained=True, use_gpu=False, cfg=_cfg(tiny_reid[0]))
    cfg = _cfg(tiny_reid[0])
    cfg.clip_reid.clip_pretrained = "/no/such/file.pt"
    with pytest.raises(TeacherLoadError, match=r"clip_reid weights file not found: '/no/such/file.pt'"):
        table["clip_reid"](num_classes=2, pretrained=True, use_gpu=False, cfg=cfg)


def test_local_weights_are_loaded_before_the_geometry_changes(tiny_reid, tmp_path):
    import open_clip

    vit = tiny_reid[0]
    torch.manual_seed(5)
    src = open_clip.create_model(vit)
    path = str(tmp_path / "w.pt")
    torch.save(src.state_dict(), path)
    cfg = _cfg(vit, 32, 32)
    cfg.clip_reid.clip_pretrained = path
    model = compat.model_factory()["clip_reid"](num_classes=2, pretrained=True, use_gpu=False, cfg=cfg).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model.image_features(x)[2], src.eval().encode_image(x), rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------------- the text side
def test_prompts_set_to_x_give_open_clips_encode_text_of_the_template(tiny_reid):
    import open_clip

    for name in tiny_reid[:2]:
        model, ref = _build(_cfg(name), num_classes=5), _reference_clip(name)
        tok = open_clip.get_tokenizer(name)
        text = "A photo of a X X X X person."
        assert model.prompt_text == text
        x_id = tok(["X"])[0, 1]
        with torch.no_grad():
            model.prompt_learner.cls_ctx.copy_(model.text_encoder.token_embedding.weight[x_id].expand(5, 4, -1))
            got = model.text_features(torch.arange(5))
            want = ref.encode_text(tok([text]))
        assert got.shape == (5, 24)
        torch.testing.assert_close(got, want.expand(5, -1), rtol=1e-5, atol=1e-5)


def test_changing_one_identitys_prompt_changes_only_its_text_feature(tiny_reid):
    model = _build(_cfg(tiny_reid[0]), num_classes=6)
    labels = torch.arange(6)
    with torch.no_grad():
        before = model.text_features(labels)
        model.prompt_learner.cls_ctx[3] += torch.randn_like(model.prompt_learner.cls_ctx[3])
        after = model.text_features(labels)
    moved = (after - before).abs().amax(dim=1)
    assert float(moved[3]) > 1e-3
    assert float(torch.cat([moved[:3], moved[4:]]).max()) == 0.0


# ------------------------------------------------------------------------------------------------ the losses
def _supcon_by_hand(anchors, contrast, ya, yc):
    total = 0.0
    for i in range(anchors.shape[0]):
        scores = [float(anchors[i] @ contrast[j]) for j in range(contrast.shape[0])]
        top = max(scores)
        log_norm = top + torch.log(torch.tensor([sum(torch.exp(torch.tensor(s - top)) for s in scores)])).item()
        positives = [j for j in range(contrast.shape[0]) if int(yc[j]) == int(ya[i])]
        total += -sum(scores[j] - log_norm for j in positives) / len(positives)
    return total / anchors.shape[0]


def test_both_contrastive_losses_equal_a_per_anchor_computation_with_several_positives():
    from clip3dreid_plugin.losses.supcon import image_to_text_loss, supervised_contrastive_loss, text_to_image_loss

    torch.manual_seed(0)
    labels = torch.tensor([0, 0, 1, 2, 2, 2, 1, 3])  # 2, 2, 3 and 1 positives per identity
    img, txt = torch.randn(8, 6) * 2, torch.randn(8, 6) * 2
    i2t, t2i = image_to_text_loss(img, txt, labels), text_to_image_loss(txt, img, labels)
    assert abs(float(i2t) - _supcon_by_hand(img, txt, labels, labels)) < 1e-4
    assert abs(float(t2i) - _supcon_by_hand(txt, img, labels, labels)) < 1e-4
    assert abs(float(i2t) - float(t2i)) > 1e-3  # the two directions normalise over different sets
    other = torch.tensor([1, 0, 2, 2, 0])  # anchors of other identities than the contrast rows in their place
    got = supervised_contrastive_loss(img[:5], txt[:5], other, labels[:5])
    assert abs(float(got) - _supcon_by_hand(img[:5], txt[:5], other, labels[:5])) < 1e-4
    with pytest.raises(ValueError, match="needs a positive"):
        supervised_contrastive_loss(img[:2], txt[:2], torch.tensor([0, 5]), torch.tensor([0, 1]))


# ------------------------------------------------------------------------------------------------ the engine
def test_the_schedules_and_parameter_groups_are_the_references(tiny_reid):
    from clip3dreid_plugin.engine.clip_reid_engine import stage1_lr_factor, stage2_lr_factor, stage2_param_groups

    # WarmupMultiStepLR (factor 0.1, 10 warm-up epochs, milestones 30/50) at 1-based epochs, written out.
    for epoch, want in ((1, 0.1 * 0.9 + 0.1), (5, 0.1 * 0.5 + 0.5), (10, 1.0), (29, 1.0), (30, 0.1), (50, 0.01)):
        assert abs(stage2_lr_factor(epoch, [30, 50], 0.1, 0.1, 10) - want) < 1e-12, epoch
    base = 3.5e-4
    assert abs(stage1_lr_factor(1, 120, base, 5, 1e-5, 1e-6) * base - (1e-5 + (base - 1e-5) / 5)) < 1e-12
    cos60 = 1e-6 + 0.5 * (base - 1e-6) * (1 + math.cos(math.pi * 60 / 120))
    assert abs(stage1_lr_factor(60, 120, base, 5, 1e-5, 1e-6) * base - cos60) < 1e-12
    model = _build(_cfg(tiny_reid[0]))
    weights, biases = stage2_param_groups(model, 5e-6, 1e-4, 2.0, 3e-4)
    named = {id(p): n for n, p in model.named_parameters()}
    assert biases["lr"] == 1e-5 and biases["weight_decay"] == 3e-4 and weights["weight_decay"] == 1e-4
    assert all("bias" in named[id(p)] for p in biases["params"]) and biases["params"]
    everything = [named[id(p)] for g in (weights, biases) for p in g["params"]]
    assert not any(n.startswith(("text_encoder.", "prompt_learner.")) for n in everything)
    assert "classifier.weight" in everything and "image_encoder.conv1.weight" in everything


def _train_args(root, out, source, vit, *extra, recipe=("ltcc", "clip_reid_vitb16_256x128.yaml")):
    return ["--config-file", osp.join(REPO, "configs", *recipe), "--device", "cpu", "--output-dir", out,
            "--seed", "1", "data.root", root, "data.sources", f"['{source}']", "data.targets", f"['{source}']",
            "model.pretrained", "False", "clip_reid.clip_model", vit, "clip_reid.stride", "0",
            "data.height", "32", "data.width", "16", "data.workers", "0", "sampler.num_instances", "2",
            "train.batch_size", "4", "clip_reid.stage1_epochs", "2", "clip_reid.stage1_batch_size", "4",
            "train.max_epoch", "1", "test.batch_size", "4", "test.eval_freq", "-1", "eval.flip", "False",
            "runtime.progress", "False", *extra]


def _train_cfg(*args, **kw):
    from clip3dreid_plugin.tools import train_net

    return train_net.setup_cfg(train_net.build_parser().parse_args(_train_args(*args, **kw)))


@pytest.fixture(scope="module")
def ltcc_root(tmp_path_factory):
    from fixtures.dataset_trees import make_ltcc

    root = str(tmp_path_factory.mktemp("clip_reid_trees"))
    make_ltcc(root)
    return root


def _state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_stage1_prompts_retrieve_their_identitys_images_far_above_chance_and_nothing_else_moves(
        tiny_reid, toy_market_root, tmp_path):
    from clip3dreid_plugin.tools import train_net

    cfg = _train_cfg(toy_market_root[0], str(tmp_path / "s1"), "market1501", tiny_reid[0],
                     "clip_reid.stage1_epochs", "30", "clip_reid.stage1_lr", "0.01", "clip_reid.stage1_batch_size",
                     "12", "clip_reid.stage1_warmup_epochs", "1", "data.height", "64", "data.width", "32",
                     recipe=("market1501", "clip_reid_vitb16_256x128.yaml"))
    engine = train_net.build(cfg)
    net = engine.net
    before = _state(net)
    feats, labels = engine.train_image_features()
    with torch.no_grad():
        start = (net.text_features(torch.arange(6)) @ feats.t())
    for engine.epoch in range(30):
        engine.train()
    after = _state(net)
    moved = [k for k in before if not torch.equal(before[k], after[k])]
    assert moved == ["prompt_learner.cls_ctx"], moved  # BN statistics too: the encoders stay in eval mode

    with torch.no_grad():
        scores = net.text_features(torch.arange(6)) @ feats.t()  # [identities, training images]

    def precision(s):
        # Of each identity's k top-scored images (k = its image count), the share that are its own.
        hits = [float((labels[s[p].topk(int((labels == p).sum())).indices] == p).float().mean()) for p in range(6)]
        return sum(hits) / len(hits)

    chance = float(sum((labels == p).float().mean() for p in range(6)) / 6)
    rate, rate0 = precision(scores), precision(start)
    print(f"stage 1 text->image retrieval precision {rate:.3f} (untrained prompts {rate0:.3f}, chance {chance:.3f})")
    assert rate >= 3 * chance and rate > rate0 + 0.3, (rate, rate0, chance)


def test_stage2_trains_an_epoch_evaluates_ltcc_and_leaves_the_text_side_alone(tiny_reid, ltcc_root, tmp_path):
    from clip3dreid_plugin.tools import train_net

    engine = train_net.build(_train_cfg(ltcc_root, str(tmp_path / "s2"), "ltcc", tiny_reid[0]))
    net = engine.net
    seen = {}
    real = engine.identity_text_features

    def at_stage2():
        seen["state"] = _state(net)
        return real()

    engine.identity_text_features = at_stage2
    start = _state(net)
    engine.run(save_dir=str(tmp_path / "s2"), max_epoch=1)
    end = _state(net)
    text = [k for k in end if k.startswith(("text_encoder.", "prompt_learner."))]
    assert not torch.equal(start["prompt_learner.cls_ctx"], seen["state"]["prompt_learner.cls_ctx"])  # stage 1
    assert all(torch.equal(seen["state"][k], end[k]) for k in text), "stage 2 moved the text side"
    assert not torch.equal(seen["state"]["image_encoder.conv1.weight"], end["image_encoder.conv1.weight"])
    assert not torch.equal(seen["state"]["classifier_proj.weight"], end["classifier_proj.weight"])
    metrics = engine.last_metrics["ltcc"]
    assert {"general_mAP", "general_rank1", "cc_mAP", "cc_rank1"} <= set(metrics), metrics


def _record_prompt_epochs(monkeypatch, kill_at=None) -> list:
    """Records the epochs whose prompts train (stage 1); with ``kill_at`` that epoch raises ``KeyboardInterrupt``
    instead, as a killed run would."""
    from clip3dreid_plugin.engine.clip_reid_engine import CLIPReIDEngine

    real, epochs = CLIPReIDEngine._train_prompts, []

    def spy(self):
        if self.epoch == kill_at:
            raise KeyboardInterrupt("killed in stage 1")
        epochs.append(self.epoch)
        return real(self)

    monkeypatch.setattr(CLIPReIDEngine, "_train_prompts", spy)
    return epochs


def _assert_same_final_stage2_weights(straight: str, part: str, epoch: int) -> None:
    a = compat.load_checkpoint(osp.join(straight, "model", f"model.pth.tar-{epoch}"))
    b = compat.load_checkpoint(osp.join(part, "model", f"model.pth.tar-{epoch}"))
    assert a["clip_reid_stage"] == b["clip_reid_stage"] == 2
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k


def test_a_run_killed_in_stage1_resumes_stage1_and_ends_as_the_uninterrupted_one(tiny_reid, ltcc_root, tmp_path,
                                                                                   monkeypatch):
    from clip3dreid_plugin.tools import train_net

    common = ("clip_reid.stage1_epochs", "3")
    straight = str(tmp_path / "straight")
    train_net.run(_train_cfg(ltcc_root, straight, "ltcc", tiny_reid[0], *common))
    part = str(tmp_path / "part")
    with monkeypatch.context() as m:
        calls = _record_prompt_epochs(m, kill_at=2)
        with pytest.raises(KeyboardInterrupt):
            train_net.run(_train_cfg(ltcc_root, part, "ltcc", tiny_reid[0], *common))
    assert calls == [0, 1]
    ckpt = compat.load_checkpoint(osp.join(part, "model", "model.pth.tar-2"))
    assert ckpt["clip_reid_stage"] == 1 and ckpt["epoch"] == 2
    resumed = _record_prompt_epochs(monkeypatch)
    train_net.run(_train_cfg(ltcc_root, part, "ltcc", tiny_reid[0], *common, "model.resume", "auto"))
    assert resumed == [2]  # the third stage-1 epoch, then stage 2
    _assert_same_final_stage2_weights(straight, part, 4)


def test_a_run_stopped_in_stage2_resumes_stage2_and_ends_as_the_uninterrupted_one(tiny_reid, ltcc_root, tmp_path,
                                                                                   monkeypatch):
    from clip3dreid_plugin.tools import train_net

    stage1 = ("clip_reid.stage1_epochs", "1")
    straight = str(tmp_path / "straight")
    train_net.run(_train_cfg(ltcc_root, straight, "ltcc", tiny_reid[0], *stage1, "train.max_epoch", "2"))
    part = str(tmp_path / "part")  # stops after its first stage-2 epoch, then resumes into the second
    train_net.run(_train_cfg(ltcc_root, part, "ltcc", tiny_reid[0], *stage1, "train.max_epoch", "1"))
    assert compat.load_checkpoint(osp.join(part, "model", "model.pth.tar-2"))["clip_reid_stage"] == 2
    prompt_epochs = _record_prompt_epochs(monkeypatch)
    train_net.run(_train_cfg(ltcc_root, part, "ltcc", tiny_reid[0], *stage1, "train.max_epoch", "2",
                             "model.resume", "auto"))
    assert prompt_epochs == []  # stage 1 is not run again
    _assert_same_final_stage2_weights(straight, part, 3)


def test_the_train_command_runs_both_stages_of_the_ltcc_recipe(tiny_reid, ltcc_root, tmp_path):
    from clip3dreid_plugin.tools import train_net

    out = str(tmp_path / "cli")
    assert train_net.main(_train_args(ltcc_root, out, "ltcc", tiny_reid[0])) == 0
    with open(osp.join(out, "metrics.json"), encoding="utf-8") as f:
        record = json.load(f)
    metrics = record["last"]["metrics"]["ltcc"]
    assert record["last"]["epoch"] == 3  # 2 stage-1 epochs, then 1 stage-2 epoch
    assert {"general_mAP", "general_rank1", "cc_mAP", "cc_rank1"} <= set(metrics), metrics
    assert osp.isfile(osp.join(out, "model", "model.pth.tar-3"))


def test_torchreids_softmax_engine_trains_clip_reid(tiny_reid, ltcc_root):
    from clip3dreid_plugin.data.datamanager import ClothesImageDataManager

    dm = ClothesImageDataManager(root=ltcc_root, sources="ltcc", height=32, width=16, batch_size_train=2,
                                 workers=0, train_sampler="RandomSampler", transforms=None)
    model = _build(_cfg(tiny_reid[0]), num_classes=dm.num_train_pids)
    before, after = softmax_engine_lowers_ce(dm, model, torch.optim.Adam(model.parameters(), lr=1e-3))
    assert after < before


# ------------------------------------------------------------------------------------------------ the recipes
#: What a CLIP-ReID recipe shares with its resnet50 partner: the data, the size, the augmentation, the evaluation.
PARTNER_KEYS = ["data.sources", "data.targets", "data.type", "data.height", "data.width", "data.transforms",
                "video.seq_len", "train.seed", "test.dist_metric", "test.normalize_feature", "eval.flip",
                "eval.protocols", "loss.softmax.label_smooth"]
#: The reference's schedules (configs/person/vit_clipreid.yml and cnn_clipreid.yml).
REFERENCE = {
    "vitb16": {"clip_reid.clip_model": "ViT-B-16-quickgelu", "clip_reid.stage1_epochs": 120, "train.max_epoch": 60,
               "train.lr": 5e-6, "clip_reid.warmup_factor": 0.1, "train.stepsize": [30, 50],
               "train.weight_decay": 1e-4, "clip_reid.id_weight": 0.25, "data.norm_mean": [0.5, 0.5, 0.5]},
    "rn50": {"clip_reid.clip_model": "RN50-quickgelu", "clip_reid.stage1_epochs": 60, "train.max_epoch": 120,
             "train.lr": 3.5e-4, "clip_reid.warmup_factor": 0.01, "train.stepsize": [40, 70],
             "train.weight_decay": 5e-4, "clip_reid.id_weight": 1.0, "data.norm_mean": [0.485, 0.456, 0.406]},
}


def test_every_clip_reid_recipe_has_a_partner_of_the_same_data_size_and_augmentation():
    import glob

    from clip3dreid_plugin.config import load_config

    def get(cfg, key):
        for part in key.split("."):
            cfg = cfg[part]
        return cfg

    recipes = sorted(glob.glob(osp.join(REPO, "configs", "*", "clip_reid_*_256x128.yaml")))
    families = {osp.basename(osp.dirname(r)) for r in recipes}
    assert {"market1501", "msmt17", "dukemtmcreid", "ltcc", "prcc", "celebreid", "deepchange", "ccvid"} <= families
    assert len(recipes) == 2 * len(families)
    for recipe in recipes:
        partner = osp.join(osp.dirname(recipe), "resnet50_baseline_256x128.yaml")
        assert osp.isfile(partner), recipe
        cr, cb = load_config(recipe), load_config(partner)
        assert cr.model.name == "clip_reid" and cb.model.name == "resnet50"
        for key in PARTNER_KEYS:
            assert get(cr, key) == get(cb, key), (osp.relpath(recipe, REPO), key)
        backbone = osp.basename(recipe).split("_")[2]
        for key, want in REFERENCE[backbone].items():
            assert get(cr, key) == want, (osp.relpath(recipe, REPO), key, get(cr, key))
        assert (cr.train.batch_size, cr.sampler.num_instances, cr.clip_reid.stage1_batch_size) == (64, 4, 64)
        assert cr.clip_reid.clip_pretrained == "openai" and cr.train.optim == "adam"
        assert (cr.clip_reid.bias_lr_factor, cr.clip_reid.weight_decay_bias) == (2.0, cr.train.weight_decay)


def test_ccvid_clips_train_as_frames_and_sie_reads_the_cameras_at_test_time(tiny_reid, tmp_path_factory, tmp_path):
    from fixtures.dataset_trees import make_ccvid

    from clip3dreid_plugin.engine.clip_reid_engine import CLIPReIDEngine
    from clip3dreid_plugin.tools import train_net

    root = str(tmp_path_factory.mktemp("clip_reid_ccvid"))
    make_ccvid(root)
    out = str(tmp_path / "ccvid")
    seen = []
    real = CLIPReIDEngine.extract_features

    def spy(self, imgs):
        seen.append((tuple(imgs.shape), torch.as_tensor(self._eval_cams).tolist()))
        return real(self, imgs)

    CLIPReIDEngine.extract_features = spy
    try:
        train_net.run(_train_cfg(root, out, "ccvid", tiny_reid[0], "video.seq_len", "2", "train.batch_size", "2",
                                 "clip_reid.sie_cameras", "17", recipe=("ccvid", "clip_reid_vitb16_256x128.yaml")))
    finally:
        CLIPReIDEngine.extract_features = real
    assert seen and all(len(shape) == 5 and len(cams) == shape[0] for shape, cams in seen)
    with open(osp.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)["last"]["metrics"]["ccvid"]
    assert {"general_mAP", "cc_mAP"} <= set(metrics), metrics


def test_too_few_camera_embeddings_stop_before_training(tiny_reid, ltcc_root, tmp_path):
    from clip3dreid_plugin.tools import train_net

    with pytest.raises(ConfigError, match="clip_reid.sie_cameras is 2 but the data has camera id"):
        train_net.build(_train_cfg(ltcc_root, str(tmp_path / "o"), "ltcc", tiny_reid[0], "clip_reid.sie_cameras",
                                   "2"))


def test_two_processes_train_both_stages_and_hold_the_same_weights(tiny_reid, ltcc_root, tmp_path):
    """Under torchrun the text side is outside DDP and the engine averages the prompts' gradients, and the stage-1
    feature pass is sharded then gathered: after both stages, both ranks hold the same prompts and network."""
    import os
    import subprocess
    import sys

    dump = tmp_path / "dump"
    dump.mkdir()
    path = os.pathsep.join([REPO, osp.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", DUMP_DIR=str(dump),
               TINY_CLIP_CONFIG=osp.join(tiny_reid[2], f"{tiny_reid[0]}.json"))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           "--master_port=29653", "-m", "fixtures.train_and_dump",
           *_train_args(ltcc_root, str(tmp_path / "o"), "ltcc", tiny_reid[0], "train.batch_size", "2")]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")[-3000:]
    a, b = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    log = proc.stdout.decode(errors="replace")
    assert "stage 1 epoch 2/2" in log and "epoch 3/3 done" in log, log[-3000:]  # both stages ran
    assert osp.isfile(osp.join(str(tmp_path / "o"), "model", "model.pth.tar-3"))


def test_bf16_autocast_runs_both_stages(tiny_reid, ltcc_root, tmp_path):
    from clip3dreid_plugin.tools import train_net

    out = str(tmp_path / "bf16")
    train_net.run(_train_cfg(ltcc_root, out, "ltcc", tiny_reid[0], "runtime.amp", "bf16"))
    with open(osp.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)["last"]["metrics"]["ltcc"]
    assert all(math.isfinite(v) for v in metrics.values()) and "cc_mAP" in metrics
    state = compat.load_checkpoint(osp.join(out, "model", "model.pth.tar-3"))["state_dict"]
    assert state["prompt_learner.cls_ctx"].dtype == torch.float32  # autocast computes in bf16, weights stay fp32
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
