"""Clothes-aware training/evaluation loop shared by every engine of the plugin.

``ClothesAwareEngineMixin`` sits in front of a torchreid engine class in the MRO. Evaluation goes through
torchreid's own ``test`` and its per-target hook ``_evaluate``, feature extraction through ``extract_features``
and ``parse_data_for_eval``. Three methods are replaced, because torchreid's cannot do what they must:
``run`` (torchreid saves only when it evaluates and picks no best checkpoint, so a killed run could not resume
from its last finished epoch), ``train`` (it never calls the distributed sampler's ``set_epoch`` and prints
every batch) and ``save_model``/``resume`` (it stores rank-1 as a numpy scalar that torch >= 2.6 cannot reload,
and crashes on a ``None`` scheduler).

* evaluation reports every protocol the target dataset defines (general / SC / CC), logs each
  number to TensorBoard, and uses the vectorised evaluator;
* the best checkpoint is chosen by CC rank-1 where the dataset defines CC;
* checkpoints hold plain Python numbers (reloadable under torch >= 2.6), tolerate a ``None``
  scheduler, are written atomically, and are saved every ``ckpt_freq`` epochs so a killed run
  can resume from the last finished epoch with its optimizer and scheduler state, every rank's RNG state and the
  ``GradScaler`` state;
* only the main process writes (ready for ``torch.distributed``); under it, each rank ranks its share of the queries
  with distances computed a block at a time (no query x gallery matrix) and all get the same metrics.
"""
from __future__ import annotations

import datetime
import glob
import logging
import os
import os.path as osp
import re
import time
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.tensorboard import SummaryWriter

from clip3dreid_plugin import compat
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.utils.distributed import (all_gather_objects, all_gather_ordered, broadcast_buffers,
                                                 get_rank, get_world_size, run_on_main)
from clip3dreid_plugin.utils.progress import progress
from clip3dreid_plugin.utils.rng import rng_state, set_rng_state
from clip3dreid_plugin.utils.runtime import ensure_console_logging

logger = logging.getLogger(__name__)

__all__ = ["ClothesAwareEngineMixin", "EvalSettings", "latest_checkpoint", "prune_checkpoints", "unwrap"]

_CKPT_RE = re.compile(r"model\.pth\.tar-(\d+)$")


def latest_checkpoint(save_dir: str, name: str = "model") -> Optional[str]:
    """Path of the highest-epoch ``model.pth.tar-N`` under ``save_dir/name``, or None."""
    best, best_ep = None, -1
    for p in glob.glob(osp.join(save_dir, name, "model.pth.tar-*")):
        m = _CKPT_RE.search(p)
        if m and int(m.group(1)) > best_ep:
            best, best_ep = p, int(m.group(1))
    return best


def prune_checkpoints(folder: str, keep: int, epoch: int) -> List[str]:
    """Deletes the ``model.pth.tar-N`` files of ``folder`` with ``N <= epoch`` but the ``keep`` latest of them.

    ``model-best.pth.tar`` is a file of its own and always stays; files of a later epoch (left by an earlier, longer
    run) are not this run's to delete. ``keep`` 0 keeps every file.

    Returns:
        The deleted paths.
    """
    if keep <= 0:
        return []
    found = []
    for p in glob.glob(osp.join(folder, "model.pth.tar-*")):
        m = _CKPT_RE.search(p)
        if m and int(m.group(1)) <= epoch:
            found.append((int(m.group(1)), p))
    gone = [p for _, p in sorted(found)[:-keep]]
    for p in gone:
        os.remove(p)
    return gone


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The plain module under DistributedDataParallel / DataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, torch.nn.Module):
            return model
        model = inner


def _refuse_cuhk03(use_metric_cuhk03: bool) -> None:
    if use_metric_cuhk03:
        raise ConfigError("test.use_metric_cuhk03 True: the CUHK03 single-shot metric is not implemented by the "
                          "clothes-aware evaluator; set it False")


class EvalSettings:
    """Evaluation options that torchreid's ``run()`` does not carry (from ``cfg.eval``)."""

    def __init__(self, protocols: Sequence[str] = ("auto",), flip: bool = True, select_by: str = "auto",
                 max_rank: int = 50, device: str = "auto"):
        self.protocols = tuple(protocols)
        self.flip = flip
        self.select_by = select_by
        self.max_rank = max_rank
        self.device = device

    @classmethod
    def from_cfg(cls, cfg) -> "EvalSettings":
        return cls(cfg.eval.protocols, cfg.eval.flip, cfg.eval.select_by, cfg.eval.max_rank, cfg.eval.device)


class ClothesAwareEngineMixin:
    """Mixin placed before a torchreid ``Engine`` subclass; its keyword arguments are its own, the rest go to
    torchreid's constructor.

    Args:
        eval_settings: protocols, flip averaging and checkpoint selection (default ``EvalSettings()``).
        ckpt_freq: save a checkpoint every this many epochs (0: only at evaluations and the last epoch).
        keep_checkpoints: keep the latest this many ``model.pth.tar-N`` files (plus ``model-best.pth.tar``); 0 keeps
            all. The default matches ``runtime.keep_checkpoints``.
        is_main: this process writes checkpoints and logs (rank 0 under ``torch.distributed``).
        show_progress: progress bars on training and feature extraction.
        device: the run's device, e.g. ``cuda:1``; None: ``cuda`` (the current device) if ``use_gpu`` else ``cpu``.
    """

    #: How tracklet features pool their frames at test time; torchreid's ``VideoSoftmaxEngine`` sets its own.
    pooling_method: str = "avg"

    def __init__(self, *args, eval_settings: Optional[EvalSettings] = None, ckpt_freq: int = 1, is_main: bool = True,
                 show_progress: bool = True, device: Optional[torch.device] = None, keep_checkpoints: int = 2,
                 **kwargs):
        super().__init__(*args, **kwargs)
        self.eval_settings = eval_settings or EvalSettings()
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
        # (target, protocols, distmat, save_dir, topk) of each target whose ranked results test() draws at its end.
        self._visrank_jobs: List[tuple] = []
        # RNG state right after the last training epoch: what a resumed run must restore (evaluation draws too).
        self._rng_after_train: Optional[dict] = None

    # ------------------------------------------------------------------ checkpoints
    def save_model(self, epoch: int, rank1: float, save_dir: str, is_best: bool = False,
                   metrics: Optional[dict] = None) -> None:
        """Writes ``save_dir/<name>/model.pth.tar-<epoch+1>`` for every registered model.

        Every rank must call it: each one's RNG state goes into the checkpoint (``rng_per_rank``), with the
        ``GradScaler`` state of an fp16 engine (stored even when the scaler is disabled, e.g. on CPU).
        """
        # Collective: each rank draws its own augmentations and dropout masks, so a faithful resume needs them all.
        own = self._rng_after_train or rng_state()
        per_rank = all_gather_objects(own)
        if not self.is_main:
            return
        scaler = getattr(self, "scaler", None)
        for name in self.get_model_names():
            model = unwrap(self._models[name])
            sched = self._scheds[name]
            state = {
                "state_dict": model.state_dict(),
                "epoch": epoch + 1,
                "rank1": float(rank1),
                "metrics": metrics or {},
                "best_metric": float(self.best_metric),
                "evaluations": self.evaluations,
                "optimizer": self._optims[name].state_dict() if self._optims[name] is not None else None,
                "scheduler": sched.state_dict() if sched is not None else None,
                "rng": own,  # rank 0's, what checkpoints without rng_per_rank hold
                "rng_per_rank": per_rank,
                "scaler": scaler.state_dict() if scaler is not None else None,
                **self.checkpoint_extras(),
            }
            path = compat.save_checkpoint(state, osp.join(save_dir, name, f"model.pth.tar-{epoch + 1}"))
            if is_best:
                compat.save_checkpoint(state, osp.join(save_dir, name, "model-best.pth.tar"))
            logger.info("saved %s%s", path, " (best)" if is_best else "")
            # Only once the new file is complete: a run killed now still resumes from it.
            for gone in prune_checkpoints(osp.join(save_dir, name), self.keep_checkpoints, epoch + 1):
                logger.info("removed %s (runtime.keep_checkpoints %d)", gone, self.keep_checkpoints)

    def checkpoint_extras(self) -> dict:
        """Entries an engine adds to every checkpoint it writes (none here)."""
        return {}

    def resume(self, fpath: str, name: str = "model") -> int:
        """Restores model, optimizer and scheduler from ``fpath``; returns the epoch to start from."""
        ckpt = compat.load_checkpoint(fpath)
        unwrap(self._models[name]).load_state_dict(ckpt["state_dict"])
        if ckpt.get("optimizer") is not None and self._optims[name] is not None:
            self._optims[name].load_state_dict(ckpt["optimizer"])
        if ckpt.get("scheduler") is not None and self._scheds[name] is not None:
            self._scheds[name].load_state_dict(ckpt["scheduler"])
        self.best_metric = float(ckpt.get("best_metric", -float("inf")))
        self.evaluations = dict(ckpt.get("evaluations") or {})
        self._restore_rng(ckpt)
        scaler = getattr(self, "scaler", None)
        # A disabled scaler (CPU, bf16) saves {} and ignores a load: only an enabled one with a state is restored.
        if scaler is not None and scaler.is_enabled() and ckpt.get("scaler"):
            scaler.load_state_dict(ckpt["scaler"])
        logger.info("resumed from %s (epoch %d)", fpath, ckpt["epoch"])
        return int(ckpt["epoch"])

    def _restore_rng(self, ckpt: dict) -> None:
        """Gives this rank the RNG state it had when ``ckpt`` was written (its own, not rank 0's)."""
        rank, world = get_rank(), get_world_size()
        per_rank = ckpt.get("rng_per_rank")
        if per_rank and rank < len(per_rank):
            if len(per_rank) != world:
                logger.warning("resuming a %d-process checkpoint with %d processes: the batches differ from an "
                               "uninterrupted run", len(per_rank), world)
            set_rng_state(per_rank[rank])
        elif ckpt.get("rng") is not None and not per_rank and world == 1:
            set_rng_state(ckpt["rng"])  # an older single-process checkpoint
        else:
            # rank 0's state on every rank would give every rank the same augmentations: keep this rank's seed.
            logger.warning("rank %d: no RNG state of its own in the checkpoint; it keeps its seeded state", rank)

    # ------------------------------------------------------------------ main loop
    def run(self, save_dir: str = "log", max_epoch: int = 0, start_epoch: int = 0, print_freq: int = 10,
            fixbase_epoch: int = 0, open_layers=None, start_eval: int = 0, eval_freq: int = -1,
            test_only: bool = False, dist_metric: str = "euclidean", normalize_feature: bool = False,
            visrank: bool = False, visrank_topk: int = 10, use_metric_cuhk03: bool = False,
            ranks: Sequence[int] = (1, 5, 10, 20), rerank: bool = False) -> Dict[str, Dict[str, float]]:
        """torchreid's ``Engine.run`` contract, with per-epoch checkpoints and clothes-aware selection.

        Returns:
            ``{dataset: {metric: value}}`` of the last evaluation.
        """
        _refuse_cuhk03(use_metric_cuhk03)  # before training, not at the first evaluation
        ensure_console_logging()
        if rerank:
            self._refuse_rerank_beyond_memory()
        eval_kw = dict(dist_metric=dist_metric, normalize_feature=normalize_feature, visrank=visrank,
                       visrank_topk=visrank_topk, save_dir=save_dir, use_metric_cuhk03=use_metric_cuhk03,
                       ranks=ranks, rerank=rerank)
        own_writer = self.writer is None and self.is_main
        if own_writer:
            self.writer = SummaryWriter(log_dir=save_dir)
        try:
            if test_only:
                self.test(**eval_kw)
                self._record_evaluation("last", 0)
                self._record_evaluation("best", 0)
                return self.last_metrics
            if visrank:
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
                    self.test(**eval_kw)
                    metrics = self.last_metrics
                    self._record_evaluation("last", self.epoch + 1)
                    score = self.selection_score(metrics)
                    rank1 = score
                    is_best = score > self.best_metric
                    if is_best:
                        self.best_metric = score
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
        from clip3dreid_plugin.engine.loss_log import LossLog

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

    # ------------------------------------------------------------------ evaluation
    def _record_evaluation(self, which: str, epoch: int) -> None:
        """Keeps the current evaluation as the ``last`` or ``best`` one, after ``epoch`` epochs (0: evaluation only)."""
        self.evaluations[which] = {"epoch": epoch, "metrics": self.last_metrics, "cmc": self.last_cmc,
                                   "chance_cmc": self.last_chance_cmc}

    def _refuse_rerank_beyond_memory(self) -> None:
        """``test.rerank`` on a target larger than rank 0's host memory can re-rank: one line, before training.

        Rank 0 decides (it alone re-ranks) and every rank raises, so none trains on while the others stop.
        """
        from clip3dreid_plugin.evaluation.rerank import rerank_memory_error

        sizes = {name: (len(sets["query"]), len(sets["gallery"]))
                 for name, sets in getattr(self.datamanager, "test_dataset", {}).items()}
        message = all_gather_objects(rerank_memory_error(sizes) if get_rank() == 0 else None)[0]
        if message:
            raise ConfigError(message)

    def selection_score(self, metrics: Dict[str, Dict[str, float]]) -> float:
        """Score used to pick the best checkpoint: the first target's CC rank-1 when defined."""
        if not metrics:
            return 0.0
        first = metrics[next(iter(metrics))]
        key = self.eval_settings.select_by
        if key == "auto":
            key = "cc_rank1" if "cc_rank1" in first else "general_rank1"
        if key not in first:
            raise KeyError(f"eval.select_by='{key}' is not among the computed metrics {sorted(first)}")
        return first[key]

    def protocols_for(self, name: str) -> Tuple[str, ...]:
        defined = tuple(getattr(self.datamanager, "eval_protocols", {}).get(name, ("general",)))
        wanted = self.eval_settings.protocols
        if "auto" in wanted:
            return defined
        unknown = [p for p in wanted if p not in defined]
        if unknown:
            raise ConfigError(f"eval.protocols {unknown} are not defined for dataset '{name}' (it has {defined})")
        return tuple(wanted)

    def extract_features(self, imgs: torch.Tensor) -> torch.Tensor:
        """Eval-mode feature ``[B, D]`` from the unwrapped model (DDP adds nothing at test time).

        A video batch ``[B, T, C, H, W]`` gives the average (or max, ``video.pooling_method``) of its ``T``
        frame features: tracklet-level evaluation.
        """
        model = unwrap(self.model)
        if imgs.dim() == 5:
            b, t = imgs.shape[:2]
            frames = model(imgs.flatten(0, 1)).view(b, t, -1)
            return frames.max(1)[0] if self.pooling_method == "max" else frames.mean(1)
        return model(imgs)

    def parse_data_for_eval(self, data):
        clothes = data.get("clothes_id", data["pid"])
        return data["img"], data["pid"], data["camid"], clothes

    @torch.no_grad()
    def extract_loader(self, loader, desc: str = "") -> Tuple[torch.Tensor, np.ndarray, np.ndarray, np.ndarray]:
        """Features ``[n, D]`` on the engine's device (flip-averaged when ``eval.flip``) plus pids, camids and
        clothes ids as numpy arrays ``[n]``; under ``torch.distributed`` every rank gets all ``n`` items."""
        feats, pids, camids, clothes = [], [], [], []
        for data in progress(loader, total=len(loader), desc=desc, enabled=self.show_progress and self.is_main):
            imgs, p, c, cl = self.parse_data_for_eval(data)
            imgs = imgs.to(self.device, non_blocking=True)
            f = self.extract_features(imgs)
            if self.eval_settings.flip:
                f = f + self.extract_features(torch.flip(imgs, dims=[-1]))
            feats.append(f.float())
            pids.append(torch.as_tensor(p))
            camids.append(torch.as_tensor(c))
            clothes.append(torch.as_tensor(cl))
        # Under torch.distributed each rank holds items rank::world; gather them back in dataset order.
        total = len(loader.dataset)
        gathered = [all_gather_ordered(torch.cat(x).to(self.device), total) for x in (feats, pids, camids, clothes)]
        # Features stay on the device: the distances are computed there, a block of queries at a time.
        return gathered[0], gathered[1].cpu().numpy(), gathered[2].cpu().numpy(), gathered[3].cpu().numpy()

    def test(self, dist_metric: str = "euclidean", normalize_feature: bool = False, visrank: bool = False,
             visrank_topk: int = 10, save_dir: str = "", use_metric_cuhk03: bool = False,
             ranks: Sequence[int] = (1, 5, 10, 20), rerank: bool = False) -> float:
        """torchreid's ``test`` over every target (through :meth:`_evaluate`); returns the selection score.

        torchreid returns the last target's rank-1; checkpoints here are chosen by :meth:`selection_score`, which
        reads every protocol of the first target.
        """
        _refuse_cuhk03(use_metric_cuhk03)
        # Under DDP every rank has its own BN running statistics after the last step: evaluate rank 0's model.
        broadcast_buffers(unwrap(self.model))
        self.last_metrics, self.last_cmc = {}, {}
        self._visrank_jobs = []
        super().test(dist_metric=dist_metric, normalize_feature=normalize_feature, visrank=visrank,
                     visrank_topk=visrank_topk, save_dir=save_dir, use_metric_cuhk03=use_metric_cuhk03,
                     ranks=list(ranks), rerank=rerank)
        # Rank 0 draws the ranked results alone, so only after every target: drawn between two targets, the other
        # ranks would wait for it inside the next target's all-gather and could reach the process group's timeout.
        # visrank runs only with test.evaluate, after which no collective follows.
        for job in self._visrank_jobs:
            self._draw_ranked_results(*job)
        self._visrank_jobs = []
        return self.selection_score(self.last_metrics)

    def _eval_device(self) -> torch.device:
        """``eval.device``: ``auto`` (and ``cuda`` on a CUDA run) is the run's own device, index included."""
        want = self.eval_settings.device
        if want == "auto" or (want == "cuda" and self.device.type == "cuda"):
            return self.device
        return torch.device(want)

    def _draw_ranked_results(self, name: str, protocols: Sequence[str], distmat, save_dir: str,
                             topk: int) -> None:
        """Writes the ranked-result images of every protocol of target ``name`` (``test.visrank``).

        ``distmat`` is the target's :class:`~clip3dreid_plugin.evaluation.distance.FeatureDistances` (or its
        re-ranked ``[Q, G]`` matrix): the ranking reads it a block of queries at a time.
        """
        from clip3dreid_plugin.evaluation.visrank import visualize_ranked_results_protocol

        query, gallery = self.datamanager.fetch_test_loaders(name)
        for mode in protocols:
            visualize_ranked_results_protocol(
                distmat, query, gallery, mode, save_dir=osp.join(save_dir, f"visrank_{name}_{mode}"),
                data_type=self.datamanager.data_type, width=self.datamanager.width, height=self.datamanager.height,
                topk=topk)

    @torch.no_grad()
    def _evaluate(self, dataset_name: str = "", query_loader=None, gallery_loader=None, dist_metric: str = "euclidean",
                  normalize_feature: bool = False, visrank: bool = False, visrank_topk: int = 10, save_dir: str = "",
                  use_metric_cuhk03: bool = False, ranks: Sequence[int] = (1, 5, 10, 20),
                  rerank: bool = False) -> Tuple[float, float]:
        """torchreid's per-target hook: every protocol of ``dataset_name``, logged and kept in ``last_metrics``.

        Returns:
            ``(rank1, mAP)`` of the general protocol (else the first one evaluated), which torchreid's ``test`` logs
            as ``Test/<name>/rank1|mAP``.
        """
        from clip3dreid_plugin.evaluation import evaluate_all
        from clip3dreid_plugin.evaluation.chance import chance_cmc
        from clip3dreid_plugin.evaluation.distance import FeatureDistances
        from clip3dreid_plugin.evaluation.rerank import rerank_distances

        name = dataset_name
        protocols = self.protocols_for(name)
        qf, q_pids, q_camids, q_clothes = self.extract_loader(query_loader, f"{name} query")
        gf, g_pids, g_camids, g_clothes = self.extract_loader(gallery_loader, f"{name} gallery")
        dev = self._eval_device()
        qf, gf = qf.to(dev), gf.to(dev)
        if normalize_feature:
            qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
        if rerank:
            # k-reciprocal re-ranking needs the whole query-gallery, query-query and gallery-gallery matrices in host
            # memory: rank 0 alone re-ranks (run() checked that it can) and hands the result to every rank.
            distances = run_on_main(lambda: rerank_distances(qf, gf, dist_metric))
        else:
            # Distances of one block of queries at a time, computed when ranked: no [Q, G] matrix.
            distances = FeatureDistances(qf, gf, dist_metric)
        # Each rank ranks its share of the queries and the sums are all-reduced: every rank gets the same metrics
        # while none idles in a collective (so none can reach the NCCL timeout waiting for rank 0).
        out = evaluate_all(distances, q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes,
                           modes=protocols, max_rank=self.eval_settings.max_rank, device=dev,
                           shard=(get_rank(), get_world_size()))
        metrics: Dict[str, float] = {}
        lines = [f"** {name} ** (camera rule: {getattr(self.datamanager, 'camera_rules', {}).get(name, 'camid')})",
                 "  protocol |   mAP  | " + " | ".join(f"R{r:<4d}" for r in ranks)]
        self.last_cmc[name] = {mode: [float(v) for v in cmc] for mode, (cmc, _) in out.items()}
        self.last_chance_cmc[name] = {mode: chance_cmc(q_pids, g_pids, q_camids, g_camids, q_clothes, g_clothes, mode,
                                                       self.eval_settings.max_rank) for mode in out}
        for mode, (cmc, mAP) in out.items():
            metrics[f"{mode}_mAP"] = float(mAP)
            for r in ranks:
                metrics[f"{mode}_rank{r}"] = float(cmc[min(r, len(cmc)) - 1])
            cells = " | ".join(f"{cmc[min(r, len(cmc)) - 1]:5.1%}" for r in ranks)
            lines.append(f"  {mode:8s} | {mAP:6.1%} | {cells}")
        logger.info("\n".join(lines))
        if self.writer is not None:
            for k, v in metrics.items():
                self.writer.add_scalar(f"Test/{name}/{k}", v, self.epoch)
        self.last_metrics[name] = metrics
        if visrank and self.is_main:
            self._visrank_jobs.append((name, protocols, distances, save_dir, visrank_topk))
        cmc, mAP = out["general"] if "general" in out else out[protocols[0]]
        return float(cmc[0]), float(mAP)
