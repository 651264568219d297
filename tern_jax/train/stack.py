"""The models a run trains together, stacked on a leading model axis, and their state.

All models of a run share one task (architecture and data) and differ in variant (full
precision or a rule preset) and seed. Their parameters, non-trained model state (BatchNorm
statistics) and optimizer states are stacked on a leading *model axis*, so one jitted step
trains them all: a table row (full precision and ternary, several seeds) is one program
instead of processes time-slicing a card. :class:`ModelStack` is the static description the
step functions (:mod:`tern_jax.train.step`) close over; :class:`TrainState` is what changes.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from tern_jax.activations import quantized_activations, uses_activations
from tern_jax.fields import check_fields
from tern_jax.gather import GatherPlan, quantize_params_gathered
from tern_jax.layers import vmapped_branches
from tern_jax.presets import FULL_PRECISION, is_full_precision_rules
from tern_jax.rules import Rule, match_params, quantize_params
from tern_jax.train import optim
from tern_jax.train.config import Config, ModelAxis, Slot
from tern_jax.train.task import Task

__all__ = ["TrainState", "ModelStack"]


@struct.dataclass
class TrainState:
    """Stacked over the model axis: every leaf has a leading dimension of ``num_models``.

    ``model_state`` holds the task's non-trained model variables (BatchNorm statistics; empty
    for a model without any).
    """

    params: Any
    model_state: Any
    opt_state: Any


def _apply_rules(params, rules, threshold_scale=None, stacked=False, scanned=None,
                 gather=None):
    if is_full_precision_rules(rules):  # nothing to ternarize: the params as they are
        return params
    if gather is not None and gather.mode != "weights":  # FSDP: gather codes, not weights
        if scanned is not None:
            raise ValueError("sharding.gather='codes'/'packed' does not take a model with "
                             "scan_layers=True yet; use sharding.gather='weights' or "
                             "model.kwargs.scan_layers=false")
        return quantize_params_gathered(params, rules, gather, threshold_scale=threshold_scale,
                                        stacked=stacked)
    return quantize_params(params, rules, unused="ignore", threshold_scale=threshold_scale,
                           stacked=stacked, scanned=scanned)


def _zero_fraction(params, rules, scanned=None) -> jax.Array:
    """Fraction of zeros in the weights the rules ternarize (0 for full precision)."""
    matches, _ = match_params(params, rules, unused="ignore", scanned=scanned)
    quantized = [m.quantizer.apply(m.leaf) for m in matches if m.quantized]
    if not quantized:
        return jnp.float32(0.0)
    zeros = sum(jnp.sum(q == 0) for q in quantized)
    return zeros / sum(q.size for q in quantized)


@dataclasses.dataclass(frozen=True, eq=False)
class ModelStack:
    """The static side of a run's models: task, slots, optimizer and how the axis is computed.

    Attributes:
      task: the :class:`~tern_jax.train.task.Task` every model trains on.
      slots: one :class:`~tern_jax.train.config.Slot` (variant, seed) per model, model-axis
        order.
      tx: the optimizer (one state per model).
      model_axis: ``"vmap"`` (one batched program), ``"unroll"`` (a loop stacked afterwards,
        faster on CPU, where the grouped convolutions a vmap becomes run slowly) or ``"auto"``
        (:attr:`vmapped`).
      distill_weight, distill_temperature: knowledge distillation of every ternary model from
        the full-precision model of its seed (weight 0: off).
      threshold_warmup: ``step -> factor`` multiplying every threshold, or ``None``.
      schedule: the learning-rate schedule inside ``tx`` (reported in the metrics), if known.
      branches: how expanded kernels (``t_ex > 1``) run: ``"folded"``, one op on
        ``Σ_k Ŵ_k`` (fast), or ``"vmapped"``, the paper's ``Σ_k op(x, Ŵ_k)``, one ternary op
        per branch (:func:`tern_jax.layers.vmapped_branches`); the same function.
      presets: the variants' rule sets (the model family's,
        :attr:`tern_jax.train.families.ModelFamily.presets`); default: the CNN presets.
      gather: a :class:`tern_jax.gather.GatherPlan` (its mode ``"codes"`` or ``"packed"``):
        the forward pass gathers the ternary kernels split over FSDP as codes instead of
        fp32 weights (the same function); ``None``: XLA gathers the weights.
    """

    task: Task
    slots: tuple[Slot, ...]
    tx: optax.GradientTransformation
    model_axis: ModelAxis = "vmap"
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    threshold_warmup: Any = None
    schedule: Any = None
    branches: Literal["folded", "vmapped"] = "folded"
    presets: dict | None = None
    gather: GatherPlan | None = None

    def __post_init__(self):
        check_fields(self, ("model_axis", "branches"))
        if not self.slots:
            raise ValueError("a model stack needs at least one slot")
        self.teacher_index  # noqa: B018 (a distilling stack fails here, not in the step)

    @property
    def scanned(self) -> str | None:
        """The task's parameter paths stacked over layers (``scan_layers``), if any: each
        layer of them is ternarized on its own (:func:`tern_jax.quantize_params`)."""
        return getattr(self.task, "scanned", None)

    @functools.cached_property
    def variants(self) -> tuple[str, ...]:
        """The distinct variants, in slot order."""
        return tuple(dict.fromkeys(s.variant for s in self.slots))

    @functools.cached_property
    def rule_sets(self) -> tuple[tuple[Rule, ...], ...]:
        """The rules of each of :attr:`variants`."""
        from tern_jax.presets import PRESETS, preset_rules

        presets = PRESETS if self.presets is None else self.presets
        return tuple(preset_rules(v, presets) for v in self.variants)

    @functools.cached_property
    def variant_index(self) -> np.ndarray:
        """For each slot, the index of its variant in :attr:`variants`."""
        return np.array([self.variants.index(s.variant) for s in self.slots], np.int32)

    @functools.cached_property
    def teacher_index(self) -> np.ndarray | None:
        """For each slot, the slot of the full-precision model of its seed (distillation)."""
        if not self.distill_weight:
            return None
        by_seed = {s.seed: i for i, s in enumerate(self.slots) if s.variant == FULL_PRECISION}
        missing = sorted({s.seed for s in self.slots} - set(by_seed))
        if missing:
            raise ValueError(f"distillation needs a full-precision model for every seed; "
                             f"seeds {missing} have none")
        return np.array([by_seed[s.seed] for s in self.slots], np.int32)

    @functools.cached_property
    def vmapped(self) -> bool:
        """Whether the model axis is a ``jax.vmap`` (``"auto"``: on GPU/TPU; on CPU the loop is
        faster: measured here, XLA:CPU runs a vmapped (grouped) conv ~4x slower)."""
        if self.model_axis == "auto":
            return jax.default_backend() != "cpu"
        return self.model_axis == "vmap"

    @property
    def num_models(self) -> int:
        return len(self.slots)

    @property
    def seeds(self) -> np.ndarray:
        return np.array([s.seed for s in self.slots], np.int32)

    @property
    def is_student(self) -> np.ndarray:
        """1.0 for the ternary models (which distill), 0.0 for full precision."""
        return np.array([not is_full_precision_rules(r) for r in self.rule_sets],
                        np.float32)[self.variant_index]

    # -- per-model functions --------------------------------------------------------------
    def per_variant(self, fn, variant, params):
        """``fn(rules, params)`` with the rules of variant number ``variant`` (traced): one
        ``lax.switch`` over the variants (a plain call when there is one)."""
        fns = [functools.partial(fn, rules) for rules in self.rule_sets]
        return fns[0](params) if len(fns) == 1 else jax.lax.switch(variant, fns, params)

    def quantize(self, params, variant, threshold_scale=None):
        """Params as the forward pass of variant number ``variant`` (traced) sees them."""
        stacked = self.branches == "vmapped"
        return self.per_variant(
            lambda rules, p: _apply_rules(p, rules, threshold_scale, stacked, self.scanned,
                                          self.gather),
            variant, params)

    def apply(self, params, model_state, batch, variant, *, train, threshold_scale=None):
        """One model's forward pass on its ternarized (per its variant) parameters."""
        if any(uses_activations(r) for r in self.rule_sets):  # 8-bit inputs: per variant
            def forward(rules, params):
                q = _apply_rules(params, rules, threshold_scale, self.branches == "vmapped",
                                 self.scanned, self.gather)
                with quantized_activations(rules):
                    return self._apply_quantized(q, model_state, batch, train)
            return self.per_variant(forward, variant, params)
        q = self.quantize(params, variant, threshold_scale)
        return self._apply_quantized(q, model_state, batch, train)

    def _apply_quantized(self, q, model_state, batch, train):
        if self.branches == "vmapped":
            with vmapped_branches():
                return self.task.apply(q, model_state, batch, train=train)
        return self.task.apply(q, model_state, batch, train=train)

    def zero_fraction(self, params, variant) -> jax.Array:
        """Fraction of zero weights among those the variant's rules ternarize."""
        return self.per_variant(lambda rules, p: _zero_fraction(p, rules, self.scanned),
                                variant, params)

    def over_models(self, fn, in_axes=0):
        """``fn`` mapped over the model axis: ``jax.vmap``, or an unrolled loop stacked after."""
        if self.vmapped or self.num_models == 1:
            return jax.vmap(fn, in_axes=in_axes)
        axes = in_axes if isinstance(in_axes, tuple) else None

        def unrolled(*args):
            outs = []
            for i in range(self.num_models):
                picked = [a if (axes is not None and axes[j] is None)
                          else jax.tree.map(lambda leaf, i=i: leaf[i], a)
                          for j, a in enumerate(args)]
                outs.append(fn(*picked))
            return jax.tree.map(lambda *leaves: jnp.stack(leaves), *outs)

        return unrolled

    # -- state ------------------------------------------------------------------------------
    def _init(self, seeds) -> TrainState:
        def init_one(seed):
            variables = self.task.init(jax.random.key(seed))
            params = variables.pop("params")
            return TrainState(params, variables.get("model_state", {}), self.tx.init(params))

        return jax.vmap(init_one)(seeds)

    def init(self) -> TrainState:
        """Fresh models, each initialized from its own seed (models of one seed start alike)."""
        return jax.jit(self._init)(jnp.asarray(self.seeds))

    def abstract_state(self) -> TrainState:
        """Shapes and dtypes of :meth:`init`'s result, computed without running it."""
        return jax.eval_shape(self._init, jnp.asarray(self.seeds))

    @classmethod
    def from_config(cls, config: Config, task: Task, family, steps_per_epoch: int) -> ModelStack:
        """The stack of ``config.slots`` with the config's optimizer and settings; ``family``
        (a :class:`~tern_jax.train.families.ModelFamily`) gives the variants' rules."""
        schedule = optim.make_schedule(config, steps_per_epoch)
        tx = optim.make_optimizer(config, schedule,
                                  optim.make_weight_decay(config, steps_per_epoch))
        return cls(task, config.slots, tx, config.model.axis,
                   config.stages.distill_weight, config.stages.distill_temperature,
                   optim.make_threshold_warmup(config, steps_per_epoch), schedule,
                   presets=family.presets)

    def with_gather(self, mesh, param_shardings, mode: str) -> ModelStack:
        """This stack with its forward pass gathering ternary kernels as ``mode`` says
        (``sharding.gather``): ``"weights"`` returns it as it is; ``"codes"``/``"packed"``
        plan the gathers from the stacked parameters' shardings (``NamedSharding``\\ s or
        ``PartitionSpec``\\ s with the leading model axis, unsplit) on ``mesh``."""
        if mode == "weights":
            return self
        return dataclasses.replace(self, gather=GatherPlan.from_stacked(mesh, param_shardings,
                                                                         mode))

    def restart_optimizer(self, params, model_state) -> TrainState:
        """A state from given weights with fresh optimizer states (warm starts)."""
        opt_state = jax.jit(jax.vmap(self.tx.init))(params)
        return TrainState(params, model_state, opt_state)
