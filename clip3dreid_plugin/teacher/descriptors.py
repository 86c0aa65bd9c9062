"""Linguistic body-shape descriptors of CLIP3DReID (paper Sec. 3.2, Table 1).

Every image is labelled with one phrase of each of ``M = 16`` pairs of opposite phrases: the phrase
whose prompt's CLIP text feature has the higher cosine similarity to the image feature (Eq. 2).
Prompts are built from one context template (``PROMPT_TEMPLATE``), so the text of prompt ``(m, k)``
is ``PROMPT_TEMPLATE.format(DESCRIPTOR_PAIRS[m][k])``. The pairs themselves are data of
:mod:`clip3dreid_plugin.shape` (re-exported here).

The paper writes the template as ``A photo of a person; the person is/has ·.``; the dot is the
slot. It is kept verbatim, "is/has" included, because the paper uses one template for every
phrase (adjectives such as "Muscular" and noun phrases such as "Long Legs" alike).
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.shape import DESCRIPTOR_PAIRS  # the pairs live below body and teacher, which both read them

__all__ = ["DESCRIPTOR_PAIRS", "PROMPT_TEMPLATE", "build_prompts", "parse_pairs", "resolve_template"]

#: The paper's context prompt; ``{}`` is replaced by one phrase.
PROMPT_TEMPLATE: str = "A photo of a person; the person is/has {}."


def resolve_template(template: Optional[str]) -> str:
    """Returns ``template``, or the paper's template when it is empty/None.

    Raises:
        ValueError: the template has no ``{}`` slot (names ``teacher.prompt_template``).
    """
    if not template:
        return PROMPT_TEMPLATE
    if not isinstance(template, str) or "{}" not in template:
        raise ConfigError(
            f"teacher.prompt_template must contain '{{}}' where the phrase goes, got {template!r} "
            f"(the paper's template is {PROMPT_TEMPLATE!r})"
        )
    return template


def build_prompts(pairs: Sequence[Tuple[str, str]] = DESCRIPTOR_PAIRS,
                  template: Optional[str] = PROMPT_TEMPLATE) -> List[str]:
    """Builds the ``2 * M`` prompts, pair-major: ``[p1_first, p1_second, p2_first, ...]``.

    Args:
        pairs: ``M`` (first, second) phrase pairs.
        template: context prompt with one ``{}`` slot; empty/None means the paper's template.

    Returns:
        ``2 * M`` strings; prompt ``2 * m + k`` holds phrase ``k`` of pair ``m``.

    Raises:
        ValueError: a bad template or a pair that is not two non-empty phrases.
    """
    template = resolve_template(template)
    out: List[str] = []
    for m, pair in enumerate(pairs):
        if len(pair) != 2 or not all(isinstance(p, str) and p.strip() for p in pair):
            raise ConfigError(f"teacher.descriptor_pairs entry {m} must be two non-empty phrases, got {pair!r}")
        out.extend(template.format(p.strip()) for p in pair)
    return out


def parse_pairs(cfg_list: Optional[Sequence[str]]) -> Tuple[Tuple[str, str], ...]:
    """Parses the ``teacher.descriptor_pairs`` override ``['first|second', ...]``.

    Args:
        cfg_list: list of ``'a|b'`` strings; empty/None means the paper's :data:`DESCRIPTOR_PAIRS`.

    Returns:
        A tuple of ``(first, second)`` phrase pairs (whitespace around each phrase stripped).

    Raises:
        ValueError: an entry is not exactly two non-empty phrases separated by ``|`` (names the
            option and the entry).
    """
    if not cfg_list:
        return DESCRIPTOR_PAIRS
    if isinstance(cfg_list, str):
        raise ConfigError(f"teacher.descriptor_pairs must be a list like ['Tall|Short', ...], got the string "
                          f"{cfg_list!r}")
    pairs = []
    for i, entry in enumerate(cfg_list):
        parts = entry.split("|") if isinstance(entry, str) else []
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise ConfigError(
                f"teacher.descriptor_pairs entry {i} must be 'first phrase|second phrase' (exactly two non-empty "
                f"phrases separated by '|'), got {entry!r}"
            )
        pairs.append((parts[0].strip(), parts[1].strip()))
    return tuple(pairs)
