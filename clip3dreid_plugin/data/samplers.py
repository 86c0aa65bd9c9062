"""Samplers for distributed training and evaluation.

``build_train_sampler`` is the one place that decides how a run draws its training batches: the sampler
``sampler.train_sampler`` names, made distributed under ``torchrun`` (or a one-line error naming the samplers that
work there), never another one in its place.

``DistributedIdentitySampler`` is torchreid's ``RandomIdentitySampler`` idea (P identities x K
instances per batch) made rank-aware: every rank builds the same epoch-level index list from
``seed + epoch`` and takes its own contiguous slice of every global batch, so the global batch is
identity-balanced and no two ranks see the same image in a step. ``ShardSampler`` splits an
evaluation set as ``rank::world`` so the gathered features can be put back in the original order.
"""
from __future__ import annotations

import random
from collections import defaultdict
from typing import Iterator, List, Sequence

from torch.utils.data import DistributedSampler, Sampler, SequentialSampler

from clip3dreid_plugin.config.loader import ConfigError

__all__ = ["DistributedIdentitySampler", "ShardSampler", "build_train_sampler", "DISTRIBUTED_SAMPLERS"]

#: torchreid's training samplers that have a distributed version, and what they become under ``torchrun``.
DISTRIBUTED_SAMPLERS = {
    "RandomIdentitySampler": "DistributedIdentitySampler: P identities x K images per global batch",
    "RandomSampler": "torch's DistributedSampler, shuffled every epoch",
    "SequentialSampler": "torch's DistributedSampler, in dataset order",
}


def _check_identities(data_source: Sequence, batch_size: int, num_instances: int) -> None:
    """torchreid's identity sampler only asserts that a batch's identities exist; say which options to change."""
    pids = len({item[1] for item in data_source})
    needed = batch_size // max(num_instances, 1)
    if pids < needed:
        raise ConfigError(f"train.batch_size {batch_size} / sampler.num_instances {num_instances} draws {needed} "
                          f"identities per batch, but the training set has {pids}: lower train.batch_size or raise "
                          f"sampler.num_instances")


def build_train_sampler(data_source: Sequence, name: str, batch_size: int, num_instances: int = 4,
                        num_cams: int = 1, num_datasets: int = 1, rank: int = 0, world_size: int = 1,
                        seed: int = 0, evaluate_only: bool = False) -> Sampler:
    """The training sampler of a run: the sampler policy, in one place.

    * one process: torchreid's sampler ``name``, as torchreid builds it;
    * ``world_size`` > 1 (``torchrun``): that sampler made distributed (:data:`DISTRIBUTED_SAMPLERS`), seeded with
      ``seed`` and re-shuffled by the loop's ``set_epoch``; a sampler without a distributed version stops the run;
    * ``evaluate_only``: a sequential sampler, whatever ``name`` is. Such a run never draws a training batch, and the
      identity samplers would refuse a training set smaller than one (global) batch.

    Args:
        data_source: the training items ``(path, pid, camid, dsetid, ...)``.
        name: ``sampler.train_sampler``.
        batch_size: per-process batch size (``train.batch_size``).
        num_instances, num_cams, num_datasets: ``sampler.*``, for the samplers that read them.
        rank, world_size: this process and the number of processes.
        seed: ``train.seed``: every rank draws the same epoch order from it.

    Raises:
        ConfigError: under ``torchrun``, a sampler without a distributed version (``RandomDomainSampler``,
            ``RandomDatasetSampler``), or a training set too small for one global batch; an identity sampler whose
            batch needs more identities than the training set has.
    """
    if evaluate_only:
        return SequentialSampler(data_source)
    if world_size <= 1:
        if name == "RandomIdentitySampler":
            _check_identities(data_source, batch_size, num_instances)
        import torchreid  # slow to import: the distributed samplers and the shard sampler do without it

        return torchreid.data.sampler.build_train_sampler(
            data_source, name, batch_size=batch_size, num_instances=num_instances, num_cams=num_cams,
            num_datasets=num_datasets)
    if name == "RandomIdentitySampler":
        return DistributedIdentitySampler(data_source, batch_size, num_instances, rank, world_size, seed=seed)
    if name in ("RandomSampler", "SequentialSampler"):
        sampler = DistributedSampler(data_source, num_replicas=world_size, rank=rank,
                                     shuffle=name == "RandomSampler", seed=seed, drop_last=True)
        if len(sampler) < batch_size:
            raise ConfigError(f"the training set ({len(data_source)} items) is too small for a global batch of "
                              f"{batch_size * world_size} (train.batch_size {batch_size} x {world_size} processes): "
                              "lower train.batch_size")
        return sampler
    raise ConfigError(f"sampler.train_sampler {name} has no distributed version, so it cannot run under torchrun "
                      f"({world_size} processes): use {', '.join(DISTRIBUTED_SAMPLERS)}")


class DistributedIdentitySampler(Sampler[int]):
    """P x K identity-balanced sampler sharded over ranks.

    Args:
        data_source: items ``(img_path, pid, ...)``.
        batch_size: per-rank batch size (a multiple of ``num_instances``).
        num_instances: K, images per identity in a batch.
        rank: this process's rank.
        world_size: number of processes.
        seed: base seed; the epoch is added so every epoch shuffles differently but reproducibly.
    """

    def __init__(self, data_source: Sequence, batch_size: int, num_instances: int = 4, rank: int = 0,
                 world_size: int = 1, seed: int = 0):
        if batch_size % num_instances:
            raise ConfigError(f"train.batch_size ({batch_size}) must be a multiple of sampler.num_instances "
                              f"({num_instances})")
        self.data_source = data_source
        self.batch_size = batch_size
        self.num_instances = num_instances
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.epoch = 0
        self.index_dic = defaultdict(list)
        for i, it in enumerate(data_source):
            self.index_dic[it[1]].append(i)
        self.pids = sorted(self.index_dic)
        global_batch = batch_size * world_size
        per_epoch = sum(max(len(v), num_instances) // num_instances * num_instances for v in self.index_dic.values())
        self.num_global_batches = per_epoch // global_batch
        if self.num_global_batches == 0:
            raise ConfigError(f"the training set is too small for a global batch of {global_batch} images "
                              f"(train.batch_size {batch_size} x {world_size} processes): lower train.batch_size")

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _global_order(self) -> List[int]:
        rng = random.Random(self.seed + self.epoch)
        chunks = defaultdict(list)
        for pid in self.pids:
            idxs = list(self.index_dic[pid])
            if len(idxs) < self.num_instances:
                idxs = idxs + rng.choices(idxs, k=self.num_instances - len(idxs))
            rng.shuffle(idxs)
            for s in range(0, len(idxs) - self.num_instances + 1, self.num_instances):
                chunks[pid].append(idxs[s: s + self.num_instances])
        avail = [p for p in self.pids if chunks[p]]
        per_batch = self.batch_size * self.world_size // self.num_instances
        order: List[int] = []
        while len(avail) >= per_batch:
            for pid in rng.sample(avail, per_batch):
                order.extend(chunks[pid].pop(0))
                if not chunks[pid]:
                    avail.remove(pid)
        return order

    def __iter__(self) -> Iterator[int]:
        order = self._global_order()
        gb = self.batch_size * self.world_size
        n = min(len(order) // gb, self.num_global_batches)
        for b in range(n):
            start = b * gb + self.rank * self.batch_size
            yield from order[start: start + self.batch_size]

    def __len__(self) -> int:
        return self.num_global_batches * self.batch_size


class ShardSampler(Sampler[int]):
    """Indices ``rank, rank + world, ...`` of a dataset of ``n`` items (no padding, no shuffling)."""

    def __init__(self, n: int, rank: int = 0, world_size: int = 1):
        self.n, self.rank, self.world_size = n, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.n, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.n, self.world_size))
