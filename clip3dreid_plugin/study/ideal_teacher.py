"""An ideal teacher for synthcc: a stand-in that knows body shape, to test the distillation path offline.

Without CLIP weights the real teacher cannot be run, and a randomly initialised CLIP carries no knowledge: its
phrase features are nearly parallel (pairwise cosines of 0.94-0.97) and its image features say nothing about the
body. This source replaces both with what synthcc knows for certain:

* text features ``[M, 2, d]``: fixed orthonormal unit vectors, one per phrase (the QR factor of a seeded Gaussian
  matrix), so every descriptor choice is a distinct, well-separated target;
* descriptor labels ``[B, M]``: synthcc's ground truth, measured on each identity's canonical mesh;
* image feature ``g [B, d]``: a fixed random projection of the identity's true shape coefficients, L2-normalised
  like CLIP's image features.

If the student cannot use *these* targets to rank clothes-changing images better, the loss of accuracy lies in the
pipeline, not in the teacher. It is selected by ``teacher.mode ideal`` only, never as a fallback, and only for
synthcc, the one dataset whose shapes are known.
"""
from __future__ import annotations

import logging
import os.path as osp
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from clip3dreid_plugin.body.synthcc import synthcc_labels_by_path, synthcc_shapes_by_path
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.teacher.clip_teacher import gather_text_features
from clip3dreid_plugin.teacher.descriptors import DESCRIPTOR_PAIRS
from clip3dreid_plugin.utils.rng import random_orthonormal

logger = logging.getLogger(__name__)

__all__ = ["IdealTeacherSource", "build_ideal_teacher_source", "orthonormal_phrase_features", "shape_projection"]


def orthonormal_phrase_features(num_pairs: int, dim: int, seed: int = 0) -> torch.Tensor:
    """Fixed, mutually orthogonal unit vectors, one per phrase.

    Args:
        num_pairs: M, the number of phrase pairs.
        dim: d; must be at least ``2 * num_pairs``.
        seed: seed of the Gaussian matrix whose QR factor gives the vectors.

    Returns:
        ``[M, 2, d]`` float32 with ``<t_i, t_j> = delta_ij`` over all 2M phrases.
    """
    if dim < 2 * num_pairs:
        raise ConfigError(f"the ideal teacher needs clip3dreid.teacher_dim >= {2 * num_pairs} for {num_pairs} phrase "
                          f"pairs to be orthogonal, got {dim}")
    return random_orthonormal(dim, 2 * num_pairs, seed).T.reshape(num_pairs, 2, dim).float().contiguous()


def shape_projection(num_coeffs: int, dim: int, seed: int = 0) -> torch.Tensor:
    """The fixed random projection ``[d, num_coeffs]`` (entries N(0, 1/d)) from shape coefficients to ``g``."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randn(dim, num_coeffs, generator=g) / dim ** 0.5


class IdealTeacherSource:
    """Teacher source with synthcc's true shapes (same interface as the cache and online sources).

    Args:
        labels_by_path: absolute image path -> M ground-truth descriptor labels.
        betas_by_path: absolute image path -> the identity's shape coefficients.
        embed_dim: d.
        seed: seed of the phrase vectors and of the projection.
    """

    def __init__(self, labels_by_path: Dict[str, Sequence[int]], betas_by_path: Dict[str, Sequence[float]],
                 embed_dim: int, seed: int = 0):
        missing = sorted(set(labels_by_path) ^ set(betas_by_path))
        if missing:
            raise ValueError(f"labels and shapes must cover the same images; {len(missing)} differ, "
                             f"e.g. '{missing[0]}'")
        self.paths = sorted(labels_by_path)
        self._row = {p: i for i, p in enumerate(self.paths)}
        self.labels = torch.tensor([list(labels_by_path[p]) for p in self.paths], dtype=torch.long)
        self.betas = torch.tensor([list(betas_by_path[p]) for p in self.paths], dtype=torch.float32)
        num_pairs = self.labels.size(1) if self.paths else len(DESCRIPTOR_PAIRS)
        self.seed = seed
        self._text = orthonormal_phrase_features(num_pairs, embed_dim, seed)
        self.projection = shape_projection(self.betas.size(1) if self.paths else 0, embed_dim, seed)
        self.g = F.normalize(self.betas @ self.projection.T, dim=-1)

    @classmethod
    def from_synthcc(cls, root: str, embed_dim: int, seed: int = 0,
                     splits: Sequence[str] = ("train",)) -> "IdealTeacherSource":
        """Reads the ground truth of a synthcc set's ``splits`` from its ``meta.json``.

        Raises:
            SynthCCError: ``root`` holds no synthcc set.
        """
        return cls(synthcc_labels_by_path(root, splits), synthcc_shapes_by_path(root, splits), embed_dim, seed)

    @property
    def embed_dim(self) -> int:
        return int(self._text.size(-1))

    def text_features(self) -> torch.Tensor:
        """``[M, 2, d]`` phrase features."""
        return self._text

    def rows(self, img_paths: Sequence[str]) -> torch.Tensor:
        """Row index ``[B]`` of each image.

        Raises:
            KeyError: an image synthcc's ground truth does not cover (named).
        """
        try:
            return torch.tensor([self._row[osp.abspath(p)] for p in img_paths], dtype=torch.long)
        except KeyError as exc:
            raise KeyError(f"the ideal teacher has no ground truth for '{exc.args[0]}' (teacher.mode ideal covers "
                           f"synthcc's training images only)") from None

    def lookup(self, img_paths: Sequence[str],
               imgs: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(g [B, d], labels [B, M])`` of the batch's images (CPU); ``imgs`` is unused."""
        r = self.rows(img_paths)
        return self.g[r], self.labels[r]

    def shapes(self, img_paths: Sequence[str]) -> torch.Tensor:
        """True shape coefficients ``[B, num_coeffs]`` of the images' identities."""
        return self.betas[self.rows(img_paths)]

    def gather_text(self, labels: torch.Tensor) -> torch.Tensor:
        """``[B, M]`` labels -> ``[B, M, d]`` phrase features."""
        return gather_text_features(self._text, labels)

    def text_record(self) -> dict:
        """Phrase features ``[M, 2, d]``, pairs and the teacher's name (see ``CacheTeacherSource.text_record``)."""
        pairs = DESCRIPTOR_PAIRS[: self._text.size(0)]
        return {"features": self._text.clone(), "pairs": [list(p) for p in pairs],
                "teacher": f"ideal teacher (synthcc ground truth, teacher.ideal_seed {self.seed})"}


def build_ideal_teacher_source(cfg: CN, datasets: Sequence[Tuple[str, Sequence[str]]],
                               device="cpu") -> IdealTeacherSource:
    """``teacher.mode ideal`` (an entry of ``teacher.source.TEACHER_MODES``): the ideal teacher of ``cfg.data.root``.

    Args:
        cfg: full config (``data.root``, ``clip3dreid.teacher_dim``, ``teacher.ideal_seed``).
        datasets: ``(name, training image paths)`` of every source dataset; synthcc only.
        device: unused (the source answers on the CPU, like the cache).

    Raises:
        ConfigError: a source dataset other than synthcc.
    """
    others = [name for name, _ in datasets if name != "synthcc"]
    if others:
        raise ConfigError(f"teacher.mode ideal knows body shape for synthcc only, not for {others}; "
                          "use teacher.mode cache or online")
    source = IdealTeacherSource.from_synthcc(cfg.data.root, cfg.clip3dreid.teacher_dim, cfg.teacher.ideal_seed)
    logger.warning("teacher.mode ideal: an offline stand-in that knows synthcc's true shapes (orthonormal phrase "
                   "features, ground-truth labels, g = projected betas), not CLIP")
    return source
