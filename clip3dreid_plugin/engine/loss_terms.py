"""The loss terms of CLIP3DReID's objective (Eq. 10), each declared once, and the step inputs they read.

    L = sum over the terms that are on of  w_t * L_t
      = L_CE + alpha * L_OT + beta * L_global + gamma * (L_OT_syn + L_3D)   [+ triplet_weight * L_triplet]

A term is one :class:`LossTerm` in :data:`LOSS_TERMS`: its name (its key in the engine's loss dict and in the log),
the ``loss.clip3dreid`` options that switch it on, weight it and choose its reduction, what it needs beyond the real
rows (the teacher, the synthetic stream, the body model: :data:`NEEDS`), and the function that computes it from the
step's prepared inputs (a :class:`Step`). That declaration is all the engine and its builder know of a term:

- :meth:`LossTable.compute` computes the terms that are on and their weighted sum (terms that share a weight are
  summed before it is applied, as Eq. 10 writes ``gamma * (L_OT_syn + L_3D)``);
- :meth:`LossTable.weighted` gives the ``w_<term>`` figures the log shows next to each term;
- :meth:`LossTable.needs` tells the engine which inputs to prepare (a teacher lookup, a synthetic batch, phi's shape
  coefficients), so that a term that is off costs nothing and its head gets no gradient;
- :meth:`LossTable.check` refuses, in one line naming the options, what cannot train: an unknown or missing option,
  a reduction the loss does not have, no term on, a term on whose teacher, synthetic stream or body model is missing;
- :meth:`LossTable.uses` tells ``engine/build.py`` whether to build a teacher, a synthetic stream and a body model.

A new term: the loss in ``clip3dreid_plugin/losses/`` (tensors in, a scalar out, a ``ValueError`` naming the bad
argument), its options in ``add_clip3dreid_config`` (``loss.clip3dreid.*``), and one :class:`LossTerm` here.
"""
from __future__ import annotations

import difflib
import functools
import math
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, Callable, Dict, FrozenSet, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch

from clip3dreid_plugin.config.defaults import get_cfg
from clip3dreid_plugin.config.loader import ConfigError
from clip3dreid_plugin.losses import batch_hard_triplet, cross_entropy, global_distill_loss
from clip3dreid_plugin.losses.distill import REDUCTIONS as GLOBAL_REDUCTIONS
from clip3dreid_plugin.losses.shape3d import REDUCTIONS as SHAPE_REDUCTIONS

__all__ = ["LossSwitches", "LossTerm", "LossTable", "LOSS_TERMS", "NEEDS", "Rows", "Step", "StepBatch",
           "SyntheticBatch"]

OPTIONS = "loss.clip3dreid"

#: What a term can need beyond the real rows' student outputs and identities (always there), and the engine arguments
#: (``CLIP3DReIDEngine(teacher=..., synthetic=..., shape_loss=...)``) that provide it.
NEEDS: Dict[str, Tuple[str, ...]] = {
    "teacher_image": ("teacher",),  # Phi(g), g the teacher's image feature of each real row: real.teacher_proj
    "teacher_text": ("teacher",),  # Psi(H), H the teacher's text features of each real row's labels: real.text_proj
    "synthetic": ("synthetic",),  # the synthetic rows: the student's outputs on them, their true shapes and bodies
    "synthetic_text": ("teacher", "synthetic"),  # Psi(H_s) of the synthetic rows' true descriptors: synthetic.text_proj
    "shapes": (),  # phi(f_id), the predicted shape coefficients of every row: .betas
    "body_model": ("shape_loss",),  # the engine's shape_loss (SMPL-format body models)
}

# What provides each engine argument, for the error that names it.
_PROVIDERS = {
    "teacher": "a teacher (teacher.mode cache, online or ideal, not none; the engine's teacher=...)",
    "synthetic": "the synthetic stream (body.synthetic_dir; the engine's synthetic=...)",
    "shape_loss": "the body model (body.model_dir; the engine's shape_loss=...)",
}


# ----------------------------------------------------------------------------------------------- what a step holds
@dataclass(frozen=True)
class SyntheticBatch:
    """The synthetic rows of one step on the device, before the student sees them.

    Attributes:
        imgs: rendered body images ``[S, 3, H, W]``.
        betas: their true shape coefficients ``[S, 10]``.
        genders: the body each was rendered with ``[S]`` (``clip3dreid_plugin.body.genders.GENDER_IDS``).
        text: the teacher's text features of their true descriptors ``[S, M, d]``, where a term reads them.
    """

    imgs: torch.Tensor
    betas: torch.Tensor
    genders: torch.Tensor
    text: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class StepBatch:
    """One step's inputs on the device, before the student runs: real rows, their teacher targets, synthetic rows.

    Attributes:
        imgs: real images ``[B, 3, H, W]`` (a clip batch flattened to its frames).
        pids: their identities ``[B]``.
        teacher_image: the teacher's image feature g of each real row ``[B, d]``, where a term reads it.
        teacher_text: the teacher's text features H of each real row's descriptors ``[B, M, d]``, where a term reads
            them.
        synthetic: the synthetic rows, where a term reads them.
    """

    imgs: torch.Tensor
    pids: torch.Tensor
    teacher_image: Optional[torch.Tensor] = None
    teacher_text: Optional[torch.Tensor] = None
    synthetic: Optional[SyntheticBatch] = None


@dataclass(frozen=True)
class Rows:
    """The student's outputs on one kind of row of a step (the real rows, or the synthetic rows).

    Attributes:
        f_id: identity features ``[n, d']`` (float32).
        logits: identity logits ``[n, K]``.
        local: local features F ``[n, N, d']``.
        text_proj: Psi(H) ``[n, M, d']`` where the step gave these rows text features, else None.
        teacher_proj: Phi(g) ``[n, d']`` where the step gave these rows the teacher's image feature, else None.
        betas: phi(f_id) ``[n, 10]`` where a term reads shapes, else None.
    """

    f_id: torch.Tensor
    logits: torch.Tensor
    local: torch.Tensor
    text_proj: Optional[torch.Tensor] = None
    teacher_proj: Optional[torch.Tensor] = None
    betas: Optional[torch.Tensor] = None


@dataclass(frozen=True)
class Step:
    """What the loss terms of one step read: the batch and the student's outputs, real and synthetic rows by name.

    Attributes:
        batch: the prepared inputs (identities, teacher targets, the synthetic rows' true shapes and bodies).
        real: the student's outputs on the real rows.
        synthetic: its outputs on the synthetic rows, where the step had some.
    """

    batch: StepBatch
    real: Rows
    synthetic: Optional[Rows] = None

    @property
    def pids(self) -> torch.Tensor:
        """The real rows' identities ``[B]``."""
        return self.batch.pids


# ------------------------------------------------------------------------------------------------------ options
class LossSwitches(SimpleNamespace):
    """The values of the ``loss.clip3dreid`` options: the terms' switches, weights and reductions.

    An option left out keeps its default of ``add_clip3dreid_config`` (alpha 0.3, beta 0.5, gamma 0.3: the paper's
    weights; CE + L_OT + L_global on). The options are checked against the terms by :meth:`LossTable.check`, which
    the engine runs when it is built.

    Example::

        LossSwitches(use_3d=True)                      # the paper's full objective
        LossSwitches(use_ot=False, use_global=False)   # CE only: no teacher needed
    """

    def __init__(self, **options: Any):
        super().__init__(**{**dict(_config_defaults()), **options})

    @classmethod
    def from_cfg(cls, cfg) -> "LossSwitches":
        """The options of ``cfg.loss.clip3dreid``."""
        return cls(**dict(cfg.loss.clip3dreid))

    def replace(self, **changes: Any) -> "LossSwitches":
        """A copy with ``changes`` applied."""
        return LossSwitches(**{**vars(self), **changes})


@functools.lru_cache(maxsize=1)
def _config_defaults() -> Tuple[Tuple[str, Any], ...]:
    """The ``(key, default)`` pairs of ``loss.clip3dreid`` in ``add_clip3dreid_config``."""
    return tuple(get_cfg().loss.clip3dreid.items())


# -------------------------------------------------------------------------------------------------------- terms
#: ``compute(ctx, step, reduction) -> scalar``: ``ctx`` is the engine (its ``ot_loss``, ``shape_loss``,
#: ``label_smooth``, ``triplet_margin``), ``reduction`` the value of the term's reduction option (None without one).
Compute = Callable[[Any, Step, Optional[str]], torch.Tensor]


@dataclass(frozen=True)
class LossTerm:
    """One term of the objective.

    Args:
        name: its key in the loss dict and the log (``w_<name>`` is its weighted value).
        compute: ``compute(ctx, step, reduction) -> 0-dim tensor`` (see :data:`Compute`).
        weight: the option holding its weight; None: weight 1.
        switch: the boolean option that switches it on; None: it is on while its weight is above 0.
        needs: what it reads beyond the real rows' outputs and identities, from :data:`NEEDS`.
        reduction: the option choosing its reduction, if it has one.
        reductions: the values that option may take.
    """

    name: str
    compute: Compute
    weight: Optional[str] = None
    switch: Optional[str] = None
    needs: FrozenSet[str] = field(default_factory=frozenset)
    reduction: Optional[str] = None
    reductions: Tuple[str, ...] = ()

    def __post_init__(self):
        object.__setattr__(self, "needs", frozenset(self.needs))
        unknown = sorted(self.needs - set(NEEDS))
        if unknown:
            raise ValueError(f"loss term '{self.name}': unknown needs {unknown} (known: {sorted(NEEDS)})")
        if self.switch is None and self.weight is None:
            raise ValueError(f"loss term '{self.name}' needs a switch or a weight option (it could never be off)")
        if (self.reduction is None) != (not self.reductions):
            raise ValueError(f"loss term '{self.name}': give both reduction and reductions, or neither")

    @property
    def options(self) -> Tuple[str, ...]:
        """The options the term reads."""
        return tuple(k for k in (self.switch, self.weight, self.reduction) if k is not None)

    @property
    def gate(self) -> str:
        """The full name of the option that turns the term on (its switch, else its weight)."""
        return f"{OPTIONS}.{self.switch or self.weight}"

    @property
    def resources(self) -> FrozenSet[str]:
        """The engine arguments it needs (``teacher``, ``synthetic``, ``shape_loss``)."""
        return frozenset(r for need in self.needs for r in NEEDS[need])

    def is_on(self, options: LossSwitches) -> bool:
        return bool(getattr(options, self.switch)) if self.switch is not None else getattr(options, self.weight) > 0

    def weight_of(self, options: LossSwitches) -> float:
        return 1.0 if self.weight is None else getattr(options, self.weight)


class LossTable:
    """The terms of an objective, in the order they are computed and summed.

    Args:
        terms: :class:`LossTerm` s with distinct names.
    """

    def __init__(self, terms: Iterable[LossTerm]):
        self._terms: Tuple[LossTerm, ...] = tuple(terms)
        names = [t.name for t in self._terms]
        twice = sorted({n for n in names if names.count(n) > 1} | ({"loss"} & set(names)))
        if twice:
            raise ValueError(f"loss term names must be distinct and not 'loss': {twice}")

    def __iter__(self) -> Iterator[LossTerm]:
        return iter(self._terms)

    @property
    def names(self) -> Tuple[str, ...]:
        return tuple(t.name for t in self._terms)

    def extended(self, *terms: LossTerm) -> "LossTable":
        """This table with ``terms`` added at the end."""
        return LossTable((*self._terms, *terms))

    def option_keys(self) -> FrozenSet[str]:
        """Every option a term reads."""
        return frozenset(k for t in self._terms for k in t.options)

    # ------------------------------------------------------------------ which terms, and what they need
    def on(self, options: LossSwitches) -> Tuple[LossTerm, ...]:
        """The terms that are on."""
        return tuple(t for t in self._terms if t.is_on(options))

    def needs(self, options: LossSwitches) -> FrozenSet[str]:
        """What the terms that are on read (keys of :data:`NEEDS`): what the step must prepare."""
        return frozenset(n for t in self.on(options) for n in t.needs)

    def uses(self, resource: str, options: LossSwitches) -> bool:
        """Whether a term that is on needs the engine argument ``resource`` (``teacher``, ``synthetic``,
        ``shape_loss``): what ``engine/build.py`` asks before building one."""
        if resource not in _PROVIDERS:
            raise ValueError(f"unknown resource '{resource}' (known: {sorted(_PROVIDERS)})")
        return any(resource in t.resources for t in self.on(options))

    def only(self, names: Sequence[str], options: LossSwitches) -> LossSwitches:
        """``options`` with every term but ``names`` off (switch False, or weight 0), the switches of ``names`` on."""
        keep = set(names)
        unknown = sorted(keep - set(self.names))
        if unknown:
            raise ValueError(f"no loss terms {unknown} (terms: {list(self.names)})")
        changes = {t.switch or t.weight: False if t.switch else 0.0 for t in self._terms if t.name not in keep}
        for t in self._terms:
            if t.name in keep and t.switch is not None:
                if t.switch in changes:
                    raise ValueError(f"loss term '{t.name}' shares {t.gate} with a term that is switched off")
                changes[t.switch] = True
        return options.replace(**changes)

    # ------------------------------------------------------------------------------------------ checks
    def check(self, options: LossSwitches, **resources: Any) -> None:
        """Refuses options that cannot train, in one line that names the options.

        Args:
            options: the switches, weights and reductions.
            **resources: the engine arguments that are given (``teacher``, ``synthetic``, ``shape_loss``; None for
                one that is missing). One left out is not checked.

        Raises:
            ConfigError: an option no term reads, an option a term reads without a value, a weight that is not a
                number, a reduction the term does not have, no term on, or a term on whose teacher, synthetic
                stream or body model is missing.
        """
        given = set(vars(options))
        known = self.option_keys()
        unknown = sorted(given - known - {k for k, _ in _config_defaults()})
        if unknown:
            said = []
            for k in unknown:
                hint = difflib.get_close_matches(k, sorted(known), n=1)
                said.append(f"{OPTIONS}.{k}" + (f" (did you mean {OPTIONS}.{hint[0]}?)" if hint else ""))
            raise ConfigError(f"unknown option {', '.join(said)}: no loss term reads it "
                              f"(terms: {', '.join(self.names)})")
        missing = sorted(known - given)
        if missing:
            names = ", ".join(f"{OPTIONS}.{k}" for k in missing)
            raise ConfigError(f"{names} {'has' if len(missing) == 1 else 'have'} no value: add it to "
                              f"add_clip3dreid_config, or give it to LossSwitches")
        for t in self._terms:
            if t.weight is not None:
                w = getattr(options, t.weight)
                if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
                    raise ConfigError(f"{OPTIONS}.{t.weight} must be a finite number, got {w!r}")
            if t.reduction is not None and getattr(options, t.reduction) not in t.reductions:
                raise ConfigError(f"{OPTIONS}.{t.reduction} must be one of {t.reductions}, "
                                  f"got '{getattr(options, t.reduction)}'")
        if not self.on(options):
            raise ConfigError(f"every term of {OPTIONS} is switched off: nothing to train")
        for resource, value in resources.items():
            self.require(options, resource, value)

    def require(self, options: LossSwitches, resource: str, value: Any) -> None:
        """Raises a :class:`ConfigError` naming the options of the terms that are on and need ``resource`` when
        ``value`` is None."""
        if value is not None or not self.uses(resource, options):
            return
        gates = list(dict.fromkeys(t.gate for t in self.on(options) if resource in t.resources))
        one = len(gates) == 1
        raise ConfigError(f"{' and '.join(gates)} {'needs' if one else 'need'} {_PROVIDERS[resource]}: give it, or "
                          f"switch {'it' if one else 'them'} off")

    # ------------------------------------------------------------------------------------------ values
    def compute(self, ctx: Any, step: Step, options: LossSwitches) -> Dict[str, torch.Tensor]:
        """Every term that is on, and their weighted sum.

        Returns:
            ``{<term>: value, ..., 'loss': total}``.
        """
        values: Dict[str, torch.Tensor] = {}
        for t in self.on(options):
            values[t.name] = t.compute(ctx, step, getattr(options, t.reduction) if t.reduction else None)
        values["loss"] = self.total(values, options)
        return values

    def total(self, values: Dict[str, torch.Tensor], options: LossSwitches) -> torch.Tensor:
        """``sum_w w * (sum of the terms weighted by w)`` over the terms in ``values``, in table order."""
        groups: Dict[Optional[str], List[LossTerm]] = {}
        for t in self._terms:
            if t.name in values:
                groups.setdefault(t.weight, []).append(t)
        total = next(iter(values.values())).new_zeros(())
        for key, terms in groups.items():
            part = values[terms[0].name]
            for t in terms[1:]:
                part = part + values[t.name]
            total = total + (part if key is None else terms[0].weight_of(options) * part)
        return total

    def weighted(self, values: Dict[str, Any], options: LossSwitches) -> Dict[str, Any]:
        """``w_<term>``: each term in ``values`` times its weight, so a log shows which term dominates the total."""
        return {f"w_{t.name}": t.weight_of(options) * values[t.name] for t in self._terms if t.name in values}


# ------------------------------------------------------------------------------------------------ the objective
def _ce(ctx, step: Step, reduction) -> torch.Tensor:
    return cross_entropy(step.real.logits.float(), step.pids, ctx.label_smooth)


def _triplet(ctx, step: Step, reduction) -> torch.Tensor:
    return batch_hard_triplet(step.real.f_id, step.pids, ctx.triplet_margin)


def _ot(ctx, step: Step, reduction) -> torch.Tensor:
    return ctx.ot_loss(step.real.local, step.real.text_proj)


def _global(ctx, step: Step, reduction) -> torch.Tensor:
    return global_distill_loss(step.real.teacher_proj.float(), step.real.f_id, reduction)


def _ot_syn(ctx, step: Step, reduction) -> torch.Tensor:
    return ctx.ot_loss(step.synthetic.local, step.synthetic.text_proj)


def _shape(ctx, step: Step, reduction) -> torch.Tensor:
    syn = step.batch.synthetic
    return ctx.shape_loss(step.synthetic.betas, syn.betas, syn.genders, reduction=reduction)


#: CLIP3DReID's objective, Eq. 10 (plus the optional triplet term), in the order the terms are computed and summed.
LOSS_TERMS = LossTable([
    LossTerm("ce", _ce, switch="use_ce"),
    LossTerm("triplet", _triplet, weight="triplet_weight"),
    LossTerm("ot", _ot, weight="alpha", switch="use_ot", needs={"teacher_text"}),
    LossTerm("global", _global, weight="beta", switch="use_global", needs={"teacher_image"},
             reduction="global_reduction", reductions=GLOBAL_REDUCTIONS),
    LossTerm("ot_syn", _ot_syn, weight="gamma", switch="use_3d", needs={"synthetic", "synthetic_text"}),
    LossTerm("3d", _shape, weight="gamma", switch="use_3d", needs={"synthetic", "shapes", "body_model"},
             reduction="shape_reduction", reductions=SHAPE_REDUCTIONS),
])
