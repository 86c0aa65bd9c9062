"""How a body's shape is described, in numbers and in words: the size of SMPL's shape space and the 16 pairs of
opposite phrases of CLIP3DReID (paper Sec. 3.2, Table 1).

Pure data, below every package that speaks of shape: the body model renders and measures bodies with these
betas and scores these descriptors, the teacher turns the phrases into prompts, the config sizes the shape head.
"""
from __future__ import annotations

from typing import Tuple

__all__ = ["NUM_BETAS", "DESCRIPTOR_PAIRS"]

#: Shape coefficients of SMPL's PCA shape space that the plugin uses (the paper's phi predicts these).
NUM_BETAS = 10

#: The 16 pairs of opposite phrases of Table 1, in the paper's order: ``(phrase 1, phrase 2)``.
DESCRIPTOR_PAIRS: Tuple[Tuple[str, str], ...] = (
    ("Muscular", "Slender"),
    ("Broad-Shouldered", "Narrow-Shouldered"),
    ("Heavyset", "Petite"),
    ("Tall", "Short"),
    ("Long Legs", "Short Legs"),
    ("Long Torso", "Short Torso"),
    ("Curvy", "Angular"),
    ("Full-Figured", "Skinny"),
    ("Stocky", "Willowy"),
    ("Pear-Shaped", "Apple-Shaped"),
    ("Athletic", "Non-Athletic"),
    ("Fit", "Unfit"),
    ("Large-Breasted", "Small-Breasted"),
    ("Long-Armed", "Short-Armed"),
    ("Long-Necked", "Short-Necked"),
    ("High-Waisted", "Low-Waisted"),
)
