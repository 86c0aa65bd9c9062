"""The table of loss terms: CLIP3DReIDEngine.compute_losses against every term computed by hand from the student's
outputs (CE with log-softmax, the triplet hinge, OT with POT's ot.sinkhorn2, the global term as a mean squared norm,
L_3D on a linear body model), with a fake teacher source and a fake synthetic stream; a term of a test's own,
declared in the table, is weighted, logged and checked with no other change; the builder asks the table what to
build; the losses name their argument, the table the option."""
from __future__ import annotations

import copy
import functools
from types import SimpleNamespace

import ot
import pytest
import torch
import torch.nn.functional as F

from clip3dreid_plugin.config.defaults import get_cfg
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.engine import LOSS_TERMS, CLIP3DReIDEngine, LossSwitches, LossTable, LossTerm
from clip3dreid_plugin.losses import OTLoss, global_distill_loss
from clip3dreid_plugin.losses.identity import TORCHREID_LABEL_SMOOTHING
from clip3dreid_plugin.losses.shape3d import ShapeLoss
from clip3dreid_plugin.models.clip3dreid import CLIP3DReID

B, S, K, M, D, H, W = 8, 4, 4, 5, 8, 64, 32  # real rows, synthetic rows, identities, descriptors, teacher width
NUM_BETAS, NUM_VERTICES = 10, 7


class FakeTeacher:
    """A teacher source: a fixed g and fixed labels per path, and a fixed phrase-feature table [M, 2, d]."""

    embed_dim = D

    def __init__(self, paths):
        gen = torch.Generator().manual_seed(11)
        self.row = {p: i for i, p in enumerate(paths)}
        self.g = torch.randn(len(paths), D, generator=gen)
        self.labels = torch.randint(0, 2, (len(paths), M), generator=gen)
        self.text = torch.randn(M, 2, D, generator=gen)
        self.asked = []

    def lookup(self, paths, imgs):
        self.asked.append(list(paths))
        rows = torch.tensor([self.row[p] for p in paths])
        return self.g[rows], self.labels[rows]

    def gather_text(self, labels):
        return self.text[torch.arange(M), labels]  # [n, M, d]


class LinearBody(torch.nn.Module):
    """A body model with SMPL's interface: canonical vertices = template + betas @ directions."""

    def __init__(self, seed):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        self.template = torch.randn(NUM_VERTICES, 3, generator=gen)
        self.dirs = 0.1 * torch.randn(NUM_BETAS, NUM_VERTICES * 3, generator=gen)

    def canonical_vertices(self, betas):
        return self.template + (betas @ self.dirs).view(-1, NUM_VERTICES, 3)


def _batch():
    gen = torch.Generator().manual_seed(0)
    return {"img": torch.randn(B, 3, H, W, generator=gen), "pid": torch.arange(B) // 2 % K,
            "impath": [f"/data/img_{i}.jpg" for i in range(B)]}


def _synthetic_batch():
    gen = torch.Generator().manual_seed(1)
    return {"img": torch.randn(S, 3, H, W, generator=gen), "labels": torch.randint(0, 2, (S, M), generator=gen),
            "betas": torch.randn(S, NUM_BETAS, generator=gen), "gender": torch.tensor([0, 1, 2, 1])}


@functools.lru_cache(maxsize=1)
def _seeded_student():
    torch.manual_seed(0)
    return CLIP3DReID(K, backbone="resnet18", local_dim=32, agg_hidden_dim=16, head_hidden_dim=16, teacher_dim=D)


def _engine(switches, terms=None, teacher="fake", with_3d=False, train_loader=()):
    model = copy.deepcopy(_seeded_student()).train()  # a small trunk, built once: the terms are what is tested
    opt = torch.optim.Adam(model.parameters(), lr=1e-4)
    dm = SimpleNamespace(train_loader=list(train_loader), test_loader={}, num_train_pids=K, sources=[])
    syn = _synthetic_batch()
    bodies = {g: LinearBody(g) for g in range(3)}
    engine = CLIP3DReIDEngine(
        dm, model, opt, use_gpu=False, teacher=FakeTeacher(_batch()["impath"]) if teacher == "fake" else teacher,
        switches=switches, terms=terms, ot_loss=OTLoss(max_iter=2000, tol=1e-7), channels_last=False,
        synthetic=iter(lambda: syn, None) if with_3d else None, shape_loss=ShapeLoss(bodies[2], bodies) if with_3d
        else None, show_progress=False, diagnostics_every=0)
    return engine, syn, bodies


def _outputs(engine, batch):
    """compute_losses(batch) and the student's output dict of that call (all rows: real first, then synthetic)."""
    seen = {}
    hook = engine.model.register_forward_hook(lambda mod, args, out: seen.update(out))
    try:
        terms = engine.compute_losses(batch)
    finally:
        hook.remove()
    return {k: v.detach() for k, v in terms.items()}, {k: v.detach().double() for k, v in seen.items()}


def _ce(logits, pids):
    q = F.one_hot(pids, K).double() * (1 - TORCHREID_LABEL_SMOOTHING) + TORCHREID_LABEL_SMOOTHING / K
    return float(-(q * F.log_softmax(logits, dim=1)).sum(1).mean())


def _triplet(f, pids, margin):
    dist = torch.cdist(f, f)
    hinge = []
    for a in range(len(pids)):
        same = pids == pids[a]
        hinge.append(max(0.0, float(dist[a][same].max() - dist[a][~same].min()) + margin))
    return sum(hinge) / len(hinge)


def _ot(local, text, reg):
    """mean over images of <T*, C> from POT, C = 1 - cos(local feature, projected text feature)."""
    vals = []
    for b in range(local.size(0)):
        cost = 1 - F.normalize(local[b], dim=-1) @ F.normalize(text[b], dim=-1).T
        n, m = cost.shape
        vals.append(float(ot.sinkhorn2(torch.full((n,), 1 / n, dtype=cost.dtype),
                                       torch.full((m,), 1 / m, dtype=cost.dtype), cost, reg,
                                       numItermax=5000, stopThr=1e-12)))
    return sum(vals) / len(vals)


def _global(teacher_proj, f_id):
    return float(((teacher_proj - f_id) ** 2).sum(1).mean())


def _shape(betas, syn, bodies):
    pred = bodies[2].canonical_vertices(betas.float()).double()
    err = [float(((pred[i] - bodies[int(g)].canonical_vertices(syn["betas"][i:i + 1].float())[0].double()) ** 2).sum())
           for i, g in enumerate(syn["gender"])]
    return sum(err) / len(err)


def test_compute_losses_equals_every_term_by_hand_and_their_weighted_sum():
    weights = dict(alpha=0.2, beta=0.7, gamma=0.4, triplet_weight=0.5)
    engine, syn, bodies = _engine(LossSwitches(use_3d=True, **weights), with_3d=True)
    batch = _batch()
    terms, out = _outputs(engine, batch)
    assert list(terms) == ["ce", "triplet", "ot", "global", "ot_syn", "3d", "loss"]
    pids, reg = batch["pid"], engine.ot_loss.reg
    # The student's rows: the B real images first, then the S synthetic ones; text_proj is [real; synthetic] too.
    real, text = slice(0, B), out["text_proj"]
    assert out["f_id"].size(0) == B + S and text.size(0) == B + S and out["teacher_proj"].size(0) == B
    # The fake teacher's targets reached the heads: Psi(H) and Phi(g) of the rows' own labels and features.
    teacher = engine.teacher
    h_real = teacher.text[torch.arange(M), teacher.labels]  # path i is row i
    h_syn = teacher.text[torch.arange(M), syn["labels"]]
    with torch.no_grad():
        psi = engine.model.text_head(torch.cat([h_real, h_syn])).double()
        phi = engine.model.image_head(teacher.g).double()
    torch.testing.assert_close(text, psi)
    torch.testing.assert_close(out["teacher_proj"], phi)
    want = {
        "ce": _ce(out["logits"][real], pids),
        "triplet": _triplet(out["f_id"][real], pids, engine.triplet_margin),
        "ot": _ot(out["local"][real], text[:B], reg),
        "global": _global(out["teacher_proj"], out["f_id"][real]),
        "ot_syn": _ot(out["local"][B:], text[B:], reg),
        "3d": _shape(out["betas"][B:], syn, bodies),
    }
    for k, v in want.items():
        assert float(terms[k]) == pytest.approx(v, rel=1e-4, abs=1e-6), k
    total = (want["ce"] + 0.5 * want["triplet"] + 0.2 * want["ot"] + 0.7 * want["global"]
             + 0.4 * (want["ot_syn"] + want["3d"]))
    assert float(terms["loss"]) == pytest.approx(total, rel=1e-5)
    assert teacher.asked == [batch["impath"]]

    # The logged weighted terms are each term times its weight, and they add up to the total.
    summary = engine.forward_backward(batch)
    w = {"ce": 1.0, "triplet": 0.5, "ot": 0.2, "global": 0.7, "ot_syn": 0.4, "3d": 0.4}
    for k, weight in w.items():
        assert float(summary[f"w_{k}"]) == pytest.approx(weight * float(summary[k]), rel=1e-6), k
    assert float(summary["loss"]) == pytest.approx(sum(float(summary[f"w_{k}"]) for k in w), rel=1e-5)


def test_switches_choose_the_terms_and_what_the_step_prepares():
    """The global term's mean reduction; without L_OT no text reaches Psi for the real rows, and the 3D term's rows are
    then the only text; a CE-only objective asks the teacher nothing."""
    engine, syn, _ = _engine(LossSwitches(use_ot=False, use_3d=True, global_reduction="mean"), with_3d=True)
    terms, out = _outputs(engine, _batch())
    assert list(terms) == ["ce", "global", "ot_syn", "3d", "loss"]
    assert out["text_proj"].size(0) == S  # the synthetic rows' text only
    f_id = out["f_id"][:B]
    assert float(terms["global"]) == pytest.approx(_global(out["teacher_proj"], f_id) / f_id.size(1), rel=1e-5)
    assert float(terms["ot_syn"]) == pytest.approx(_ot(out["local"][B:], out["text_proj"], engine.ot_loss.reg),
                                                   rel=1e-4)

    engine, _, _ = _engine(LossSwitches(use_ot=False, use_global=False))
    terms, out = _outputs(engine, _batch())
    assert list(terms) == ["ce", "loss"] and "text_proj" not in out and "teacher_proj" not in out
    assert engine.teacher.asked == []
    assert float(terms["loss"]) == float(terms["ce"])


def _l2(ctx, step, reduction):
    """A toy term: the squared norm of the real rows' f_id, summed or averaged over its dims."""
    sq = step.real.f_id.pow(2)
    return (sq.sum(1) if reduction == "sum" else sq.mean(1)).mean()


TOY = LossTerm("l2", _l2, weight="l2_weight", reduction="l2_reduction", reductions=("sum", "mean"))


def test_a_term_declared_in_the_table_is_weighted_logged_and_checked():
    table = LOSS_TERMS.extended(TOY)
    batch = _batch()
    engine, _, _ = _engine(LossSwitches(l2_weight=0.25, l2_reduction="mean"), terms=table,
                           train_loader=[batch, batch])
    terms, out = _outputs(engine, batch)
    assert list(terms) == ["ce", "ot", "global", "l2", "loss"]
    f_id = out["f_id"]
    l2 = float((f_id ** 2).mean(1).mean())
    assert float(terms["l2"]) == pytest.approx(l2, rel=1e-5)
    assert float(terms["loss"]) == pytest.approx(float(terms["ce"]) + 0.3 * float(terms["ot"])
                                                 + 0.5 * float(terms["global"]) + 0.25 * l2, rel=1e-5)
    summary = engine.forward_backward(batch)
    assert float(summary["w_l2"]) == pytest.approx(0.25 * float(summary["l2"]), rel=1e-6)
    # The training loop logs it with every other term (LossLog, once per print interval).
    engine.max_epoch = 1
    means = engine.train(print_freq=1)
    assert {"l2", "w_l2", "ce", "ot", "global", "loss"} <= set(means)

    # Checked like the built-in terms, in one line naming its options.
    with pytest.raises(ConfigError, match=r"^loss\.clip3dreid\.l2_reduction, loss\.clip3dreid\.l2_weight have no "
                                          r"value"):
        _engine(LossSwitches(), terms=table)
    with pytest.raises(ConfigError, match=r"^loss\.clip3dreid\.l2_reduction must be one of \('sum', 'mean'\), "
                                          r"got 'max'"):
        _engine(LossSwitches(l2_weight=0.25, l2_reduction="max"), terms=table)
    with pytest.raises(ConfigError, match=r"unknown option loss\.clip3dreid\.l2_wieght \(did you mean "
                                          r"loss\.clip3dreid\.l2_weight\?\)"):
        _engine(LossSwitches(l2_wieght=0.25, l2_weight=0.25, l2_reduction="sum"), terms=table)
    # Weight 0: the term is off, not computed.
    engine, _, _ = _engine(LossSwitches(l2_weight=0.0, l2_reduction="sum"), terms=table)
    assert "l2" not in engine.compute_losses(batch)

    # A term that reads the teacher makes the teacher needed; without one, the error names its option alone.
    needy = LOSS_TERMS.extended(LossTerm("l2", _l2, weight="l2_weight", needs={"teacher_image"},
                                         reduction="l2_reduction", reductions=("sum", "mean")))
    ce_l2 = LossSwitches(use_ot=False, use_global=False, l2_weight=0.25, l2_reduction="sum")
    assert needy.uses("teacher", ce_l2) and not table.uses("teacher", ce_l2)
    with pytest.raises(ConfigError, match=r"^loss\.clip3dreid\.l2_weight needs a teacher .*switch it off$"):
        _engine(ce_l2, terms=needy, teacher=None)
    _engine(ce_l2, terms=table, teacher=None)  # the plain toy term needs none


def test_the_table_says_what_needs_a_teacher_a_synthetic_stream_and_a_body_model():
    t = LOSS_TERMS
    for switches, teacher, synthetic in [
            (LossSwitches(), True, False),
            (LossSwitches(use_ot=False), True, False),
            (LossSwitches(use_global=False), True, False),
            (LossSwitches(use_ot=False, use_global=False), False, False),
            (LossSwitches(use_ot=False, use_global=False, triplet_weight=1.0), False, False),
            (LossSwitches(use_ce=False, use_ot=False, use_global=False, use_3d=True), True, True)]:
        assert t.uses("teacher", switches) is teacher, switches
        assert t.uses("synthetic", switches) is synthetic and t.uses("shape_loss", switches) is synthetic, switches
    # Evaluation keeps CE only: no teacher, no synthetic stream, whatever the recipe trains with.
    only = t.only(["ce"], LossSwitches(use_3d=True, triplet_weight=1.0, use_ce=False))
    assert [term.name for term in t.on(only)] == ["ce"] and not t.uses("teacher", only)
    # Every option a term reads is a key of the config, and every key of loss.clip3dreid belongs to a term.
    assert t.option_keys() == set(get_cfg().loss.clip3dreid)
    assert vars(LossSwitches.from_cfg(get_cfg())) == vars(LossSwitches())
    with pytest.raises(ValueError, match="distinct"):
        LossTable([*LOSS_TERMS, LossTerm("ce", _l2, weight="w")])
    with pytest.raises(ValueError, match="unknown needs"):
        LossTerm("x", _l2, weight="w", needs={"clothes"})


def test_missing_teacher_synthetic_stream_or_body_model_is_one_error_naming_the_options():
    with pytest.raises(ConfigError, match=r"^loss\.clip3dreid\.use_ot and loss\.clip3dreid\.use_global need a "
                                          r"teacher \(teacher\.mode cache, online or ideal"):
        _engine(LossSwitches(), teacher=None)
    with pytest.raises(ConfigError, match=r"^loss\.clip3dreid\.use_3d needs the synthetic stream "
                                          r"\(body\.synthetic_dir"):
        _engine(LossSwitches(use_3d=True))
    with pytest.raises(ConfigError, match="nothing to train"):
        _engine(LossSwitches(use_ce=False, use_ot=False, use_global=False))
    with pytest.raises(ConfigError, match=r"^loss\.clip3dreid\.alpha must be a finite number, got 'x'"):
        _engine(LossSwitches(alpha="x"))


def test_the_builder_asks_the_table_for_the_teacher():
    """teacher.mode none with a term that needs the teacher: the table's error, naming the options."""
    from clip3dreid_plugin.engine.build import build_engine

    cfg = get_cfg()
    cfg.model.name = "clip3dreid"
    cfg.teacher.mode = "none"
    dm = SimpleNamespace(train_loader=[], test_loader={}, num_train_pids=K, sources=[],
                         train_set=SimpleNamespace(train=[]))
    model = copy.deepcopy(_seeded_student())
    opt = torch.optim.Adam(model.parameters())
    cfg.loss.clip3dreid.use_global = False
    with pytest.raises(ConfigError, match=r"^loss\.clip3dreid\.use_ot needs a teacher \(teacher\.mode cache"):
        build_engine(cfg, dm, model, opt, None, use_gpu=False, device=torch.device("cpu"))
    cfg.loss.clip3dreid.global_reduction = "max"  # a bad option fails before anything is loaded
    with pytest.raises(ConfigError, match=r"^loss\.clip3dreid\.global_reduction must be one of"):
        build_engine(cfg, dm, model, opt, None, use_gpu=False, device=torch.device("cpu"))
    cfg.loss.clip3dreid.global_reduction = "sum"
    cfg.loss.clip3dreid.use_ot = False  # CE only: no teacher is built, none is needed
    engine = build_engine(cfg, dm, model, opt, None, use_gpu=False, device=torch.device("cpu"))
    assert engine.teacher is None and [t.name for t in engine.terms.on(engine.switches)] == ["ce"]


def test_losses_name_their_argument_and_the_table_names_the_option():
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    with pytest.raises(ValueError, match=r"^reduction must be one of \('sum', 'mean'\), got 'max'$") as err:
        global_distill_loss(a, b, "max")
    assert type(err.value) is ValueError
    body = LinearBody(0)
    with pytest.raises(ValueError, match=r"^reduction must be one of") as err:
        ShapeLoss(body, {0: body}, reduction="max")
    assert type(err.value) is ValueError
    loss = ShapeLoss(body, {0: body})
    betas, genders = torch.randn(3, NUM_BETAS), torch.zeros(3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^reduction must be one of"):
        loss(betas, betas, genders, reduction="max")
    zero = torch.zeros(3, NUM_BETAS)
    assert float(loss(betas, zero, genders, reduction="mean")) * NUM_VERTICES == pytest.approx(
        float(loss(betas, zero, genders)), rel=1e-6)
    with pytest.raises(ConfigError, match=r"^loss\.clip3dreid\.global_reduction must be one of"):
        LOSS_TERMS.check(LossSwitches(global_reduction="max"))
    with pytest.raises(ConfigError, match=r"^loss\.clip3dreid\.shape_reduction must be one of"):
        LOSS_TERMS.check(LossSwitches(shape_reduction="max"))
