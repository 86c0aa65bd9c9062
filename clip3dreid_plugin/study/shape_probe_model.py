"""``shape_probe``: torchreid's ResNet-50 regressing an image's true body-shape coefficients.

It answers whether body shape is visible at all in a benchmark's images: trained on synthcc's training images to
predict their identity's betas (MSE, :class:`~clip3dreid_plugin.study.shape_probe_engine.ShapeProbeEngine`), it
ranks the test images by predicted shape. Near chance on the clothes-changing protocol means a shape-distilling
student has nothing to gain there at this resolution, whatever the teacher.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from clip3dreid_plugin.models.imagenet import torchreid_resnet
from clip3dreid_plugin.shape import NUM_BETAS

__all__ = ["ShapeProbe", "shape_probe"]


class ShapeProbe(nn.Module):
    """torchreid ResNet whose classifier is a linear regressor to shape coefficients.

    Args:
        num_coeffs: shape coefficients predicted.
        backbone: torchreid ResNet name; built by torchreid's factory, so under one seed its trunk starts from the
            baseline's weights.
        pretrained: load torchreid's ImageNet file into the trunk.
    """

    def __init__(self, num_coeffs: int = NUM_BETAS, backbone: str = "resnet50", pretrained: bool = False):
        super().__init__()
        self.net = torchreid_resnet(backbone, num_coeffs, pretrained)
        self.feature_dim = num_coeffs

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predicted shape coefficients ``[B, num_coeffs]`` in train and eval mode (eval: the retrieval feature)."""
        out = self.net(x)
        # torchreid's ResNet returns the pooled feature in eval mode and the classifier's output in train mode.
        return out if self.training else self.net.classifier(out)


def shape_probe(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
                cfg=None, **kwargs) -> ShapeProbe:
    """torchreid model factory for ``shape_probe``; ``num_classes`` is ignored (the output is the shape)."""
    backbone = cfg.clip3dreid.backbone if cfg is not None else "resnet50"
    coeffs = cfg.clip3dreid.num_shape_coeffs if cfg is not None else NUM_BETAS
    return ShapeProbe(coeffs, backbone=backbone, pretrained=pretrained)
