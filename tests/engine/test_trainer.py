"""The trainer from Python (no command line), an overridden step, the sampler policy, and the engine's rooms."""
from __future__ import annotations

import ast
import json
import os.path as osp

import pytest
import torch

import clip3dreid_plugin
from clip3dreid_plugin.config import ConfigError, get_cfg, load_config
from clip3dreid_plugin.data.samplers import DISTRIBUTED_SAMPLERS, DistributedIdentitySampler, build_train_sampler
from clip3dreid_plugin.engine.evaluator import EvalOptions
from clip3dreid_plugin.engine.trainer import DefaultTrainer, RunContext

REPO = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
TOY = osp.join(REPO, "configs", "toy", "resnet50_baseline_64x32.yaml")


def _cfg(root: str, out: str, *opts: str):
    """The toy recipe with a ResNet-18 for one epoch on the CPU, frozen: what a library user writes."""
    clip3dreid_plugin.register()
    cfg = load_config(TOY, ["data.root", root, "data.save_dir", out, "model.name", "resnet18", "runtime.device",
                            "cpu", "train.max_epoch", "1", "runtime.progress", "False", *opts])
    cfg.freeze()
    return cfg


def test_the_trainer_builds_and_runs_from_python(toy_market_root, tmp_path):
    out = str(tmp_path / "run")
    trainer = DefaultTrainer(_cfg(toy_market_root[0], out), config_file=TOY)
    metrics = trainer.run()
    assert set(metrics) == {"market1501"} and 0.0 <= metrics["market1501"]["general_rank1"] <= 1.0
    assert trainer.context == RunContext(device=torch.device("cpu"))
    assert trainer.engine.model is trainer.model  # one process: neither DDP nor compile wraps it
    assert trainer.engine.optimizer is trainer.optimizer and trainer.engine.scheduler is trainer.scheduler
    assert trainer.engine.eval_options == EvalOptions.from_cfg(trainer.cfg)
    assert trainer.build() is trainer.engine  # built once
    record = json.load(open(osp.join(out, "metrics.json"), encoding="utf-8"))
    assert record["last"]["metrics"] == metrics
    assert osp.isfile(osp.join(out, "config.yaml")) and osp.isfile(osp.join(out, "model", "model.pth.tar-1"))


class _SGDTrainer(DefaultTrainer):
    """Overrides one step (the optimizer) and keeps the others."""

    def build_optimizer(self, model):
        self.sgd = torch.optim.SGD(model.parameters(), lr=0.0123, momentum=0.5)
        return self.sgd


def test_an_overridden_step_is_used_and_the_others_kept(toy_market_root, tmp_path):
    out = str(tmp_path / "sgd")
    trainer = _SGDTrainer(_cfg(toy_market_root[0], out, "train.optim", "adam"))
    trainer.run()
    opt = trainer.sgd
    assert trainer.engine.optimizer is opt and trainer.optimizer is opt
    assert trainer.scheduler.optimizer is opt  # the kept scheduler step was handed the override's optimizer
    assert opt.state and all("momentum_buffer" in s for s in opt.state.values())  # it took the training steps
    saved = torch.load(osp.join(out, "model", "model.pth.tar-1"), map_location="cpu", weights_only=False)
    assert saved["optimizer"]["param_groups"][0]["momentum"] == 0.5  # SGD's, not the recipe's Adam


def test_a_plugin_engine_keeps_torchreids_run_keywords(toy_market_root, tmp_path):
    """What torchreid's ``scripts/main.py`` passes (``engine.run(**engine_run_kwargs(cfg))`` of upstream's config,
    evaluation keywords included) reaches the evaluation, translated into the engine's ``EvalOptions``."""
    out = str(tmp_path / "kw")
    engine = DefaultTrainer(_cfg(toy_market_root[0], out)).build()
    metrics = engine.run(save_dir=out, max_epoch=1, start_epoch=0, print_freq=10, fixbase_epoch=0, open_layers=None,
                         start_eval=0, eval_freq=-1, test_only=True, dist_metric="cosine", normalize_feature=True,
                         visrank=False, visrank_topk=10, use_metric_cuhk03=False, ranks=[1, 2], rerank=False)
    assert {"general_rank1", "general_rank2", "general_mAP"} == set(metrics["market1501"])
    assert engine.eval_options.ranks == (1, 5, 10, 20)  # the keywords applied to that call only
    rank1 = engine.test(dist_metric="cosine", normalize_feature=True, ranks=[1])
    assert rank1 == metrics["market1501"]["general_rank1"] and set(engine.last_metrics["market1501"]) == {
        "general_rank1", "general_mAP"}
    with pytest.raises(TypeError, match="rank_list"):
        engine.run(save_dir=out, test_only=True, rank_list=[1])
    with pytest.raises(TypeError):
        engine.test("cosine")  # torchreid's positional order would put it on save_dir: keywords only


class _Items(list):
    """Training items ``(path, pid, camid, dsetid)``: 8 identities with 4 images each."""

    def __init__(self):
        super().__init__((f"{pid}_{i}.jpg", pid, i % 2, 0) for pid in range(8) for i in range(4))


@pytest.mark.parametrize("name", sorted(DISTRIBUTED_SAMPLERS))
def test_under_torchrun_the_chosen_sampler_is_made_distributed(name):
    items = _Items()
    shards = [build_train_sampler(items, name, 4, num_instances=2, rank=r, world_size=2, seed=3) for r in (0, 1)]
    if name == "RandomIdentitySampler":
        assert all(isinstance(s, DistributedIdentitySampler) for s in shards)
    else:
        assert all(isinstance(s, torch.utils.data.DistributedSampler) for s in shards)
        assert all(s.shuffle == (name == "RandomSampler") for s in shards)
    for s in shards:
        s.set_epoch(1)
    first, second = (list(s) for s in shards)
    assert len(first) == len(second) > 0 and not set(first) & set(second)  # each rank its own items


@pytest.mark.parametrize("name", ["RandomDomainSampler", "RandomDatasetSampler"])
def test_a_sampler_without_a_distributed_version_stops_a_torchrun_in_one_line(name):
    trainer = DefaultTrainer(get_cfg())
    trainer.cfg.sampler.train_sampler = name
    trainer.context = RunContext(device=torch.device("cpu"), distributed=True, rank=1, world_size=2)
    with pytest.raises(ConfigError) as err:
        trainer.build_sampler(_Items(), 4)
    message = str(err.value)
    assert "\n" not in message and message.startswith(f"sampler.train_sampler {name} ")
    assert all(ok in message for ok in DISTRIBUTED_SAMPLERS)


def test_one_process_keeps_torchreids_sampler_and_evaluation_draws_none():
    import torchreid

    items = _Items()
    assert isinstance(build_train_sampler(items, "RandomSampler", 4), torch.utils.data.RandomSampler)
    assert isinstance(build_train_sampler(items, "RandomIdentitySampler", 4, num_instances=2),
                      torchreid.data.sampler.RandomIdentitySampler)
    # An evaluation-only run draws no training batch, so even a sampler torchrun refuses builds.
    assert isinstance(build_train_sampler(items, "RandomDomainSampler", 4, rank=0, world_size=2, evaluate_only=True),
                      torch.utils.data.SequentialSampler)


def test_a_distributed_random_sampler_refuses_a_set_smaller_than_a_global_batch():
    # 32 items: 16 per rank, fewer than one batch of 20 (drop_last would leave every epoch empty).
    with pytest.raises(ConfigError, match=r"too small for a global batch of 40 .*lower train.batch_size"):
        build_train_sampler(_Items(), "RandomSampler", 20, rank=0, world_size=2)


def test_an_identity_sampler_needing_more_identities_than_the_set_has_is_one_line():
    """torchreid's sampler would stop with a bare AssertionError; 8 identities cannot fill 16 per batch, 8 can."""
    with pytest.raises(ConfigError) as err:
        build_train_sampler(_Items(), "RandomIdentitySampler", 32, num_instances=2)
    message = str(err.value)
    assert "\n" not in message and "draws 16 identities per batch, but the training set has 8" in message
    assert "train.batch_size" in message and "sampler.num_instances" in message
    assert len(list(build_train_sampler(_Items(), "RandomIdentitySampler", 16, num_instances=2))) > 0


def test_eval_options_are_built_from_the_config_once_and_take_torchreids_keywords():
    cfg = get_cfg()
    cfg.test.dist_metric, cfg.test.ranks, cfg.eval.protocols, cfg.eval.flip = "cosine", [1, 3], ["cc"], False
    opts = EvalOptions.from_cfg(cfg)
    assert (opts.dist_metric, opts.ranks, opts.protocols, opts.flip) == ("cosine", (1, 3), ("cc",), False)
    # torchreid's run(**kwargs) keywords, translated at the boundary, and back for torchreid's own test().
    other = opts.with_torchreid_kwargs(ranks=[1], rerank=True, dist_metric="euclidean")
    assert (other.ranks, other.rerank, other.dist_metric, other.protocols) == ((1,), True, "euclidean", ("cc",))
    assert other.torchreid_kwargs() == dict(dist_metric="euclidean", normalize_feature=False, visrank=False,
                                            visrank_topk=10, use_metric_cuhk03=False, ranks=[1], rerank=True)
    assert opts.with_torchreid_kwargs(**other.torchreid_kwargs()) == other  # the round trip is exact
    with pytest.raises(TypeError, match="rank_list"):
        opts.with_torchreid_kwargs(rank_list=[1])


def _engine_imports(module: str) -> set:
    """The ``clip3dreid_plugin.engine`` modules that ``engine/<module>.py`` imports, anywhere in the file."""
    tree = ast.parse(open(osp.join(REPO, "clip3dreid_plugin", "engine", f"{module}.py"), encoding="utf-8").read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            if node.module == "clip3dreid_plugin.engine":
                found |= {f"{node.module}.{a.name}" for a in node.names}
            elif node.module.startswith("clip3dreid_plugin.engine."):
                found.add(node.module)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("clip3dreid_plugin.engine")}
    return found


def test_the_engines_rooms_import_only_the_shared_helpers_below_them():
    """No circle: the checkpoint and evaluation rooms import neither the loop nor each other, the helpers import no
    room, and the loop imports the rooms."""
    shared = "clip3dreid_plugin.engine.common"
    assert _engine_imports("common") == set()
    assert _engine_imports("checkpoint") <= {shared}
    assert _engine_imports("evaluator") <= {shared}
    assert {"clip3dreid_plugin.engine.checkpoint", "clip3dreid_plugin.engine.evaluator"} <= _engine_imports("base")
    assert "clip3dreid_plugin.engine.trainer" not in _engine_imports("base")


def test_the_train_command_holds_no_pipeline():
    """``tools/train_net.py`` parses, sets up and runs: it builds nothing itself."""
    tree = ast.parse(open(osp.join(REPO, "clip3dreid_plugin", "tools", "train_net.py"), encoding="utf-8").read())
    imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    # parse (tools.common), set up (the config and its check against the registry's names, logging, the rank), run
    assert imported <= {"__future__", "typing", "clip3dreid_plugin.tools.common", "clip3dreid_plugin.utils.runtime",
                        "clip3dreid_plugin.utils.torchrun", "clip3dreid_plugin.config",
                        "clip3dreid_plugin.config.check", "clip3dreid_plugin.registry",
                        "clip3dreid_plugin.engine.trainer"}, imported
