"""Models bigger than one device: a ``data`` x ``fsdp`` x ``tensor`` mesh and sharding rules.

A run's devices form a mesh of three named axes (:func:`make_mesh`):

* ``data``: data parallelism; every device of the axis holds the same parameters;
* ``fsdp``: fully sharded data parallelism; the batch is split over it as over ``data``, and
  the parameters (with their optimizer states) are split over it too, each device holding a
  slice; XLA gathers a weight where a layer needs it whole;
* ``tensor``: tensor parallelism; weights split over it along their heads or hidden features
  (Megatron's column / row split), the activations computed in slices.

The batch is split over ``data`` x ``fsdp`` (:data:`BATCH_AXES`). Where each parameter lies is
said by **sharding rules**, the same shape as the ternarization rules (:mod:`tern_jax.rules`):
pairs ``(pattern, spec)``; ``pattern`` is a regular expression that must match the whole
parameter path (``blocks/0/mlp/up/kernel``), ``spec`` names, for each dimension of the
parameter, the mesh axis it is split over (``"fsdp"``), several axes (``("fsdp", "tensor")``),
or ``None`` (not split). A rule applies to a parameter whose path its pattern matches and
whose rank equals the length of its spec (so one pattern can give conv kernels and dense
kernels their own specs); the first rule that applies wins; ``spec=None`` keeps whatever it
matches replicated. A parameter no rule applies to is replicated. Rules that apply to no
parameter are reported like unused ternarization rules (:class:`tern_jax.UnusedRuleWarning`).

The rules of the built-in models (:data:`TRANSFORMER_SHARDING`, :data:`CNN_SHARDING`) are
the model family's defaults (:attr:`tern_jax.train.families.ModelFamily.sharding`). A
default rule that does not divide a dimension leaves that dimension split over fewer axes, or
whole (``strict=False``); a rule given by the user must divide it (``strict=True``, an error
naming the parameter, its shape and the axis).

:func:`param_specs` gives a :class:`~jax.sharding.PartitionSpec` per parameter;
:func:`state_specs` those of a whole training state (parameters, BatchNorm statistics and
optimizer states: optax states hold copies of the parameter tree, sharded like it, and
scalars, replicated). A stack of models trained side by side has a leading *model axis*
(``stacked=True``): unsharded, or split over the mesh axis ``model_axis``.

Ternarization under sharding is the whole tensor's: ``Δ = 0.05·max|W|`` and the scale ``α``
are reductions over every element, which XLA's partitioner computes over the shards (an
all-reduce), so the codes equal one device's (tested on 8 CPU devices); a per-channel scale
whose channels are split stays local to each shard.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.sharding import AbstractMesh, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tern_jax.rules import check_unused, path_to_str, report_unused

__all__ = ["BATCH_AXES", "CNN_SHARDING", "MESH_AXES", "TRANSFORMER_SHARDING", "batch_axes",
           "batch_spec", "check_rules", "make_mesh", "mesh_shape", "named", "param_specs",
           "state_specs"]

#: The mesh's axes, outermost first.
MESH_AXES = ("data", "fsdp", "tensor")
#: The axes the batch is split over.
BATCH_AXES = ("data", "fsdp")

#: A sharding rule: ``(pattern, spec)``; spec: one entry per dimension (an axis name, a tuple
#: of axis names, or None), or None for "replicated, whatever the rank".
ShardingRule = tuple[str, Any]


def _with_scanned(rules):
    """Each rule, then the same rule for a parameter with one more leading dimension (layers
    stacked by a scan over the blocks), that dimension unsplit."""
    out = []
    for pattern, spec in rules:
        out.append((pattern, spec))
        if spec is not None:
            out.append((pattern, (None, *spec)))
    return tuple(out)


#: Default rules of the transformer language model (:mod:`tern_jax.models.transformer`),
#: Megatron's split over ``tensor`` and the rest over ``fsdp``: embedding ``(vocab, d)``
#: vocabulary over tensor; query/key/value ``(d, heads, head_dim)`` heads over tensor;
#: attention output ``(heads, head_dim, d)`` heads over tensor; MLP up/gate ``(d, hidden)``
#: and down ``(hidden, d)`` hidden over tensor; head ``(d, vocab)`` vocabulary over tensor;
#: ``d`` over fsdp everywhere; norm scales replicated. Each rule also in its scanned form (a
#: leading layer axis, unsplit).
TRANSFORMER_SHARDING: tuple[ShardingRule, ...] = _with_scanned((
    (r"(.*/)?embed/embedding", ("tensor", "fsdp")),
    (r"(.*/)?attn/(query|key|value)/kernel", ("fsdp", "tensor", None)),
    (r"(.*/)?attn/out/kernel", ("tensor", None, "fsdp")),
    (r"(.*/)?mlp/(up|gate)/kernel", ("fsdp", "tensor")),
    (r"(.*/)?mlp/down/kernel", ("tensor", "fsdp")),
    (r"(.*/)?head/kernel", ("fsdp", "tensor")),
    (r"(.*/)?(.*_norm|norm)/scale", None),
))

#: Default rules of the CNNs (:mod:`tern_jax.models`, and a user's linen image classifier):
#: conv kernels ``(h, w, in, out)`` split over their output channels, dense kernels
#: ``(in, out)`` their input features over fsdp and outputs over tensor, and every vector
#: (BatchNorm scale, bias, statistics; biases) over its channels, as the conv before it.
CNN_SHARDING: tuple[ShardingRule, ...] = (
    (r"(.*/)?kernel", (None, None, None, ("fsdp", "tensor"))),
    (r"(.*/)?kernel", ("fsdp", "tensor")),
    (r".*", (("fsdp", "tensor"),)),
)


# -- the mesh ----------------------------------------------------------------------------------

def mesh_shape(sharding, num_devices: int) -> tuple[int, int, int]:
    """``(data, fsdp, tensor)`` of a :class:`~tern_jax.train.config.ShardingConfig` on
    ``num_devices`` devices (``data=0``: every device left over); raises ``ValueError`` when
    the product is not ``num_devices``."""
    fsdp, tensor, data = sharding.fsdp, sharding.tensor, sharding.data
    if not data:
        if num_devices % (fsdp * tensor):
            raise ValueError(
                f"sharding.fsdp={fsdp} x sharding.tensor={tensor} = {fsdp * tensor} does not "
                f"divide the {num_devices} device(s); choose sizes whose product divides "
                f"{num_devices} (sharding.data=0 takes the devices left over)")
        data = num_devices // (fsdp * tensor)
    if data * fsdp * tensor != num_devices:
        raise ValueError(
            f"sharding.data={data} x sharding.fsdp={fsdp} x sharding.tensor={tensor} = "
            f"{data * fsdp * tensor} devices, but the run has {num_devices} (every process's "
            f"devices together); choose sizes whose product is {num_devices}, or "
            "sharding.data=0 for the devices left over")
    return data, fsdp, tensor


def make_mesh(sharding, devices=None) -> Mesh:
    """The ``("data", "fsdp", "tensor")`` mesh of ``sharding`` (a
    :class:`~tern_jax.train.config.ShardingConfig`) over ``devices`` (default: every device of
    every process), in device order: consecutive devices share ``tensor``, then ``fsdp``."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(sharding, len(devices))
    grid = np.empty(len(devices), dtype=object)
    grid[:] = devices
    return Mesh(grid.reshape(shape), MESH_AXES)


def batch_axes(mesh: Mesh, model_axis: str | None = None) -> tuple[str, ...]:
    """The axes of ``mesh`` the batch is split over: :data:`BATCH_AXES` it has, less
    ``model_axis`` (a mesh axis the stacked models are split over instead)."""
    return tuple(a for a in BATCH_AXES if a in mesh.axis_names and a != model_axis)


def batch_spec(mesh: Mesh, example_axis: int = 0, model_axis: str | None = None) -> P:
    """The :class:`PartitionSpec` of a batch whose examples lie on ``example_axis``: split over
    :func:`batch_axes`; a leading model axis (``example_axis=1``) over ``model_axis``."""
    lead = [None] * example_axis
    if example_axis and model_axis is not None:
        lead[0] = model_axis
    return P(*lead, batch_axes(mesh, model_axis) or None)


def named(mesh: Mesh, specs):
    """``specs`` (a pytree of PartitionSpecs) as :class:`NamedSharding`\\ s on ``mesh``."""
    return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                        is_leaf=lambda x: isinstance(x, P))


# -- rules -------------------------------------------------------------------------------------

def _entry_axes(entry) -> tuple[str, ...]:
    if entry is None:
        return ()
    return (entry,) if isinstance(entry, str) else tuple(entry)


def check_rules(rules, axis_names: Sequence[str] = MESH_AXES, *,
                what: str = "sharding rule") -> tuple[ShardingRule, ...]:
    """``rules`` as a tuple of ``(pattern, spec)``, each checked: a pattern that compiles, a
    spec of axis names of ``axis_names`` (or tuples of them, or None), no axis twice in one
    spec. Raises ``TypeError``/``ValueError`` naming the rule."""
    if isinstance(rules, (str, bytes)) or not isinstance(rules, Sequence):
        raise TypeError(f"sharding rules must be a sequence of (pattern, spec) pairs, e.g. "
                        f"(('.*/kernel', ('fsdp', None)),), got {rules!r}")
    out = []
    for rule in rules:
        if (not isinstance(rule, Sequence) or isinstance(rule, (str, bytes)) or len(rule) != 2
                or not isinstance(rule[0], str)):
            raise TypeError(f"a {what} must be a (pattern, spec) pair such as "
                            f"('.*/kernel', ('fsdp', None)), got {rule!r}")
        pattern, spec = rule
        try:
            re.compile(pattern)
        except re.error as e:
            raise ValueError(f"{what} {pattern!r}: not a regular expression ({e})") from None
        if spec is None:
            out.append((pattern, None))
            continue
        if isinstance(spec, (str, bytes)) or not isinstance(spec, Sequence):
            raise TypeError(f"{what} {pattern!r}: the spec must be a sequence with one entry "
                            f"per dimension (an axis name, a tuple of them, or None), e.g. "
                            f"('fsdp', None), got {spec!r}")
        seen: list[str] = []
        entries = []
        for entry in spec:
            if entry is not None and not isinstance(entry, str) and not (
                    isinstance(entry, Sequence) and all(isinstance(a, str) for a in entry)):
                raise TypeError(f"{what} {pattern!r}: each entry of the spec is an axis name, "
                                f"a tuple of axis names or None, got {entry!r}")
            for axis in _entry_axes(entry):
                if axis not in axis_names:
                    raise ValueError(f"{what} {pattern!r}: unknown mesh axis {axis!r}; the "
                                     f"mesh's axes are {', '.join(map(repr, axis_names))}")
                if axis in seen:
                    raise ValueError(f"{what} {pattern!r}: axis {axis!r} appears twice in "
                                     f"{tuple(spec)!r}; split a parameter over each axis once")
                seen.append(axis)
            entries.append(entry if entry is None or isinstance(entry, str) else tuple(entry))
        out.append((pattern, tuple(entries)))
    return tuple(out)


def _applies(rule: ShardingRule, path: str, ndim: int) -> bool:
    pattern, spec = rule
    return (spec is None or len(spec) == ndim) and re.fullmatch(pattern, path) is not None


def _fit(entry, size: int, mesh: Mesh, path: str, shape, dim: int, strict: bool,
         taken: set[str]):
    """The entry of one dimension on ``mesh``: its axes, checked to divide ``size``; a
    non-strict rule keeps the longest prefix of them that divides (None: none)."""
    axes = _entry_axes(entry)
    for axis in axes:
        if axis in taken:
            raise ValueError(f"sharding rule splits parameter {path!r} over axis {axis!r}, "
                             "which sharding.model_axis gives the stacked models; choose "
                             "another axis for one of them")
    sizes = [mesh.shape[a] for a in axes]
    if strict:
        total = math.prod(sizes)
        if size % total:
            names = " x ".join(f"{a} ({mesh.shape[a]})" for a in axes)
            raise ValueError(
                f"sharding rule splits dimension {dim} (size {size}) of parameter {path!r} of "
                f"shape {tuple(shape)} over mesh axis {names}, which does not divide it; "
                f"give that dimension None or an axis of a size dividing {size}, or change "
                "the mesh")
        kept = list(axes)
    else:
        kept = list(axes)
        while kept and size % math.prod(mesh.shape[a] for a in kept):
            kept.pop()
    kept = [a for a in kept if mesh.shape[a] > 1] if not strict else kept
    if not kept:
        return None
    return kept[0] if len(kept) == 1 else tuple(kept)


def _leaf_spec(path: str, leaf, rules, mesh: Mesh, stacked: bool, model_axis, strict: bool,
               used: list[bool]) -> P:
    shape = tuple(getattr(leaf, "shape", ()))
    lead: list = []
    if stacked:
        if not shape:
            raise ValueError(f"parameter {path!r} is a scalar, but stacked=True expects a "
                             "leading model axis on every leaf")
        models, shape = shape[0], shape[1:]
        if model_axis is not None and models % mesh.shape[model_axis]:
            raise ValueError(
                f"sharding.model_axis={model_axis!r} splits the {models} stacked models over "
                f"{mesh.shape[model_axis]} devices, which does not divide them; use a number "
                f"of models (variants x seeds) divisible by {mesh.shape[model_axis]}, or "
                "sharding.model_axis=None")
        lead = [model_axis]
    taken = {model_axis} if model_axis is not None else set()
    for i, rule in enumerate(rules):
        if not _applies(rule, path, len(shape)):
            continue
        used[i] = True
        spec = rule[1]
        if spec is None:
            return P(*lead)
        entries = [_fit(e, size, mesh, path, shape, d, strict, taken)
                   for d, (e, size) in enumerate(zip(spec, shape))]
        while entries and entries[-1] is None:
            entries.pop()
        return P(*lead, *entries)
    return P(*lead)


def _specs(tree, rules, mesh: Mesh, stacked: bool, model_axis, strict: bool,
           used: list[bool]):
    leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
    specs = [_leaf_spec(path_to_str(p), leaf, rules, mesh, stacked, model_axis, strict, used)
             for p, leaf in leaves]
    return jax.tree_util.tree_unflatten(treedef, specs)


def _prepare(rules, mesh: Mesh, stacked: bool, model_axis, unused: str, func: str):
    check_unused(unused, func)
    if not isinstance(mesh, (Mesh, AbstractMesh)):
        raise TypeError(f"{func}: mesh must be a jax.sharding.Mesh (tern_jax.sharding."
                        f"make_mesh) or AbstractMesh, got {type(mesh).__name__}")
    rules = check_rules(rules, tuple(mesh.axis_names))
    if model_axis is not None:
        if not stacked:
            raise ValueError(f"{func}: model_axis={model_axis!r} splits a leading model axis; "
                             "pass stacked=True for a stack of models")
        if model_axis not in mesh.axis_names:
            raise ValueError(f"sharding.model_axis: unknown mesh axis {model_axis!r}; the "
                             f"mesh's axes are {', '.join(map(repr, mesh.axis_names))}")
    return rules


def param_specs(params, rules, mesh: Mesh, *, model_axis: str | None = None,
                stacked: bool = False, strict: bool = True, unused: str = "warn"):
    """A :class:`PartitionSpec` for every leaf of ``params``, by the first rule that applies.

    Args:
      params: a parameter pytree (arrays or ``jax.ShapeDtypeStruct``\\ s).
      rules: ``(pattern, spec)`` pairs (see the module docstring).
      mesh: the mesh whose axes the specs name (:func:`make_mesh`; a
        ``jax.sharding.AbstractMesh`` of the same axes will do: only the axis sizes are read).
      model_axis: the mesh axis the leading model axis is split over (``stacked=True``);
        None: not split.
      stacked: every leaf has a leading model axis (a :class:`~tern_jax.train.ModelStack`'s
        state); the rules describe the dimensions after it.
      strict: a rule must divide every dimension it splits (``ValueError`` naming the
        parameter, its shape and the axis); ``False`` (the model families' defaults): a
        dimension it does not divide is split over the longest prefix of its axes that
        divides it, or not at all.
      unused: rules that apply to no parameter: ``"warn"`` (:class:`UnusedRuleWarning`),
        ``"error"`` or ``"ignore"``.
    """
    rules = _prepare(rules, mesh, stacked, model_axis, unused, "param_specs")
    used = [False] * len(rules)
    specs = _specs(params, rules, mesh, stacked, model_axis, strict, used)
    report_unused([r[0] for r, u in zip(rules, used) if not u], unused, what="parameter",
                  stacklevel=2)
    return specs


def state_specs(params, model_state, opt_state, rules, mesh: Mesh, *, tx,
                model_axis: str | None = None, stacked: bool = False, strict: bool = True,
                unused: str = "warn"):
    """``(params, model_state, opt_state)`` specs of a training state.

    The rules apply to the parameters and to the model state (BatchNorm statistics, under
    their own paths: ``bn1/mean``); a rule is unused when it applies to neither. The optimizer
    state ``opt_state`` of ``tx`` holds copies of the parameter tree (momenta), sharded as
    the parameters, and scalars (step counts), replicated (``optax.tree_map_params``).
    """
    import optax

    rules = _prepare(rules, mesh, stacked, model_axis, unused, "state_specs")
    used = [False] * len(rules)
    p_specs = _specs(params, rules, mesh, stacked, model_axis, strict, used)
    s_specs = _specs(model_state, rules, mesh, stacked, model_axis, strict, used)
    report_unused([r[0] for r, u in zip(rules, used) if not u], unused, what="parameter",
                  stacklevel=2)
    scalar = P(model_axis) if model_axis is not None else P()
    o_specs = optax.tree_map_params(tx, lambda _, spec: spec, opt_state, p_specs,
                                    transform_non_params=lambda _: scalar,
                                    is_leaf=lambda x: isinstance(x, P))
    return p_specs, s_specs, o_specs
