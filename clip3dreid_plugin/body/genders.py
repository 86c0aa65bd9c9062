"""The body genders of the SMPL-format models and the integer id each has in a batch of synthetic rows."""
from __future__ import annotations

from typing import Dict

__all__ = ["GENDER_IDS"]

#: Gender name (the ``gender`` column of a synthetic set's metadata, a body model's gender) -> id in a batch.
GENDER_IDS: Dict[str, int] = {"female": 0, "male": 1, "neutral": 2}
