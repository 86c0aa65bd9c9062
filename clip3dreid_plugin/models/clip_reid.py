"""``clip_reid``: the network of CLIP-ReID (Li et al., AAAI 2023) on open_clip, ViT and ModifiedResNet encoders.

The CLIP image encoder with CLIP-ReID's changes (positional embeddings resized bilinearly to the ReID grid with the
CLS position kept, ResNet last stride 1, the ViT's overlapping-patch stride, camera embeddings (SIE) added to the
CLS token only), two BN necks whose bias is a buffer, and two bias-free identity classifiers (std 0.001); and the
text side of its first stage: a prompt learner with ``n_ctx`` learnable tokens per identity in the template
("A photo of a X X X X person.") and a text encoder made of open_clip's own modules.

Eval mode returns the reference's test feature, the pre-BN features concatenated (1280-d for ViT-B/16: 768 + 512;
3072-d for RN50: 2048 + 1024). Train mode keeps torchreid's contract (logits of the two classifiers summed for
``softmax``, ``(logits, feature)`` for ``triplet``), so torchreid's engines train it as CLIP-ReID's one-stage
baseline; :class:`~clip3dreid_plugin.engine.clip_reid_engine.CLIPReIDEngine` runs the two stages through
:meth:`CLIPReID.forward_all`, :meth:`CLIPReID.image_projection` and :meth:`CLIPReID.text_features`.
"""
from __future__ import annotations

import logging
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.models.imagenet import PretrainedWeightsError

logger = logging.getLogger(__name__)

__all__ = ["CLIPReID", "FrozenBiasBN1d", "PromptLearner", "TextEncoder", "clip_reid", "resize_pos_embed"]


def resize_pos_embed(pos: torch.Tensor, old_grid: Tuple[int, int], new_grid: Tuple[int, int]) -> torch.Tensor:
    """CLIP-ReID's positional-embedding resize: the CLS row kept, the grid rows resized bilinearly.

    Args:
        pos: ``[1 + Ho * Wo, C]`` (row 0 the CLS / mean-query position).
        old_grid: ``(Ho, Wo)`` of ``pos``.
        new_grid: ``(h, w)`` of the ReID input.

    Returns:
        ``[1 + h * w, C]``.
    """
    (ho, wo), (h, w) = tuple(old_grid), tuple(new_grid)
    if pos.dim() != 2 or pos.size(0) != 1 + ho * wo:
        raise ValueError(f"pos must be [1 + {ho}*{wo}, C], got {tuple(pos.shape)}")
    grid = pos[1:].reshape(1, ho, wo, -1).permute(0, 3, 1, 2)
    # align_corners left at its default (False), as the reference.
    grid = F.interpolate(grid.float(), size=(h, w), mode="bilinear").to(pos.dtype)
    return torch.cat([pos[:1], grid.permute(0, 2, 3, 1).reshape(h * w, -1)], dim=0)


class FrozenBiasBN1d(nn.BatchNorm1d):
    """BatchNorm1d whose bias is a zero buffer: CLIP-ReID freezes the necks' bias, and a buffer stays frozen when
    torchreid's engines call ``open_all_layers`` (which sets ``requires_grad`` on every parameter).

    Args:
        num_features: ``C`` of inputs ``[B, C]``.
    """

    def __init__(self, num_features: int):
        super().__init__(num_features)
        del self.bias
        self.register_buffer("bias", torch.zeros(num_features))
        nn.init.ones_(self.weight)


class TextEncoder(nn.Module):
    """open_clip's text tower over given token embeddings: positional embedding, causal transformer, final norm,
    the end-of-text row (found as open_clip finds it, ``text_global_pool`` with the model's pool type) and the
    projection.

    Args:
        clip: an open_clip ``CLIP`` model (its text modules are shared, not copied).
    """

    def __init__(self, clip: nn.Module):
        super().__init__()
        for name in ("token_embedding", "positional_embedding", "transformer", "ln_final", "text_projection"):
            if not hasattr(clip, name):
                raise ConfigError(f"clip_reid.clip_model: open_clip model {type(clip).__name__} has no '{name}' "
                                  "(CLIP-ReID needs a CLIP text tower, not a Hugging Face one)")
        self.token_embedding = clip.token_embedding
        self.positional_embedding = clip.positional_embedding
        self.transformer = clip.transformer
        self.ln_final = clip.ln_final
        self.text_projection = clip.text_projection
        self.pool_type = getattr(clip, "text_pool_type", "argmax")
        self.eos_token_id = getattr(clip, "text_eos_id", None)
        self.register_buffer("attn_mask", clip.attn_mask, persistent=False)

    @property
    def output_dim(self) -> int:
        p = self.text_projection
        return p.out_features if isinstance(p, nn.Linear) else p.shape[1]

    def forward(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Text features ``[N, D]`` of token embeddings ``[N, L, W]`` whose token ids are ``tokens`` ``[N, L]``."""
        from open_clip.transformer import text_global_pool

        x = embeddings + self.positional_embedding.to(embeddings.dtype)
        x = self.transformer(x, attn_mask=self.attn_mask)
        x = self.ln_final(x)
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_token_id)
        p = self.text_projection
        return p(x) if isinstance(p, nn.Linear) else x @ p


class PromptLearner(nn.Module):
    """CLIP-ReID's identity prompts: the template's ``n_ctx`` "X" tokens replaced by learnable vectors per identity.

    The template's own tokens are embedded with the frozen token embedding at every call (cheap: one row of
    ``L`` tokens), so they always follow the encoder's weights, a loaded checkpoint's included.

    Args:
        token_embedding: open_clip's token embedding (shared).
        tokens: ``[1, L]`` token ids of the template with ``n_ctx`` consecutive "X" tokens.
        x_token: the id of "X".
        num_classes: identities.
        n_ctx: learnable tokens per identity.
    """

    def __init__(self, token_embedding: nn.Embedding, tokens: torch.Tensor, x_token: int, num_classes: int,
                 n_ctx: int = 4):
        super().__init__()
        where = (tokens[0] == x_token).nonzero().flatten().tolist()
        if len(where) != n_ctx or where != list(range(where[0], where[0] + n_ctx)):
            raise ConfigError(f"clip_reid.prompt_template must hold the {n_ctx} learnable tokens as {n_ctx} "
                              f"consecutive 'X' words (clip_reid.n_ctx {n_ctx}); found {len(where)}")
        self.start, self.n_ctx = where[0], n_ctx
        object.__setattr__(self, "_token_embedding", token_embedding)  # owned by the text encoder
        self.register_buffer("tokens", tokens.clone(), persistent=False)
        width = token_embedding.weight.shape[1]
        self.cls_ctx = nn.Parameter(torch.empty(num_classes, n_ctx, width))
        nn.init.normal_(self.cls_ctx, std=0.02)

    def forward(self, labels: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Prompt embeddings ``[B, L, W]`` of identities ``labels`` ``[B]``, and their token ids ``[B, L]``."""
        with torch.no_grad():
            template = self._token_embedding(self.tokens)  # [1, L, W]
        b = labels.numel()
        prefix = template[:, :self.start].expand(b, -1, -1)
        suffix = template[:, self.start + self.n_ctx:].expand(b, -1, -1)
        ctx = self.cls_ctx[labels].to(template.dtype)
        return torch.cat([prefix, ctx, suffix], dim=1), self.tokens.expand(b, -1)


class CLIPReID(nn.Module):
    """CLIP-ReID's network.

    The text side (``text_encoder``, frozen in both stages, and ``prompt_learner``, trained in stage 1 by the engine's
    own optimiser) is listed in ``engine_optimised``: the main optimiser and DDP leave it out.

    Args:
        clip: an open_clip ``CLIP`` model (ViT or ModifiedResNet image tower); its modules are taken over.
        tokenizer: its tokenizer (open_clip's ``get_tokenizer``).
        num_classes: training identities.
        image_size: ``(H, W)`` of the ReID input.
        loss: torchreid's ``softmax`` or ``triplet``.
        stride: the ViT's patch stride (its patch size; 12 for ViT-B/16's overlapping patches).
        sie_cameras: camera embeddings (0: no SIE).
        sie_coe: their coefficient.
        n_ctx: learnable prompt tokens per identity.
        prompt_template: the template, ``{}`` standing for the ``n_ctx`` "X" tokens.
    """

    #: Submodules outside the main optimiser and DDP (see ``DefaultTrainer``): the text side.
    engine_optimised = ("text_encoder", "prompt_learner")

    def __init__(self, clip: nn.Module, tokenizer, num_classes: int, image_size: Tuple[int, int],
                 loss: str = "softmax", stride: int = 0, sie_cameras: int = 0, sie_coe: float = 1.0,
                 n_ctx: int = 4, prompt_template: str = "A photo of a {} person."):
        super().__init__()
        if loss not in ("softmax", "triplet"):
            raise ConfigError(f"clip_reid supports loss softmax or triplet, got '{loss}'")
        self.loss = loss
        visual = clip.visual
        self.is_vit = hasattr(visual, "conv1") and hasattr(visual, "class_embedding")
        self.is_resnet = hasattr(visual, "attnpool") and hasattr(visual, "layer4")
        if not (self.is_vit or self.is_resnet):
            raise ConfigError(f"clip_reid.clip_model: open_clip image tower {type(visual).__name__} is neither a "
                              "VisionTransformer nor a ModifiedResNet")
        h, w = image_size
        if self.is_vit:
            self._adapt_vit(visual, h, w, stride)
            width, proj_dim = visual.class_embedding.shape[0], visual.proj.shape[1]
        else:
            if sie_cameras:
                raise ConfigError("clip_reid.sie_cameras: SIE is for ViT encoders (the reference's RN50 ignores "
                                  "cameras); set it to 0")
            self._adapt_resnet(visual, h, w)
            width, proj_dim = visual.attnpool.c_proj.in_features, visual.attnpool.c_proj.out_features
        self.image_encoder = visual
        self.in_planes, self.in_planes_proj = width, proj_dim
        self.feature_dim = width + proj_dim
        self.sie_coe = float(sie_coe)
        self.cv_embed = None
        if sie_cameras:
            self.cv_embed = nn.Parameter(torch.zeros(sie_cameras, width))
            nn.init.trunc_normal_(self.cv_embed, std=0.02)
        self.bottleneck = FrozenBiasBN1d(width)
        self.bottleneck_proj = FrozenBiasBN1d(proj_dim)
        self.classifier = nn.Linear(width, num_classes, bias=False)
        self.classifier_proj = nn.Linear(proj_dim, num_classes, bias=False)
        nn.init.normal_(self.classifier.weight, std=0.001)
        nn.init.normal_(self.classifier_proj.weight, std=0.001)

        self.text_encoder = TextEncoder(clip)
        text = prompt_template.format(" ".join(["X"] * n_ctx))
        tokens = tokenizer([text])
        x_token = int(tokenizer(["X"])[0, 1])  # position 0 is the start-of-text token
        self.prompt_learner = PromptLearner(clip.token_embedding, tokens, x_token, num_classes, n_ctx)
        self.prompt_text = text

    # ------------------------------------------------------------------ construction
    def _adapt_vit(self, v: nn.Module, h: int, w: int, stride: int) -> None:
        if getattr(v, "attn_pool", None) is not None or getattr(v, "pool_type", "tok") != "tok":
            raise ConfigError("clip_reid.clip_model: CLIP-ReID reads the ViT's CLS token; this open_clip config "
                              "pools otherwise (attentional or average pooling)")
        ph, pw = v.conv1.kernel_size
        stride = stride or ph
        if h < ph or w < pw:
            raise ConfigError(f"data.height x data.width {h}x{w} is smaller than the ViT's {ph}x{pw} patches")
        v.conv1.stride = (stride, stride)
        grid = ((h - ph) // stride + 1, (w - pw) // stride + 1)
        old = tuple(v.grid_size)
        if grid != old:
            v.positional_embedding = nn.Parameter(resize_pos_embed(v.positional_embedding.data, old, grid))
        v.grid_size = grid
        self.grid = grid

    def _adapt_resnet(self, v: nn.Module, h: int, w: int) -> None:
        block = v.layer4[0]
        # Last stride 1: the anti-aliasing average pools of layer4's first block (open_clip's strided path) go.
        block.avgpool = nn.Identity()
        if block.downsample is not None:
            block.downsample[0] = nn.Identity()  # the "-1" AvgPool2d
        block.stride = 1
        grid = (h // 16, w // 16)  # output stride 16 with layer4 at stride 1
        if min(grid) < 1:
            raise ConfigError(f"data.height x data.width {h}x{w} is below the ResNet's output stride 16")
        side = v.image_size // 32 if isinstance(v.image_size, int) else v.image_size[0] // 32
        pool = v.attnpool
        pool.positional_embedding = nn.Parameter(resize_pos_embed(pool.positional_embedding.data, (side, side),
                                                                  grid))
        self.grid = grid

    # ------------------------------------------------------------------ image side
    def _camera_embedding(self, cam_label: Optional[torch.Tensor]) -> Optional[torch.Tensor]:
        if cam_label is None:
            raise ValueError("clip_reid was built with SIE (clip_reid.sie_cameras > 0): pass cam_label, the "
                             "images' camera ids (its engine does; torchreid's engines do not)")
        cams = cam_label.to(self.cv_embed.device).long()
        if cams.numel() and (cams.min() < 0 or cams.max() >= self.cv_embed.shape[0]):
            raise ValueError(f"camera ids {int(cams.min())}..{int(cams.max())} are outside clip_reid.sie_cameras "
                             f"{self.cv_embed.shape[0]}; set it to the dataset's number of cameras")
        return self.sie_coe * self.cv_embed[cams]

    def vit_tokens(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None, sie: bool = True
                   ) -> torch.Tensor:
        """The ViT's input tokens ``[B, 1 + h*w, C]`` of images ``[B, 3, H, W]``: CLS and patches, SIE added to the
        CLS token only (when built with it and ``sie``), then the positional embedding; before ``ln_pre``."""
        v = self.image_encoder
        x = v.conv1(x).flatten(2).transpose(1, 2)
        cls = v.class_embedding.to(x.dtype).expand(x.shape[0], -1)
        if sie and self.cv_embed is not None:
            cls = cls + self._camera_embedding(cam_label).to(x.dtype)
        x = torch.cat([cls.unsqueeze(1), x], dim=1)
        return x + v.positional_embedding.to(x.dtype)

    def image_features(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None, sie: bool = True
                       ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The reference's three image features of ``x`` ``[B, 3, H, W]``, all before the necks.

        Returns:
            ``(f_last, f, f_proj)``: ViT: block ``n-1``'s CLS ``[B, C]``, the last block's CLS after ``ln_post``
            ``[B, C]`` and its projection ``[B, D]``; ResNet: average-pooled layer3 ``[B, C/2]``, layer4 ``[B, C]``
            and the attention pool's output ``[B, D]``.
        """
        v = self.image_encoder
        if self.is_vit:
            t = v.ln_pre(v.patch_dropout(self.vit_tokens(x, cam_label, sie)))
            blocks = v.transformer.resblocks
            batch_first = getattr(v.transformer, "batch_first", True)
            if not batch_first:
                t = t.transpose(0, 1)
            for blk in blocks[:-1]:
                t = blk(t)
            t_last = blocks[-1](t)
            if not batch_first:
                t, t_last = t.transpose(0, 1), t_last.transpose(0, 1)
            f = v.ln_post(t_last[:, 0])
            return t[:, 0], f, f @ v.proj
        l3 = v.layer3(v.layer2(v.layer1(v.stem(x))))
        l4 = v.layer4(l3)
        return l3.mean((2, 3)), l4.mean((2, 3)), v.attnpool(l4)

    def image_projection(self, x: torch.Tensor) -> torch.Tensor:
        """``f_proj`` ``[B, D]`` without SIE: the image feature of stage 1's contrastive losses."""
        return self.image_features(x, sie=False)[2]

    # ------------------------------------------------------------------ text side
    def text_features(self, labels: torch.Tensor) -> torch.Tensor:
        """The text features ``[B, D]`` of identities ``labels`` ``[B]`` (their learnt prompts)."""
        emb, tokens = self.prompt_learner(labels)
        return self.text_encoder(emb, tokens)

    # ------------------------------------------------------------------ forward
    def forward_all(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        """Everything stage 2 needs: ``features`` ``(f_last, f, f_proj)``, ``logits`` of the two classifiers on
        the BN outputs ``([B, P], [B, P])``."""
        f_last, f, f_proj = self.image_features(x, cam_label)
        logits = (self.classifier(self.bottleneck(f)), self.classifier_proj(self.bottleneck_proj(f_proj)))
        return {"features": (f_last, f, f_proj), "logits": logits}

    def forward(self, x: torch.Tensor, cam_label: Optional[torch.Tensor] = None, return_dict: bool = False
                ) -> Union[torch.Tensor, Tuple[torch.Tensor, torch.Tensor], Dict[str, torch.Tensor]]:
        """Eval mode: ``cat(f, f_proj)`` ``[B, C + D]``. Train mode: the sum of the two classifiers' logits
        ``[B, P]`` (``softmax``), ``(logits, cat(f, f_proj))`` (``triplet``), or with ``return_dict``
        :meth:`forward_all`'s dict (the CLIP-ReID engine, through DDP's forward)."""
        if not self.training:
            _, f, f_proj = self.image_features(x, cam_label)
            return torch.cat([f, f_proj], dim=1)
        out = self.forward_all(x, cam_label)
        if return_dict:
            return out
        logits = out["logits"][0] + out["logits"][1]
        if self.loss == "triplet":
            return logits, torch.cat(out["features"][1:], dim=1)
        return logits



def clip_reid(num_classes: int, loss: str = "softmax", pretrained: bool = True, use_gpu: bool = True,
              cfg=None, **kwargs) -> CLIPReID:
    """torchreid model factory for ``clip_reid`` (options under ``cfg.clip_reid``, input size ``cfg.data``).

    ``pretrained=True`` loads ``clip_reid.clip_pretrained`` (an open_clip tag, found in the local cache or
    downloaded, or a local file) or fails in one line (:class:`PretrainedWeightsError` when it is empty,
    :class:`~clip3dreid_plugin.teacher.weights.TeacherLoadError` when it cannot be had); ``pretrained=False``
    builds a random CLIP (tests, benchmarks, or a checkpoint loaded next). Without ``cfg`` (torchreid's own
    ``build_model``) the defaults of ``add_clip3dreid_config`` apply: ViT-B/16 at 256x128.
    """
    import open_clip

    from clip3dreid_plugin.teacher.clip_teacher import create_open_clip

    if cfg is None:
        from clip3dreid_plugin.config.defaults import get_cfg

        cfg = get_cfg()
    c = cfg.clip_reid
    if pretrained and not c.clip_pretrained:
        raise PretrainedWeightsError(
            f"model.pretrained True: clip_reid needs CLIP weights for '{c.clip_model}', but clip_reid.clip_pretrained "
            "is empty; set it to an open_clip tag (openai) or a local weights file, or set model.pretrained False "
            "for a randomly initialised CLIP")
    clip, _, _, _ = create_open_clip(c.clip_model, c.clip_pretrained if pretrained else None,
                                     name_key="clip_reid.clip_model", weights_key="clip_reid.clip_pretrained")
    model = CLIPReID(clip, open_clip.get_tokenizer(c.clip_model), num_classes, (cfg.data.height, cfg.data.width),
                     loss=loss, stride=c.stride, sie_cameras=c.sie_cameras, sie_coe=c.sie_coe, n_ctx=c.n_ctx,
                     prompt_template=c.prompt_template)
    return model
