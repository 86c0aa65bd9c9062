"""Train / evaluate any torchreid or plugin model from a yacs config (``scripts/train.py``).

Usage::

    python scripts/train.py --config-file configs/ltcc/resnet50_baseline_384x192.yaml \
        data.root /data [KEY VALUE ...]
    python scripts/train.py --config-file CFG --eval-only model.load_weights log/model/model-best.pth.tar
    python scripts/train.py --config-file CFG --resume auto     # continue from the last checkpoint
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import sys
from typing import List, Optional, Sequence

from clip3dreid_plugin.utils.runtime import quiet_torchreid_warnings

logger = logging.getLogger("clip3dreid")

__all__ = ["main", "build_parser", "setup_cfg", "USER_ERRORS"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train or evaluate a torchreid/CLIP3DReID model.")
    p.add_argument("--config-file", default="", help="YAML config (may use _BASE_ inheritance)")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="auto picks cuda when available (overrides runtime.device)")
    p.add_argument("--eval-only", action="store_true", help="only evaluate (test.evaluate True)")
    p.add_argument("--resume", default=None,
                   help="checkpoint to resume, or 'auto' for the latest one in the output directory")
    p.add_argument("--output-dir", default=None, help="output directory (overrides data.save_dir)")
    p.add_argument("--seed", type=int, default=None, help="random seed (overrides train.seed)")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="KEY VALUE config overrides")
    return p


def setup_cfg(args: argparse.Namespace):
    """Merges defaults, the config file, ``KEY VALUE`` overrides and the CLI flags; freezes the result."""
    from clip3dreid_plugin.config import load_config

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
    cfg.freeze()
    return cfg


def _user_errors() -> tuple:
    from clip3dreid_plugin.config import ConfigError
    from clip3dreid_plugin.data.image_io import ImageReadError
    from datasets_ext.base import DatasetLayoutError

    return (ConfigError, DatasetLayoutError, ImageReadError, FileNotFoundError, RuntimeError, ValueError, KeyError)


USER_ERRORS = _user_errors


def run(cfg) -> dict:
    """Builds data, model, optimizer and engine from ``cfg`` and runs training/evaluation."""
    import torchreid

    import clip3dreid_plugin
    from clip3dreid_plugin import compat
    from clip3dreid_plugin.config import lr_scheduler_kwargs, optimizer_kwargs, engine_run_kwargs
    from clip3dreid_plugin.data.build import build_datamanager
    from clip3dreid_plugin.engine import latest_checkpoint
    from clip3dreid_plugin.engine.build import build_engine
    from clip3dreid_plugin.models.build import build_model
    from clip3dreid_plugin.utils.runtime import resolve_device, set_seed

    clip3dreid_plugin.register()
    set_seed(cfg.train.seed, cfg.runtime.deterministic)
    device = resolve_device(cfg.runtime.device)
    use_gpu = device.type == "cuda"
    logger.info("device: %s", device)

    datamanager = build_datamanager(cfg, use_gpu)
    model = build_model(cfg, datamanager.num_train_pids, use_gpu)
    if cfg.model.load_weights:
        compat.load_pretrained_weights(model, cfg.model.load_weights)
    model = model.to(device)
    optimizer = torchreid.optim.build_optimizer(model, **optimizer_kwargs(cfg))
    scheduler = torchreid.optim.build_lr_scheduler(optimizer, **lr_scheduler_kwargs(cfg))
    engine = build_engine(cfg, datamanager, model, optimizer, scheduler, use_gpu)

    run_kw = engine_run_kwargs(cfg)
    resume = cfg.model.resume
    if resume == "auto":
        resume = latest_checkpoint(cfg.data.save_dir) or ""
        if not resume:
            logger.info("--resume auto: no checkpoint in %s, starting from scratch", cfg.data.save_dir)
    if resume and not cfg.test.evaluate:
        run_kw["start_epoch"] = engine.resume(resume)
    elif resume:
        compat.load_pretrained_weights(model, resume)
    return engine.run(**run_kw)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the process exit code (2 for a user error, with a one-line message).

    Set ``CLIP3DREID_DEBUG=1`` to get the full traceback instead of the one-line message.
    """
    quiet_torchreid_warnings()
    args = build_parser().parse_args(argv)
    from clip3dreid_plugin.utils.runtime import setup_logging

    try:
        cfg = setup_cfg(args)
        save_dir = cfg.data.save_dir
        os.makedirs(save_dir, exist_ok=True)
        setup_logging(save_dir, "train.log" if not cfg.test.evaluate else "test.log")
        with open(osp.join(save_dir, "config.yaml"), "w", encoding="utf-8") as f:
            f.write(cfg.dump())
        logger.info("config written to %s", osp.join(save_dir, "config.yaml"))
        run(cfg)
    except USER_ERRORS() as err:
        if os.environ.get("CLIP3DREID_DEBUG") == "1":
            raise
        # One line naming the cause; a DataLoader worker wraps the original message with its traceback.
        lines = [ln for ln in str(err).strip().splitlines() if ln.strip()]
        msg = lines[-1] if lines else type(err).__name__
        if isinstance(err, KeyError):
            msg = msg.strip("'\"")
        print(f"error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
