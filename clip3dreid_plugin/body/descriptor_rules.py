"""True body-shape descriptors of synthetic bodies, from their measurements.

The paper labels synthetic bodies with a shape-to-attribute model; the plugin uses transparent
rules instead. Each of the 16 phrase pairs (the paper's Table 1, in its order) is decided by one
scalar score computed from :mod:`clip3dreid_plugin.body.anthropometry`: label 0 (the first
phrase) when the score is at least the pair's threshold, label 1 (the second phrase) otherwise.
A larger score therefore never moves a body from the first phrase to the second (each rule is
monotone in its score), and "Tall" always means taller than every "Short" body.

Thresholds are population quantiles (the median by default) of the scores: computed from the
sampled synthetic population with :func:`fit_thresholds`, or given (e.g. reused from an earlier
set) so that two sets share one definition. Ratios to the height make most descriptors about
proportion rather than size, as a human observer would judge them.

===  ==============================================  =====================================================
 #   pair (label 0 / label 1)                        score (label 0 when score >= threshold)
===  ==============================================  =====================================================
 0   Muscular / Slender                              upper_arm_girth / height
 1   Broad-Shouldered / Narrow-Shouldered            shoulder_width / height
 2   Heavyset / Petite                               volume (m^3; body mass / 1000 kg/m^3)
 3   Tall / Short                                    height
 4   Long Legs / Short Legs                          leg_length / height
 5   Long Torso / Short Torso                        torso_length / height
 6   Curvy / Angular                                 (chest_girth + hip_girth) / (2 * waist_girth)
 7   Full-Figured / Skinny                           volume / height^2 (a BMI proxy)
 8   Stocky / Willowy                                volume / height^3 (ponderal index: thick for the height)
 9   Pear-Shaped / Apple-Shaped                      hip_girth / waist_girth
10   Athletic / Non-Athletic                         shoulder_width / waist_girth (V-shape)
11   Fit / Unfit                                     height / waist_girth (inverse waist-to-height ratio)
12   Large-Breasted / Small-Breasted                 chest_depth / height
13   Long-Armed / Short-Armed                        arm_length / height
14   Long-Necked / Short-Necked                      neck_length / height
15   High-Waisted / Low-Waisted                      waist_height / height
===  ==============================================  =====================================================
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, List, Mapping, Sequence, Tuple

import numpy as np

from clip3dreid_plugin.shape import DESCRIPTOR_PAIRS

__all__ = ["RULES", "Rule", "descriptor_scores", "fit_thresholds", "rule_labels", "label_phrases"]

Measurements = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Rule:
    """One descriptor rule: ``label = 0 (first) if score >= threshold else 1 (second)``."""

    first: str
    second: str
    score_name: str
    score: Callable[[Measurements], np.ndarray]


def _m(meas: Measurements, key: str) -> np.ndarray:
    return np.asarray(meas[key], dtype=np.float64)


_RULES_BY_PAIR: Tuple[Rule, ...] = (
    Rule("Muscular", "Slender", "upper_arm_girth/height", lambda m: _m(m, "upper_arm_girth") / _m(m, "height")),
    Rule("Broad-Shouldered", "Narrow-Shouldered", "shoulder_width/height",
         lambda m: _m(m, "shoulder_width") / _m(m, "height")),
    Rule("Heavyset", "Petite", "volume", lambda m: _m(m, "volume")),
    Rule("Tall", "Short", "height", lambda m: _m(m, "height")),
    Rule("Long Legs", "Short Legs", "leg_length/height", lambda m: _m(m, "leg_length") / _m(m, "height")),
    Rule("Long Torso", "Short Torso", "torso_length/height", lambda m: _m(m, "torso_length") / _m(m, "height")),
    Rule("Curvy", "Angular", "(chest_girth+hip_girth)/(2*waist_girth)",
         lambda m: (_m(m, "chest_girth") + _m(m, "hip_girth")) / (2.0 * _m(m, "waist_girth"))),
    Rule("Full-Figured", "Skinny", "volume/height^2", lambda m: _m(m, "volume") / _m(m, "height") ** 2),
    Rule("Stocky", "Willowy", "volume/height^3", lambda m: _m(m, "volume") / _m(m, "height") ** 3),
    Rule("Pear-Shaped", "Apple-Shaped", "hip_girth/waist_girth", lambda m: _m(m, "hip_girth") / _m(m, "waist_girth")),
    Rule("Athletic", "Non-Athletic", "shoulder_width/waist_girth",
         lambda m: _m(m, "shoulder_width") / _m(m, "waist_girth")),
    Rule("Fit", "Unfit", "height/waist_girth", lambda m: _m(m, "height") / _m(m, "waist_girth")),
    Rule("Large-Breasted", "Small-Breasted", "chest_depth/height", lambda m: _m(m, "chest_depth") / _m(m, "height")),
    Rule("Long-Armed", "Short-Armed", "arm_length/height", lambda m: _m(m, "arm_length") / _m(m, "height")),
    Rule("Long-Necked", "Short-Necked", "neck_length/height", lambda m: _m(m, "neck_length") / _m(m, "height")),
    Rule("High-Waisted", "Low-Waisted", "waist_height/height", lambda m: _m(m, "waist_height") / _m(m, "height")),
)

# One rule per pair of the paper's list, in its order; a pair without a rule fails here, at import.
_BY_PAIR = {(r.first, r.second): r for r in _RULES_BY_PAIR}
RULES: Tuple[Rule, ...] = tuple(_BY_PAIR[pair] for pair in DESCRIPTOR_PAIRS)



def descriptor_scores(measurements: Measurements) -> np.ndarray:
    """Scores of the 16 rules.

    Args:
        measurements: name -> [N] arrays (or scalars) from :func:`~clip3dreid_plugin.body.anthropometry.measure_bodies`.

    Returns:
        float64 [N, 16].
    """
    cols = [np.atleast_1d(rule.score(measurements)) for rule in RULES]
    return np.stack(cols, axis=1)


def fit_thresholds(scores: np.ndarray, quantile: float = 0.5) -> np.ndarray:
    """Per-rule thresholds: the ``quantile`` of each score over a population.

    Args:
        scores: [N, 16] population scores.
        quantile: in (0, 1); 0.5 splits the population in halves.

    Returns:
        float64 [16].
    """
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] != len(RULES) or len(scores) == 0:
        raise ValueError(f"scores must be [N, {len(RULES)}] with N >= 1, got {scores.shape}")
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    return np.quantile(scores, quantile, axis=0)


def rule_labels(scores: np.ndarray, thresholds: Sequence[float]) -> np.ndarray:
    """Labels of the 16 pairs: 0 = first phrase (score >= threshold), 1 = second phrase.

    Args:
        scores: [N, 16] (or [16]).
        thresholds: [16].

    Returns:
        int64 [N, 16] (or [16]).
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(thresholds, dtype=np.float64)
    if t.shape != (len(RULES),) or s.shape[-1] != len(RULES):
        raise ValueError(f"expected scores [..., {len(RULES)}] and thresholds [{len(RULES)}], got {s.shape}, {t.shape}")
    return np.where(s >= t, 0, 1).astype(np.int64)


def label_phrases(labels: Sequence[int]) -> List[str]:
    """The 16 chosen phrases of one body, e.g. ``['Slender', 'Broad-Shouldered', ...]``."""
    labels = list(np.asarray(labels).reshape(-1))
    if len(labels) != len(RULES):
        raise ValueError(f"expected {len(RULES)} labels, got {len(labels)}")
    return [RULES[i].first if int(lab) == 0 else RULES[i].second for i, lab in enumerate(labels)]

