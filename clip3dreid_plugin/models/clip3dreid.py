"""The CLIP3DReID student: ResNet-50 local features, an MLP aggregator, and the distillation heads.

Data flow (paper Sec. 3.1)::

    x [B,3,H,W] -> ResNet-50 (last stride s) -> F [B, N, d']          (local features, N = h*w)
    F -> mean over N -> MLP (one hidden layer) -> f_id [B, d']         (identity feature)
    f_id -> [BN-neck] -> classifier -> logits [B, K]                  (retrieval uses the BN-neck output when on)
    H [B, M, d] -> Psi -> [B, M, d']                                   (text features, OT target)
    g [B, d]    -> Phi -> [B, d']                                      (teacher image feature, MSE target)
    f_id        -> phi -> betas [B, 10]                                (SMPL shape coefficients, 3D term only)

Eval mode returns ``f_id`` only, so torchreid's evaluator, ``FeatureExtractor`` and re-ranking
work unchanged. The heads run inside ``forward`` (not called by the engine separately) so that a
``DistributedDataParallel`` wrapper sees one forward per step.
"""
from __future__ import annotations

import logging
import os.path as osp
from contextlib import contextmanager
from typing import Dict, Iterator, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip3dreid_plugin import compat
from clip3dreid_plugin.config.defaults import get_cfg
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.models.imagenet import torchreid_resnet
from clip3dreid_plugin.utils.rng import random_orthonormal

logger = logging.getLogger(__name__)

__all__ = ["CLIP3DReID", "Aggregator", "build_head", "FixedIsometry", "clip3dreid", "frozen_running_stats",
           "CLASSIFIER_INITS"]

#: ``classifier_init`` choices: torchreid's ``Linear`` (bias, weight std 0.01, as its ResNet-50's classifier), or the
#: earlier bias-free std-1e-3 layer, kept for the ablation in BENCHMARKS.md (it learns slowly under Adam at 3e-4).
CLASSIFIER_INITS = ("torchreid", "small")


@contextmanager
def frozen_running_stats(module: nn.Module) -> Iterator[None]:
    """Batch norms inside normalise with batch statistics but leave their running statistics alone.

    ``momentum = 0`` makes the running-average update a no-op; the previous momenta come back on exit.
    """
    bns = [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training]
    saved = [m.momentum for m in bns]
    for m in bns:
        m.momentum = 0.0
    try:
        yield
    finally:
        for m, mom in zip(bns, saved):
            m.momentum = mom


def build_head(in_dim: int, out_dim: int, head_type: str = "mlp", hidden_dim: int = 512) -> nn.Module:
    """Psi/Phi/phi head: an MLP with one hidden layer (main paper) or one linear layer (supplement).

    Args:
        in_dim: input width.
        out_dim: output width.
        head_type: ``"mlp"`` or ``"linear"``.
        hidden_dim: hidden width of the MLP.
    """
    if head_type == "linear":
        return nn.Linear(in_dim, out_dim)
    if head_type == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ReLU(inplace=True), nn.Linear(hidden_dim, out_dim))
    raise ConfigError(f"clip3dreid.head_type must be 'mlp' or 'linear', got '{head_type}'")


class FixedIsometry(nn.Module):
    """A frozen bias-free linear map with orthonormal columns (rows when ``out_dim < in_dim``).

    With ``out_dim >= in_dim`` it preserves every inner product, so text features keep their pairwise cosines. It is
    drawn from its own generator, so building it leaves the global RNG (and the rest of the model's init) untouched.
    Its weight is a buffer, not a parameter: torchreid's engines call ``open_all_layers`` every epoch, which sets
    ``requires_grad`` on every parameter and would train a frozen one.

    Args:
        in_dim: input width d.
        out_dim: output width d'.
        seed: seed of the private generator.
    """

    def __init__(self, in_dim: int, out_dim: int, seed: int = 0):
        super().__init__()
        q = random_orthonormal(max(in_dim, out_dim), min(in_dim, out_dim), seed).float()
        self.register_buffer("weight", (q if out_dim >= in_dim else q.t()).contiguous())  # [out_dim, in_dim]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[..., in_dim]`` -> ``[..., out_dim]``."""
        return F.linear(x, self.weight)


class Aggregator(nn.Sequential):
    """The paper's aggregation MLP with one hidden layer: pooled local features -> ``f_id``.

    Args:
        dim: d', input and output width.
        hidden_dim: hidden width (BatchNorm + ReLU after the first layer).
        residual: ``f_id = x + MLP(x)`` with the last layer zero-initialised, so training starts from the pooled
            features that torchreid's baseline classifies.
    """

    def __init__(self, dim: int, hidden_dim: int, residual: bool = False):
        # A Sequential, so that checkpoints keep the keys aggregator.0.* .. aggregator.3.* of earlier versions.
        super().__init__(nn.Linear(dim, hidden_dim), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True),
                         nn.Linear(hidden_dim, dim))
        self.residual = residual
        if residual:
            nn.init.zeros_(self[-1].weight)
            nn.init.zeros_(self[-1].bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, d']`` -> ``[B, d']``."""
        y = super().forward(x)
        return x + y if self.residual else y


class CLIP3DReID(nn.Module):
    """ResNet student of CLIP3DReID.

    Args:
        num_classes: training identities K.
        loss: torchreid loss name (kept for the factory contract).
        backbone: torchreid ResNet name (``resnet50``, ``resnet101``, ``resnext50_32x4d``, ...).
        last_stride: stride of ``layer4`` (1 doubles the local-feature resolution).
        local_dim: d', width of F and f_id (a 1x1 projection is added when != trunk width).
        agg_hidden_dim: hidden width of the aggregation MLP.
        head_type: ``mlp`` or ``linear`` for Psi, Phi and phi.
        head_hidden_dim: hidden width of the heads.
        teacher_dim: d, width of the teacher's text/image features.
        num_shape_coeffs: number of SMPL betas predicted by phi.
        pretrained: load torchreid's ImageNet file for ``backbone`` into the trunk, from torch's model-zoo cache
            (downloaded when online; see :mod:`clip3dreid_plugin.models.imagenet`).
        classifier_init: one of :data:`CLASSIFIER_INITS`.
        bnneck: a BatchNorm (bias fixed at 0) between ``f_id`` and the classifier; its output is also the retrieval
            feature. The distillation heads and losses keep using ``f_id`` itself.
        agg_residual: residual aggregation MLP (see :class:`Aggregator`).
        fixed_text_head: Psi is a frozen random isometry (:class:`FixedIsometry`) instead of a trained head, so the
            projected phrase features keep the teacher's pairwise cosines; a trained Psi can map every phrase to one
            direction, the OT loss's trivial minimiser.
    """

    def __init__(self, num_classes: int, loss: str = "softmax", backbone: str = "resnet50", last_stride: int = 1,
                 local_dim: int = 2048, agg_hidden_dim: int = 512, head_type: str = "mlp",
                 head_hidden_dim: int = 512, teacher_dim: int = 768, num_shape_coeffs: int = 10,
                 pretrained: bool = False, classifier_init: str = "torchreid", bnneck: bool = False,
                 agg_residual: bool = False, fixed_text_head: bool = False):
        super().__init__()
        self.loss = loss
        # torchreid's own ResNet, built first with the same arguments as its factory: under one seed the student's
        # trunk starts from exactly the baseline's random weights, and pretrained=True loads exactly its file.
        trunk = torchreid_resnet(backbone, num_classes, pretrained)
        if last_stride not in (1, 2):
            raise ConfigError(f"clip3dreid.last_stride must be 1 or 2, got {last_stride}")
        if last_stride == 1:
            block = trunk.layer4[0]
            (block.conv2 if hasattr(block, "conv3") else block.conv1).stride = (1, 1)
            block.downsample[0].stride = (1, 1)
        self.backbone = nn.Sequential(trunk.conv1, trunk.bn1, trunk.relu, trunk.maxpool, trunk.layer1, trunk.layer2,
                                      trunk.layer3, trunk.layer4)
        trunk_dim = trunk.feature_dim
        self.local_proj = nn.Identity() if local_dim == trunk_dim else nn.Conv2d(trunk_dim, local_dim, 1, bias=False)
        if classifier_init not in CLASSIFIER_INITS:
            raise ConfigError(f"clip3dreid.classifier_init must be one of {list(CLASSIFIER_INITS)}, "
                              f"got '{classifier_init}'")
        self.aggregator = Aggregator(local_dim, agg_hidden_dim, residual=agg_residual)
        self.bnneck: Optional[nn.BatchNorm1d] = None
        if bnneck:
            self.bnneck = nn.BatchNorm1d(local_dim)
            # BNNeck (Luo et al. 2019): shift-free, so CE sees a centred feature. A buffer, not a parameter with
            # requires_grad off: torchreid's open_all_layers (every epoch) would make that one trainable again.
            del self.bnneck.bias
            self.bnneck.register_buffer("bias", torch.zeros(local_dim))
        self.classifier = nn.Linear(local_dim, num_classes, bias=classifier_init == "torchreid")
        self._head_args = (local_dim, head_type, head_hidden_dim, fixed_text_head)
        self.teacher_dim = teacher_dim
        self.text_head = build_head(teacher_dim, local_dim, head_type, head_hidden_dim)  # Psi
        if fixed_text_head:
            # Built after the trained head it replaces, so every other layer starts from the same weights as with
            # the paper's trained Psi under one seed.
            self.text_head = FixedIsometry(teacher_dim, local_dim)
        self.image_head = build_head(teacher_dim, local_dim, head_type, head_hidden_dim)  # Phi
        self.shape_head = build_head(local_dim, num_shape_coeffs, head_type, head_hidden_dim)  # phi
        self.feature_dim = local_dim
        if classifier_init == "torchreid":
            nn.init.normal_(self.classifier.weight, std=0.01)  # torchreid's ResNet._init_params for nn.Linear
            nn.init.zeros_(self.classifier.bias)
        else:
            nn.init.normal_(self.classifier.weight, std=0.001)

    def resize_teacher_heads(self, teacher_dim: int) -> Dict[int, nn.Parameter]:
        """Rebuilds Psi and Phi, freshly initialised, for ``teacher_dim``-wide teacher features.

        torchreid's ``build_model`` cannot pass the teacher's width, so a student built through it has the default
        (768, ViT-L/14); :class:`~clip3dreid_plugin.engine.CLIP3DReIDEngine` calls this before the first step when
        its teacher is another width. The new heads sit on the old ones' device.

        Returns:
            ``id`` of each old parameter -> its replacement (same name, another input width), for the optimizer.
        """
        local_dim, head_type, hidden, fixed = self._head_args
        device = next(self.image_head.parameters()).device
        old_text, old_image = dict(self.text_head.named_parameters()), dict(self.image_head.named_parameters())
        self.text_head = (FixedIsometry(teacher_dim, local_dim) if fixed
                          else build_head(teacher_dim, local_dim, head_type, hidden)).to(device)
        self.image_head = build_head(teacher_dim, local_dim, head_type, hidden).to(device)
        self.teacher_dim = teacher_dim
        swap = {id(old_text[n]): p for n, p in self.text_head.named_parameters()}
        swap.update({id(old_image[n]): p for n, p in self.image_head.named_parameters()})
        return swap

    def load_imagenet(self, path: str) -> None:
        """Loads a torchvision ResNet state dict (``conv1.*``, ``layer1.*``, ...) into the trunk.

        Raises:
            FileNotFoundError: ``path`` does not exist.
        """
        if not osp.isfile(path):
            raise FileNotFoundError(f"clip3dreid.imagenet_weights: file not found: '{path}'")
        state = compat.load_checkpoint(path)
        state = state.get("state_dict", state)
        names = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]
        mapped = {}
        for k, v in state.items():
            k = k[7:] if k.startswith("module.") else k
            head = k.split(".")[0]
            if head in names:
                mapped[f"{names.index(head)}.{k[len(head) + 1:]}"] = v
        missing, unexpected = self.backbone.load_state_dict(mapped, strict=False)
        if missing:
            raise ConfigError(f"'{path}' is not a torchvision ResNet state dict: missing {missing[:3]}...")
        logger.info("loaded ImageNet weights from %s (%d tensors)", path, len(mapped))

    def local_features(self, x: torch.Tensor) -> torch.Tensor:
        """Local features F.

        Args:
            x: images ``[B, 3, H, W]``.

        Returns:
            ``[B, N, d']`` with N = h * w of the last feature map.
        """
        fmap = self.local_proj(self.backbone(x))
        return fmap.flatten(2).transpose(1, 2)

    def _identity(self, x: torch.Tensor):
        local = self.local_features(x)
        return local, self.aggregator(local.mean(dim=1))

    def _neck(self, f_id: torch.Tensor) -> torch.Tensor:
        return f_id if self.bnneck is None else self.bnneck(f_id)

    def forward(self, x: torch.Tensor, text_feats: Optional[torch.Tensor] = None,
                teacher_feats: Optional[torch.Tensor] = None, num_real: Optional[int] = None,
                return_dict: bool = False, with_betas: bool = False):
        """Student forward.

        Args:
            x: images ``[B, 3, H, W]``.
            text_feats: teacher text features H of the chosen descriptors ``[B, M, d]`` (train only).
            teacher_feats: teacher image features g ``[B, d]`` (train only).
            num_real: train only; rows from ``num_real`` on are synthetic mesh images. They pass through
                the network separately, so batch norm gives them their own batch statistics and they
                leave the running statistics (used at test time, on real images only) untouched.
                ``None`` treats the whole batch alike.
            return_dict: train only; return every output (what ``CLIP3DReIDEngine`` asks for). Without it, train
                mode returns what torchreid's engines expect for ``self.loss``.
            with_betas: with ``return_dict``, also run phi for the shape coefficients (only the 3D term reads them;
                left out, phi gets no gradient, which DDP must be told about, see ``ddp_options``).

        Returns:
            Eval mode: ``f_id`` ``[B, d']`` (after the BN-neck when it is on). Train mode: ``logits [B,K]`` (loss
            ``softmax``) or ``(logits, f_id)`` (loss ``triplet``), as torchreid's ``ImageSoftmaxEngine`` /
            ``ImageTripletEngine`` / ``VideoSoftmaxEngine`` unpack them; with ``return_dict`` a dict with
            ``logits [B,K]``, ``f_id [B,d']``, ``local [B,N,d']``, with ``with_betas`` ``betas [B,10]``, and, when
            given, ``text_proj [B,M,d']`` and ``teacher_proj [B,d']``.
        """
        if not self.training:
            return self._neck(self._identity(x)[1])
        if not return_dict:
            if text_feats is not None or teacher_feats is not None or num_real is not None:
                raise ValueError("text_feats, teacher_feats and num_real need return_dict=True")
            f_id = self._identity(x)[1]
            logits = self.classifier(self._neck(f_id))
            return (logits, f_id) if self.loss == "triplet" else logits
        if num_real is not None and 0 < num_real < x.size(0):
            local, f_id = self._identity(x[:num_real])
            neck = self._neck(f_id)
            with frozen_running_stats(self):
                local_syn, f_id_syn = self._identity(x[num_real:])
                neck_syn = self._neck(f_id_syn)
            local, f_id, neck = torch.cat([local, local_syn]), torch.cat([f_id, f_id_syn]), torch.cat([neck, neck_syn])
        else:
            local, f_id = self._identity(x)
            neck = self._neck(f_id)
        out: Dict[str, torch.Tensor] = {
            "logits": self.classifier(neck),
            "f_id": f_id,
            "local": local,
        }
        if with_betas:
            out["betas"] = self.shape_head(f_id)
        if text_feats is not None:
            out["text_proj"] = self.text_head(text_feats)
        if teacher_feats is not None:
            out["teacher_proj"] = self.image_head(teacher_feats)
        return out


def clip3dreid(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
               cfg=None, **kwargs) -> CLIP3DReID:
    """torchreid model factory for ``clip3dreid``.

    Without ``cfg`` the defaults of ``add_clip3dreid_config`` are used. ``pretrained`` means what it means for
    torchreid's ``resnet50``: the trunk loads the same ImageNet file (``resnet50-19c8e357.pth`` for the default
    backbone) from the same cache, ``$TORCH_HOME/hub/checkpoints``, downloading it when online. A non-empty
    ``cfg.clip3dreid.imagenet_weights`` overrides the file with a local one. When the weights cannot be had, a
    :class:`~clip3dreid_plugin.models.imagenet.PretrainedWeightsError` names the file and the folder.
    """
    if cfg is None:
        cfg = get_cfg()
    if loss not in ("softmax", "triplet"):
        raise ConfigError(f"clip3dreid supports loss softmax or triplet, got '{loss}'")
    c = cfg.clip3dreid
    override = bool(pretrained and c.imagenet_weights)
    model = CLIP3DReID(num_classes, loss=loss, backbone=c.backbone, last_stride=c.last_stride,
                       local_dim=c.local_dim, agg_hidden_dim=c.agg_hidden_dim, head_type=c.head_type,
                       head_hidden_dim=c.head_hidden_dim, teacher_dim=c.teacher_dim,
                       num_shape_coeffs=c.num_shape_coeffs, pretrained=pretrained and not override,
                       classifier_init=c.classifier_init, bnneck=c.bnneck, agg_residual=c.agg_residual,
                       fixed_text_head=c.fixed_text_head, **kwargs)
    if override:
        model.load_imagenet(c.imagenet_weights)
    return model
