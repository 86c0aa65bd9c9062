"""Train / evaluate any torchreid or plugin model from a yacs config (``clip3dreid-train``).

Usage (options may stand before or after the ``KEY VALUE`` overrides)::

    clip3dreid-train --config-file configs/ltcc/resnet50_baseline_384x192.yaml \
        data.root /data [KEY VALUE ...] [--output-dir DIR]
    clip3dreid-train --config-file CFG --eval-only data.root /data model.load_weights log/model/model-best.pth.tar
    clip3dreid-train --config-file CFG --resume auto data.root /data     # continue from the last checkpoint

Every run writes its merged ``config.yaml`` into its output folder before anything else.
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import sys
from typing import Optional, Sequence

from clip3dreid_plugin.tools.common import CLIParser, add_overrides, cli_main
from clip3dreid_plugin.utils.runtime import DEVICE_HELP, quiet_torchreid_warnings

logger = logging.getLogger("clip3dreid")

__all__ = ["main", "build_parser", "setup_cfg", "build", "run", "ddp_options", "resume_checkpoint",
           "wrap_for_training", "write_run_config"]


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(description="Train or evaluate a torchreid/CLIP3DReID model.")
    p.add_argument("--config-file", default="", help="YAML config (may use _BASE_ inheritance)")
    p.add_argument("--device", default=None, help=f"{DEVICE_HELP} (overrides runtime.device)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate (test.evaluate True)")
    p.add_argument("--resume", default=None,
                   help="checkpoint to resume, or 'auto' for the latest one in the output directory")
    p.add_argument("--output-dir", default=None, help="output directory (overrides data.save_dir)")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides train.seed)")
    p.add_argument("--amp", default=None, choices=["none", "bf16", "fp16"],
                   help="autocast the student forward (overrides runtime.amp; bf16 works on CPU)")
    add_overrides(p)
    return p


def setup_cfg(args: argparse.Namespace):
    """Merges defaults, the config file, ``KEY VALUE`` overrides and the CLI flags; checks and freezes the result.

    Raises:
        ConfigError: a bad key or value, or an option torchreid would refuse later (:func:`check_config`).
    """
    from clip3dreid_plugin.config import load_config
    from clip3dreid_plugin.config.check import check_config
    from clip3dreid_plugin.registry import accepted_names

    cfg = load_config(args.config_file or None, args.opts)
    if args.device is not None:
        cfg.runtime.device = args.device
    if args.eval_only:
        cfg.test.evaluate = True
    if args.resume is not None:
        cfg.model.resume = args.resume
    if args.output_dir is not None:
        cfg.data.save_dir = args.output_dir
    if args.seed is not None:
        cfg.train.seed = args.seed
    if args.amp is not None:
        cfg.runtime.amp = args.amp
    check_config(cfg, accepted_names())
    cfg.freeze()
    return cfg


def resume_checkpoint(cfg) -> str:
    """The checkpoint ``model.resume`` names: the path itself; for ``auto`` the latest ``model.pth.tar-N`` in
    ``data.save_dir`` (empty while there is none); empty when not resuming."""
    from clip3dreid_plugin.engine import latest_checkpoint

    if cfg.model.resume == "auto":
        return latest_checkpoint(cfg.data.save_dir) or ""
    return cfg.model.resume


def write_run_config(cfg) -> str:
    """Writes the merged config to ``data.save_dir/config.yaml`` (atomically); returns its path.

    Every run folder holds one, so that how a model was trained can be read next to its checkpoints.
    """
    from clip3dreid_plugin.utils.io import atomic_write

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


def wrap_for_training(model, distributed: bool, trainable: bool, device, compile_model: bool = False,
                      ddp_kwargs: Optional[dict] = None):
    """The module the engine trains: DDP around a model that has something to train, then ``torch.compile``.

    DDP refuses a model without trainable parameters (``clip_zeroshot``), and ``compile(DDP(model))`` is the order
    torch documents.

    Args:
        ddp_kwargs: DDP's options, see :func:`ddp_options`.
    """
    import torch

    out = model
    if distributed and trainable:
        out = torch.nn.parallel.DistributedDataParallel(
            out, device_ids=[device.index] if device.type == "cuda" else None, **(ddp_kwargs or {}))
    if compile_model:
        out = torch.compile(out)
    return out


def build(cfg):
    """Builds data manager, model, optimizer, scheduler and engine from ``cfg`` (and joins torchrun's group).

    Returns:
        The engine, ready for ``engine.run(**engine_run_kwargs(cfg))``.
    """
    import torch
    import torchreid

    import clip3dreid_plugin
    from clip3dreid_plugin import compat
    from clip3dreid_plugin.config import ConfigError, lr_scheduler_kwargs, optimizer_kwargs
    from clip3dreid_plugin.data.build import build_datamanager
    from clip3dreid_plugin.data.samplers import DistributedIdentitySampler
    from clip3dreid_plugin.engine.build import build_engine
    from clip3dreid_plugin.models.build import build_model
    from clip3dreid_plugin.utils import distributed as dist_utils
    from clip3dreid_plugin.utils.runtime import (activate_device, check_amp_support, resolve_device, set_matmul_tf32,
                                                 set_seed)

    clip3dreid_plugin.register()
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1
    # Resolved once, with its index, and made current: torchreid's .cuda() calls then land on it too.
    device = activate_device(resolve_device(cfg.runtime.device,
                                            int(os.environ.get("LOCAL_RANK", "0")) if launched else None))
    check_amp_support(cfg.runtime.amp, device)
    set_matmul_tf32(cfg.runtime.tf32, device)
    if launched and cfg.runtime.sync_bn and device.type != "cuda":
        # Checked before the process group forms; torch's own refusal comes only at the first training forward.
        raise ConfigError(f"runtime.sync_bn True needs CUDA (SyncBatchNorm synchronises GPU tensors only), but this "
                          f"run is on {device}: set runtime.sync_bn False")
    distributed = dist_utils.init_distributed(cfg.runtime.dist_backend, device.type)
    rank, world = dist_utils.get_rank(), dist_utils.get_world_size()
    use_gpu = device.type == "cuda"
    set_seed(cfg.train.seed + rank, cfg.runtime.deterministic)
    logger.info("device: %s%s", device, f" (rank {rank}/{world})" if distributed else "")

    def distributed_sampler(data_source, batch_size):
        return DistributedIdentitySampler(data_source, batch_size, cfg.sampler.num_instances, rank, world,
                                          seed=cfg.train.seed)

    def unused_sampler(data_source, batch_size):
        return torch.utils.data.SequentialSampler(data_source)

    # An evaluation-only run never draws a training batch, so its sampler must not refuse a training set smaller
    # than one (global) batch, as the identity samplers do.
    sampler_fn = unused_sampler if cfg.test.evaluate else (distributed_sampler if distributed else None)
    datamanager = build_datamanager(cfg, use_gpu, train_sampler_fn=sampler_fn, eval_shard=(rank, world))
    # A checkpoint to load replaces the ImageNet weights: an evaluation or a resumed run needs no ImageNet file.
    model = build_model(cfg, datamanager.num_train_pids, use_gpu,
                        checkpoint=cfg.model.load_weights or resume_checkpoint(cfg))
    if cfg.model.load_weights:
        compat.load_pretrained_weights(model, cfg.model.load_weights)
    if distributed and cfg.runtime.sync_bn:
        model = dist_utils.convert_sync_batchnorm(model)
    model = model.to(device)
    if cfg.runtime.channels_last:
        model = model.to(memory_format=torch.channels_last)
    optimizer = scheduler = None
    if any(p.requires_grad for p in model.parameters()):  # clip_zeroshot has nothing to train
        optimizer = torchreid.optim.build_optimizer(model, **optimizer_kwargs(cfg))
        scheduler = torchreid.optim.build_lr_scheduler(optimizer, **lr_scheduler_kwargs(cfg))
    elif not cfg.test.evaluate:
        raise ConfigError(f"model '{cfg.model.name}' has no trainable parameter: run it with --eval-only")
    train_model = wrap_for_training(model, distributed=distributed, trainable=optimizer is not None,
                                    device=device, compile_model=cfg.runtime.compile, ddp_kwargs=ddp_options(cfg))
    engine = build_engine(cfg, datamanager, train_model, optimizer, scheduler, use_gpu, is_main=(rank == 0),
                          device=device)
    return engine


def run(cfg, config_file: str = "") -> dict:
    """Builds everything from ``cfg``, resumes if asked, runs training/evaluation, and writes the run's
    ``metrics.json`` (last and best evaluation; see :mod:`clip3dreid_plugin.evaluation.records`).

    Args:
        cfg: the merged, frozen config.
        config_file: the recipe it came from, recorded in ``metrics.json``.

    Returns:
        ``{dataset: {metric: value}}`` of the last evaluation.
    """
    from clip3dreid_plugin import compat
    from clip3dreid_plugin.config import engine_run_kwargs
    from clip3dreid_plugin.engine.base import unwrap
    from clip3dreid_plugin.utils import distributed as dist_utils

    if int(os.environ.get("RANK", "0")) == 0:  # only rank 0 of a torchrun job writes files
        logger.info("config written to %s", write_run_config(cfg))
    engine = build(cfg)
    run_kw = engine_run_kwargs(cfg)
    resume = resume_checkpoint(cfg)
    if cfg.model.resume == "auto" and not resume:
        logger.info("--resume auto: no checkpoint in %s, starting from scratch", cfg.data.save_dir)
    if resume and not cfg.test.evaluate:
        run_kw["start_epoch"] = engine.resume(resume)
    elif resume:
        compat.load_pretrained_weights(unwrap(engine.model), resume)
    try:
        last = engine.run(**run_kw)
    finally:
        dist_utils.cleanup()
    if engine.is_main and engine.evaluations:
        from clip3dreid_plugin.evaluation.records import write_metrics

        logger.info("metrics written to %s", write_metrics(cfg.data.save_dir, cfg, engine.evaluations, config_file))
    return last


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the process exit code (2 for a user error, with a one-line message).

    A user error (:func:`user_error_types`) or a CUDA out-of-memory ends in one line; any other exception keeps its
    traceback. Set ``CLIP3DREID_DEBUG=1`` to get the traceback of user errors too.
    """
    quiet_torchreid_warnings()
    args = build_parser().parse_args(argv)
    from clip3dreid_plugin.utils.runtime import setup_logging

    cfg = setup_cfg(args)
    save_dir = cfg.data.save_dir
    is_main = int(os.environ.get("RANK", "0")) == 0  # only rank 0 of a torchrun job writes files
    setup_logging(save_dir, "train.log" if not cfg.test.evaluate else "test.log", is_main=is_main)
    run(cfg, args.config_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
