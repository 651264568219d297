"""Variants and slots: the named rule presets a run trains, and one model of a run.

A *variant* names a rule preset (:data:`PRESETS` for the CNNs; transformers have their own in
:mod:`tern_jax.presets_lm`); ``None`` rules mean full precision. A :class:`Slot` is one
trained model: a variant and a seed.
"""

from __future__ import annotations

import re
from typing import NamedTuple

from tern_jax.rules import Rule

__all__ = ["FULL_PRECISION", "PRESETS", "Slot", "is_full_precision", "is_language_model",
           "presets_for", "variant_rules"]

# First conv and classifier of every model in tern_jax.models (CIFAR/digits: stem_conv, head;
# torchvision ResNets: conv1, fc; AlexNet: conv1, head). Full paths only: a block's inner
# "stage1_block0/conv1" is not the first layer.
_FIRST_LAST = r"(stem_conv|conv1|head|fc)/kernel"

#: The variant that trains in full precision (the teacher and the parent of the ternary models).
FULL_PRECISION = "fp"

#: Named rule sets a variant can use. ``None`` trains in full precision.
PRESETS: dict[str, tuple[Rule, ...] | None] = {
    FULL_PRECISION: None,
    # the paper: every conv and dense kernel, first and last included, per-tensor, t_ex=1
    "tern": (Rule(r".*/kernel"),),
    "tern_t2": (Rule(r".*/kernel", t_ex=2),),
    "tern_t4": (Rule(r".*/kernel", t_ex=4),),
    # first and last layers kept in full precision (the paper's AlexNet variant)
    "tern_fl": (Rule(_FIRST_LAST, None), Rule(r".*/kernel")),
    # beyond the paper: one Δ/α per output channel
    "tern_pc": (Rule(r".*/kernel", axis=-1),),
    "tern_pc_t2": (Rule(r".*/kernel", axis=-1, t_ex=2),),
    "twn": (Rule(r".*/kernel", method="twn"),),
    "absmean": (Rule(r".*/kernel", method="absmean"),),
}


def is_language_model(model) -> bool:
    """Whether a config's ``model`` names a transformer language model (``transformer_*``)."""
    return isinstance(model, str) and model.strip().lower().startswith("transformer")


def presets_for(model: str | None) -> dict[str, tuple[Rule, ...] | None]:
    """The variant presets of a model family: :data:`PRESETS` (CNNs), or for a transformer
    :data:`tern_jax.presets_lm.TRANSFORMER_RULES` (same names, rules fitted to embeddings and
    rank-3 attention kernels)."""
    if is_language_model(model):
        from tern_jax.presets_lm import TRANSFORMER_RULES

        return TRANSFORMER_RULES
    return PRESETS


def variant_rules(name: str, model: str | None = None) -> tuple[Rule, ...] | None:
    """The rules of a preset variant (of ``model``'s family); a clear error for an unknown name."""
    presets = presets_for(model)
    if name not in presets:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(presets)}")
    return presets[name]


def is_full_precision(variant: str, model: str | None = None) -> bool:
    """Whether a variant trains without ternarization (its preset has no rules)."""
    return variant_rules(variant, model) is None


class Slot(NamedTuple):
    """One trained model of a run: its variant (a preset name) and its seed.

    ``str(slot)`` / :attr:`name` is the label written in metrics files and taken by the
    command line (``tern/seed0``); :meth:`parse` reads it back.
    """

    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> Slot:
        """``"tern/seed0"`` -> ``Slot("tern", 0)``; a clear error for anything else."""
        found = re.fullmatch(r"(.+)/seed(-?\d+)", name) if isinstance(name, str) else None
        if found is None:
            raise ValueError(f"model {name!r} is not of the form VARIANT/seedN, e.g. tern/seed0")
        return cls(found.group(1), int(found.group(2)))
