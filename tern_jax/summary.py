"""Size, sparsity and operation counts of a ternarized parameter pytree."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import numpy as np

from tern_jax import packing
from tern_jax._args import check_callable
from tern_jax.rules import match_params

__all__ = ["LayerSummary", "Summary", "summary"]


@dataclasses.dataclass(frozen=True)
class LayerSummary:
    """Figures for one parameter tensor.

    ``adds_per_position`` is the multiply-free work of a ternary layer: each nonzero code of
    each branch costs one addition or subtraction per output position (per example for a dense
    layer, per output pixel for a conv); ``muls_per_position`` is what remains of the
    multiplications, one per output channel and branch (the scale ``α_k`` applied after the
    accumulation; per-channel scales cost the same). ``macs_per_position`` is the full-precision
    layer's multiply-accumulates for comparison. Every tensor is counted as a dense layer that
    multiplies all its weights: a transformer's token embedding, which is looked up and costs
    none unless it is the tied output head, is counted too, and so is a rank-3 attention kernel
    (whose outputs are its last two axes: ``muls_per_position`` then counts the last one only).

    ``activations`` is the 8-bit form of the inputs of the layer whose ``kernel`` this is
    (``"int8"``, ``"int8_block"``: the :attr:`tern_jax.Rule.activations` of its rule, as
    :mod:`tern_jax.activations` applies them), ``None`` for full-precision inputs and for
    tensors that are no layer's kernel.
    """

    path: str
    shape: tuple[int, ...]
    dtype: str
    count: int
    method: str | None
    t_ex: int
    zero_fraction: tuple[float, ...]
    scales: tuple[float, ...]
    bits_per_weight: float
    bytes_fp32: int
    bytes_packed: int
    adds_per_position: int
    muls_per_position: int
    macs_per_position: int
    activations: str | None = None

    @property
    def quantized(self) -> bool:
        return self.method is not None

    @property
    def compression(self) -> float:
        return self.bytes_fp32 / self.bytes_packed if self.bytes_packed else float("inf")


@dataclasses.dataclass(frozen=True)
class Summary:
    """Per-tensor rows and totals; ``str()`` renders the table."""

    layers: tuple[LayerSummary, ...]

    @property
    def ternary(self) -> tuple[LayerSummary, ...]:
        return tuple(r for r in self.layers if r.quantized)

    @property
    def total_params(self) -> int:
        return sum(r.count for r in self.layers)

    @property
    def ternary_params(self) -> int:
        return sum(r.count for r in self.ternary)

    @property
    def bytes_fp32(self) -> int:
        return sum(r.bytes_fp32 for r in self.layers)

    @property
    def bytes_packed(self) -> int:
        return sum(r.bytes_packed for r in self.layers)

    @property
    def compression(self) -> float:
        return self.bytes_fp32 / self.bytes_packed if self.bytes_packed else float("inf")

    @property
    def ternary_compression(self) -> float:
        """Compression of the ternarized tensors alone (codes plus their scales)."""
        packed = sum(r.bytes_packed for r in self.ternary)
        return sum(r.bytes_fp32 for r in self.ternary) / packed if packed else float("inf")

    @property
    def zero_fraction(self) -> float:
        """Fraction of zero codes over all branches of all ternary tensors."""
        zeros = sum(sum(r.zero_fraction) * r.count for r in self.ternary)
        total = sum(r.t_ex * r.count for r in self.ternary)
        return zeros / total if total else 0.0

    @property
    def adds_per_position(self) -> int:
        return sum(r.adds_per_position for r in self.ternary)

    @property
    def macs_per_position(self) -> int:
        return sum(r.macs_per_position for r in self.ternary)

    @property
    def activations(self) -> dict[str, int]:
        """How many layers take 8-bit inputs, per form (``{"int8_block": 8}``; empty: none)."""
        counts: dict[str, int] = {}
        for r in self.layers:
            if r.activations is not None:
                counts[r.activations] = counts.get(r.activations, 0) + 1
        return counts

    def _inputs_note(self) -> str:
        if not self.activations:
            return ""
        forms = ", ".join(f"({mode}) to {n} layer{'s' if n > 1 else ''}"
                          for mode, n in self.activations.items())
        return f"; 8-bit inputs {forms}"

    def as_dict(self) -> dict:
        return {
            "layers": [dataclasses.asdict(r) | {"compression": r.compression} for r in self.layers],
            "total_params": self.total_params,
            "ternary_params": self.ternary_params,
            "bytes_fp32": self.bytes_fp32,
            "bytes_packed": self.bytes_packed,
            "compression": self.compression,
            "ternary_compression": self.ternary_compression,
            "zero_fraction": self.zero_fraction,
            "activations": self.activations,
        }

    def __str__(self) -> str:
        head = ("path", "shape", "method", "t_ex", "zeros", "scale", "bits", "fp32 B",
                "packed B", "ratio", "adds/pos")
        inputs = bool(self.activations)  # the column only where some layer has 8-bit inputs
        if inputs:
            head += ("inputs",)
        rows = []
        for r in self.layers:
            rows.append((
                r.path,
                "x".join(map(str, r.shape)) or "()",
                r.method or "fp",
                str(r.t_ex) if r.quantized else "-",
                "/".join(f"{z:.2f}" for z in r.zero_fraction) if r.quantized else "-",
                "/".join(f"{s:.3g}" for s in r.scales) if r.quantized else "-",
                f"{r.bits_per_weight:.2f}",
                str(r.bytes_fp32),
                str(r.bytes_packed),
                f"{r.compression:.1f}x",
                str(r.adds_per_position) if r.quantized else "-",
            ) + ((r.activations or "-",) if inputs else ()))
        widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
                  for i, h in enumerate(head)]
        line = lambda cells: "  ".join(  # noqa: E731
            c.ljust(w) if i < 3 or i == 11 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cells, widths))
        ).rstrip()
        out = [line(head), line(["-" * w for w in widths])]
        out += [line(row) for row in rows]
        if not self.ternary:  # no ternary tensor: no ratio, zeros or adds to speak of
            out.append(f"0 of {len(self.layers)} tensors ternarized: every weight in full "
                       f"precision; {self.bytes_fp32:,} B fp32 -> {self.bytes_packed:,} B stored "
                       f"({self.compression:.1f}x){self._inputs_note()}")
            return "\n".join(out)
        out.append(
            f"{len(self.ternary)} of {len(self.layers)} tensors ternarized, "
            f"{self.ternary_params:,} of {self.total_params:,} parameters; "
            f"{self.bytes_fp32:,} B fp32 -> {self.bytes_packed:,} B packed "
            f"({self.compression:.1f}x overall, "
            f"{self.ternary_compression:.1f}x on ternary tensors); zeros {self.zero_fraction:.1%}; "
            f"{self.adds_per_position:,} adds vs {self.macs_per_position:,} MACs per position"
            f"{self._inputs_note()}"
        )
        return "\n".join(out)


def _layer(path, leaf, rule, quantizer=None, layers: bool = False) -> LayerSummary:
    """One row; ``quantizer`` encodes the leaf (:attr:`Match.quantizer`: per layer for a leaf
    stacked over layers, ``layers``)."""
    quantizer = rule if quantizer is None else quantizer
    shape = tuple(int(d) for d in np.shape(leaf))
    count = int(np.prod(shape)) if shape else 1
    dtype = str(getattr(leaf, "dtype", type(leaf).__name__))
    # a layer's inputs follow the rule of its kernel (tern_jax.activations matches "<layer>/kernel")
    is_kernel = path == "kernel" or path.endswith("/kernel")
    activations = rule.activations if rule is not None and is_kernel else None
    if rule is None or rule.method is None:
        itemsize = np.dtype(leaf.dtype).itemsize if hasattr(leaf, "dtype") else 4
        return LayerSummary(path, shape, dtype, count, None, 0, (), (), 8.0 * itemsize,
                            4 * count, itemsize * count, 0, 0, 0, activations)
    try:
        levels, scales = quantizer.codes(leaf)
    except (TypeError, ValueError) as e:
        raise type(e)(f"parameter {path!r}: {e}") from None
    levels = np.asarray(levels)
    scales = np.asarray(scales, np.float32)
    t = rule.t_ex
    magnitude = np.abs(levels)
    zero_fraction = tuple(float(np.mean(magnitude < k)) for k in range(1, t + 1))
    nonzero = [int(np.sum(magnitude >= k)) for k in range(1, t + 1)]
    per_branch_scales = tuple(float(np.mean(scales[k])) for k in range(t))
    bytes_packed = packing.packed_nbytes(count, rule.levels) + 4 * scales.size
    layer_shape = shape[1:] if layers else shape  # counted per layer, times the layers
    channel_axes = () if rule.axis is None else np.atleast_1d(rule.axis)
    out_channels = int(np.prod([layer_shape[a] for a in channel_axes])) \
        if rule.axis is not None else layer_shape[-1]
    out_channels *= shape[0] if layers else 1
    return LayerSummary(
        path=path, shape=shape, dtype=dtype, count=count, method=rule.method, t_ex=t,
        zero_fraction=zero_fraction, scales=per_branch_scales,
        bits_per_weight=packing.bits_per_weight(rule.levels), bytes_fp32=4 * count,
        bytes_packed=bytes_packed, adds_per_position=sum(nonzero),
        muls_per_position=t * out_channels, macs_per_position=count, activations=activations,
    )


def summary(params, rules=None, *, print_fn: Callable[[str], None] | None = print,
            unused="warn", scanned: str | None = None) -> Summary:
    """Per tensor and in total: shape, method, ``t_ex``, zeros per branch, scales, storage,
    and (a column ``inputs``, when a rule asks for them) the layers' 8-bit inputs.

    Every leaf is listed; leaves no rule ternarizes count at their own dtype's size. Bytes
    "packed" are what :func:`tern_jax.save_ternary` stores: the codes at
    :func:`tern_jax.packing.bits_per_weight` plus the float32 scales. The table is printed with
    ``print_fn`` (``None`` to stay quiet) and the figures are returned as a :class:`Summary`.

    ``scanned``: the paths stacked over layers (:func:`tern_jax.match_params`); each such
    tensor is one row for all its layers, ternarized layer by layer (its scales the mean over
    the layers).

    Raises ``TypeError`` when ``params`` is not a parameter pytree, when one of its leaves is
    not a numeric array (naming the leaf) or when ``print_fn`` is neither callable nor None.
    """
    check_callable(print_fn, "print_fn", "summary", optional=True)
    matches, _ = match_params(params, rules, unused=unused, scanned=scanned)
    for m in matches:
        leaf = m.leaf
        if not (hasattr(leaf, "shape") and hasattr(leaf, "dtype")
                and (np.issubdtype(np.dtype(leaf.dtype), np.number)
                     or np.issubdtype(np.dtype(leaf.dtype), np.bool_))):
            if isinstance(leaf, (bool, int, float, np.generic)):
                continue  # a number is a 0-d array
            what = f"dtype {leaf.dtype}" if hasattr(leaf, "dtype") else type(leaf).__name__
            raise TypeError(
                f"summary: params leaf {m.path!r} is {what} ({leaf!r:.40}), not a numeric "
                "array; pass the model's parameters only (e.g. variables['params'])"
            )
    result = Summary(tuple(_layer(m.path, m.leaf, m.rule, m.quantizer, m.layers)
                           for m in matches))
    if print_fn is not None:
        print_fn(str(result))
    return result
