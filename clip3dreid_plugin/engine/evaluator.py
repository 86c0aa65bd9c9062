"""Evaluation room of the engine: its options, feature extraction, the protocols, the console table, TensorBoard and
the ranked-result images.

:class:`EvalOptions` is every evaluation option in one object, built from the config once
(:meth:`EvalOptions.from_cfg`) and handed to the engine; torchreid's ``run`` / ``test`` keywords are translated into
it at the engine's boundary (:meth:`EvalOptions.with_torchreid_kwargs`). The rest are plain functions that take what
they need (a model or a feature function, a loader, features and protocols); the loop
(:class:`~clip3dreid_plugin.engine.base.ClothesAwareEngineMixin`) calls them from torchreid's per-target hook.

* every protocol the target dataset defines (general / SC / CC) is reported and logged to TensorBoard, from the
  vectorised evaluator;
* under ``torch.distributed`` every rank extracts its shard of the items (gathered back in dataset order), ranks its
  share of the queries with distances computed a block at a time (no query x gallery matrix), and all get the same
  metrics.
"""
from __future__ import annotations

import dataclasses
import logging
import os.path as osp
from typing import Any, Callable, ClassVar, Dict, List, NamedTuple, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.evaluation import FeatureDistances, evaluate_all
from clip3dreid_plugin.evaluation.chance import chance_cmc
from clip3dreid_plugin.evaluation.rerank import rerank_distances, rerank_memory_error
from clip3dreid_plugin.evaluation.visrank import visualize_ranked_results_protocol
from clip3dreid_plugin.utils.distributed import (all_gather_objects, all_gather_ordered, get_rank, get_world_size,
                                                 run_on_main)
from clip3dreid_plugin.utils.progress import progress

logger = logging.getLogger(__name__)

__all__ = ["EvalOptions", "Features", "TargetResult", "refuse_cuhk03", "refuse_rerank_beyond_memory",
           "selection_score", "protocols_for", "eval_device", "model_features", "extract_loader", "evaluate_target",
           "format_table", "log_metrics", "draw_ranked_results"]


@dataclasses.dataclass(frozen=True)
class EvalOptions:
    """How an engine evaluates.

    The first seven are torchreid's keywords of ``Engine.run`` / ``test`` (``test.*`` and
    ``cuhk03.use_metric_cuhk03`` in the config); the others are the plugin's (``eval.*``).

    Args:
        dist_metric: ``euclidean`` or ``cosine``.
        normalize_feature: L2-normalise the features before the distances.
        visrank: draw each target's ranked results (evaluation-only runs).
        visrank_topk: gallery items per query in those images.
        use_metric_cuhk03: CUHK03's single-shot metric (refused: the clothes-aware evaluator does not have it).
        ranks: the CMC ranks of the console table and of the ``<protocol>_rank<r>`` metrics.
        rerank: k-reciprocal re-ranking.
        protocols: ``auto`` (every protocol the dataset defines) or a subset of general / sc / cc.
        flip: a feature is ``f(img) + f(hflip(img))``.
        select_by: the metric that picks the best checkpoint; ``auto``: CC rank-1 where defined, else rank-1.
        max_rank: length of the CMC curves.
        device: where the evaluator computes: ``auto`` (the run's device), ``cpu`` or ``cuda``.
    """

    dist_metric: str = "euclidean"
    normalize_feature: bool = False
    visrank: bool = False
    visrank_topk: int = 10
    use_metric_cuhk03: bool = False
    ranks: Tuple[int, ...] = (1, 5, 10, 20)
    rerank: bool = False
    protocols: Tuple[str, ...] = ("auto",)
    flip: bool = True
    select_by: str = "auto"
    max_rank: int = 50
    device: str = "auto"

    #: The evaluation keywords of torchreid's ``Engine.run``, ``test`` and ``_evaluate``.
    TORCHREID_KEYWORDS: ClassVar[Tuple[str, ...]] = (
        "dist_metric", "normalize_feature", "visrank", "visrank_topk", "use_metric_cuhk03", "ranks", "rerank")

    def __post_init__(self) -> None:
        # Lists from a config or a torchreid caller, kept as tuples: the object is frozen and hashable.
        object.__setattr__(self, "ranks", tuple(int(r) for r in self.ranks))
        object.__setattr__(self, "protocols", tuple(self.protocols))

    @classmethod
    def from_cfg(cls, cfg) -> "EvalOptions":
        """The options of a merged config: ``test.*``, ``cuhk03.use_metric_cuhk03`` and ``eval.*``."""
        t, e = cfg.test, cfg.eval
        return cls(dist_metric=t.dist_metric, normalize_feature=t.normalize_feature, visrank=t.visrank,
                   visrank_topk=t.visrank_topk, use_metric_cuhk03=cfg.cuhk03.use_metric_cuhk03, ranks=t.ranks,
                   rerank=t.rerank, protocols=e.protocols, flip=e.flip, select_by=e.select_by, max_rank=e.max_rank,
                   device=e.device)

    def with_torchreid_kwargs(self, **kwargs: Any) -> "EvalOptions":
        """These options with torchreid's keywords (``dist_metric=...``, ``ranks=[1]``, ...) applied.

        Raises:
            TypeError: a keyword that is not one of :attr:`TORCHREID_KEYWORDS` (as a mistyped keyword argument
                would raise).
        """
        unknown = sorted(set(kwargs) - set(self.TORCHREID_KEYWORDS))
        if unknown:
            raise TypeError(f"unexpected evaluation keyword argument(s) {unknown}; torchreid's are "
                            f"{', '.join(self.TORCHREID_KEYWORDS)}")
        return dataclasses.replace(self, **kwargs) if kwargs else self

    def torchreid_kwargs(self) -> Dict[str, Any]:
        """torchreid's keywords for its ``test`` (``ranks`` as a list, as torchreid expects)."""
        kw = {k: getattr(self, k) for k in self.TORCHREID_KEYWORDS}
        kw["ranks"] = list(self.ranks)
        return kw


def refuse_cuhk03(options: EvalOptions) -> None:
    """``use_metric_cuhk03``: a one-line :class:`ConfigError` (the clothes-aware evaluator has no such metric)."""
    if options.use_metric_cuhk03:
        raise ConfigError("test.use_metric_cuhk03 True: the CUHK03 single-shot metric is not implemented by the "
                          "clothes-aware evaluator; set it False")


def refuse_rerank_beyond_memory(datamanager) -> None:
    """``test.rerank`` on a target larger than rank 0's host memory can re-rank: one line, before training.

    Collective: rank 0 decides (it alone re-ranks) and every rank raises, so none trains on while the others stop.
    """
    sizes = {name: (len(sets["query"]), len(sets["gallery"]))
             for name, sets in getattr(datamanager, "test_dataset", {}).items()}
    message = all_gather_objects(rerank_memory_error(sizes) if get_rank() == 0 else None)[0]
    if message:
        raise ConfigError(message)


def selection_score(metrics: Dict[str, Dict[str, float]], select_by: str = "auto") -> float:
    """Score used to pick the best checkpoint: the first target's ``select_by`` metric; ``auto`` is its CC rank-1
    when defined, else its general rank-1. 0 for no metrics.

    Raises:
        KeyError: ``select_by`` is not among the first target's metrics.
    """
    if not metrics:
        return 0.0
    first = metrics[next(iter(metrics))]
    key = select_by
    if key == "auto":
        key = "cc_rank1" if "cc_rank1" in first else "general_rank1"
    if key not in first:
        raise KeyError(f"eval.select_by='{key}' is not among the computed metrics {sorted(first)}")
    return first[key]


def protocols_for(datamanager, name: str, wanted: Sequence[str] = ("auto",)) -> Tuple[str, ...]:
    """The protocols to report for target ``name``: those its dataset defines, or the ``wanted`` subset of them.

    Raises:
        ConfigError: a wanted protocol the dataset does not define.
    """
    defined = tuple(getattr(datamanager, "eval_protocols", {}).get(name, ("general",)))
    if "auto" in wanted:
        return defined
    unknown = [p for p in wanted if p not in defined]
    if unknown:
        raise ConfigError(f"eval.protocols {unknown} are not defined for dataset '{name}' (it has {defined})")
    return tuple(wanted)


def eval_device(want: str, run_device: torch.device) -> torch.device:
    """``eval.device``: ``auto`` (and ``cuda`` on a CUDA run) is the run's own device, index included."""
    if want == "auto" or (want == "cuda" and run_device.type == "cuda"):
        return run_device
    return torch.device(want)


def model_features(model: torch.nn.Module, imgs: torch.Tensor, pooling_method: str = "avg") -> torch.Tensor:
    """Eval-mode features ``[B, D]`` of a plain module.

    A video batch ``[B, T, C, H, W]`` gives the average (or max, ``pooling_method``) of its ``T`` frame features:
    tracklet-level evaluation.
    """
    if imgs.dim() == 5:
        b, t = imgs.shape[:2]
        frames = model(imgs.flatten(0, 1)).view(b, t, -1)
        return frames.max(1)[0] if pooling_method == "max" else frames.mean(1)
    return model(imgs)


class Features(NamedTuple):
    """One evaluation set: features ``[n, D]`` on the device and its items' ids as numpy arrays ``[n]``."""

    feats: torch.Tensor
    pids: np.ndarray
    camids: np.ndarray
    clothes: np.ndarray


@torch.no_grad()
def extract_loader(loader, features_of: Callable[[torch.Tensor], torch.Tensor],
                   parse: Callable[[Any], Tuple[Any, Any, Any, Any]], device: torch.device, flip: bool = True,
                   show_progress: bool = False, desc: str = "") -> Features:
    """The features of every item of ``loader``.

    Args:
        loader: a query or gallery loader; under ``torch.distributed`` it holds this rank's items ``rank::world``.
        features_of: batch ``[B, ...]`` on ``device`` -> features ``[B, D]`` (the engine's ``extract_features``).
        parse: batch -> ``(imgs, pids, camids, clothes ids)`` (the engine's ``parse_data_for_eval``).
        device: where the batches go and the features stay.
        flip: add the features of the horizontally flipped batch.

    Returns:
        Every rank gets all ``len(loader.dataset)`` items, in dataset order (collective under ``torch.distributed``).
    """
    feats, pids, camids, clothes = [], [], [], []
    for data in progress(loader, total=len(loader), desc=desc, enabled=show_progress):
        imgs, p, c, cl = parse(data)
        imgs = imgs.to(device, non_blocking=True)
        f = features_of(imgs)
        if flip:
            f = f + features_of(torch.flip(imgs, dims=[-1]))
        feats.append(f.float())
        pids.append(torch.as_tensor(p))
        camids.append(torch.as_tensor(c))
        clothes.append(torch.as_tensor(cl))
    # Under torch.distributed each rank holds items rank::world; gather them back in dataset order.
    total = len(loader.dataset)
    gathered = [all_gather_ordered(torch.cat(x).to(device), total) for x in (feats, pids, camids, clothes)]
    # Features stay on the device: the distances are computed there, a block of queries at a time.
    return Features(gathered[0], gathered[1].cpu().numpy(), gathered[2].cpu().numpy(), gathered[3].cpu().numpy())


@dataclasses.dataclass
class TargetResult:
    """One target's evaluation.

    Attributes:
        metrics: ``{<protocol>_mAP, <protocol>_rank<r>: value}``.
        cmc: ``{protocol: [max_rank floats]}``.
        chance_cmc: the expected CMC of a random ranking on the split, ``{protocol: [max_rank floats]}``.
        distances: the :class:`~clip3dreid_plugin.evaluation.distance.FeatureDistances` (or the re-ranked ``[Q, G]``
            matrix) the ranking read, for the ranked-result images.
        table: the console table.
        rank1, mAP: of the general protocol (else the first one evaluated): what torchreid's ``test`` logs.
    """

    metrics: Dict[str, float]
    cmc: Dict[str, List[float]]
    chance_cmc: Dict[str, List[float]]
    distances: Any
    table: str
    rank1: float
    mAP: float


def format_table(name: str, camera_rule: str, out: Dict[str, Tuple[Any, float]], ranks: Sequence[int]) -> str:
    """The console table of one target: a row per protocol with its mAP and the CMC at ``ranks``."""
    lines = [f"** {name} ** (camera rule: {camera_rule})",
             "  protocol |   mAP  | " + " | ".join(f"R{r:<4d}" for r in ranks)]
    for mode, (cmc, mAP) in out.items():
        cells = " | ".join(f"{cmc[min(r, len(cmc)) - 1]:5.1%}" for r in ranks)
        lines.append(f"  {mode:8s} | {mAP:6.1%} | {cells}")
    return "\n".join(lines)


@torch.no_grad()
def evaluate_target(name: str, query: Features, gallery: Features, protocols: Sequence[str], options: EvalOptions,
                    device: torch.device, camera_rule: str = "camid") -> TargetResult:
    """Distances, every protocol's CMC and mAP, the chance curves and the table of one target.

    Collective under ``torch.distributed`` (each rank ranks its share of the queries; re-ranking runs on rank 0).

    Args:
        query, gallery: their :func:`extract_loader` features (every item, on every rank).
        protocols: :func:`protocols_for` the target.
        options: ``dist_metric``, ``normalize_feature``, ``rerank``, ``ranks`` and ``max_rank`` are read.
        device: where the distances are computed (:func:`eval_device`).
        camera_rule: the dataset's camera rule, named in the table.
    """
    qf, gf = query.feats.to(device), gallery.feats.to(device)
    if options.normalize_feature:
        qf, gf = F.normalize(qf, dim=1), F.normalize(gf, dim=1)
    if options.rerank:
        # k-reciprocal re-ranking needs the whole query-gallery, query-query and gallery-gallery matrices in host
        # memory: rank 0 alone re-ranks (the loop checked that it can) and hands the result to every rank.
        distances = run_on_main(lambda: rerank_distances(qf, gf, options.dist_metric))
    else:
        # Distances of one block of queries at a time, computed when ranked: no [Q, G] matrix.
        distances = FeatureDistances(qf, gf, options.dist_metric)
    ids = (query.pids, gallery.pids, query.camids, gallery.camids, query.clothes, gallery.clothes)
    # Each rank ranks its share of the queries and the sums are all-reduced: every rank gets the same metrics
    # while none idles in a collective (so none can reach the NCCL timeout waiting for rank 0).
    out = evaluate_all(distances, *ids, modes=protocols, max_rank=options.max_rank, device=device,
                       shard=(get_rank(), get_world_size()))
    metrics: Dict[str, float] = {}
    for mode, (cmc, mAP) in out.items():
        metrics[f"{mode}_mAP"] = float(mAP)
        for r in options.ranks:
            metrics[f"{mode}_rank{r}"] = float(cmc[min(r, len(cmc)) - 1])
    cmc, mAP = out["general"] if "general" in out else out[protocols[0]]
    return TargetResult(
        metrics=metrics,
        cmc={mode: [float(v) for v in c] for mode, (c, _) in out.items()},
        chance_cmc={mode: chance_cmc(*ids, mode, options.max_rank) for mode in out},
        distances=distances, table=format_table(name, camera_rule, out, options.ranks),
        rank1=float(cmc[0]), mAP=float(mAP))


def log_metrics(writer, name: str, metrics: Dict[str, float], step: int) -> None:
    """Every metric of target ``name`` as ``Test/<name>/<metric>`` at ``step`` (nothing without a writer)."""
    if writer is not None:
        for k, v in metrics.items():
            writer.add_scalar(f"Test/{name}/{k}", v, step)


def draw_ranked_results(datamanager, name: str, protocols: Sequence[str], distances, save_dir: str,
                        topk: int) -> None:
    """Writes the ranked-result images of every protocol of target ``name`` into ``save_dir/visrank_<name>_<mode>``.

    ``distances`` is the target's :class:`~clip3dreid_plugin.evaluation.distance.FeatureDistances` (or its
    re-ranked ``[Q, G]`` matrix): the ranking reads it a block of queries at a time. Not collective: rank 0 draws.
    """
    query, gallery = datamanager.fetch_test_loaders(name)
    for mode in protocols:
        visualize_ranked_results_protocol(
            distances, query, gallery, mode, save_dir=osp.join(save_dir, f"visrank_{name}_{mode}"),
            data_type=datamanager.data_type, width=datamanager.width, height=datamanager.height, topk=topk)
