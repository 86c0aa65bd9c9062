"""What the command-line tools share: the argument parser, logging set-up, the one-line report of user errors, and
for the inference tools the student and its transform."""
from __future__ import annotations

import argparse
import functools
import logging
import os
import os.path as osp
import re
import sys
from typing import TYPE_CHECKING, Callable, List, Optional, Sequence, Tuple

from clip3dreid_plugin.config import load_config
from clip3dreid_plugin.errors import UserError
from clip3dreid_plugin.registry import register
from clip3dreid_plugin.utils.torchrun import launched_rank

if TYPE_CHECKING:  # a command's parser is built before torch is imported (``--help`` stays fast)
    import torch
    from yacs.config import CfgNode

logger = logging.getLogger(__name__)

__all__ = ["CLIParser", "add_overrides", "start_cli", "cli_main", "error_line", "report_error", "user_error_types",
           "load_student", "run_config_for", "eval_transform"]


class CLIParser(argparse.ArgumentParser):
    """The argument parser of every command of the plugin: options anywhere on the line, errors in one line.

    Options may come before, between or after the ``KEY VALUE`` config overrides (argparse's
    ``parse_intermixed_args``), so ``clip3dreid-train --config-file CFG data.root /data --output-dir out`` and
    ``clip3dreid-train --output-dir out --config-file CFG data.root /data`` mean the same. After a bare ``--``
    every token is an override. A token that is not an option of this command (or an option after ``--``) ends
    in one line naming it and where it belongs.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # Before Python 3.13 argparse takes "-1e-4" for an unknown option; a config value may be any number.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def _long_options(self) -> List[str]:
        return [s for a in self._actions for s in a.option_strings if s.startswith("--") and s != "--help"]

    def _misplaced(self, token: str) -> str:
        """The one-line message for ``token``, which this command does not take where it stands."""
        name = token.split("=", 1)[0]
        has_overrides = any(a.dest == "opts" for a in self._actions)
        if not name.startswith("-"):
            return (f"unexpected argument '{token}': {self.prog} takes no KEY VALUE config overrides"
                    if not has_overrides else f"unexpected argument '{token}'")
        if "." in name.lstrip("-") and has_overrides:
            return (f"'{name}' is not an option: config overrides are KEY VALUE pairs without dashes, "
                    f"e.g. '{name.lstrip('-')} VALUE'")
        where = " anywhere on the line, before or after the KEY VALUE overrides" if has_overrides else ""
        return f"unknown option '{name}'; {self.prog} takes {', '.join(self._long_options())}{where}"

    def parse_args(self, args: Optional[Sequence[str]] = None, namespace=None) -> argparse.Namespace:
        """``parse_intermixed_args`` plus the checks above; exits with status 2 and one line on a bad token."""
        argv = list(sys.argv[1:] if args is None else args)
        # argparse's intermixed parsing mishandles a bare "--" (Python 3.11), so the tail after it is split off here.
        tail: List[str] = []
        if "--" in argv:
            cut = argv.index("--")
            argv, tail = argv[:cut], argv[cut + 1:]
        ns, extras = self.parse_known_intermixed_args(argv, namespace)
        if extras:
            self.error(self._misplaced(extras[0]))
        if tail:
            if not hasattr(ns, "opts"):
                self.error(self._misplaced(tail[0]))
            own = set(self._long_options())
            for token in tail:
                if token.split("=", 1)[0] in own:
                    self.error(f"'{token}' is an option of {self.prog}, but after '--' it reads as a config key: "
                               f"put it before the '--'")
            ns.opts = list(ns.opts) + tail
        return ns

    def error(self, message: str):
        """One line on stderr (``error: ...``, as every user error of the plugin) and exit status 2."""
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")


def add_overrides(parser: argparse.ArgumentParser, help: str = "config overrides, e.g. data.root /data") -> None:
    """The positional ``KEY VALUE`` config overrides (``args.opts``) of a command that takes them."""
    parser.add_argument("opts", nargs="*", metavar="KEY VALUE", help=f"{help} (options may follow them)")


def start_cli(stream=None) -> None:
    """Console logging (to ``stream``, default stdout), and torchreid's import-time warnings silenced (they are not
    the user's problem). Every command of the plugin starts with it or with ``setup_logging`` and a log file."""
    from clip3dreid_plugin.utils.runtime import quiet_torchreid_warnings, setup_logging  # imports torch: parse first

    quiet_torchreid_warnings()
    setup_logging(stream=stream)


def user_error_types() -> tuple:
    """The error types whose message names the cause, so one line is all a user needs: the plugin's
    :class:`~clip3dreid_plugin.errors.UserError`, the dataset loaders' own base (``datasets_ext`` imports nothing of
    the plugin), and a missing file (the OS names it).

    Anything else (a shape bug in model code, a failed assertion) keeps its traceback.
    """
    from datasets_ext.errors import DatasetError  # the datasets_ext package imports torchreid

    return (UserError, DatasetError, FileNotFoundError)


def error_line(err: BaseException) -> Optional[str]:
    """The one-line message for a user error or a CUDA out-of-memory, else None (the traceback is kept)."""
    import torch  # this module is imported before torch (every parser); an error may come before torch too

    if isinstance(err, torch.OutOfMemoryError):
        first = str(err).strip().splitlines()[0] if str(err).strip() else "out of memory"
        return (f"{first}; lower train.batch_size (and test.batch_size), or train in mixed precision with "
                "runtime.amp bf16|fp16 (--amp)")
    if not isinstance(err, user_error_types()):
        return None
    lines = [ln.strip() for ln in str(err).strip().splitlines() if ln.strip()]
    if not lines:
        return type(err).__name__
    # A DataLoader worker re-raises with its traceback in the message; the cause is its last line. Otherwise a
    # message written over several lines (a missing body model and how to get one) is joined into one.
    msg = lines[-1] if "Original Traceback" in str(err) else " ".join(lines)
    return msg.strip("'\"") if isinstance(err, KeyError) else msg


def report_error(err: BaseException) -> int:
    """Prints a user error's one line (``error: ...``) and returns exit code 2; re-raises anything else.

    ``CLIP3DREID_DEBUG=1`` re-raises user errors too, for their traceback. Under ``torchrun`` ranks other than 0
    prefix their line with the rank, since every rank fails alike.
    """
    msg = error_line(err)
    if msg is None or os.environ.get("CLIP3DREID_DEBUG") == "1":
        raise err
    rank = launched_rank()
    print(f"error: {msg}" if rank == 0 else f"error (rank {rank}): {msg}", file=sys.stderr)
    return 2


def cli_main(main: Callable[[Optional[Sequence[str]]], int]) -> Callable[[Optional[Sequence[str]]], int]:
    """The one wrapper of every command's ``main(argv) -> exit status``: a user error or a CUDA out-of-memory ends in
    one line on stderr and exit status 2 (:func:`report_error`); any other exception propagates with its traceback.

    A bad option never reaches ``main``'s body: :class:`CLIParser` exits with its own line and status 2.
    """

    @functools.wraps(main)
    def run(argv: Optional[Sequence[str]] = None) -> int:
        try:
            return main(argv)
        except Exception as err:
            return report_error(err)

    return run


def run_config_for(weights: str) -> str:
    """The ``config.yaml`` a training run wrote beside a checkpoint of it (``RUN/model/<file>`` -> ``RUN``), or
    empty when there is none."""
    path = osp.join(osp.dirname(osp.dirname(osp.abspath(weights))), "config.yaml") if weights else ""
    return path if path and osp.isfile(path) else ""


def load_student(config_file: str, opts: Sequence[str], weights: str) -> Tuple[CfgNode, torch.nn.Module]:
    """Merges the config, registers the plugin and builds the eval-mode model from a checkpoint.

    Args:
        config_file: YAML recipe; empty for the ``config.yaml`` of the checkpoint's run when there is one (the
            model it trained), else the defaults.
        opts: ``KEY VALUE`` overrides.
        weights: checkpoint path; empty keeps the initialised weights. It replaces the ImageNet weights, so none
            are needed.

    Returns:
        ``(cfg, model)``.

    Raises:
        ConfigError: a bad key or value (named in the message).
        FileNotFoundError: the checkpoint is missing.
        CheckpointError: the checkpoint is unreadable or does not fit the model.
    """
    from clip3dreid_plugin.models.build import build_inference_model  # torchreid: imported after parsing

    if not config_file and run_config_for(weights):
        config_file = run_config_for(weights)
        logger.info("config: %s (written by the run of %s)", config_file, weights)
    cfg = load_config(config_file or None, list(opts))
    register()
    return cfg, build_inference_model(cfg, weights)


def eval_transform(cfg: CfgNode) -> Callable:
    """torchreid's test transform for ``cfg.data``: resize, to tensor, normalise (PIL image -> ``[3, H, W]``)."""
    import torchreid  # slow to import: only the inference tools, after parsing, pay for it

    _, transform = torchreid.data.transforms.build_transforms(
        cfg.data.height, cfg.data.width, transforms=None, norm_mean=list(cfg.data.norm_mean),
        norm_std=list(cfg.data.norm_std))
    return transform
