"""Config -> ready engine, through steps a subclass can replace one at a time (detectron2's ``DefaultTrainer`` idea,
for torchreid engines).

From Python, without the command line::

    import clip3dreid_plugin
    from clip3dreid_plugin.config import load_config
    from clip3dreid_plugin.engine.trainer import DefaultTrainer

    clip3dreid_plugin.register()   # the plugin's models, datasets and instruments in torchreid's tables, once
    cfg = load_config("configs/ltcc/resnet50_baseline_384x192.yaml", ["data.root", "/data"])
    cfg.freeze()
    metrics = DefaultTrainer(cfg).run()   # builds, resumes if asked, trains / evaluates, writes metrics.json

``build()`` runs the steps in this order and keeps what each returns on the trainer::

    setup()                                  -> context   device, process group, seed
    build_datamanager()                      -> datamanager  (its training sampler from build_sampler())
    build_model(datamanager)                 -> the network, its weights loaded
    prepare_model(model)                     -> SyncBN, the device, the memory layout   -> model
    build_optimizer(model)                   -> optimizer (None: nothing to train)
    build_scheduler(optimizer)               -> scheduler
    wrap_model(model, trainable)             -> DDP (ddp_options()), torch.compile
    build_engine(datamanager, wrapped, optimizer, scheduler) -> engine

A subclass overrides one step and keeps the rest::

    class AdamWTrainer(DefaultTrainer):
        def build_optimizer(self, model):
            return torch.optim.AdamW(model.parameters(), lr=self.cfg.train.lr)

The engine for ``model.name`` comes from :data:`~clip3dreid_plugin.engine.build.ENGINE_BUILDERS` (torchreid's
softmax / triplet / video engines otherwise), so a new method with its own loop registers an engine builder there
and needs no trainer of its own.
"""
from __future__ import annotations

import dataclasses
import logging
import os.path as osp
from typing import Dict, Optional

import torch
import torchreid

from clip3dreid_plugin import compat
from clip3dreid_plugin.config.kwargs import engine_run_kwargs, lr_scheduler_kwargs, optimizer_kwargs
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.data import build as data_build
from clip3dreid_plugin.data.samplers import build_train_sampler
from clip3dreid_plugin.engine import build as engine_build
from clip3dreid_plugin.engine.checkpoint import latest_checkpoint
from clip3dreid_plugin.engine.common import unwrap
from clip3dreid_plugin.evaluation.records import write_metrics
from clip3dreid_plugin.models import build as model_build
from clip3dreid_plugin.utils import distributed as dist_utils
from clip3dreid_plugin.utils.io import atomic_write
from clip3dreid_plugin.utils.runtime import (activate_device, check_amp_support, resolve_device, set_matmul_tf32,
                                             set_seed)

logger = logging.getLogger(__name__)

__all__ = ["DefaultTrainer", "RunContext", "ddp_options", "engine_optimised_parameters", "without_engine_optimised",
           "wrap_for_training", "resume_checkpoint", "write_run_config"]


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Where this process runs: what :meth:`DefaultTrainer.setup` settled.

    Attributes:
        device: the resolved device, index included (``cuda:N`` or ``cpu``), made current.
        distributed: a process group of ``world_size`` > 1 processes is up (``torchrun``).
        rank, world_size: this process and the number of processes.
    """

    device: torch.device
    distributed: bool = False
    rank: int = 0
    world_size: int = 1

    @property
    def use_gpu(self) -> bool:
        """torchreid's flag."""
        return self.device.type == "cuda"

    @property
    def is_main(self) -> bool:
        """This process writes checkpoints, logs and files."""
        return self.rank == 0


def resume_checkpoint(cfg) -> str:
    """The checkpoint ``model.resume`` names: the path itself; for ``auto`` the latest ``model.pth.tar-N`` in
    ``data.save_dir`` (empty while there is none); empty when not resuming."""
    if cfg.model.resume == "auto":
        return latest_checkpoint(cfg.data.save_dir) or ""
    return cfg.model.resume


def write_run_config(cfg) -> str:
    """Writes the merged config to ``data.save_dir/config.yaml`` (atomically); returns its path.

    Every run folder holds one, so that how a model was trained can be read next to its checkpoints.
    """
    path = osp.join(cfg.data.save_dir, "config.yaml")
    atomic_write(path, lambda fh: fh.write(cfg.dump().encode("utf-8")))
    return path


def ddp_options(cfg) -> dict:
    """DDP's keyword arguments for this run: the cheapest setting that is still correct.

    Some parameters get no gradient in a step whenever a model computes more than the active loss terms read (a
    switched-off distillation head, a torchreid classifier weighted 0) or layers are frozen, and DDP must be told.
    When that set is the same in every step, ``static_graph`` learns it in the first step; ``find_unused_parameters``
    would search the autograd graph and copy every output in every step. ``train.fixbase_epoch`` freezes layers for
    its first epochs only, so the set changes, which ``static_graph`` does not allow: those runs keep the search.
    """
    if cfg.train.fixbase_epoch > 0:
        return {"find_unused_parameters": True}
    return {"static_graph": True}


def engine_optimised_parameters(model: torch.nn.Module) -> Dict[str, torch.nn.Parameter]:
    """Parameters the method's engine steps with an optimiser of its own, by name (the submodules a model lists in
    ``engine_optimised``, e.g. CAL's clothes classifier): the main optimiser and DDP leave them out."""
    names = getattr(model, "engine_optimised", ())
    return {n: p for n, p in model.named_parameters() if n.split(".", 1)[0] in names}


def without_engine_optimised(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> torch.optim.Optimizer:
    """``optimizer`` (freshly built, no state yet) with ``model``'s :func:`engine_optimised_parameters` taken out of
    its groups: the method's engine steps them with an optimiser of its own (CAL's clothes classifier)."""
    own = {id(p) for p in engine_optimised_parameters(model).values()}
    if own:
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in own]
    return optimizer


def wrap_for_training(model, distributed: bool, trainable: bool, device, compile_model: bool = False,
                      ddp_kwargs: Optional[dict] = None):
    """The module the engine trains: DDP around a model that has something to train, then ``torch.compile``.

    DDP refuses a model without trainable parameters (``clip_zeroshot``), and ``compile(DDP(model))`` is the order
    torch documents.

    Args:
        ddp_kwargs: DDP's options, see :func:`ddp_options`.
    """
    out = model
    if distributed and trainable:
        own = engine_optimised_parameters(model)
        if own:
            # Their gradients come from a backward of their own, outside DDP's forward, which DDP's reducer would
            # take for a second pass; the engine averages them over the ranks itself.
            torch.nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, list(own))
            for p in own.values():  # nor does DDP broadcast them: every rank starts from rank 0's, as for the rest
                torch.distributed.broadcast(p.data, src=0)
        out = torch.nn.parallel.DistributedDataParallel(
            out, device_ids=[device.index] if device.type == "cuda" else None, **(ddp_kwargs or {}))
    if compile_model:
        out = torch.compile(out)
    return out


class DefaultTrainer:
    """Builds and runs the engine of a merged, frozen config (see the module docstring for the steps).

    Args:
        cfg: the config (:func:`~clip3dreid_plugin.config.load_config`), frozen.
        config_file: the recipe it came from, recorded in ``metrics.json``.

    Attributes:
        context, datamanager, model (the plain, prepared module), optimizer, scheduler, engine: what :meth:`build`
        built; None before.
    """

    def __init__(self, cfg, config_file: str = ""):
        self.cfg = cfg
        self.config_file = config_file
        self.context: Optional[RunContext] = None
        self.datamanager = None
        self.model: Optional[torch.nn.Module] = None
        self.optimizer = None
        self.scheduler = None
        self.engine = None

    # ------------------------------------------------------------------ steps
    def setup(self) -> RunContext:
        """Resolves and activates the device, applies ``runtime.amp`` / ``runtime.tf32``, joins torchrun's process
        group and seeds this process (``train.seed + rank``).

        The plugin must be registered with torchreid first (``clip3dreid_plugin.register()``, which the train
        command calls): the registry sits above the engine, which builds from the tables it fills.
        """
        cfg = self.cfg
        launched = dist_utils.launched_world_size() > 1
        # Resolved once, with its index, and made current: torchreid's .cuda() calls then land on it too.
        local_rank = dist_utils.launched_local_rank() if launched else None
        device = activate_device(resolve_device(cfg.runtime.device, local_rank))
        check_amp_support(cfg.runtime.amp, device)
        set_matmul_tf32(cfg.runtime.tf32, device)
        if launched and cfg.runtime.sync_bn and device.type != "cuda":
            # Checked before the process group forms; torch's own refusal comes only at the first training forward.
            raise ConfigError(f"runtime.sync_bn True needs CUDA (SyncBatchNorm synchronises GPU tensors only), but "
                              f"this run is on {device}: set runtime.sync_bn False")
        distributed = dist_utils.init_distributed(cfg.runtime.dist_backend, device.type)
        rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
        set_seed(cfg.train.seed + rank, cfg.runtime.deterministic)
        logger.info("device: %s%s", device, f" (rank {rank}/{world})" if distributed else "")
        return RunContext(device=device, distributed=distributed, rank=rank, world_size=world)

    def build_sampler(self, data_source, batch_size: int):
        """The training sampler (the data manager calls it with the training items and the per-process batch size).

        ``sampler.train_sampler``, made distributed under ``torchrun`` or refused there in one line
        (:func:`~clip3dreid_plugin.data.samplers.build_train_sampler`, the one place of that policy).
        """
        cfg, ctx = self.cfg, self.context
        return build_train_sampler(data_source, cfg.sampler.train_sampler, batch_size,
                                   num_instances=cfg.sampler.num_instances, num_cams=cfg.sampler.num_cams,
                                   num_datasets=cfg.sampler.num_datasets, rank=ctx.rank, world_size=ctx.world_size,
                                   seed=cfg.train.seed, evaluate_only=cfg.test.evaluate)

    def build_datamanager(self):
        """The clothes-aware data manager; under ``torchrun`` each process extracts its shard of the test sets."""
        ctx = self.context
        return data_build.build_datamanager(self.cfg, ctx.use_gpu, train_sampler_fn=self.build_sampler,
                                            eval_shard=(ctx.rank, ctx.world_size))

    def build_model(self, datamanager) -> torch.nn.Module:
        """``model.name`` from torchreid's model table, with ``model.load_weights`` loaded into it.

        A checkpoint to load (``model.load_weights`` or the one resumed) replaces the ImageNet weights, so an
        evaluation or a resumed run needs no ImageNet file.
        """
        cfg = self.cfg
        model = model_build.build_model(cfg, datamanager.num_train_pids, self.context.use_gpu,
                                        checkpoint=cfg.model.load_weights or resume_checkpoint(cfg),
                                        num_clothes=getattr(datamanager, "num_train_clothes", None))
        if cfg.model.load_weights:
            compat.load_pretrained_weights(model, cfg.model.load_weights)
        return model

    def prepare_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """SyncBatchNorm under ``torchrun`` with ``runtime.sync_bn``, the run's device, ``runtime.channels_last``."""
        ctx = self.context
        if ctx.distributed and self.cfg.runtime.sync_bn:
            model = dist_utils.convert_sync_batchnorm(model)
        model = model.to(ctx.device)
        if self.cfg.runtime.channels_last:
            model = model.to(memory_format=torch.channels_last)
        return model

    def build_optimizer(self, model: torch.nn.Module):
        """torchreid's optimizer of ``train.*`` over every parameter but the engine's own
        (:func:`engine_optimised_parameters`); None for a model with nothing to train (``clip_zeroshot``), which
        only an evaluation may run."""
        if not any(p.requires_grad for p in model.parameters()):
            if not self.cfg.test.evaluate:
                raise ConfigError(f"model '{self.cfg.model.name}' has no trainable parameter: run it with --eval-only")
            return None
        return without_engine_optimised(torchreid.optim.build_optimizer(model, **optimizer_kwargs(self.cfg)), model)

    def build_scheduler(self, optimizer):
        """torchreid's learning-rate scheduler of ``train.*``; None without an optimizer."""
        if optimizer is None:
            return None
        return torchreid.optim.build_lr_scheduler(optimizer, **lr_scheduler_kwargs(self.cfg))

    def ddp_options(self) -> dict:
        """DDP's keyword arguments (:func:`ddp_options`)."""
        return ddp_options(self.cfg)

    def wrap_model(self, model: torch.nn.Module, trainable: bool) -> torch.nn.Module:
        """The module the engine trains (:func:`wrap_for_training`): DDP under ``torchrun`` when there is something
        to train, then ``torch.compile`` with ``runtime.compile``."""
        ctx = self.context
        return wrap_for_training(model, distributed=ctx.distributed, trainable=trainable, device=ctx.device,
                                 compile_model=self.cfg.runtime.compile, ddp_kwargs=self.ddp_options())

    def build_engine(self, datamanager, model, optimizer, scheduler):
        """The engine of ``model.name`` (:func:`~clip3dreid_plugin.engine.build.build_engine`), with the config's
        evaluation options (one :class:`~clip3dreid_plugin.engine.evaluator.EvalOptions`) and checkpoint settings."""
        ctx = self.context
        return engine_build.build_engine(self.cfg, datamanager, model, optimizer, scheduler, ctx.use_gpu,
                                         is_main=ctx.is_main, device=ctx.device)

    # ------------------------------------------------------------------ the whole
    def build(self):
        """Runs every step once (a second call returns the same engine) and returns the engine, ready for
        :meth:`run` (or ``engine.run(**engine_run_kwargs(cfg))``)."""
        if self.engine is not None:
            return self.engine
        self.context = self.setup()
        self.datamanager = self.build_datamanager()
        self.model = self.prepare_model(self.build_model(self.datamanager))
        self.optimizer = self.build_optimizer(self.model)
        self.scheduler = self.build_scheduler(self.optimizer)
        wrapped = self.wrap_model(self.model, trainable=self.optimizer is not None)
        self.engine = self.build_engine(self.datamanager, wrapped, self.optimizer, self.scheduler)
        return self.engine

    def resume_or_load(self) -> int:
        """Restores ``model.resume`` (``auto``: the latest checkpoint of ``data.save_dir``) into the built engine.

        A training run continues from it (weights, optimizer, scheduler, RNG); an evaluation loads its weights.

        Returns:
            The epoch to start from (``train.start_epoch`` when nothing is resumed).
        """
        cfg, engine = self.cfg, self.engine
        resume = resume_checkpoint(cfg)
        if cfg.model.resume == "auto" and not resume:
            logger.info("--resume auto: no checkpoint in %s, starting from scratch", cfg.data.save_dir)
        if resume and not cfg.test.evaluate:
            return engine.resume(resume)
        if resume:
            compat.load_pretrained_weights(unwrap(engine.model), resume)
        return cfg.train.start_epoch

    def run(self) -> Dict[str, Dict[str, float]]:
        """Writes ``config.yaml``, builds, resumes if asked, trains and/or evaluates, leaves the process group, and
        writes the run's ``metrics.json`` (last and best evaluation; see :mod:`clip3dreid_plugin.evaluation.records`).

        Returns:
            ``{dataset: {metric: value}}`` of the last evaluation.
        """
        cfg = self.cfg
        if dist_utils.launched_rank() == 0:  # only rank 0 of a torchrun job writes files
            logger.info("config written to %s", write_run_config(cfg))
        # A process group formed by the caller (clip3dreid-study runs many trainings in one torchrun job: torchrun's
        # store does not take a second group) is the caller's to end; the one formed here ends here.
        owns_group = not dist_utils.is_distributed()
        try:
            engine = self.build()
            run_kw = engine_run_kwargs(cfg)
            run_kw["start_epoch"] = self.resume_or_load()
            last = engine.run(**run_kw)
        finally:
            if owns_group:
                dist_utils.cleanup()
        if engine.is_main and engine.evaluations:
            logger.info("metrics written to %s", write_metrics(cfg.data.save_dir, cfg, engine.evaluations,
                                                               self.config_file))
        return last
