"""A nested config (yacs ``CfgNode`` or plain YAML mapping) as flat ``section.key`` entries: the one form in which
configs are compared (study fingerprints, ``clip3dreid-compare`` groups), documented (``docs/config.md``) and
tested against their recipes."""
from __future__ import annotations

from typing import Any, Dict, Mapping

__all__ = ["flatten_config"]


def flatten_config(node: Mapping[str, Any], prefix: str = "") -> Dict[str, Any]:
    """``{"loss": {"clip3dreid": {"alpha": 0.3}}}`` -> ``{"loss.clip3dreid.alpha": 0.3}``.

    Args:
        node: a ``CfgNode`` or a mapping read from YAML.
        prefix: prepended to every key (used by the recursion).

    Returns:
        One entry per leaf; tuples become lists, so that a YAML list and a yacs tuple of the same values compare
        equal.
    """
    out: Dict[str, Any] = {}
    for key, value in node.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_config(value, name + "."))
        else:
            out[name] = list(value) if isinstance(value, tuple) else value
    return out
