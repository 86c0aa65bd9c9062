"""Training engines (torchreid ``Engine`` subclasses) and the trainer that builds one from a config.

``base`` is the loop, ``checkpoint`` and ``evaluator`` its two rooms, ``trainer`` the config -> engine steps.
"""
from clip3dreid_plugin.engine.base import ClothesAwareEngineMixin
from clip3dreid_plugin.engine.checkpoint import latest_checkpoint
from clip3dreid_plugin.engine.clip3dreid_engine import CLIP3DReIDEngine, LossSwitches
from clip3dreid_plugin.engine.evaluator import EvalOptions
from clip3dreid_plugin.engine.standard import ClothesSoftmaxEngine, ClothesTripletEngine
from clip3dreid_plugin.engine.trainer import DefaultTrainer

__all__ = ["ClothesAwareEngineMixin", "EvalOptions", "latest_checkpoint", "CLIP3DReIDEngine", "LossSwitches",
           "ClothesSoftmaxEngine", "ClothesTripletEngine", "DefaultTrainer"]
