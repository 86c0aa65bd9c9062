"""Train / evaluate any torchreid or plugin model from a yacs config (``clip3dreid-train``).

Usage (options may stand before or after the ``KEY VALUE`` overrides)::

    clip3dreid-train --config-file configs/ltcc/resnet50_baseline_384x192.yaml \
        data.root /data [KEY VALUE ...] [--output-dir DIR]
    clip3dreid-train --config-file CFG --eval-only data.root /data model.load_weights log/model/model-best.pth.tar
    clip3dreid-train --config-file CFG --resume auto data.root /data     # continue from the last checkpoint

Every run writes its merged ``config.yaml`` into its output folder before anything else.

This file parses, sets up the config and logging, and runs; what a run builds and in which order is
:class:`~clip3dreid_plugin.engine.trainer.DefaultTrainer`'s (usable from Python without this command).
"""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from clip3dreid_plugin.config import load_config
from clip3dreid_plugin.config.check import check_config
from clip3dreid_plugin.registry import accepted_names, register
from clip3dreid_plugin.tools.common import CLIParser, add_overrides, cli_main
from clip3dreid_plugin.utils.runtime import DEVICE_HELP, quiet_torchreid_warnings, setup_logging
from clip3dreid_plugin.utils.torchrun import launched_rank

__all__ = ["main", "build_parser", "setup_cfg", "build", "run"]


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


def build(cfg):
    """The engine of ``cfg``, ready to run (:meth:`DefaultTrainer.build
    <clip3dreid_plugin.engine.trainer.DefaultTrainer.build>`; it joins torchrun's group)."""
    from clip3dreid_plugin.engine.trainer import DefaultTrainer  # torchreid: after quiet_torchreid_warnings()

    register()
    return DefaultTrainer(cfg).build()


def run(cfg, config_file: str = "") -> dict:
    """Builds, resumes if asked, trains / evaluates and writes ``config.yaml`` and ``metrics.json``
    (:meth:`DefaultTrainer.run <clip3dreid_plugin.engine.trainer.DefaultTrainer.run>`).

    Args:
        cfg: the merged, frozen config.
        config_file: the recipe it came from, recorded in ``metrics.json``.

    Returns:
        ``{dataset: {metric: value}}`` of the last evaluation.
    """
    from clip3dreid_plugin.engine.trainer import DefaultTrainer  # torchreid: after quiet_torchreid_warnings()

    register()
    return DefaultTrainer(cfg, config_file).run()


@cli_main
def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the process exit code (2 for a user error, with a one-line message).

    A user error (:func:`user_error_types`) or a CUDA out-of-memory ends in one line; any other exception keeps its
    traceback. Set ``CLIP3DREID_DEBUG=1`` to get the traceback of user errors too.
    """
    quiet_torchreid_warnings()
    args = build_parser().parse_args(argv)
    cfg = setup_cfg(args)
    save_dir = cfg.data.save_dir
    is_main = launched_rank() == 0  # only rank 0 of a torchrun job writes files
    setup_logging(save_dir, "train.log" if not cfg.test.evaluate else "test.log", is_main=is_main)
    run(cfg, args.config_file)
    return 0


if __name__ == "__main__":
    sys.exit(main())
