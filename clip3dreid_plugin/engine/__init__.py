"""Training engines (torchreid ``Engine`` subclasses) and the trainer that builds one from a config.

``base`` is the loop, ``checkpoint`` and ``evaluator`` its two rooms, ``loss_terms`` the table of loss terms,
``trainer`` the config -> engine steps.
"""
from clip3dreid_plugin.engine.base import ClothesAwareEngineMixin
from clip3dreid_plugin.engine.checkpoint import latest_checkpoint
from clip3dreid_plugin.engine.clip3dreid_engine import CLIP3DReIDEngine
from clip3dreid_plugin.engine.evaluator import EvalOptions
from clip3dreid_plugin.engine.loss_terms import LOSS_TERMS, LossSwitches, LossTable, LossTerm
from clip3dreid_plugin.engine.standard import ClothesSoftmaxEngine, ClothesTripletEngine
from clip3dreid_plugin.engine.trainer import DefaultTrainer

__all__ = ["ClothesAwareEngineMixin", "EvalOptions", "latest_checkpoint", "CLIP3DReIDEngine", "LossSwitches",
           "LossTerm", "LossTable", "LOSS_TERMS", "ClothesSoftmaxEngine", "ClothesTripletEngine", "DefaultTrainer"]
