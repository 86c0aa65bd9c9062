"""Training engines (torchreid ``Engine`` subclasses)."""
from clip3dreid_plugin.engine.base import ClothesAwareEngineMixin, EvalSettings, latest_checkpoint
from clip3dreid_plugin.engine.standard import ClothesSoftmaxEngine, ClothesTripletEngine

__all__ = ["ClothesAwareEngineMixin", "EvalSettings", "latest_checkpoint", "ClothesSoftmaxEngine",
           "ClothesTripletEngine"]
