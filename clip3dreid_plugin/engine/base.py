"""Clothes-aware training loop shared by every engine of the plugin.

``ClothesAwareEngineMixin`` sits in front of a torchreid engine class in the MRO and keeps torchreid's API
(``run(**kwargs)``, ``test``, ``save_model``, ``resume``, the hooks ``forward_backward``, ``extract_features`` and
``parse_data_for_eval``). It holds the loop and the loop's state; the two other rooms of the engine are modules of
plain functions it calls:

* :mod:`~clip3dreid_plugin.engine.checkpoint`: what a checkpoint holds, written atomically every ``ckpt_freq``
  epochs with every rank's RNG state, and the resume;
* :mod:`~clip3dreid_plugin.engine.evaluator`: :class:`~clip3dreid_plugin.engine.evaluator.EvalOptions`, feature
  extraction, every protocol of every target, the console table, TensorBoard and the ranked-result images.

Evaluation goes through torchreid's own ``test`` and its per-target hook ``_evaluate``. Three methods are replaced,
because torchreid's cannot do what they must: ``run`` (torchreid saves only when it evaluates and picks no best
checkpoint, so a killed run could not resume from its last finished epoch), ``train`` (it never calls the
distributed sampler's ``set_epoch`` and prints every batch) and ``save_model``/``resume`` (see the checkpoint room).
The best checkpoint is chosen by CC rank-1 where the dataset defines CC. Only the main process writes.
"""
from __future__ import annotations

import datetime
import logging
import time
from typing import Dict, List, Optional, Tuple

import torch
from torch.utils.tensorboard import SummaryWriter

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.engine import checkpoint, evaluator
from clip3dreid_plugin.engine.checkpoint import latest_checkpoint, prune_checkpoints
from clip3dreid_plugin.engine.common import unwrap
from clip3dreid_plugin.engine.evaluator import EvalOptions
from clip3dreid_plugin.engine.loss_log import LossLog
from clip3dreid_plugin.utils.distributed import broadcast_buffers
from clip3dreid_plugin.utils.progress import progress
from clip3dreid_plugin.utils.rng import rng_state
from clip3dreid_plugin.utils.runtime import ensure_console_logging

logger = logging.getLogger(__name__)

# latest_checkpoint, prune_checkpoints and unwrap live in the rooms below; they stay importable from here.
__all__ = ["ClothesAwareEngineMixin", "EvalOptions", "latest_checkpoint", "prune_checkpoints", "unwrap"]


class ClothesAwareEngineMixin:
    """Mixin placed before a torchreid ``Engine`` subclass; its keyword arguments are its own, the rest go to
    torchreid's constructor.

    Args:
        eval_options: how the engine evaluates (default ``EvalOptions()``); torchreid's evaluation keywords of
            ``run`` and ``test`` override its fields for that call.
        ckpt_freq: save a checkpoint every this many epochs (0: only at evaluations and the last epoch).
        keep_checkpoints: keep the latest this many ``model.pth.tar-N`` files (plus ``model-best.pth.tar``); 0 keeps
            all. The default matches ``runtime.keep_checkpoints``.
        is_main: this process writes checkpoints and logs (rank 0 under ``torch.distributed``).
        show_progress: progress bars on training and feature extraction.
        device: the run's device, e.g. ``cuda:1``; None: ``cuda`` (the current device) if ``use_gpu`` else ``cpu``.
    """

    #: How tracklet features pool their frames at test time; torchreid's ``VideoSoftmaxEngine`` sets its own.
    pooling_method: str = "avg"

    def __init__(self, *args, eval_options: Optional[EvalOptions] = None, ckpt_freq: int = 1, is_main: bool = True,
                 show_progress: bool = True, device: Optional[torch.device] = None, keep_checkpoints: int = 2,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_options = eval_options or EvalOptions()
        self.ckpt_freq = ckpt_freq
        self.keep_checkpoints = keep_checkpoints
        self.is_main = is_main
        self.show_progress = show_progress
        if device is None:
            device = torch.device("cuda") if self.use_gpu else torch.device("cpu")
        self.device = torch.device(device)
        self.best_metric = -float("inf")
        self.last_metrics: Dict[str, Dict[str, float]] = {}
        # Full CMC curves of the last evaluation, {target: {protocol: [max_rank floats]}}.
        self.last_cmc: Dict[str, Dict[str, List[float]]] = {}
        # The expected CMC of a random ranking on each target's split, {target: {protocol: [max_rank floats]}}.
        self.last_chance_cmc: Dict[str, Dict[str, List[float]]] = {}
        # The last and the best evaluation: {"epoch", "metrics", "cmc"} each (what metrics.json records).
        self.evaluations: Dict[str, dict] = {}
        # (target, protocols, distances, save_dir, topk) of each target whose ranked results test() draws at its end.
        self._visrank_jobs: List[tuple] = []
        # RNG state right after the last training epoch: what a resumed run must restore (evaluation draws too).
        self._rng_after_train: Optional[dict] = None

    # ------------------------------------------------------------------ checkpoints (engine/checkpoint.py)
    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False,
                   metrics: Optional[dict] = None) -> None:
        """Writes ``save_dir/<name>/model.pth.tar-<epoch+1>`` for every registered model.

        Every rank must call it: each one's RNG state goes into the checkpoint (``rng_per_rank``), with the
        ``GradScaler`` state of an fp16 engine (stored even when the scaler is disabled, e.g. on CPU).
        """
        own, per_rank = checkpoint.gather_rng_states(self._rng_after_train)
        if not self.is_main:
            return
        for name in self.get_model_names():
            state = checkpoint.checkpoint_state(
                unwrap(self._models[name]), self._optims[name], self._scheds[name], epoch=epoch + 1, rank1=rank1,
                metrics=metrics, best_metric=self.best_metric, evaluations=self.evaluations, rng=own,
                rng_per_rank=per_rank, scaler=getattr(self, "scaler", None), extras=self.checkpoint_extras())
            checkpoint.write_checkpoint(state, save_dir, name, is_best=is_best, keep=self.keep_checkpoints)

    def checkpoint_extras(self) -> dict:
        """Entries an engine adds to every checkpoint it writes (none here)."""
        return {}

    def restore_extras(self, ckpt: dict) -> None:
        """Gives an engine back what its :meth:`checkpoint_extras` wrote, on resume (nothing here)."""

    def resume(self, fpath: str, name: str = "model") -> int:
        """Restores model, optimizer, scheduler, scaler and this rank's RNG from ``fpath``; returns the epoch to
        start from."""
        ckpt = checkpoint.restore_checkpoint(fpath, unwrap(self._models[name]), self._optims[name],
                                             self._scheds[name], getattr(self, "scaler", None))
        self.best_metric = float(ckpt.get("best_metric", -float("inf")))
        self.evaluations = dict(ckpt.get("evaluations") or {})
        self.restore_extras(ckpt)
        return int(ckpt["epoch"])

    # ------------------------------------------------------------------ main loop
    def run(self, save_dir: str = "log", max_epoch: int = 0, start_epoch: int = 0, print_freq: int = 10,
            fixbase_epoch: int = 0, open_layers=None, start_eval: int = 0, eval_freq: int = -1,
            test_only: bool = False, **eval_kwargs) -> Dict[str, Dict[str, float]]:
        """torchreid's ``Engine.run`` contract, with per-epoch checkpoints and clothes-aware selection.

        Args:
            **eval_kwargs: torchreid's evaluation keywords (``dist_metric``, ``ranks``, ``rerank``, ...; see
                :attr:`EvalOptions.TORCHREID_KEYWORDS`): they override :attr:`eval_options` for this run.

        Returns:
            ``{dataset: {metric: value}}`` of the last evaluation.
        """
        options = self.eval_options.with_torchreid_kwargs(**eval_kwargs)
        evaluator.refuse_cuhk03(options)  # before training, not at the first evaluation
        ensure_console_logging()
        if options.rerank:
            evaluator.refuse_rerank_beyond_memory(self.datamanager)
        own_writer = self.writer is None and self.is_main
        if own_writer:
            self.writer = SummaryWriter(log_dir=save_dir)
        try:
            if test_only:
                self._test(options, save_dir)
                self._record_evaluation("last", 0)
                self._record_evaluation("best", 0)
                return self.last_metrics
            if options.visrank:
                raise ConfigError("test.visrank can be used only with test.evaluate True")

            t0 = time.time()
            self.start_epoch, self.max_epoch = start_epoch, max_epoch
            logger.info("start training: epochs %d..%d", start_epoch + 1, max_epoch)
            for self.epoch in range(start_epoch, max_epoch):
                self.train(print_freq=print_freq, fixbase_epoch=fixbase_epoch, open_layers=open_layers)
                # Snapshot RNG before evaluation (whose loaders draw seeds) so a resume replays training exactly.
                self._rng_after_train = rng_state()
                last = self.epoch + 1 == max_epoch
                periodic = eval_freq > 0 and (self.epoch + 1) >= start_eval and (self.epoch + 1) % eval_freq == 0
                do_eval = last or periodic
                rank1, is_best, metrics = 0.0, False, {}
                if do_eval:
                    rank1 = self._test(options, save_dir)  # the selection score
                    metrics = self.last_metrics
                    self._record_evaluation("last", self.epoch + 1)
                    is_best = rank1 > self.best_metric
                    if is_best:
                        self.best_metric = rank1
                        self._record_evaluation("best", self.epoch + 1)
                if last or do_eval or (self.ckpt_freq > 0 and (self.epoch + 1) % self.ckpt_freq == 0):
                    self.save_model(self.epoch, rank1, save_dir, is_best=is_best, metrics=metrics)
            logger.info("elapsed %s", datetime.timedelta(seconds=round(time.time() - t0)))
            return self.last_metrics
        finally:
            if own_writer:
                # close() flushes; left open, the writer's thread would keep writing into save_dir after run().
                self.writer.close()
                self.writer = None

    def train(self, print_freq: int = 10, fixbase_epoch: int = 0, open_layers=None) -> Dict[str, float]:
        """One epoch over ``self.train_loader``; logs the mean of every loss term.

        The terms ``forward_backward`` returns as tensors are read back every ``print_freq`` steps, all pending steps
        at once (:class:`~clip3dreid_plugin.engine.loss_log.LossLog`), not in every step.
        """
        log = LossLog()
        self.set_model_mode("train")
        # The plain module: torchreid looks layers up by name, and DDP's "module." prefix would hide them.
        self.two_stepped_transfer_learning(self.epoch, fixbase_epoch, open_layers, model=unwrap(self.model))
        self.num_batches = len(self.train_loader)
        sampler = getattr(self.train_loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(self.epoch)
        t_epoch = time.time()
        bar = progress(self.train_loader, total=self.num_batches, desc=f"epoch {self.epoch + 1}/{self.max_epoch}",
                       enabled=self.show_progress and self.is_main)
        for self.batch_idx, data in enumerate(bar):
            n_iter = self.epoch * self.num_batches + self.batch_idx
            log.add(n_iter, self.forward_backward(data))
            if self.writer is not None:
                self.writer.add_scalar("Train/lr", self.get_current_lr(), n_iter)
            if (self.batch_idx + 1) % max(1, print_freq) == 0 or self.batch_idx + 1 == self.num_batches:
                for step, values in log.flush():
                    if self.writer is not None:
                        for k, v in values.items():
                            self.writer.add_scalar(f"Train/{k}", v, step)
                if hasattr(bar, "set_postfix"):
                    bar.set_postfix({k: f"{v:.3f}" for k, v in log.means().items()})
        self.update_lr()
        log.flush()  # steps past len(train_loader), should a loader yield more
        means = log.means()
        logger.info("epoch %d/%d done in %.1fs | %s | lr %.2e", self.epoch + 1, self.max_epoch, time.time() - t_epoch,
                    " ".join(f"{k} {v:.4f}" for k, v in means.items()), self.get_current_lr())
        return means

    def _record_evaluation(self, which: str, epoch: int) -> None:
        """Keeps the current evaluation as the ``last`` or ``best`` one, after ``epoch`` epochs (0: evaluation only)."""
        self.evaluations[which] = {"epoch": epoch, "metrics": self.last_metrics, "cmc": self.last_cmc,
                                   "chance_cmc": self.last_chance_cmc}

    # ------------------------------------------------------------------ evaluation (engine/evaluator.py)
    def selection_score(self, metrics: Dict[str, Dict[str, float]]) -> float:
        """Score used to pick the best checkpoint (``eval_options.select_by``, see
        :func:`~clip3dreid_plugin.engine.evaluator.selection_score`)."""
        return evaluator.selection_score(metrics, self.eval_options.select_by)

    def extract_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """torchreid's hook: eval-mode features ``[B, D]`` of the unwrapped model (DDP adds nothing at test time),
        tracklet-pooled for a video batch ``[B, T, C, H, W]``."""
        return evaluator.model_features(unwrap(self.model), imgs, self.pooling_method)

    def parse_data_for_eval(self, data):
        clothes = data.get("clothes_id", data["pid"])
        return data["img"], data["pid"], data["camid"], clothes

    def test(self, *, save_dir: str = "", **eval_kwargs) -> float:
        """torchreid's ``test`` over every target (through :meth:`_evaluate`); returns the selection score.

        Args:
            save_dir: where ``visrank`` draws.
            **eval_kwargs: torchreid's evaluation keywords; they override :attr:`eval_options` for this call.
                Keywords only: a positional argument of torchreid's order would otherwise land on the wrong option.

        torchreid returns the last target's rank-1; checkpoints here are chosen by :meth:`selection_score`, which
        reads every protocol of the first target.
        """
        return self._test(self.eval_options.with_torchreid_kwargs(**eval_kwargs), save_dir)

    def _test(self, options: EvalOptions, save_dir: str) -> float:
        evaluator.refuse_cuhk03(options)
        # Under DDP every rank has its own BN running statistics after the last step: evaluate rank 0's model.
        broadcast_buffers(unwrap(self.model))
        self.last_metrics, self.last_cmc = {}, {}
        self._visrank_jobs = []
        super().test(save_dir=save_dir, **options.torchreid_kwargs())
        # Rank 0 draws the ranked results alone, so only after every target: drawn between two targets, the other
        # ranks would wait for it inside the next target's all-gather and could reach the process group's timeout.
        # visrank runs only with test.evaluate, after which no collective follows.
        for job in self._visrank_jobs:
            evaluator.draw_ranked_results(self.datamanager, *job)
        self._visrank_jobs = []
        return self.selection_score(self.last_metrics)

    @torch.no_grad()
    def _evaluate(self, dataset_name: str = "", query_loader=None, gallery_loader=None, save_dir: str = "",
                  **eval_kwargs) -> Tuple[float, float]:
        """torchreid's per-target hook: every protocol of ``dataset_name``, logged and kept in ``last_metrics``.

        Args:
            **eval_kwargs: the evaluation keywords torchreid's ``test`` passes on (those :meth:`test` gave it),
                translated back into :class:`EvalOptions` here.

        Returns:
            ``(rank1, mAP)`` of the general protocol (else the first one evaluated), which torchreid's ``test`` logs
            as ``Test/<name>/rank1|mAP``.
        """
        options = self.eval_options.with_torchreid_kwargs(**eval_kwargs)
        name = dataset_name
        protocols = evaluator.protocols_for(self.datamanager, name, options.protocols)
        extract = dict(features_of=self.extract_features, parse=self.parse_data_for_eval, device=self.device,
                       flip=options.flip, show_progress=self.show_progress and self.is_main)
        query = evaluator.extract_loader(query_loader, desc=f"{name} query", **extract)
        gallery = evaluator.extract_loader(gallery_loader, desc=f"{name} gallery", **extract)
        result = evaluator.evaluate_target(
            name, query, gallery, protocols, options, evaluator.eval_device(options.device, self.device),
            camera_rule=getattr(self.datamanager, "camera_rules", {}).get(name, "camid"))
        logger.info(result.table)
        evaluator.log_metrics(self.writer, name, result.metrics, self.epoch)
        self.last_metrics[name] = result.metrics
        self.last_cmc[name] = result.cmc
        self.last_chance_cmc[name] = result.chance_cmc
        if options.visrank and self.is_main:
            self._visrank_jobs.append((name, protocols, result.distances, save_dir, options.visrank_topk))
        return result.rank1, result.mAP
