"""Vectorised ReID evaluation (general / clothes-changing / same-clothes CMC and mAP)."""
from clip3dreid_plugin.evaluation.distance import FeatureDistances, chunked_distmat
from clip3dreid_plugin.evaluation.rank import MODES, evaluate, evaluate_all

__all__ = ["MODES", "evaluate", "evaluate_all", "FeatureDistances", "chunked_distmat"]
