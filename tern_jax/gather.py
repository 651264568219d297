"""Ternary kernels gathered as codes under FSDP: int8 or 2-bit codes instead of fp32 weights.

Under fully sharded data parallelism (FSDP) every device holds a slice of each latent weight
``W`` (one dimension split over the mesh axis ``fsdp``), and the forward pass all-gathers the
whole weight before the layer uses it. A ternary layer only uses ``Ŵ = α·codes`` with codes in
``{-1, 0, 1}``, so it suffices to gather the codes: 1 byte per weight as int8 (mode
``"codes"``, 4x fewer bytes than fp32) or 2 bits, 4 codes per byte (mode ``"packed"``, 16x
fewer), plus the scale from one all-reduce.

:func:`gathered_ternarize` does this inside ``jax.shard_map``, on each device's shard:

1. the statistics of the *whole* tensor from collectives over the mesh axes that split the
   reduced dimensions: ``Δ = δ·max|W|`` from a ``pmax`` (exact: a maximum does not depend on
   the order of reduction), ``α = Σ_{|W|≥Δ}|W| / #{|W|≥Δ}`` from two ``psum`` (the count is
   exact; the sum equals a one-device sum to float rounding);
2. the shard's codes with that ``Δ`` (the same codes as on one device);
3. ``all_gather`` of the int8 codes, or of the codes packed into bytes (:func:`pack_levels`:
   2 bits a code for ``t_ex = 1``, 4 bits up to ``t_ex = 7``) then unpacked;
4. ``Ŵ = α·codes`` on the whole kernel, by :func:`tern_jax.core.decode` (the decoder
   :func:`tern_jax.ternarize` uses).

The result is :func:`tern_jax.ternarize` of the whole tensor: the same codes, ``α`` to float
tolerance. Its gradient (``jax.custom_vjp``) is the straight-through estimator of
:mod:`tern_jax.core`, ``∂L/∂W = t_ex·∂L/∂Ŵ·[|W| < 1]``, constrained to ``W``'s sharding: the
partial sums of the replicated ``∂L/∂Ŵ`` are reduced and split back to ``W``'s shards by the
same collectives as in plain FSDP, where they are the transpose of the fp32 gather (in the
compiled step on XLA:CPU: one all-reduce of the kernel-sized gradient, each device keeping
its slice, in both cases; a backend that rewrites that pair as a reduce-scatter does so for
both).

Supported: the three methods (``paper``, ``twn``, ``absmean``), residual expansion
(``t_ex``, folded or stacked), per-channel scales (the channel axes keep their statistics;
scales of a gathered channel axis are gathered too, as float32, one per channel), a traced
``threshold_scale`` (threshold warm-up), and other sharded dimensions (a ``tensor`` axis:
the statistics reduce over it too, and the output stays sharded over it; a dimension split
over ``fsdp`` together with another axis is gathered whole, in codes). For ``twn`` and
``absmean`` the threshold itself is a mean, so a code can differ from the one-device code
when a weight lies within float rounding of the threshold. Exactly one dimension may be
split over the gathered axes.

:class:`GatherPlan` says which kernels to gather (their partition specs) and how;
:func:`quantize_params_gathered` is :func:`tern_jax.quantize_params` with it, what the trainer
runs when ``sharding.gather`` is ``"codes"`` or ``"packed"``. :func:`all_gathers` reads the
all-gathers of a compiled program's HLO text (what ``benchmarks/gather_bytes.py`` measures).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from collections.abc import Mapping, Sequence
from typing import Literal, NamedTuple, get_args

import jax
import jax.numpy as jnp
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from tern_jax import core
from tern_jax.rules import Rule, match_params, path_to_str

__all__ = [
    "BASELINE_MODE",
    "GATHER_MODES",
    "GatherMode",
    "GatherPlan",
    "HloGather",
    "all_gathers",
    "COLLECTIVES",
    "bits_per_level",
    "collectives",
    "gather_bytes_by_dtype",
    "gathered_ternarize",
    "pack_levels",
    "quantize_params_gathered",
    "unpack_levels",
]

#: What the forward pass gathers for a ternary kernel split over ``fsdp``: the fp32 latent
#: weights (XLA's own gather), the int8 codes, or the codes packed 4 (2 bits) or 2 (4 bits)
#: to a byte.
GatherMode = Literal["weights", "codes", "packed"]
GATHER_MODES: tuple[str, ...] = get_args(GatherMode)
#: The baseline of the byte counts, besides :data:`GATHER_MODES`: each ternary kernel's fp32
#: latent weights gathered explicitly, once, inside the same ``shard_map`` (what FSDP's
#: weight gather moves, without XLA's freedom to gather activations instead).
BASELINE_MODE = "latent"


# -- packing codes into bytes, on the device ------------------------------------------------
def bits_per_level(t_ex: int) -> int:
    """Bits :func:`pack_levels` gives one signed level in ``[-t_ex, t_ex]``: 2 for ``t_ex = 1``,
    4 up to ``t_ex = 7``, else 8 (a byte divides evenly into codes)."""
    if not core.is_int(t_ex) or t_ex < 1:
        raise ValueError(f"bits_per_level: t_ex must be a positive integer, got {t_ex!r}")
    levels = 2 * t_ex + 1
    return 2 if levels <= 4 else 4 if levels <= 16 else 8


def pack_levels(levels: jax.Array, t_ex: int = 1) -> jax.Array:
    """Signed levels in ``[-t_ex, t_ex]`` (any shape) as a flat uint8 array, ``8 //
    bits_per_level(t_ex)`` per byte, first code in the low bits; zero-padded to whole bytes.

    The jittable counterpart of :func:`tern_jax.packing.pack` for moving codes between
    devices (that one stores them densest, on the host).
    """
    bits = bits_per_level(t_ex)
    per = 8 // bits
    flat = (jnp.asarray(levels).reshape(-1).astype(jnp.int32) + t_ex).astype(jnp.uint8)
    flat = jnp.pad(flat, (0, (-flat.size) % per)).reshape(-1, per)
    shifts = (jnp.arange(per, dtype=jnp.uint8) * bits).astype(jnp.uint8)
    return jnp.sum(flat << shifts, axis=1, dtype=jnp.uint8)  # disjoint bit fields: an OR


def unpack_levels(packed: jax.Array, t_ex: int, count: int) -> jax.Array:
    """Inverse of :func:`pack_levels`: the first ``count`` signed levels as flat int8.

    ``packed`` may carry leading axes (``(..., nbytes)``); they are kept:
    ``(..., count)``.
    """
    bits = bits_per_level(t_ex)
    per = 8 // bits
    packed = jnp.asarray(packed, jnp.uint8)
    shifts = (jnp.arange(per, dtype=jnp.uint8) * bits).astype(jnp.uint8)
    fields = (packed[..., None] >> shifts) & jnp.uint8((1 << bits) - 1)
    fields = fields.reshape(*packed.shape[:-1], -1)[..., :count]
    return (fields.astype(jnp.int32) - t_ex).astype(jnp.int8)


# -- which dimensions, which axes ------------------------------------------------------------
def _entries(spec, ndim: int, what: str) -> tuple[tuple[str, ...], ...]:
    """A PartitionSpec as one tuple of mesh-axis names per dimension."""
    if not isinstance(spec, P):
        raise TypeError(f"{what}: spec must be a jax.sharding.PartitionSpec, got "
                        f"{type(spec).__name__}: {spec!r}")
    if len(spec) > ndim:
        raise ValueError(f"{what}: spec {spec} has {len(spec)} entries for a weight of rank "
                         f"{ndim}")
    out = []
    for entry in tuple(spec) + (None,) * (ndim - len(spec)):
        if entry is None:
            out.append(())
        elif isinstance(entry, str):
            out.append((entry,))
        else:
            out.append(tuple(entry))
    named = [n for e in out for n in e]
    if len(set(named)) != len(named):
        raise ValueError(f"{what}: spec {spec} names the same mesh axis twice; a mesh axis "
                         "splits at most one dimension")
    return tuple(out)


class _Layout(NamedTuple):
    """How one kernel is split, for the shard_map (hashable: a static argument)."""

    mesh: Mesh
    spec: P                       # the latent weight's partition spec
    dim: int                      # the dimension gathered
    names: tuple[str, ...]        # the mesh axes it is split over (the gather's axis_name)
    out_spec: P                   # the result's spec: ``spec`` without ``names``
    stats_axes: tuple[str, ...]   # mesh axes splitting the reduced dimensions (collectives)
    scale_dim: int | None         # the gathered dimension when it is a channel axis


def _layout(mesh: Mesh, spec, shape, axis, gather_axes, what: str) -> _Layout | None:
    """The layout of a weight of ``shape`` split by ``spec``; ``None`` when no dimension is
    split over ``gather_axes`` (nothing to gather: the plain path)."""
    entries = _entries(spec, len(shape), what)
    unknown = sorted({n for e in entries for n in e} - set(mesh.axis_names))
    if unknown:
        raise ValueError(f"{what}: spec {spec} names mesh axes {unknown} that the mesh "
                         f"{tuple(mesh.axis_names)} does not have")
    gathered = [d for d, e in enumerate(entries) if set(e) & set(gather_axes)]
    if not gathered:
        return None
    if len(gathered) > 1:
        raise ValueError(
            f"{what}: spec {spec} splits dimensions {gathered} of shape {tuple(shape)} over the "
            f"gathered axes {tuple(gather_axes)}; gathering codes supports one split dimension "
            "per weight: shard it on one dimension only, or use sharding.gather='weights'")
    dim = gathered[0]
    # all the axes splitting that dimension: with others beside the gathered ones (the CNNs'
    # output channels over ("fsdp", "tensor")) the whole dimension is gathered
    names = entries[dim]
    parts = math.prod(mesh.shape[n] for n in names)
    if shape[dim] % parts:
        raise ValueError(f"{what}: dimension {dim} of shape {tuple(shape)} is not divisible by "
                         f"the {parts} devices of mesh axes {names}")
    kept = () if axis is None else (axis if isinstance(axis, tuple) else (axis,))
    reduced = core._reduction_axes(len(shape), axis)
    stats = tuple(n for d in reduced for n in entries[d])
    out_entries = [None if d == dim or not e else (e[0] if len(e) == 1 else e)
                   for d, e in enumerate(entries)]
    return _Layout(mesh, spec, dim, names, P(*out_entries), stats,
                   dim if dim in kept else None)


# -- the quantizer on a shard ------------------------------------------------------------------
def _local_codes(w, threshold_scale, layout: _Layout, thresholds, axis, method, count: int):
    """Levels of the shard ``w`` and the scales of the whole tensor (collectives inside)."""
    names = layout.stats_axes
    psum = (lambda x: jax.lax.psum(x, names)) if names else (lambda x: x)
    pmax = (lambda x: jax.lax.pmax(x, names)) if names else (lambda x: x)
    a = jnp.abs(w.astype(jnp.float32))
    axes = core._reduction_axes(w.ndim, axis)
    sign = jnp.sign(w).astype(jnp.int8)
    bad = psum(jnp.sum(~jnp.isfinite(a), axis=axes, keepdims=True, dtype=jnp.int32))
    finite = bad == 0
    if method == "absmean":
        scale = psum(jnp.sum(a, axis=axes, keepdims=True)) / count
        safe = jnp.where(scale > 0, scale, 1.0)
        levels = jnp.clip(jnp.round(w.astype(jnp.float32) / safe), -1, 1).astype(jnp.int8)
        levels = jnp.where(scale > 0, levels, 0).astype(jnp.int8)
        scales = scale[None]
    else:
        if method == "paper":
            reference = pmax(jnp.max(a, axis=axes, keepdims=True))
        else:  # twn
            reference = psum(jnp.sum(a, axis=axes, keepdims=True)) / count
        level_count = jnp.zeros(w.shape, jnp.int8)
        scales = []
        for delta in thresholds:
            cut = delta * reference
            if threshold_scale is not None:
                cut = cut * threshold_scale
            keep = (a > cut) if method == "twn" else (a >= cut)
            keep = keep & (a > 0)
            n = psum(jnp.sum(keep, axis=axes, keepdims=True, dtype=jnp.int32))
            total = psum(jnp.sum(jnp.where(keep, a, 0.0), axis=axes, keepdims=True))
            scales.append(jnp.where(n > 0, total / jnp.maximum(n, 1), 0.0))
            level_count = level_count + keep.astype(jnp.int8)
        levels = (sign * level_count).astype(jnp.int8)
        scales = jnp.stack(scales)
    scales = jnp.where(finite[None], scales, jnp.nan)
    levels = jnp.where(finite, levels, 0).astype(jnp.int8)
    return levels, scales


def _gather_levels(levels, layout: _Layout, mode: str, t_ex: int):
    """The whole kernel's levels from each shard's: int8, or packed bytes, all-gathered."""
    if mode == "codes":
        return jax.lax.all_gather(levels, layout.names, axis=layout.dim, tiled=True,
                                  to="invarying")
    # packed: the gathered dimension first, so that shards concatenate as whole blocks
    moved = jnp.moveaxis(levels, layout.dim, 0)
    packed = pack_levels(moved, t_ex)
    blocks = jax.lax.all_gather(packed, layout.names, axis=0, tiled=False, to="invarying")
    whole = unpack_levels(blocks, t_ex, moved.size)            # (parts, shard size)
    whole = whole.reshape(-1, *moved.shape[1:])
    return jnp.moveaxis(whole, 0, layout.dim)


def _forward(w, threshold_scale, layout: _Layout, thresholds, axis, method, fold, mode):
    t_ex = 1 if thresholds is None else len(thresholds)
    count = math.prod(w.shape[d] for d in core._reduction_axes(w.ndim, axis))
    dtype = w.dtype

    def local(w_shard, scale_factor):
        if mode == BASELINE_MODE:  # the fp32 shards gathered, then the quantizer on them
            whole = jax.lax.all_gather(w_shard, layout.names, axis=layout.dim, tiled=True,
                                       to="invarying")
            rest = tuple(n for n in layout.stats_axes if n not in layout.names)
            levels, scales = _local_codes(whole, scale_factor, layout._replace(stats_axes=rest),
                                          thresholds, axis, method, count)
            return core.decode(core.TernaryCodes(levels, scales), dtype, fold=fold)
        levels, scales = _local_codes(w_shard, scale_factor, layout, thresholds, axis, method,
                                      count)
        levels = _gather_levels(levels, layout, mode, t_ex)
        if layout.scale_dim is not None:  # one scale per channel of the gathered axis
            scales = jax.lax.all_gather(scales, layout.names, axis=layout.scale_dim + 1,
                                        tiled=True, to="invarying")
        return core.decode(core.TernaryCodes(levels, scales), dtype, fold=fold)

    out_spec = layout.out_spec if fold else P(None, *layout.out_spec)
    if threshold_scale is None:
        return jax.shard_map(lambda x: local(x, None), mesh=layout.mesh,
                             in_specs=(layout.spec,), out_specs=out_spec)(w)
    return jax.shard_map(local, mesh=layout.mesh, in_specs=(layout.spec, P()),
                         out_specs=out_spec)(w, threshold_scale)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4, 5, 6, 7))
def _gathered(w, threshold_scale, layout, thresholds, axis, method, fold, mode):
    return _forward(w, threshold_scale, layout, thresholds, axis, method, fold, mode)


def _gathered_fwd(w, threshold_scale, layout, thresholds, axis, method, fold, mode):
    out = _forward(w, threshold_scale, layout, thresholds, axis, method, fold, mode)
    return out, (w, threshold_scale)


def _gathered_bwd(layout, thresholds, axis, method, fold, mode, residuals, g):
    # core's straight-through estimator, to the letter: every branch passes its gradient to
    # the same latent W, gated by [|W| < 1]; nothing reaches Δ, α or the threshold scale.
    w, threshold_scale = residuals
    t = 1 if thresholds is None else len(thresholds)
    g_total = g * t if fold else jnp.sum(g, axis=0)
    grad = g_total.astype(w.dtype) * core.ste_mask(w)
    # back to the latent weight's shards: XLA reduces the partial sums of the replicated
    # gradient and keeps each device's slice, as for the transpose of an fp32 gather
    grad = jax.lax.with_sharding_constraint(grad, NamedSharding(layout.mesh, layout.spec))
    g_scale = None if threshold_scale is None else jnp.zeros_like(threshold_scale)
    return grad, g_scale


_gathered.defvjp(_gathered_fwd, _gathered_bwd)


def _check_mode(mode, func: str) -> None:
    if mode not in GATHER_MODES and mode != BASELINE_MODE:
        raise ValueError(f"{func}: mode must be one of {GATHER_MODES} ('weights': gather the "
                         f"latent fp32 weights; 'codes': int8 codes; 'packed': codes packed "
                         f"to 2 bits; or the byte counts' baseline {BASELINE_MODE!r}), got "
                         f"{mode!r}")


def _check_gather_axes(gather_axes, mesh: Mesh, func: str) -> tuple[str, ...]:
    if isinstance(gather_axes, str):
        gather_axes = (gather_axes,)
    gather_axes = tuple(gather_axes)
    if not gather_axes or not all(isinstance(n, str) for n in gather_axes):
        raise TypeError(f"{func}: gather_axes must be mesh-axis names such as ('fsdp',), got "
                        f"{gather_axes!r}")
    missing = [n for n in gather_axes if n not in mesh.axis_names]
    if missing:
        raise ValueError(f"{func}: gather_axes {missing} are not axes of the mesh "
                         f"{tuple(mesh.axis_names)}")
    return gather_axes


def gathered_ternarize(
    w: jax.Array,
    *,
    mesh: Mesh,
    spec: P,
    mode: GatherMode = "codes",
    gather_axes: Sequence[str] | str = ("fsdp",),
    threshold: float | None = None,
    thresholds: Sequence[float] | None = None,
    t_ex: int | None = None,
    axis: core.Axis = None,
    method: str = "paper",
    threshold_scale: jax.Array | float | None = None,
    stacked: bool = False,
) -> jax.Array:
    """:func:`tern_jax.ternarize` of ``w`` (or :func:`tern_jax.expand` with ``stacked=True``)
    with ``w`` split over ``mesh`` by ``spec``, gathering codes instead of the weight.

    The quantizer's arguments are :func:`tern_jax.ternarize`'s. ``spec`` is ``w``'s
    ``PartitionSpec``; the one dimension it splits over ``gather_axes`` is gathered (as
    int8 codes, ``mode="codes"``, or packed, ``mode="packed"``); other mesh axes stay split
    in the result. ``mode="weights"``, or a ``spec`` that splits nothing over
    ``gather_axes``, is :func:`tern_jax.ternarize` itself (XLA gathers what it needs). Call it
    under ``jax.jit`` (or eagerly on an array placed with ``NamedSharding(mesh, spec)``). The
    straight-through gradient reaches ``w`` in ``w``'s sharding.
    """
    func = "gathered_ternarize"
    _check_mode(mode, func)
    if not isinstance(mesh, Mesh):
        raise TypeError(f"{func}: mesh must be a jax.sharding.Mesh, got {type(mesh).__name__}")
    gather_axes = _check_gather_axes(gather_axes, mesh, func)
    w, resolved, axis = core._checked(w, method, threshold, thresholds, t_ex, axis)
    scale = core._check_threshold_scale(threshold_scale)
    layout = _layout(mesh, spec, w.shape, axis, gather_axes, func)
    if mode == "weights" or layout is None:
        return core._ternary_stack(w, scale, resolved, axis, method, not stacked)
    return _gathered(w, scale, layout, resolved, axis, method, not stacked, mode)


# -- over a parameter pytree -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class GatherPlan:
    """Which parameters the forward pass gathers as codes, and how.

    Attributes:
      mesh: the device mesh the parameters live on.
      specs: ``{path: PartitionSpec}`` of one model's parameters (no model axis), paths as
        :func:`tern_jax.rules.path_to_str` writes them; :meth:`from_specs` makes it from a
        pytree of specs.
      mode: :data:`GatherMode`; ``"weights"`` changes nothing.
      gather_axes: the mesh axes whose splits are gathered (FSDP's ``("fsdp",)``).
    """

    mesh: Mesh
    specs: Mapping[str, P]
    mode: GatherMode = "codes"
    gather_axes: tuple[str, ...] = ("fsdp",)

    def __post_init__(self):
        _check_mode(self.mode, "GatherPlan")
        if not isinstance(self.mesh, Mesh):
            raise TypeError(f"GatherPlan: mesh must be a jax.sharding.Mesh, got "
                            f"{type(self.mesh).__name__}")
        object.__setattr__(self, "gather_axes",
                           _check_gather_axes(self.gather_axes, self.mesh, "GatherPlan"))
        if not isinstance(self.specs, Mapping) or not all(
                isinstance(k, str) and isinstance(v, P) for k, v in self.specs.items()):
            raise TypeError("GatherPlan: specs must map parameter paths to PartitionSpecs; "
                            "build it with GatherPlan.from_specs(mesh, spec_tree, mode)")

    @classmethod
    def from_specs(cls, mesh: Mesh, specs, mode: GatherMode = "codes",
                   gather_axes: Sequence[str] = ("fsdp",)) -> GatherPlan:
        """The plan of a pytree of ``PartitionSpec`` shaped like one model's parameters."""
        leaves = jax.tree_util.tree_flatten_with_path(
            specs, is_leaf=lambda x: isinstance(x, P) or x is None)[0]
        table = {path_to_str(k): (P() if v is None else v) for k, v in leaves}
        return cls(mesh, table, mode, tuple(gather_axes))

    @classmethod
    def from_stacked(cls, mesh: Mesh, specs, mode: GatherMode = "codes",
                     gather_axes: Sequence[str] = ("fsdp",)) -> GatherPlan:
        """The plan of a model stack's parameters (:class:`tern_jax.train.ModelStack`), from
        their specs or ``NamedSharding``\\ s with the leading model axis, which must be
        unsplit (the stacked models are mapped over it, one program each)."""
        def strip(leaf):
            spec = leaf.spec if isinstance(leaf, NamedSharding) else leaf
            if not isinstance(spec, P):
                raise TypeError(f"GatherPlan.from_stacked: specs must be PartitionSpecs or "
                                f"NamedShardings, got {type(leaf).__name__}")
            entries = tuple(spec)
            if entries and entries[0] is not None:
                raise ValueError(f"GatherPlan.from_stacked: the model axis is split over "
                                 f"{entries[0]!r} ({spec}); gathering codes needs it unsplit "
                                 "(sharding.model_axis=None)")
            return P(*entries[1:])

        is_leaf = lambda x: isinstance(x, (P, NamedSharding))  # noqa: E731
        return cls.from_specs(mesh, jax.tree.map(strip, specs, is_leaf=is_leaf), mode,
                              gather_axes)

    def spec(self, path: str) -> P:
        """The spec of the parameter at ``path`` (replicated when not listed)."""
        return self.specs.get(path, P())


def quantize_params_gathered(params, rules, plan: GatherPlan, *, threshold_scale=None,
                             stacked: bool = False):
    """:func:`tern_jax.quantize_params` (``unused="ignore"``) of one model's ``params``, the
    ternary kernels split over ``plan.gather_axes`` gathered as codes.

    Leaves no rule ternarizes, and kernels split over no gathered axis, take the ordinary
    path. Call it inside the jitted loss, like ``quantize_params``.
    """
    if not isinstance(plan, GatherPlan):
        raise TypeError(f"quantize_params_gathered: plan must be a GatherPlan, got "
                        f"{type(plan).__name__}")
    matches, treedef = match_params(params, rules, unused="ignore")
    out = []
    for m in matches:
        if not m.quantized:
            out.append(m.leaf)
            continue
        bad = core.non_finite(m.leaf)
        if bad is not None:
            raise ValueError(f"quantize_params_gathered: parameter {m.path!r} holds {bad}; "
                             f"{core.NON_FINITE_FIX}")
        rule: Rule = m.rule
        expand = stacked and rule.t_ex > 1
        out.append(gathered_ternarize(
            m.leaf, mesh=plan.mesh, spec=plan.spec(m.path), mode=plan.mode,
            gather_axes=plan.gather_axes, thresholds=rule.thresholds, axis=rule.axis,
            method=rule.method, threshold_scale=threshold_scale, stacked=expand))
    return jax.tree_util.tree_unflatten(treedef, out)


# -- reading the gathers of a compiled program -------------------------------------------------
class HloGather(NamedTuple):
    """One collective of an HLO module (an all-gather, all-reduce, reduce-scatter): what each
    device holds before (its operands) and after (its results)."""

    dtype: str                         # the HLO element type: f32, s8, u8, ...
    operand_shapes: tuple[tuple[int, ...], ...]
    result_shapes: tuple[tuple[int, ...], ...]
    operand_bytes: int                 # per device
    result_bytes: int                  # per device

    @property
    def received_bytes(self) -> int:
        """For an all-gather, the bytes each device receives from the others: the result less
        its own shard."""
        return self.result_bytes - self.operand_bytes


_ITEM_BYTES = {"pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4,
               "u32": 4, "f32": 4, "s64": 8, "u64": 8, "f64": 8}
_ARRAY = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\]")
# "%name = TYPE op(": TYPE is an array type or a tuple of them
_DEFINITION = re.compile(r"^\s*(?:ROOT\s+)?(%[\w.\-]+)\s*=\s*(.*?)\s+([\w\-]+)\(")
_NAME = re.compile(r"%[\w.\-]+")


def _arrays(text: str) -> list[tuple[str, tuple[int, ...]]]:
    return [(t, tuple(int(d) for d in dims.split(",") if d)) for t, dims in _ARRAY.findall(text)]


def _nbytes(arrays) -> int:
    return sum(_ITEM_BYTES[t] * math.prod(s) for t, s in arrays)


def _operands(line: str, op: str) -> str:
    """The text between the parentheses of ``op(...)`` on ``line``."""
    start = line.index(f" {op}(") + len(op) + 2
    depth = 1
    for i in range(start, len(line)):
        depth += {"(": 1, ")": -1}.get(line[i], 0)
        if depth == 0:
            return line[start:i]
    raise ValueError(f"collectives: unbalanced parentheses in: {line.strip()[:200]}")


#: The collectives :func:`collectives` reads.
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter")


def collectives(hlo_text: str, op: str = "all-gather") -> list[HloGather]:
    """Every ``op`` (one of :data:`COLLECTIVES`) of a compiled HLO module
    (``jax.jit(f).lower(...).compile().as_text()``): element type, operand and result shapes
    and bytes, per device.

    Operand types are read where the line prints them, else from the operand's definition in
    the module. Async pairs count once (their ``-start``). Raises ``ValueError`` when such an
    op cannot be read (an HLO form this parser does not know), rather than undercount.
    """
    func = "collectives"
    if not isinstance(hlo_text, str):
        raise TypeError(f"{func}: hlo_text must be the str of compile().as_text(), got "
                        f"{type(hlo_text).__name__}")
    if op not in COLLECTIVES:
        raise ValueError(f"{func}: op must be one of {COLLECTIVES}, got {op!r}")
    start_op = f"{op}-start"
    types = {}
    found_ops = []
    for line in hlo_text.splitlines():
        found = _DEFINITION.match(line)
        if found is not None:
            types[found.group(1)] = found.group(2)
            if found.group(3) in (op, start_op):
                found_ops.append((line, found.group(2), found.group(3)))
        elif f" {op}(" in line or f" {start_op}(" in line:
            raise ValueError(f"{func}: cannot read this HLO line: {line.strip()[:200]}")
    out = []
    for line, result_type, name_op in found_ops:
        operand_text = _operands(line, name_op)
        operands = _arrays(operand_text)
        if not operands:  # names only: look their definitions up
            for name in _NAME.findall(operand_text):
                if name not in types:
                    raise ValueError(f"{func}: operand {name} of this {op} is not defined in "
                                     f"the module: {line.strip()[:200]}")
                operands += _arrays(types[name])
        results = _arrays(result_type)
        if name_op == start_op:  # an async start returns (operands, results)
            results = results[len(operands):] or results
        if not operands or not results:
            raise ValueError(f"{func}: cannot read the shapes of: {line.strip()[:200]}")
        dtypes = {t for t, _ in results}
        out.append(HloGather("/".join(sorted(dtypes)), tuple(s for _, s in operands),
                             tuple(s for _, s in results), _nbytes(operands), _nbytes(results)))
    return out


def all_gathers(hlo_text: str) -> list[HloGather]:
    """``collectives(hlo_text, "all-gather")``: every all-gather of a compiled HLO module."""
    return collectives(hlo_text, "all-gather")


def gather_bytes_by_dtype(gathers: Sequence[HloGather]) -> dict[str, int]:
    """Received bytes per device, summed per element type."""
    totals: dict[str, int] = {}
    for g in gathers:
        totals[g.dtype] = totals.get(g.dtype, 0) + g.received_bytes
    return dict(sorted(totals.items()))
