"""The training loop's record of the per-step loss terms, read back to the host once per print interval.

A plugin engine's ``forward_backward`` returns its terms as 0-dim tensors where they were computed (torchreid's
engines return floats). Reading each one with ``float()`` would make the host wait for the device every step, once
per term; here the pending steps are read together, in one transfer per device, when the loop prints. Every step
keeps its own values (TensorBoard gets one point per step, as before).
"""
from __future__ import annotations

from typing import Dict, List, Tuple, Union

import torch

__all__ = ["LossLog"]

Value = Union[float, int, torch.Tensor]


class LossLog:
    """Pending per-step terms, and the running means of the epoch's terms that have been read.

    Example::

        log = LossLog()
        for step, batch in enumerate(loader):
            log.add(step, engine.forward_backward(batch))
            if (step + 1) % print_freq == 0:
                for at, values in log.flush():
                    ...                       # values: {term: float}
        means = log.means()
    """

    def __init__(self):
        self._pending: List[Tuple[int, Dict[str, Value]]] = []
        self._sums: Dict[str, float] = {}
        self._counts: Dict[str, int] = {}

    def add(self, step: int, summary: Dict[str, Value]) -> None:
        """Keeps one step's terms (scalars or 0-dim tensors, any device) without reading them."""
        self._pending.append((step, {k: v.detach() if torch.is_tensor(v) else v for k, v in summary.items()}))

    def flush(self) -> List[Tuple[int, Dict[str, float]]]:
        """Reads every pending step (one device-to-host transfer per device) and adds it to the means.

        Returns:
            ``[(step, {term: value})]`` of the steps read, in the order they were added.
        """
        by_device: Dict[torch.device, List[torch.Tensor]] = {}
        for _, values in self._pending:
            for v in values.values():
                if torch.is_tensor(v):
                    by_device.setdefault(v.device, []).append(v.reshape(()).float())
        read = {dev: iter(torch.stack(ts).tolist()) for dev, ts in by_device.items()}
        out = []
        for step, values in self._pending:
            row = {k: next(read[v.device]) if torch.is_tensor(v) else float(v) for k, v in values.items()}
            for k, v in row.items():
                self._sums[k] = self._sums.get(k, 0.0) + v
                self._counts[k] = self._counts.get(k, 0) + 1
            out.append((step, row))
        self._pending = []
        return out

    def means(self) -> Dict[str, float]:
        """The mean of every term over the steps read so far (a term counts only in the steps that had it)."""
        return {k: self._sums[k] / self._counts[k] for k in self._sums}
