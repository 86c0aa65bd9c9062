"""Statistics over seeds: mean and sample sd, the 95% Student-t interval of a mean, paired differences.

The one copy used by ``clip3dreid-study``, ``clip3dreid-compare``'s grouping and ``benchmarks/method_study.py``.
Values are plain floats (points or fractions, as the caller keeps them); fewer than two values give ``nan`` for a
spread, never a made-up zero.
"""
from __future__ import annotations

import math
import statistics
from typing import Dict, Mapping, Sequence, Tuple

__all__ = ["t_quantile_975", "mean_sd", "mean_ci", "paired_difference"]


def t_quantile_975(dof: int) -> float:
    """Two-sided 95% Student-t quantile (the 0.975 quantile) with ``dof`` degrees of freedom."""
    from scipy.stats import t  # scipy is slow to import: only a summary needs it

    return float(t.ppf(0.975, dof))


def mean_sd(values: Sequence[float]) -> Tuple[float, float]:
    """``(mean, sample standard deviation)``; the sd is nan for fewer than two values."""
    return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else float("nan")


def mean_ci(values: Sequence[float]) -> Tuple[float, float]:
    """``(mean, half-width of the 95% t interval of the mean)``; the half-width is nan for fewer than two values."""
    m, sd = mean_sd(values)
    if len(values) < 2:
        return m, float("nan")
    return m, t_quantile_975(len(values) - 1) * sd / math.sqrt(len(values))


def paired_difference(values: Mapping[int, float], reference: Mapping[int, float]) -> Dict[str, object]:
    """The paired difference ``values - reference`` over the seeds both have.

    Args:
        values: ``{seed: value}`` of one row.
        reference: ``{seed: value}`` of the reference row.

    Returns:
        ``{"mean", "ci95" (half-width of the 95% t interval), "sd", "n", "seeds"}``; ``n`` is 0 (and the numbers
        nan) when no seed is common.
    """
    seeds = sorted(set(values) & set(reference))
    if not seeds:
        nan = float("nan")
        return {"mean": nan, "ci95": nan, "sd": nan, "n": 0, "seeds": []}
    diffs = [values[s] - reference[s] for s in seeds]
    mean, half = mean_ci(diffs)
    return {"mean": mean, "ci95": half, "sd": mean_sd(diffs)[1], "n": len(diffs), "seeds": seeds}
