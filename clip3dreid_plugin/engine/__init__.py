"""Training engines (torchreid ``Engine`` subclasses)."""
from clip3dreid_plugin.engine.base import ClothesAwareEngineMixin, EvalSettings, latest_checkpoint
from clip3dreid_plugin.engine.clip3dreid_engine import CLIP3DReIDEngine
from clip3dreid_plugin.engine.loss_terms import LOSS_TERMS, LossSwitches, LossTable, LossTerm
from clip3dreid_plugin.engine.standard import ClothesSoftmaxEngine, ClothesTripletEngine

__all__ = ["ClothesAwareEngineMixin", "EvalSettings", "latest_checkpoint", "CLIP3DReIDEngine", "LossSwitches",
           "LossTerm", "LossTable", "LOSS_TERMS", "ClothesSoftmaxEngine", "ClothesTripletEngine"]
