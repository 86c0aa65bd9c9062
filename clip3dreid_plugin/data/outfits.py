"""Which outfits belong to which identity, from a training split's 5-field items (CAL's positive sets)."""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, Sequence, Set

import torch

from clip3dreid_plugin.config.loader import ConfigError

__all__ = ["identity_outfits", "check_clothes_labels"]


def identity_outfits(items: Sequence[tuple], num_pids: int, num_clothes: int) -> torch.Tensor:
    """The identity-to-outfit map of a training split.

    Args:
        items: ``(img_path, pid, camid, dsetid, clothes_id)`` with pids in ``0..num_pids-1`` and clothes ids in
            ``0..num_clothes-1`` (relabelled training ids, multi-source offsets applied).
        num_pids: training identities ``P``.
        num_clothes: training outfits ``C``.

    Returns:
        ``[P, C]`` bool, True where the identity wears the outfit; ``map[pids]`` is CAL's positive mask.

    Raises:
        ConfigError: an item with a pid or clothes id outside the ranges, or an outfit worn by two identities.
    """
    table = torch.zeros(num_pids, num_clothes, dtype=torch.bool)
    owner: Dict[int, int] = {}
    for it in items:
        pid, clothes = int(it[1]), int(it[4])
        if not (0 <= pid < num_pids and 0 <= clothes < num_clothes):
            raise ConfigError(f"training item {it[0]!r} has pid {pid} / clothes id {clothes}, outside the "
                              f"{num_pids} identities / {num_clothes} outfits of the training split")
        if owner.setdefault(clothes, pid) != pid:
            raise ConfigError(f"outfit {clothes} is worn by identities {owner[clothes]} and {pid} (item {it[0]!r}): "
                              "clothes ids must be per identity")
        table[pid, clothes] = True
    return table


def check_clothes_labels(items: Sequence[tuple], source_names: Sequence[str], method: str) -> None:
    """Stops a run whose training source has no clothes labels (each identity one outfit, the convention of
    datasets without them), which a clothes-based method cannot learn from.

    Args:
        items: the training split's 5-field items; ``dsetid`` indexes ``source_names``.
        source_names: the training sources, in dataset-id order.
        method: the method's name, for the message.

    Raises:
        ConfigError: naming the first such dataset.
    """
    outfits: Dict[int, Dict[int, Set[int]]] = defaultdict(lambda: defaultdict(set))
    for it in items:
        outfits[int(it[3])][int(it[1])].add(int(it[4]))
    for dsetid, per_pid in sorted(outfits.items()):
        if all(len(v) == 1 for v in per_pid.values()):
            name = source_names[dsetid] if dsetid < len(source_names) else f"source {dsetid}"
            raise ConfigError(f"{method} needs clothes labels, but training dataset '{name}' has one outfit per "
                              "identity (no clothes labels): train it on a clothes-aware dataset")
