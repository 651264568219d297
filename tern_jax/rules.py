"""Which parameters to ternarize, and how: regex rules over parameter paths.

A model is never rewritten. Its parameter pytree (a linen ``params`` dict, an ``nnx.State``,
or any JAX pytree) is walked, each leaf's path is joined with ``/`` (``"stage1_block0/conv1/
kernel"``; for ``nnx.State`` the variable's path, without the trailing ``value``), and the
first :class:`Rule` whose ``pattern`` fully matches that path decides what happens to it.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal, get_args

import jax
import jax.numpy as jnp

from tern_jax import core
from tern_jax._args import argument_error, check_bool

__all__ = [
    "ACTIVATION_MODES",
    "ActivationMode",
    "Rule",
    "DEFAULT_RULES",
    "UnusedRuleWarning",
    "ActivationsNotAppliedWarning",
    "path_to_str",
    "first_match",
    "layer_leaf",
    "check_unused",
    "report_unused",
    "match_params",
    "per_layer",
    "quantize_params",
    "Match",
]

Unused = Literal["error", "warn", "ignore"]
#: What :attr:`Rule.activations` may be besides ``None`` (full-precision inputs): ``"int8"``
#: (one absmax scale per token) or ``"int8_block"`` (one per llama.cpp super-block of a token).
ActivationMode = Literal["int8", "int8_block"]
#: The same modes as a tuple, for the checks (:class:`Rule`,
#: :func:`tern_jax.activations.quantize_activations`).
ACTIVATION_MODES: tuple[str, ...] = get_args(ActivationMode)


class UnusedRuleWarning(UserWarning):
    """A rule matched no parameter (likely a typo in its pattern)."""


class ActivationsNotAppliedWarning(UserWarning):
    """:func:`quantize_params` was given rules with ``activations``, which it cannot apply: it
    ternarizes weights only, and the layer inputs stay in full precision unless the model runs
    under :func:`tern_jax.activations.quantized_activations` (linen) or
    :func:`tern_jax.activations.quantize_inputs` (NNX)."""


@dataclasses.dataclass(frozen=True)
class Rule:
    """What to do with the parameters whose path fully matches ``pattern``.

    Attributes:
      pattern: a regular expression that must match the whole ``/``-joined path, e.g.
        ``r".*/kernel"``, ``r"head/kernel"``, ``r"stage\\d_block\\d/conv\\d/kernel"``.
      method: ``"paper"`` (statistical scaling, the default), ``"twn"``, ``"absmean"``, or
        ``None`` to keep the matched weights in full precision (put such exemptions, e.g.
        ``Rule(r"head/kernel", None)``, before the catch-all rule: the first match wins).
      threshold: the base factor ``δ``; branch ``k`` of an expansion uses ``k·δ``.
        ``None``: the method's default (paper 0.05, TWN 0.7).
      t_ex: number of residual-expansion branches (paper: 1, 2 or 4).
      thresholds: explicit per-branch thresholds, overriding ``threshold``; strictly
        increasing, each in (0, 1); its length sets ``t_ex``.
      axis: ``None`` for one scale per tensor (the paper), or the channel axis for one per
        channel (``-1`` for Flax kernels), or several axes: for an attention kernel
        ``(d_model, heads, head_dim)``, ``axis=1`` gives one scale per head and ``(1, 2)`` one
        per (head, feature) output.
      strict: if ``True`` a matched leaf that is not a float array of rank >= 2 is an error;
        if ``False`` such leaves are passed over (what the default rule does).
      activations: ``None`` (inputs in full precision), or 8-bit inputs for the layers whose
        kernel the rule matches (W1.58A8, BitNet b1.58): ``"int8"`` (one absmax scale per
        token) or ``"int8_block"`` (one per 256 features of a token, as llama.cpp's ``Q8_K``).
        See :mod:`tern_jax.activations`.
    """

    pattern: str
    method: str | None = "paper"
    threshold: float | None = None
    t_ex: int = 1
    thresholds: tuple[float, ...] | None = None
    axis: int | tuple[int, ...] | None = None
    strict: bool = True
    activations: ActivationMode | None = None

    def __post_init__(self):
        if not isinstance(self.pattern, str):
            raise TypeError(
                f"Rule pattern must be a regular-expression string such as r'.*/kernel', got "
                f"{type(self.pattern).__name__}: {self.pattern!r}"
            )
        try:
            re.compile(self.pattern)
        except re.error as e:
            raise ValueError(f"Rule pattern {self.pattern!r} is not a valid regex: {e}") from e
        check_bool(self.strict, "strict", f"Rule({self.pattern!r})")
        if self.activations is not None and self.activations not in ACTIVATION_MODES:
            raise ValueError(f"Rule({self.pattern!r}): activations must be None, 'int8' (per "
                             f"token) or 'int8_block' (llama.cpp's Q8_K blocks), got "
                             f"{self.activations!r}")
        try:
            object.__setattr__(self, "axis", core.normalize_axis(self.axis))
        except TypeError as e:
            raise TypeError(f"Rule({self.pattern!r}): {e}") from None
        if self.method is None:
            unused = [f"{name}={getattr(self, name)!r}" for name, default in (
                ("threshold", None), ("thresholds", None), ("t_ex", 1), ("axis", None))
                if getattr(self, name) != default]
            if unused:
                raise ValueError(f"Rule({self.pattern!r}, method=None) keeps its weights in full "
                                 f"precision, so {', '.join(unused)} would be ignored; drop "
                                 "them, or give a method such as 'paper'")
            return
        if not isinstance(self.method, str) or self.method not in core.METHODS:
            raise ValueError(
                f"Rule({self.pattern!r}): unknown method {self.method!r}; use one of "
                f"{core.METHODS}, or None to keep the weights in full precision"
            )
        try:
            resolved = core.resolve_thresholds(self.method, self.threshold, self.thresholds,
                                               self.t_ex)
        except ValueError as e:
            raise ValueError(f"Rule({self.pattern!r}): {e}") from None
        if resolved is not None:
            object.__setattr__(self, "thresholds", resolved)
            object.__setattr__(self, "t_ex", len(resolved))

    @property
    def levels(self) -> int:
        """Distinct values a weight takes under this rule: ``2·t_ex + 1``."""
        return 2 * self.t_ex + 1

    def matches(self, path: str) -> bool:
        return re.fullmatch(self.pattern, path) is not None

    def apply(self, w: jax.Array, threshold_scale=None) -> jax.Array:
        """The ternarized (folded, for ``t_ex > 1``) weight, with the STE gradient.

        ``threshold_scale`` (a float scalar in [0, 1], may be traced) multiplies every
        threshold: the hook for a threshold warm-up; ``None`` means 1.
        """
        if self.method is None:
            return w
        return core.ternarize(w, thresholds=self.thresholds, axis=self.axis, method=self.method,
                              threshold_scale=threshold_scale)

    def expand(self, w: jax.Array, threshold_scale=None) -> jax.Array:
        """The stacked branch kernels, shape ``(t_ex, *w.shape)``."""
        return core.expand(w, thresholds=self.thresholds, axis=self.axis, method=self.method,
                           threshold_scale=threshold_scale)

    def codes(self, w: jax.Array) -> core.TernaryCodes:
        """The stored form of ``w`` under this rule (:func:`tern_jax.core.encode`)."""
        return core.encode(w, thresholds=self.thresholds, axis=self.axis, method=self.method)


#: The paper's "whole network": every float ``kernel`` of rank >= 2, first and last included.
DEFAULT_RULES: tuple[Rule, ...] = (Rule(r"(.*/)?kernel", strict=False),)


def _key_str(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def path_to_str(path: Sequence[Any]) -> str:
    """Joins a ``jax.tree_util`` key path with ``/``, dropping an nnx ``.value`` suffix."""
    keys = list(path)
    if keys and isinstance(keys[-1], jax.tree_util.GetAttrKey) and keys[-1].name == "value":
        keys = keys[:-1]
    return "/".join(_key_str(k) for k in keys)


@dataclasses.dataclass(frozen=True)
class Match:
    """One leaf of a parameter pytree and the rule that governs it (``None``: no rule)."""

    path: str
    leaf: Any
    rule: Rule | None
    #: the leaf is stacked over layers on its leading axis (``scanned=`` of
    #: :func:`match_params`): ``rule`` governs each layer's slice
    layers: bool = False

    @property
    def quantized(self) -> bool:
        return self.rule is not None and self.rule.method is not None

    @property
    def quantizer(self) -> Rule | None:
        """The rule that ternarizes the whole leaf: :attr:`rule`, or for a leaf stacked over
        layers the same rule with the layer axis as one more channel axis, so that every
        layer keeps its own ``Δ``/``α`` (per tensor, or per channel of that layer), exactly
        as in the unstacked model."""
        if not self.layers or not self.quantized:
            return self.rule
        return per_layer(self.rule, tuple(self.leaf.shape[1:]))


def _eligible(leaf) -> bool:
    return (
        hasattr(leaf, "dtype")
        and hasattr(leaf, "ndim")
        and jnp.issubdtype(leaf.dtype, jnp.floating)
        and leaf.ndim >= 2
    )


def _check_axis_fits(rule: Rule, path: str, leaf) -> None:
    """The rule's channel ``axis`` names axes of this leaf (checked before any tracing)."""
    try:
        core.normalize_axis(rule.axis, shape=tuple(leaf.shape))
    except ValueError as e:
        raise ValueError(
            f"Rule({rule.pattern!r}, axis={rule.axis!r}) matches parameter {path!r} of shape "
            f"{tuple(leaf.shape)}, which this axis does not fit ({str(e).split(';')[0]}); give "
            f"that parameter its own rule before this one, e.g. Rule({path!r}, axis=-1), or "
            "narrow the pattern"
        ) from None


def _normalize_rules(rules) -> tuple[Rule, ...]:
    if rules is None:
        return DEFAULT_RULES
    if isinstance(rules, Rule):
        return (rules,)
    if isinstance(rules, Mapping):  # iterating it would give its names, not rules
        names = list(rules)
        pick = next((k for k, v in rules.items()  # the first that ternarizes something
                     if any(getattr(r, "method", None) is not None for r in (v or ()))),
                    names[0] if names else "tern")
        raise TypeError(
            f"rules must be a Rule or a sequence of Rules, got a {type(rules).__name__} with keys "
            f"{names[:8]}{' ...' if len(names) > 8 else ''}: you passed a dict of presets; pick "
            f"one, e.g. rules[{pick!r}]")
    if isinstance(rules, (str, bytes)) or not hasattr(rules, "__iter__"):
        raise TypeError(f"rules must be a Rule or a sequence of Rules, got "
                        f"{type(rules).__name__}: {rules!r}")
    rules = tuple(rules)
    for r in rules:
        if isinstance(r, (tuple, list)) and all(isinstance(x, Rule) for x in r):
            raise TypeError(f"rules hold a nested sequence of Rules ({type(r).__name__} of "
                            f"{len(r)}); flatten it, e.g. (*first_rules, *more_rules)")
        if isinstance(r, str):
            raise TypeError(f"rules must be tern_jax.Rule objects, got the str {r!r}; wrap the "
                            f"pattern: tern_jax.Rule({r!r})")
        if not isinstance(r, Rule):
            raise TypeError(f"rules must be tern_jax.Rule objects, got {type(r).__name__}: {r!r}")
    return rules


def _check_tree(params) -> None:
    """A parameter pytree: a container (dict, nnx.State, list, ...) holding at least one array."""
    if params is None or isinstance(params, (str, bytes, int, float, complex, bool)) or (
            hasattr(params, "shape") and hasattr(params, "dtype")):
        raise TypeError(
            f"params must be a parameter pytree (a dict such as variables['params'], an "
            f"nnx.State, ...), got {type(params).__name__}; to ternarize one array call "
            "tern_jax.ternarize(w)"
        )
    leaves = jax.tree_util.tree_leaves(params)
    if not any(hasattr(leaf, "shape") and hasattr(leaf, "dtype") for leaf in leaves):
        raise ValueError(
            f"params holds no arrays ({len(leaves)} leaves); pass the model's parameters, "
            "e.g. variables['params'] or nnx.state(model, nnx.Param)"
        )


def per_layer(rule: Rule, layer_shape: tuple[int, ...]) -> Rule:
    """``rule`` for a weight stacked over layers on a new leading axis, each layer's slice of
    shape ``layer_shape``: the layer axis joins the rule's channel axes (shifted by one), so
    ``per_layer(rule, s).apply(stack)[i] == rule.apply(stack[i])`` for every layer ``i``."""
    if rule.method is None:
        return rule
    axes = core.normalize_axis(rule.axis, shape=layer_shape)
    axes = () if axes is None else (axes,) if isinstance(axes, int) else axes
    return dataclasses.replace(rule, axis=(0, *(a + 1 for a in axes)))


def _check_scanned(scanned, func: str):
    """``None`` or a compiled regular expression of the paths stacked over layers."""
    if scanned is None:
        return None
    if not isinstance(scanned, str):
        raise argument_error(TypeError, func, "scanned", "a regular expression of the paths "
                             "stacked over layers (e.g. tern_jax.models.transformer.SCANNED) "
                             "or None", type(scanned).__name__)
    try:
        return re.compile(scanned)
    except re.error as e:
        raise ValueError(f"{func}: scanned={scanned!r} is not a valid regex: {e}") from None


def layer_leaf(leaf):
    """What the rules see of a leaf stacked over layers: one layer's shape and dtype."""
    if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")) or not leaf.shape:
        return leaf
    return jax.ShapeDtypeStruct(tuple(leaf.shape[1:]), leaf.dtype)


def first_match(path: str, leaf, rules: Sequence[Rule]) -> int | None:
    """The index in ``rules`` of the rule that governs ``leaf`` at ``path`` (``None``: no rule).

    The one matcher of the package, for the weights (:func:`match_params`) and the 8-bit
    activations (:mod:`tern_jax.activations`): the first rule whose pattern fully matches
    ``path`` (``re.fullmatch``) wins, except that a rule which ternarizes passes over a leaf
    that cannot be ternarized (not a float array of rank >= 2) when it is not ``strict``,
    and raises ``ValueError`` naming the path when it is. A chosen rule's channel ``axis``
    must fit the leaf. ``leaf=None`` stands for a layer's kernel not created yet (a linen
    layer during ``init``): taken as one that can be ternarized, its axes unchecked.
    """
    for i, rule in enumerate(rules):
        if not rule.matches(path):
            continue
        if leaf is None or rule.method is None:
            return i
        if not _eligible(leaf):
            if rule.strict:
                what = (
                    f"dtype {getattr(leaf, 'dtype', type(leaf).__name__)}, "
                    f"rank {getattr(leaf, 'ndim', '?')}"
                )
                raise ValueError(
                    f"Rule({rule.pattern!r}) matches parameter {path!r} ({what}), but only "
                    "float arrays of rank >= 2 (conv/dense kernels) can be ternarized; "
                    "narrow the pattern (e.g. end it in '/kernel') or add "
                    f"Rule({path!r}, None) before it"
                )
            continue  # a non-strict rule passes over it; later rules may still match
        if rule.axis is not None:
            _check_axis_fits(rule, path, leaf)
        return i
    return None


def check_unused(unused, func: str) -> None:
    """``unused`` is one of ``"error"``, ``"warn"``, ``"ignore"`` (see :func:`match_params`)."""
    if unused not in get_args(Unused):
        raise argument_error(ValueError, func, "unused", "'error', 'warn' or 'ignore'",
                             repr(unused))


def report_unused(patterns: Sequence[str], unused: Unused, *, what: str = "parameter",
                  stacklevel: int = 2) -> None:
    """Reports the rules (their ``patterns``) that matched no ``what`` as ``unused`` says.

    ``"error"``: ``ValueError``; ``"warn"``: :class:`UnusedRuleWarning` (``stacklevel`` as for
    ``warnings.warn``, counted from the caller of this function); ``"ignore"`` or no pattern:
    nothing.
    """
    if not patterns or unused == "ignore":
        return
    message = (
        f"rules matched no {what}: {list(patterns)}; check the patterns against the paths "
        "(tern_jax.summary lists them), or pass unused='ignore'"
    )
    if unused == "error":
        raise ValueError(message)
    warnings.warn(message, UnusedRuleWarning, stacklevel=stacklevel + 1)


def match_params(params, rules=None, *, unused: Unused = "warn", scanned: str | None = None):
    """Pairs every leaf of ``params`` with its governing rule, checking everything first.

    Returns ``(matches, treedef)``: a list of :class:`Match` in leaf order and the treedef to
    rebuild the pytree. The rule of a leaf is :func:`first_match`'s. Raises ``ValueError``
    naming the path when a strict rule matches a non-float or rank-0/1 leaf; reports rules
    that matched nothing as ``unused`` says (``"error"``, ``"warn"`` with
    :class:`UnusedRuleWarning`, or ``"ignore"``).

    ``scanned``: a regular expression of the paths whose leaves are stacked over layers on a
    leading axis (a model whose layers run in a scan, as
    ``TransformerConfig(scan_layers=True)``: :data:`tern_jax.models.transformer.SCANNED`).
    Such a leaf is matched as one layer's slice (its rank and channel axes without the layer
    axis) and marked :attr:`Match.layers`; :attr:`Match.quantizer` ternarizes it layer by
    layer.
    """
    check_unused(unused, "match_params")
    pattern = _check_scanned(scanned, "match_params")
    _check_tree(params)
    rules = _normalize_rules(rules)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(params)
    used = [False] * len(rules)
    matches = []
    for key_path, leaf in leaves:
        path = path_to_str(key_path)
        layers = pattern is not None and pattern.fullmatch(path) is not None
        i = first_match(path, layer_leaf(leaf) if layers else leaf, rules)
        if i is not None:
            used[i] = True
        matches.append(Match(path, leaf, None if i is None else rules[i], layers))
    report_unused([r.pattern for r, u in zip(rules, used) if not u], unused, stacklevel=3)
    return matches, treedef


def quantize_params(params, rules=None, *, unused: Unused = "warn", stacked: bool = False,
                    threshold_scale=None, activations_applied: bool = False,
                    scanned: str | None = None):
    """The same pytree with every rule-matched weight ternarized (STE gradient to the latent).

    ``rules=None`` uses :data:`DEFAULT_RULES` (every float kernel of rank >= 2, first and last
    layers included). Works under ``jit``, ``grad``, ``vmap`` and sharding; call it inside the
    loss so gradients reach the latent weights::

        loss = lambda p: loss_fn(model.apply({"params": tern_jax.quantize_params(p, rules)}, x))

    A rule with ``t_ex > 1`` expands the latent ``W`` into branch kernels
    ``Ŵ_k = α_k·sign(W)·[|W| ≥ Δ_k]``, ``k = 1..t_ex``. What comes back for such a leaf depends
    on ``stacked``:

    * ``stacked=False`` (default): the folded kernel ``Σ_k Ŵ_k``, shape ``W.shape``, which any
      unmodified layer consumes. Since a conv/dense op is linear in its kernel,
      ``op(x, Σ_k Ŵ_k) = Σ_k op(x, Ŵ_k)``.
    * ``stacked=True``: the branch kernels ``(Ŵ_1, ..., Ŵ_t_ex)`` stacked on a new leading
      axis, shape ``(t_ex, *W.shape)`` (:meth:`Rule.expand`). Run the model under
      :func:`tern_jax.layers.vmapped_branches` to compute ``Σ_k op(x, Ŵ_k)`` with one
      multiplication-free op per branch::

          q = tern_jax.quantize_params(params, rules, stacked=True)
          with tern_jax.layers.vmapped_branches():
              y = model.apply({"params": q}, x)

    Either way the gradient reaching ``W`` is ``Σ_k ∂L/∂Ŵ_k · [|W| < 1]``. Leaves whose rule has
    ``t_ex = 1``, rules with ``method=None`` and unmatched leaves are the same for both values.

    ``threshold_scale`` multiplies every rule's thresholds (a float scalar in [0, 1]; it may be
    traced, so a jitted train step can ramp it from 0 to 1 as a threshold warm-up without
    recompiling). ``None`` (the default) is the rules' own thresholds.

    Only weights are changed here. A rule's ``activations`` (8-bit layer inputs) take effect
    where the model runs: a linen model under
    :func:`tern_jax.activations.quantized_activations` with the same rules, an NNX model
    through :func:`tern_jax.activations.quantize_inputs` (:func:`tern_jax.nnx_utils.ternarized`
    does both). Rules with ``activations`` that govern some weight therefore warn, once per
    call, with :class:`ActivationsNotAppliedWarning`, unless the call is made inside
    ``quantized_activations`` of these rules, ``activations_applied=True`` says the caller
    quantizes the inputs itself, or ``unused="ignore"`` silences what takes no effect.

    ``scanned`` (a regex of paths, as in :func:`match_params`) names the leaves stacked over
    layers on a leading axis (``TransformerConfig(scan_layers=True)``: pass
    ``model.scanned``): each layer of such a leaf is ternarized on its own, one ``Δ``/``α``
    per layer (and per channel of a layer), as in the model without the stacking. Without it,
    a per-tensor rule would share one ``Δ``/``α`` over all the layers.

    Outside ``jit`` (concrete leaves) a ternarized weight holding NaN or ±Inf is refused with
    ``ValueError`` naming its path and the count; under ``jit`` it turns NaN (see
    :mod:`tern_jax.core`).
    """
    check_bool(stacked, "stacked", "quantize_params")
    check_bool(activations_applied, "activations_applied", "quantize_params")
    matches, treedef = match_params(params, rules, unused=unused, scanned=scanned)
    if not activations_applied and unused != "ignore":
        _warn_activations_not_applied(matches)
    out = []
    for m in matches:
        if not m.quantized:
            out.append(m.leaf)
            continue
        bad = core.non_finite(m.leaf)
        if bad is not None:
            raise ValueError(f"quantize_params: parameter {m.path!r} holds {bad}; "
                             f"{core.NON_FINITE_FIX}")
        rule = m.quantizer
        if stacked and rule.t_ex > 1:
            branches = rule.expand(m.leaf, threshold_scale)  # (t_ex, *shape)
            # stacked over layers: (layers, t_ex, ...), so that a layer's slice is its stack
            out.append(jnp.moveaxis(branches, 0, 1) if m.layers else branches)
        else:
            out.append(rule.apply(m.leaf, threshold_scale))
    return jax.tree_util.tree_unflatten(treedef, out)


def _warn_activations_not_applied(matches) -> None:
    """One :class:`ActivationsNotAppliedWarning` for the rules with ``activations`` that govern
    weights here, unless a :func:`~tern_jax.activations.quantized_activations` context of the
    same rules quantizes the inputs."""
    governed: dict[Rule, list[str]] = {}
    for m in matches:
        if m.rule is not None and m.rule.activations is not None:
            governed.setdefault(m.rule, []).append(m.path)
    if not governed:
        return
    from tern_jax.activations import active_rules  # it imports this module

    active = active_rules()
    if active is not None and all(r in active for r in governed):
        return
    named = "; ".join(
        f"Rule({r.pattern!r}, activations={r.activations!r}) on "
        f"{', '.join(map(repr, paths[:3]))}" + (f" and {len(paths) - 3} more" if paths[3:] else "")
        for r, paths in governed.items())
    warnings.warn(
        f"quantize_params ternarizes weights only; the 8-bit inputs of {named} take effect only "
        "where the model runs under tern_jax.activations.quantized_activations(rules) (linen) or "
        "through tern_jax.activations.quantize_inputs / tern_jax.nnx_utils.ternarized (NNX). "
        "Run it there, or pass activations_applied=True if you quantize the inputs yourself",
        ActivationsNotAppliedWarning, stacklevel=3)
