"""``cal``: the network of CAL (Gu et al., CVPR 2022), a ResNet-50 with a clothes classifier.

torchreid's ResNet-50 (so ``pretrained=True`` is its ImageNet file), last stride 1, max and average pooling
concatenated (4096-d), a BatchNorm neck, an identity classifier and a cosine clothes classifier. The BN output is
the feature every head and the evaluation use. The clothes classifier is trained by
:class:`~clip3dreid_plugin.engine.cal_engine.CALEngine` with an optimiser of its own; without it (``num_clothes``
0, or torchreid's own engines) the model is CAL's "without the clothes terms" baseline.
"""
from __future__ import annotations

from typing import Dict, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.models.imagenet import torchreid_resnet

__all__ = ["CAL", "NormalizedClassifier", "cal"]


class NormalizedClassifier(nn.Module):
    """Cosine classifier without bias: ``cos(normalize(x), normalize(W))``, ``[B, C]`` in ``[-1, 1]``.

    Args:
        in_dim: feature width ``D``.
        num_classes: classes ``C``.
    """

    def __init__(self, in_dim: int, num_classes: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_dim))
        # CAL's initialisation: uniform, then every row rescaled to norm 1 (renorm caps it at 1e-5, times 1e5).
        self.weight.data.uniform_(-1, 1).renorm_(2, 0, 1e-5).mul_(1e5)

    def forward(self, x: torch.Tensor, detach_weight: bool = False) -> torch.Tensor:
        """Cosines ``[B, C]`` of features ``x`` ``[B, D]``; ``detach_weight`` keeps the weights out of the graph
        (the adversarial term trains the features only)."""
        w = self.weight.detach() if detach_weight else self.weight
        return F.linear(F.normalize(x.float(), dim=1), F.normalize(w.float(), dim=1))


class CAL(nn.Module):
    """CAL's ResNet-50 with its two classifiers.

    Args:
        num_classes: training identities.
        num_clothes: training outfits; 0 builds no clothes classifier.
        loss: torchreid's ``softmax`` (train mode returns logits) or ``triplet`` (``(logits, feature)``).
        pretrained: load torchreid's ImageNet file into the trunk.
        last_stride: 1 (CAL) or 2 (torchreid's ResNet-50).
    """

    #: Submodules that the method's engine steps with an optimiser of its own: the main optimiser leaves them out,
    #: and DDP does not synchronise them (the engine averages their gradients itself).
    engine_optimised = ("clothes_classifier",)

    def __init__(self, num_classes: int, num_clothes: int = 0, loss: str = "softmax", pretrained: bool = False,
                 last_stride: int = 1):
        super().__init__()
        if loss not in ("softmax", "triplet"):
            raise ConfigError(f"cal supports loss softmax or triplet, got '{loss}'")
        if last_stride not in (1, 2):
            raise ConfigError(f"cal.last_stride must be 1 or 2, got {last_stride}")
        self.loss = loss
        # torchreid's own ResNet-50, built first: under one seed the trunk starts from the baseline's weights.
        trunk = torchreid_resnet("resnet50", num_classes, pretrained)
        if last_stride == 1:
            trunk.layer4[0].conv2.stride = (1, 1)
            trunk.layer4[0].downsample[0].stride = (1, 1)
        self.backbone = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1, trunk.layer2,
                                      trunk.layer3, trunk.layer4)
        self.feature_dim = 2 * trunk.feature_dim  # max and average pooling side by side
        self.bnneck = nn.BatchNorm1d(self.feature_dim)
        nn.init.normal_(self.bnneck.weight, 1.0, 0.02)
        nn.init.zeros_(self.bnneck.bias)
        self.classifier = nn.Linear(self.feature_dim, num_classes)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.zeros_(self.classifier.bias)
        self.clothes_classifier = NormalizedClassifier(self.feature_dim, num_clothes) if num_clothes > 0 else None

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """The BN-neck feature ``[B, 4096]`` of images ``[B, 3, H, W]``."""
        fmap = self.backbone(x)
        pooled = torch.cat([F.adaptive_max_pool2d(fmap, 1), F.adaptive_avg_pool2d(fmap, 1)], dim=1).flatten(1)
        return self.bnneck(pooled)

    def forward(self, x: torch.Tensor, return_dict: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], Dict[str, torch.Tensor]]:
        """Eval mode: the feature ``[B, 4096]``. Train mode: identity logits ``[B, num_classes]`` (``softmax``),
        ``(logits, feature)`` (``triplet``), or with ``return_dict`` ``{'feature', 'logits'}`` (the CAL engine)."""
        f = self.features(x)
        if not self.training:
            return f
        logits = self.classifier(f)
        if return_dict:
            return {"feature": f, "logits": logits}
        return (logits, f) if self.loss == "triplet" else logits


def cal(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
        num_clothes: int = 0, cfg=None, **kwargs) -> CAL:
    """torchreid model factory for ``cal``.

    ``pretrained`` means what it means for torchreid's ``resnet50`` (the same ImageNet file, from the same cache,
    or a one-line error offline). ``num_clothes`` is the training split's outfit count, which the plugin's trainer
    passes; through ``torchreid.models.build_model`` it is 0 and the model has no clothes classifier.
    """
    last_stride = cfg.cal.last_stride if cfg is not None else 1
    return CAL(num_classes, num_clothes=num_clothes, loss=loss, pretrained=pretrained, last_stride=last_stride)
