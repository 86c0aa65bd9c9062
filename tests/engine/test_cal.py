"""CAL: its two losses against a per-sample computation written here from the formulas, the ``cal`` network under
torchreid's factory and engines, the identity-outfit map, ``CALEngine``'s step order and its checkpoints."""
from __future__ import annotations

import json
import math
import os.path as osp

import pytest
import torch

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data.outfits import check_clothes_labels, identity_outfits
from clip3dreid_plugin.losses.clothes import clothes_adversarial_loss, clothes_classification_loss
from clip3dreid_plugin.tools import train_net
from fixtures.dataset_trees import make_ccvid, make_ltcc, make_manifest, make_prcc
from fixtures.torchreid_training import softmax_engine_lowers_ce

pytestmark = pytest.mark.slow  # trains models end to end or starts processes

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))

# Three identities wearing one, two and three outfits: outfit -> identity.
OWNER = [0, 1, 1, 2, 2, 2]


def _positives(pids):
    return torch.tensor([[OWNER[c] == p for c in range(len(OWNER))] for p in pids])


def _adversarial_by_hand(cos, clothes, pids, scale, epsilon):
    total = 0.0
    for i in range(len(pids)):
        z = [scale * float(v) for v in cos[i]]
        pos = [c for c in range(len(z)) if OWNER[c] == pids[i]]
        neg = [c for c in range(len(z)) if OWNER[c] != pids[i]]
        loss = 0.0
        for j in range(len(z)):
            q = (1 - epsilon) * (j == clothes[i]) + (epsilon / len(pos) if j in pos else 0.0)
            if q:
                log_p = z[j] - math.log(sum(math.exp(z[k]) for k in neg) + math.exp(z[j]))
                loss -= q * log_p
        total += loss
    return total / len(pids)


@pytest.mark.parametrize("epsilon", [0.0, 0.1])
def test_the_adversarial_loss_equals_the_formula_per_sample(epsilon):
    gen = torch.Generator().manual_seed(0)
    clothes = [0, 1, 2, 3, 4, 5, 2, 5]
    pids = [OWNER[c] for c in clothes]
    cos = torch.rand(len(clothes), len(OWNER), generator=gen) * 2 - 1
    got = clothes_adversarial_loss(cos, torch.tensor(clothes), _positives(pids), scale=16.0, epsilon=epsilon)
    assert float(got) == pytest.approx(_adversarial_by_hand(cos, clothes, pids, 16.0, epsilon), abs=1e-6, rel=1e-6)


def test_the_adversarial_loss_of_the_one_outfit_identity_is_its_cross_entropy_against_the_negatives():
    # Identity 0 has one outfit: the target is that outfit whatever epsilon, and only negatives compete with it.
    cos = torch.tensor([[0.5, 0.1, -0.2, 0.3, 0.0, 0.4]])
    want = -(8.0 - math.log(sum(math.exp(16 * v) for v in (0.1, -0.2, 0.3, 0.0, 0.4)) + math.exp(8.0)))
    for eps in (0.0, 0.1, 0.5):
        got = clothes_adversarial_loss(cos, torch.tensor([0]), _positives([0]), epsilon=eps)
        assert float(got) == pytest.approx(want, rel=1e-6)


def test_the_clothes_loss_is_normface_cross_entropy():
    gen = torch.Generator().manual_seed(1)
    cos = torch.rand(5, 6, generator=gen) * 2 - 1
    clothes = [0, 3, 5, 1, 1]
    want = sum(-(16 * float(cos[i, c]) - math.log(sum(math.exp(16 * float(v)) for v in cos[i])))
               for i, c in enumerate(clothes)) / 5
    assert float(clothes_classification_loss(cos, torch.tensor(clothes))) == pytest.approx(want, rel=1e-6)


def test_a_positive_mask_without_the_own_outfit_and_bad_shapes_are_refused():
    cos = torch.zeros(2, 6)
    mask = _positives([1, 1])
    with pytest.raises(ValueError, match="own outfit"):
        clothes_adversarial_loss(cos, torch.tensor([1, 0]), mask)  # outfit 0 is identity 0's
    with pytest.raises(ValueError, match=r"positive_mask must have the shape"):
        clothes_adversarial_loss(cos, torch.tensor([1, 2]), mask[:, :5])
    with pytest.raises(ValueError, match=r"clothes_ids must be \[B\]"):
        clothes_classification_loss(cos, torch.tensor([1, 2, 3]))


def test_identity_outfits_and_the_clothes_label_check():
    items = [("a", 0, 0, 0, 0), ("b", 0, 1, 0, 2), ("c", 1, 0, 0, 1), ("d", 2, 0, 1, 3), ("e", 3, 0, 1, 4)]
    table = identity_outfits(items, 4, 5)
    assert table.tolist() == [[True, False, True, False, False], [False, True, False, False, False],
                              [False, False, False, True, False], [False, False, False, False, True]]
    with pytest.raises(ConfigError, match="outfit 1 is worn by identities 1 and 0"):
        identity_outfits(items + [("f", 0, 0, 0, 1)], 4, 5)
    with pytest.raises(ConfigError, match="outside"):
        identity_outfits([("g", 4, 0, 0, 0)], 4, 5)
    check_clothes_labels(items[:3], ["ltcc"], "cal")  # identity 0 wears two outfits
    # Source 1 (market1501-like: one outfit per identity) is named.
    with pytest.raises(ConfigError, match="cal needs clothes labels, but training dataset 'market1501'"):
        check_clothes_labels(items, ["ltcc", "market1501"], "cal")


def test_torchreid_builds_cal_and_its_eval_feature_is_the_bn_of_max_and_average_pooling():
    import torchreid

    import clip3dreid_plugin

    clip3dreid_plugin.register()
    torch.manual_seed(0)
    model = torchreid.models.build_model("cal", num_classes=8, loss="softmax", pretrained=False)
    assert model.clothes_classifier is None  # torchreid passes no outfit count: CAL without its clothes terms
    x = torch.randn(3, 3, 64, 32)
    model.train()
    logits = model(x)
    model.eval()
    with torch.no_grad():
        feat = model(x)
        fmap = model.backbone(x)
        assert fmap.shape[-2:] == (4, 2)  # last stride 1: 64x32 / 16
        pooled = torch.cat([fmap.amax(dim=(2, 3)), fmap.mean(dim=(2, 3))], dim=1)
        bn = model.bnneck
        want = (pooled - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias
    assert feat.shape == (3, 4096) and logits.shape == (3, 8)
    torch.testing.assert_close(feat, want, rtol=1e-4, atol=1e-5)
    assert float(model.classifier.bias.abs().max()) == 0.0
    assert 0.0005 < float(model.classifier.weight.std()) < 0.0015
    trunk = torchreid.models.build_model("resnet50", num_classes=8, loss="softmax", pretrained=False)
    assert trunk.layer4[0].conv2.stride == (2, 2) and model.backbone[7][0].conv2.stride == (1, 1)


def test_the_clothes_classifier_is_a_cosine_of_unit_rows():
    from clip3dreid_plugin.models.cal import NormalizedClassifier

    torch.manual_seed(0)
    head = NormalizedClassifier(16, 5)
    torch.testing.assert_close(head.weight.norm(dim=1), torch.ones(5))
    x = torch.randn(4, 16)
    want = torch.tensor([[float(x[i] @ head.weight[j]) / float(x[i].norm() * head.weight[j].norm())
                          for j in range(5)] for i in range(4)])
    torch.testing.assert_close(head(x), want, rtol=1e-5, atol=1e-6)
    x.requires_grad_(True)
    head(x, detach_weight=True).sum().backward()
    assert head.weight.grad is None and float(x.grad.abs().sum()) > 0


# ------------------------------------------------------------------------------------------- the engine
def _cfg(root, out, source, *extra, recipe=("ltcc", "cal_r50_384x192.yaml")):
    argv = ["--config-file", osp.join(REPO, "configs", *recipe), "--device", "cpu",
            "--output-dir", out, "--seed", "1", "data.root", root, "data.sources", f"['{source}']",
            "data.targets", f"['{source}']", "model.pretrained", "False", "data.height", "64", "data.width", "32",
            "data.workers", "0", "sampler.train_sampler", "RandomSampler", "train.batch_size", "2",
            "train.max_epoch", "2", "test.batch_size", "4", "test.eval_freq", "-1", "eval.flip", "False",
            "runtime.progress", "False", *extra]
    return train_net.setup_cfg(train_net.build_parser().parse_args(argv))


@pytest.fixture(scope="module")
def trees(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("cal_trees"))
    make_ltcc(root)
    make_prcc(root)
    make_ccvid(root)
    manifest = str(tmp_path_factory.mktemp("cal_manifest"))
    make_manifest(manifest)
    return root, manifest


def test_the_clothes_step_comes_first_trains_the_clothes_classifier_only_and_the_adversarial_term_starts_late(
        trees, tmp_path):
    cfg = _cfg(trees[0], str(tmp_path / "o"), "ltcc", "cal.start_epoch_cc", "0", "cal.start_epoch_adv", "1")
    engine = train_net.build(cfg)
    engine.set_model_mode("train")
    model = engine.model
    batch = next(iter(engine.train_loader))
    assert model.clothes_classifier.weight.shape == (4, 4096)  # LTCC's fixture: 4 training outfits
    main_ids = {id(p) for g in engine.optimizer.param_groups for p in g["params"]}
    assert id(model.clothes_classifier.weight) not in main_ids and id(model.classifier.weight) in main_ids

    # The clothes loss alone: every network gradient stays empty, the classifier's is not.
    seen = {}
    real_step = engine.clothes_optimizer.step

    def spy():
        seen["grads"] = {n: p.grad for n, p in model.named_parameters()}
        seen["net_weight"] = model.bnneck.weight.detach().clone()
        real_step()
        seen["classifier_after"] = model.clothes_classifier.weight.detach().clone()

    engine.clothes_optimizer.step = spy
    before = model.clothes_classifier.weight.detach().clone()
    engine.epoch = 0
    terms = engine.forward_backward(batch)
    assert set(terms) == {"ce", "clothes"}  # before start_epoch_adv: no adversarial term
    assert all(g is None for n, g in seen["grads"].items() if not n.startswith("clothes_classifier")), \
        [n for n, g in seen["grads"].items() if g is not None]
    assert float(seen["grads"]["clothes_classifier.weight"].abs().sum()) > 0
    assert not torch.equal(seen["classifier_after"], before)
    # The clothes step ran before the main step (which then moved the network).
    assert not torch.equal(model.bnneck.weight.detach(), seen["net_weight"])

    # From start_epoch_adv the term is there, computed with the classifier as just updated.
    engine.epoch = 1
    after_first = seen["classifier_after"]
    captured = {}
    from clip3dreid_plugin.engine import cal_engine

    real_adv = cal_engine.clothes_adversarial_loss

    def adv(cos, *args, **kw):
        captured["cos"] = cos.detach().clone()
        captured["weight"] = model.clothes_classifier.weight.detach().clone()
        return real_adv(cos, *args, **kw)

    cal_engine.clothes_adversarial_loss = adv
    try:
        terms = engine.forward_backward(batch)
    finally:
        cal_engine.clothes_adversarial_loss = real_adv
    assert set(terms) == {"ce", "clothes", "cal"} and float(terms["cal"]) > 0
    # The clothes classifier stepped again in this step, before the adversarial term read it.
    assert not torch.equal(captured["weight"], after_first)
    assert torch.equal(captured["weight"], seen["classifier_after"])


def test_before_start_epoch_cc_the_clothes_classifier_does_not_move(trees, tmp_path):
    cfg = _cfg(trees[0], str(tmp_path / "o"), "ltcc")  # the recipe's 25: far beyond this run
    engine = train_net.build(cfg)
    engine.set_model_mode("train")
    before = engine.model.clothes_classifier.weight.detach().clone()
    engine.epoch = 0
    assert set(engine.forward_backward(next(iter(engine.train_loader)))) == {"ce", "clothes"}
    assert torch.equal(engine.model.clothes_classifier.weight, before)


def test_bf16_autocast_runs_the_cal_step_close_to_float32(trees, tmp_path):
    """``runtime.amp bf16`` (the CPU's autocast) trains CAL's step: the same batch from the same weights gives terms
    within bf16's precision of the float32 step, and not bit-equal to it, so the autocast did run."""
    terms = {}
    for amp in ("none", "bf16"):
        cfg = _cfg(trees[0], str(tmp_path / amp), "ltcc", "cal.start_epoch_cc", "0", "cal.start_epoch_adv", "0",
                   "runtime.amp", amp)
        engine = train_net.build(cfg)
        if amp == "none":
            state = {k: v.clone() for k, v in engine.model.state_dict().items()}
            batch = next(iter(engine.train_loader))
        else:
            engine.model.load_state_dict(state)
        engine.set_model_mode("train")
        engine.epoch = 0
        terms[amp] = {k: float(v) for k, v in engine.forward_backward(batch).items()}
    assert set(terms["bf16"]) == set(terms["none"]) == {"ce", "clothes", "cal"}
    for k, v in terms["none"].items():
        assert terms["bf16"][k] == pytest.approx(v, rel=0.05, abs=0.05), (k, terms)
    assert terms["bf16"] != terms["none"], terms


@pytest.mark.parametrize("source", ["ltcc", "prcc", "ccmanifest", "ccvid"])
def test_cal_trains_and_evaluates_every_protocol(trees, tmp_path, source):
    root = trees[1] if source == "ccmanifest" else trees[0]
    out = str(tmp_path / source)
    # CCVID trains on clips (their frames), and tests on the tracklet average, as torchreid's video engines.
    video = ("video.seq_len", "2", "train.batch_size", "2") if source == "ccvid" else ()
    recipe = ("ccvid", "cal_r50_256x128.yaml") if source == "ccvid" else ("ltcc", "cal_r50_384x192.yaml")
    cfg = _cfg(root, out, source, "cal.start_epoch_cc", "0", "cal.start_epoch_adv", "1", *video, recipe=recipe)
    train_net.run(cfg)
    with open(osp.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)["last"]["metrics"][source]
    expected = {"ltcc": ("general", "cc"), "prcc": ("general", "sc", "cc"), "ccmanifest": ("general", "sc", "cc"),
                "ccvid": ("general", "cc")}
    for protocol in expected[source]:
        assert 0.0 <= metrics[f"{protocol}_mAP"] <= 100.0, (protocol, metrics)


def test_the_train_command_runs_the_ltcc_recipe(trees, tmp_path):
    out = str(tmp_path / "cli")
    rc = train_net.main(["--config-file", osp.join(REPO, "configs", "ltcc", "cal_r50_384x192.yaml"), "--device",
                         "cpu", "--output-dir", out, "data.root", trees[0], "model.pretrained", "False",
                         "data.height", "64", "data.width", "32", "data.workers", "0", "sampler.train_sampler",
                         "RandomSampler", "train.batch_size", "2", "train.max_epoch", "1", "test.batch_size", "4",
                         "cal.start_epoch_cc", "0", "cal.start_epoch_adv", "0", "runtime.progress", "False"])
    assert rc == 0
    with open(osp.join(out, "metrics.json"), encoding="utf-8") as f:
        metrics = json.load(f)["last"]["metrics"]["ltcc"]
    assert {"general_mAP", "general_rank1", "cc_mAP", "cc_rank1"} <= set(metrics), metrics


def test_a_source_without_clothes_labels_stops_cal_in_one_line(toy_market_root, tmp_path, capsys):
    rc = train_net.main(["--config-file", osp.join(REPO, "configs", "ltcc", "cal_r50_384x192.yaml"), "--device",
                         "cpu", "--output-dir", str(tmp_path / "m"), "data.root", toy_market_root[0],
                         "data.sources", "['market1501']", "data.targets", "['market1501']", "model.pretrained",
                         "False", "data.height", "64", "data.width", "32", "data.workers", "0",
                         "sampler.train_sampler", "RandomSampler", "runtime.progress", "False"])
    err = [ln for ln in capsys.readouterr().err.splitlines() if ln.startswith("error:")]
    assert rc == 2 and len(err) == 1, err
    assert "cal needs clothes labels, but training dataset 'market1501'" in err[0]


def test_torchreids_softmax_engine_trains_cal(trees):
    import torchreid

    import clip3dreid_plugin
    from clip3dreid_plugin.data.datamanager import ClothesImageDataManager

    clip3dreid_plugin.register()
    dm = ClothesImageDataManager(root=trees[0], sources="ltcc", height=64, width=32, batch_size_train=2,
                                 workers=0, train_sampler="RandomSampler", transforms=None)
    torch.manual_seed(0)
    model = torchreid.models.build_model("cal", num_classes=dm.num_train_pids, loss="softmax", pretrained=False)
    # Adam, as CAL's recipes train: plain SGD at lr 0.01 overshoots a fresh ResNet-50 on five images for about
    # half of all initialisations (the CE went up, 0.73 -> 0.81, in one CI run). Adam at 1e-4 took the CE from
    # 0.64-0.74 to 0.20-0.26 for each of eight seeds, so the margin below is not luck.
    before, after = softmax_engine_lowers_ce(dm, model, torch.optim.Adam(model.parameters(), lr=1e-4))
    assert after < 0.6 * before


def test_kill_and_resume_give_the_uninterrupted_weights(trees, tmp_path):
    common = ("cal.start_epoch_cc", "0", "cal.start_epoch_adv", "1", "train.max_epoch", "3")
    straight = str(tmp_path / "straight")
    train_net.run(_cfg(trees[0], straight, "ltcc", *common))
    part = str(tmp_path / "part")
    train_net.run(_cfg(trees[0], part, "ltcc", *common[:-1], "2"))
    train_net.run(_cfg(trees[0], part, "ltcc", *common, "model.resume", "auto"))
    from clip3dreid_plugin import compat

    a = compat.load_checkpoint(osp.join(straight, "model", "model.pth.tar-3"))
    b = compat.load_checkpoint(osp.join(part, "model", "model.pth.tar-3"))
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
    state_a, state_b = a["clothes_optimizer"]["state"], b["clothes_optimizer"]["state"]
    assert state_a and all(torch.equal(state_a[i]["exp_avg"], state_b[i]["exp_avg"]) for i in state_a)


def test_two_processes_keep_one_clothes_classifier(trees, tmp_path):
    """Under torchrun DDP leaves the clothes classifier out and the engine averages its gradients: after training,
    both ranks hold the same classifier (and the same network)."""
    import os
    import subprocess
    import sys

    dump = tmp_path / "dump"
    dump.mkdir()
    path = os.pathsep.join([REPO, osp.join(REPO, "tests"), os.environ.get("PYTHONPATH", "")])
    env = dict(os.environ, PYTHONPATH=path, OMP_NUM_THREADS="1", DUMP_DIR=str(dump))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           "--master_port=29641", "-m", "fixtures.train_and_dump", "--config-file",
           osp.join(REPO, "configs", "ltcc", "cal_r50_384x192.yaml"), "--device", "cpu", "--output-dir",
           str(tmp_path / "o"), "data.root", trees[0], "model.pretrained", "False", "data.height", "64",
           "data.width", "32", "data.workers", "0", "sampler.train_sampler", "RandomSampler", "train.batch_size", "2",
           "train.max_epoch", "2", "test.batch_size", "4", "cal.start_epoch_cc", "0", "cal.start_epoch_adv", "0",
           "runtime.progress", "False"]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout.decode(errors="replace")[-3000:]
    a, b = torch.load(dump / "rank0.pt"), torch.load(dump / "rank1.pt")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # It did train: the classifier's rows start at norm 1 (CAL's initialisation) and Adam moved them.
    assert a["clothes_classifier.weight"].shape == (4, 4096)
    assert not torch.allclose(a["clothes_classifier.weight"].norm(dim=1), torch.ones(4), atol=1e-6)
