"""A small decoder-only transformer language model in Flax NNX, and sampling from it.

Byte-level by default (256 symbols). Like the CNNs of :mod:`tern_jax.models` it knows nothing
of ternarization: rules select its weights by path (:mod:`tern_jax.presets`). Layout for
tokens ``(B, T)``, ``T <= max_len``::

    embed (vocab, d)                                   -> (B, T, d)
    blocks/i, i < num_layers (pre-norm, residual):
        attn_norm (RMSNorm), attn: causal multi-head self-attention with rotary positions
            query kernel (d, heads, head_dim); key, value kernels (d, kv_heads, head_dim)
            (kv_heads = num_kv_heads, default heads); out kernel (heads, head_dim, d)
        mlp_norm (RMSNorm), mlp: up (d, mlp_ratio*d), GELU, down (mlp_ratio*d, d);
            or with mlp="swiglu" (LLaMA, BitNet): down(silu(gate(x)) * up(x)), gate as up
    final_norm (RMSNorm)
    head (d, vocab), or embed.attend (the embedding's transpose) when tie_embeddings  -> logits

Parameter paths (``nnx.state(model, nnx.Param)``): ``embed/embedding``,
``blocks/0/attn/query/kernel``, ``blocks/0/attn/out/kernel``, ``blocks/0/mlp/up/kernel``,
``blocks/0/attn_norm/scale``, ..., ``final_norm/scale``, ``head/kernel`` (and
``blocks/0/mlp/gate/kernel`` with ``mlp="swiglu"``). No biases (as LLaMA
and BitNet); positions are rotary (RoPE, Su et al. 2021), so there is no position table.
Initialization as GPT-2: every kernel and the embedding ``N(0, 0.02)``, the residual outputs
(``attn/out``, ``mlp/down``) ``N(0, 0.02/sqrt(2·num_layers))``.

For large models, two options change how the blocks run, not what they compute:

* ``scan_layers=True``: the blocks' weights are stacked on a leading layer axis under
  ``blocks/`` (``blocks/attn/query/kernel`` of shape ``(num_layers, d, heads, head_dim)``, no
  layer number in the path) and run by one ``jax.lax.scan``, so the compiled program holds one
  block whatever the depth: compile time no longer grows with ``num_layers``. The weights are
  initialized as the unscanned model's, layer by layer (:func:`stack_layers` and
  :func:`unstack_layers` convert between the two layouts). Rules that ternarize per tensor
  then need one ``Δ``/``α`` per layer, not one over the stack: the trainer and
  :func:`tern_jax.nnx_utils.ternarized` take that from :attr:`Transformer.scanned`; the pytree
  functions (:func:`tern_jax.quantize_params`, :func:`tern_jax.summary`,
  :func:`tern_jax.save_ternary`) take it as ``scanned=`` (:data:`SCANNED`). Every layer
  shares the rules of the stacked tensor: a rule naming one layer (``blocks/0/...``) matches
  nothing there (and is reported as unused).
* ``remat=True``: each block is rematerialized (``jax.checkpoint``): the backward pass keeps
  only every block's input and recomputes what is inside, so activation memory is one block's
  instead of ``num_layers`` blocks', for about one more forward pass of compute.

Example::

    config = transformer_config("transformer_tiny")
    model = Transformer(config, rngs=nnx.Rngs(0))
    logits = model(tokens)                          # (B, T, 256) float32
    text = generate(model, b"def ", steps=100, key=jax.random.key(0))
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
from typing import Annotated, Any, Literal

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from tern_jax.fields import Range, check_fields

__all__ = [
    "MLP_KINDS",
    "NORM_EPSILON",
    "ROPE_BASE",
    "SCANNED",
    "TRANSFORMER_CONFIGS",
    "Transformer",
    "TransformerConfig",
    "generate",
    "stack_layers",
    "transformer_config",
    "truncate_logits",
    "unstack_layers",
]

# nnx.List (flax >= 0.12) marks a list of submodules as part of the graph; older flax took a
# plain list.
_ModuleList = getattr(nnx, "List", list)


#: The MLP kinds of :class:`TransformerConfig`.
MLP_KINDS = ("gelu", "swiglu")
_POSITIVE = Range(1)
#: The rotary base: pair ``i`` of ``head_dim`` features turns at ``ROPE_BASE**(-2i/head_dim)``.
ROPE_BASE = 10000.0
#: The ``ε`` of every RMSNorm, ``x / sqrt(mean(x²) + ε)``.
NORM_EPSILON = 1e-6
#: The parameter paths of a model with ``scan_layers=True`` whose leaves are stacked over the
#: layers (leading axis): the ``scanned=`` of :func:`tern_jax.quantize_params`.
SCANNED = r"blocks/.*"


@dataclasses.dataclass(frozen=True)
class TransformerConfig:
    """Sizes of a :class:`Transformer`.

    Attributes:
      vocab_size: number of symbols (256 for bytes).
      max_len: the longest sequence the model takes (its context window).
      d_model: width of the residual stream.
      num_heads: attention heads; ``head_dim = d_model // num_heads`` (even, for rotary
        positions).
      num_kv_heads: key/value heads for grouped-query attention (Ainslie et al. 2023): each
        serves ``num_heads // num_kv_heads`` query heads. ``None``: ``num_heads`` (multi-head).
      num_layers: transformer blocks.
      mlp_ratio: hidden width of the MLP as a multiple of ``d_model``.
      mlp: ``"gelu"`` (``down(gelu(up(x)))``) or ``"swiglu"``, the gated MLP of LLaMA and
        BitNet (``down(silu(gate(x)) · up(x))``, Shazeer 2020), which llama.cpp runs.
      tie_embeddings: the output head is the embedding's transpose (no ``head/kernel``).
      dtype: computation dtype (``"float32"``, ``"bfloat16"``); parameters stay float32 and
        logits come back float32.
      scan_layers: stack the blocks' weights on a leading layer axis and run them with one
        ``jax.lax.scan`` (compile time independent of depth); see the module docstring.
      remat: rematerialize each block in the backward pass (activation checkpointing:
        ``jax.checkpoint``, saving only the block's input).
    """

    vocab_size: Annotated[int, _POSITIVE] = 256
    max_len: Annotated[int, _POSITIVE] = 128
    d_model: Annotated[int, _POSITIVE] = 128
    num_heads: Annotated[int, _POSITIVE] = 4
    num_layers: Annotated[int, _POSITIVE] = 4
    mlp_ratio: Annotated[int, _POSITIVE] = 4
    tie_embeddings: bool = False
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    num_kv_heads: Annotated[int | None, _POSITIVE] = None
    mlp: Literal[MLP_KINDS] = "gelu"
    scan_layers: bool = False
    remat: bool = False

    def __post_init__(self):
        check_fields(self, owner="TransformerConfig")
        if self.d_model % self.num_heads:
            raise ValueError(
                f"TransformerConfig: d_model={self.d_model} is not divisible by "
                f"num_heads={self.num_heads}; pick num_heads dividing d_model"
            )
        if self.num_kv_heads is not None and self.num_heads % self.num_kv_heads:
            raise ValueError(f"TransformerConfig.num_kv_heads must divide num_heads="
                             f"{self.num_heads} (or be None), got {self.num_kv_heads!r}")
        if self.head_dim % 2:
            raise ValueError(
                f"TransformerConfig: head_dim = d_model/num_heads = {self.head_dim} must be even "
                "(rotary positions rotate pairs of features)"
            )

    @property
    def head_dim(self) -> int:
        return self.d_model // self.num_heads

    @property
    def kv_heads(self) -> int:
        """Key/value heads: ``num_kv_heads``, or ``num_heads`` when it is ``None``."""
        return self.num_heads if self.num_kv_heads is None else self.num_kv_heads


#: Named sizes. ``transformer_tiny`` is for tests (seconds on a CPU); ``transformer_small`` is
#: the CPU experiment's model (``experiments/results/lm``: 131k parameters, a 64-byte
#: context); ``transformer_base`` (0.85M parameters, 128 bytes) is for longer runs;
#: ``transformer_llama`` (1.3M parameters: gated MLP, grouped-query attention, d_model 256) is
#: the smallest shape llama.cpp's ternary types take (:func:`tern_jax.export.to_gguf`);
#: ``transformer`` is :class:`TransformerConfig`'s defaults. Each is a preset of the fields: a
#: run config sizes its model with ``model.kwargs`` over one (``{"d_model": 128}``).
TRANSFORMER_CONFIGS: dict[str, TransformerConfig] = {
    "transformer": TransformerConfig(),
    "transformer_tiny": TransformerConfig(max_len=32, d_model=32, num_heads=2, num_layers=2),
    "transformer_small": TransformerConfig(max_len=64, d_model=64, num_heads=2, num_layers=2),
    "transformer_base": TransformerConfig(max_len=128, d_model=128, num_heads=4, num_layers=4),
    "transformer_llama": TransformerConfig(max_len=128, d_model=256, num_heads=4, num_layers=2,
                                           mlp_ratio=2, num_kv_heads=2, mlp="swiglu"),
}


def transformer_config(name: str, **overrides: Any) -> TransformerConfig:
    """The named :class:`TransformerConfig` (:data:`TRANSFORMER_CONFIGS`) with ``overrides``."""
    if not isinstance(name, str) or name.strip().lower() not in TRANSFORMER_CONFIGS:
        raise ValueError(f"unknown transformer {name!r}; choose one of "
                         f"{', '.join(TRANSFORMER_CONFIGS)}")
    base = TRANSFORMER_CONFIGS[name.strip().lower()]
    fields = {f.name for f in dataclasses.fields(TransformerConfig)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"unknown TransformerConfig fields {unknown}; fields: {sorted(fields)}")
    return dataclasses.replace(base, **overrides)


_init = nnx.initializers.normal(0.02)


def _rotary(x: jax.Array) -> jax.Array:
    """Rotary position embedding of ``x`` ``(B, T, heads, head_dim)`` at positions ``0..T-1``."""
    half = x.shape[-1] // 2
    inv_freq = ROPE_BASE ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angle = jnp.arange(x.shape[1], dtype=jnp.float32)[:, None] * inv_freq  # (T, half)
    sin = jnp.sin(angle)[None, :, None, :].astype(x.dtype)
    cos = jnp.cos(angle)[None, :, None, :].astype(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return jnp.concatenate([x1 * cos - x2 * sin, x1 * sin + x2 * cos], axis=-1)


class CausalSelfAttention(nnx.Module):
    """Multi-head causal self-attention; kernels of rank 3, one axis for the heads."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        d, h, hd = config.d_model, config.num_heads, config.head_dim
        dtype = jnp.dtype(config.dtype)
        out_init = nnx.initializers.normal(0.02 / math.sqrt(2 * config.num_layers))

        def projection(heads):
            return nnx.LinearGeneral(d, (heads, hd), use_bias=False, kernel_init=_init,
                                     dtype=dtype, rngs=rngs)

        self.query = projection(h)
        self.key, self.value = projection(config.kv_heads), projection(config.kv_heads)
        self.out = nnx.LinearGeneral((h, hd), d, axis=(-2, -1), use_bias=False,
                                     kernel_init=out_init, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = _rotary(self.query(x)), _rotary(self.key(x)), self.value(x)
        # fewer key/value heads than query heads: each serves a group of query heads
        y = jax.nn.dot_product_attention(q, k, v, is_causal=True)
        return self.out(y)


class MLP(nnx.Module):
    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        d, hidden = config.d_model, config.mlp_ratio * config.d_model
        dtype = jnp.dtype(config.dtype)
        out_init = nnx.initializers.normal(0.02 / math.sqrt(2 * config.num_layers))
        self.gated = config.mlp == "swiglu"
        if self.gated:
            self.gate = nnx.Linear(d, hidden, use_bias=False, kernel_init=_init, dtype=dtype,
                                   rngs=rngs)
        self.up = nnx.Linear(d, hidden, use_bias=False, kernel_init=_init, dtype=dtype,
                             rngs=rngs)
        self.down = nnx.Linear(hidden, d, use_bias=False, kernel_init=out_init, dtype=dtype,
                               rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        if self.gated:
            return self.down(jax.nn.silu(self.gate(x)) * self.up(x))
        return self.down(jax.nn.gelu(self.up(x)))


class Block(nnx.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        dtype = jnp.dtype(config.dtype)
        self.attn_norm = nnx.RMSNorm(config.d_model, epsilon=NORM_EPSILON, dtype=dtype, rngs=rngs)
        self.attn = CausalSelfAttention(config, rngs=rngs)
        self.mlp_norm = nnx.RMSNorm(config.d_model, epsilon=NORM_EPSILON, dtype=dtype, rngs=rngs)
        self.mlp = MLP(config, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x + self.attn(self.attn_norm(x))
        return x + self.mlp(self.mlp_norm(x))


class Transformer(nnx.Module):
    """Decoder-only transformer: ``model(tokens)`` -> float32 logits ``(B, T, vocab_size)``.

    ``tokens`` are integers in ``[0, vocab_size)`` of shape ``(B, T)`` with ``T <= max_len``;
    position ``t``'s logits predict token ``t + 1`` from tokens ``0..t``. Called eagerly the model
    refuses a token outside that range; inside ``jit`` (training, :func:`generate`) the values
    are not known when it is traced, so it cannot check them: a token ``>= vocab_size`` then
    gives NaN logits and a negative one wraps round. Check tokens where they enter, as
    :func:`generate` and :mod:`tern_jax.data.text` do.
    """

    def __init__(self, config: TransformerConfig, *, rngs: nnx.Rngs):
        if not isinstance(config, TransformerConfig):
            raise TypeError(f"config must be a TransformerConfig (e.g. transformer_config("
                            f"'transformer_tiny')), got {type(config).__name__}")
        self.config = config
        dtype = jnp.dtype(config.dtype)
        self.embed = nnx.Embed(config.vocab_size, config.d_model, embedding_init=_init,
                               dtype=dtype, rngs=rngs)
        blocks = [Block(config, rngs=rngs) for _ in range(config.num_layers)]
        # scanned: the same weights (drawn layer by layer, as unscanned), stacked
        self.blocks = _stack_blocks(blocks) if config.scan_layers else _ModuleList(blocks)
        self.final_norm = nnx.RMSNorm(config.d_model, epsilon=NORM_EPSILON, dtype=dtype, rngs=rngs)
        if not config.tie_embeddings:
            self.head = nnx.Linear(config.d_model, config.vocab_size, use_bias=False,
                                   kernel_init=_init, dtype=dtype, rngs=rngs)

    def __call__(self, tokens: jax.Array) -> jax.Array:
        tokens = jnp.asarray(tokens)
        if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
            raise ValueError(f"tokens must be integers of shape (batch, length), got dtype "
                             f"{tokens.dtype} shape {tokens.shape}")
        if tokens.shape[1] > self.config.max_len:
            raise ValueError(
                f"sequence length {tokens.shape[1]} is above the model's max_len="
                f"{self.config.max_len}; pass at most max_len tokens (or build the model with a "
                "larger max_len)"
            )
        if not isinstance(tokens, jax.core.Tracer):  # under jit the values are unknown
            _check_token_range(np.asarray(tokens), self.config.vocab_size, "tokens")
        x = self.embed(tokens)
        x = self._run_blocks(x)
        x = self.final_norm(x)
        logits = self.embed.attend(x) if self.config.tie_embeddings else self.head(x)
        return logits.astype(jnp.float32)

    @property
    def scanned(self) -> str | None:
        """:data:`SCANNED` when the blocks are stacked over layers (``scan_layers``), else
        ``None``: what ``scanned=`` of :func:`tern_jax.quantize_params` takes."""
        return SCANNED if self.config.scan_layers else None

    def _run_blocks(self, x: jax.Array) -> jax.Array:
        def apply(graphdef, state, x):
            return nnx.merge(graphdef, state)(x)

        if not self.config.scan_layers:
            for block in self.blocks:
                if self.config.remat:
                    graphdef, state = nnx.split(block)
                    x = jax.checkpoint(functools.partial(apply, graphdef))(state, x)
                else:
                    x = block(x)
            return x
        graphdef, state = nnx.split(self.blocks)  # every leaf (num_layers, ...)
        layer = functools.partial(apply, graphdef)
        if self.config.remat:  # inside a scan, CSE cannot undo the rematerialization
            layer = jax.checkpoint(layer, prevent_cse=False)

        def body(x, layer_state):
            return layer(layer_state, x), None

        x, _ = jax.lax.scan(body, x, state)
        return x


def _stack_blocks(blocks: list[Block]) -> Block:
    """One :class:`Block` whose every weight stacks those of ``blocks`` on a leading axis."""
    graphdef, first = nnx.split(blocks[0])
    states = [first] + [nnx.split(b)[1] for b in blocks[1:]]
    return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


def _layer_keys(params) -> list:
    if not hasattr(params, "items") or "blocks" not in params:
        raise ValueError("params hold no 'blocks'; pass a Transformer's parameters (a pure "
                         "dict such as tern_jax.nnx_utils.param_dict(model))")
    return list(params["blocks"])


def stack_layers(params) -> dict:
    """A Transformer's parameters (pure nested dict) in the ``scan_layers=True`` layout:
    ``blocks/<i>/...`` stacked into ``blocks/...`` with a leading layer axis. Leaves may be
    arrays or :class:`tern_jax.core.TernaryCodes` (their levels and scales stacked)."""
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    keys = _layer_keys(params)
    if not all(str(k).isdigit() for k in keys):
        raise ValueError(f"params['blocks'] has keys {keys[:4]}, not layer numbers: are they "
                         "stacked already?")
    layers = [params["blocks"][k] for k in sorted(keys, key=int)]
    stacked = jax.tree.map(_stack_leaves, *layers, is_leaf=_is_codes)
    return {**params, "blocks": stacked}


def unstack_layers(params) -> dict:
    """The inverse of :func:`stack_layers`: ``blocks/...`` stacked over layers into
    ``blocks/<i>/...``, the layout of ``scan_layers=False`` (what GGUF export writes)."""
    if isinstance(params, nnx.State):
        params = nnx.to_pure_dict(params)
    keys = _layer_keys(params)
    if any(str(k).isdigit() for k in keys):
        raise ValueError("params['blocks'] are numbered layers already (scan_layers=False)")
    leaves = jax.tree_util.tree_leaves(params["blocks"], is_leaf=_is_codes)
    first = leaves[0].levels if _is_codes(leaves[0]) else leaves[0]
    count = int(np.shape(first)[0])

    def pick(i):
        return lambda leaf: (type(leaf)(leaf.levels[i], leaf.scales[:, i]) if _is_codes(leaf)
                             else leaf[i])

    blocks = {i: jax.tree.map(pick(i), params["blocks"], is_leaf=_is_codes)
              for i in range(count)}
    return {**params, "blocks": blocks}


def _is_codes(x) -> bool:
    from tern_jax.core import TernaryCodes

    return isinstance(x, TernaryCodes)


def _stack_leaves(*leaves):
    if _is_codes(leaves[0]):
        return type(leaves[0])(jnp.stack([c.levels for c in leaves]),
                               jnp.stack([c.scales for c in leaves], axis=1))
    return jnp.stack(leaves)


def _prompt_tokens(prompt, vocab_size: int) -> np.ndarray:
    if isinstance(prompt, str):
        prompt = prompt.encode("utf-8")
    if isinstance(prompt, (bytes, bytearray)):
        tokens = np.frombuffer(bytes(prompt), np.uint8).astype(np.int32)
    else:
        tokens = np.asarray(prompt)
        if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
            raise TypeError(f"prompt must be bytes, a str (encoded as UTF-8) or a 1-D integer "
                            f"array, got {type(prompt).__name__}")
        tokens = tokens.astype(np.int32)
    if tokens.size == 0:
        raise ValueError("prompt is empty; give at least one byte (e.g. b'\\n') to start from")
    _check_token_range(tokens, vocab_size, "prompt tokens")
    return tokens


def _check_token_range(tokens: np.ndarray, vocab_size: int, what: str) -> None:
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"{what} must lie in [0, {vocab_size}), got values in "
                         f"[{tokens.min()}, {tokens.max()}]; a token outside the vocabulary has "
                         "no embedding (it would give NaN logits or wrap round)")


def _check_truncation(top_k, top_p, vocab: int) -> None:
    """``top_k`` in ``[1, vocab]`` and ``top_p`` in ``(0, 1]`` (a traced ``top_p`` passes)."""
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, numbers.Integral)
                              or not 1 <= top_k <= vocab):
        raise ValueError(f"top_k must be an integer in [1, {vocab}] (the vocabulary size) or "
                         f"None, got {top_k!r}")
    if isinstance(top_p, jax.Array) and top_p.ndim == 0 and jnp.issubdtype(top_p.dtype,
                                                                           jnp.floating):
        return  # maybe traced: its value is checked where it enters (generate)
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, numbers.Real)
                              or not 0 < top_p <= 1):
        raise ValueError(f"top_p must be a number in (0, 1] (the nucleus' probability mass) or "
                         f"None, got {top_p!r}")


def truncate_logits(logits: jax.Array, *, top_k: int | None = None,
                    top_p: float | jax.Array | None = None) -> jax.Array:
    """``logits`` (last axis: the vocabulary) with every token outside the top-k set and the
    nucleus set to ``-inf``; a distribution sampled from it never draws those tokens.

    top-k keeps the ``top_k`` largest logits (``top_k`` static: it sets a shape). top-p
    (nucleus sampling, Holtzman et al. 2020) keeps the smallest set of most likely tokens whose
    probability ``softmax(logits)`` adds up to at least ``top_p``: token ``i`` in order of
    decreasing probability is kept while the mass of the tokens before it is ``< top_p``, so
    the most likely token always stays. ``top_p`` may be traced; ``top_p >= 1`` keeps every
    token. With top-k and top-p both given the nucleus is taken of the top-k tokens. Tokens
    tied with the last kept one are kept too.

    Raises ``ValueError`` for ``top_k`` outside ``[1, vocabulary]`` or a Python ``top_p``
    outside ``(0, 1]``.
    """
    _check_truncation(top_k, top_p, logits.shape[-1])
    if top_k is not None:
        kth = jax.lax.top_k(logits, top_k)[0][..., -1:]
        logits = jnp.where(logits >= kth, logits, -jnp.inf)
    if top_p is not None:
        probs = jax.nn.softmax(logits, axis=-1)
        ordered = -jnp.sort(-probs, axis=-1)  # decreasing
        before = jnp.cumsum(ordered, axis=-1) - ordered  # mass of the more likely tokens
        cutoff = jnp.min(jnp.where(before < top_p, ordered, jnp.inf), axis=-1, keepdims=True)
        logits = jnp.where((probs >= cutoff) | (top_p >= 1), logits, -jnp.inf)
    return logits


@functools.partial(jax.jit, static_argnames=("graphdef", "steps", "top_k"))
def _sample(graphdef, state, window, length, key, temperature, top_p, *, steps, top_k):
    """``steps`` tokens after ``window[:length]``, the window sliding once it is full."""
    model = nnx.merge(graphdef, state)
    max_len = window.shape[0]

    def step(carry, i):
        window, length = carry
        logits = model(window[None])[0, length - 1]
        scaled = truncate_logits(logits / jnp.maximum(temperature, 1e-6), top_k=top_k,
                                 top_p=top_p)
        sampled = jax.random.categorical(jax.random.fold_in(key, i), scaled)
        token = jnp.where(temperature > 0, sampled, jnp.argmax(logits)).astype(window.dtype)
        appended = window.at[jnp.minimum(length, max_len - 1)].set(token)
        shifted = jnp.concatenate([window[1:], token[None]])
        window = jnp.where(length < max_len, appended, shifted)
        return (window, jnp.minimum(length + 1, max_len)), token

    _, tokens = jax.lax.scan(step, (window, length), jnp.arange(steps))
    return tokens


def generate(model: Transformer, prompt, *, steps: int, key: jax.Array,
             temperature: float = 1.0, top_k: int | None = None,
             top_p: float | None = None, tokenizer=None) -> bytes:
    """Samples ``steps`` tokens after ``prompt`` with the model's weights; returns their bytes.

    A byte model's tokens are bytes. A model of a tokenizer's tokens takes ``tokenizer`` (a
    :class:`tern_jax.data.tokens.Tokenizer`, e.g. ``load_tokenizer(RUN / "tokenizer.json")``),
    which encodes a str or bytes prompt and decodes the tokens sampled.

    Deterministic for a given ``key``: token ``i`` is drawn with ``fold_in(key, i)`` from
    ``softmax(logits / temperature)``, restricted to the ``top_k`` most likely tokens and to the
    nucleus of probability ``top_p`` when given (:func:`truncate_logits`, applied after the
    temperature); ``temperature=0`` takes the most likely token. The model
    sees at most the last ``max_len`` tokens (a sliding window). To sample with other weights
    (ternarized, or loaded from a packed checkpoint), pass a model holding them::

        generate(tern_jax.nnx_utils.ternarized(model, rules), b"def ", steps=200, key=key)
        nnx.update(model, tern_jax.load_ternary(path)); generate(model, ...)

    Args:
      model: a :class:`Transformer`: byte-level (``vocab_size <= 256``), or of the
        tokenizer's vocabulary.
      prompt: bytes, a str (encoded as UTF-8, or by ``tokenizer``) or a 1-D integer array of
        token ids; at least one token.
      steps: number of tokens to generate (>= 1): bytes for a byte model.
      key: a ``jax.random`` key.
      temperature: >= 0.
      top_k: sample among the ``top_k`` most likely tokens only, ``1 <= top_k <= vocab_size``
        (1: greedy); ``None``: every token.
      top_p: sample from the nucleus, the fewest most likely tokens whose probability adds up
        to at least ``top_p``, ``0 < top_p <= 1`` (a tiny one: greedy); ``None`` or 1: every
        token.
      tokenizer: the model's tokenizer (its vocabulary size must be the model's); ``None``:
        bytes.
    """
    if not isinstance(model, Transformer):
        raise TypeError(f"model must be a tern_jax Transformer, got {type(model).__name__}")
    if tokenizer is not None:
        if getattr(tokenizer, "vocab_size", None) != model.config.vocab_size:
            raise ValueError(f"tokenizer has {getattr(tokenizer, 'vocab_size', None)} tokens but "
                             f"the model's vocab_size is {model.config.vocab_size}; pass the "
                             "tokenizer the model was trained with (its run's tokenizer.json)")
        if isinstance(prompt, (str, bytes, bytearray)):
            prompt = tokenizer.encode(prompt)
    elif model.config.vocab_size > 256:
        raise ValueError(f"generate samples bytes without a tokenizer; the model has "
                         f"vocab_size={model.config.vocab_size} > 256: pass tokenizer= (its "
                         "run's tokenizer.json, tern_jax.data.tokens.load_tokenizer)")
    if isinstance(steps, bool) or not isinstance(steps, numbers.Integral) or steps < 1:
        raise ValueError(f"steps must be a positive integer (tokens to generate), got {steps!r}")
    if isinstance(temperature, bool) or not isinstance(temperature, numbers.Real) or not (
            temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got "
                         f"{temperature!r}")
    _check_truncation(top_k, top_p, model.config.vocab_size)
    typed = isinstance(key, jax.Array) and jnp.issubdtype(key.dtype, jax.dtypes.prng_key)
    raw = isinstance(key, jax.Array) and key.dtype == jnp.uint32 and key.shape == (2,)
    if not (typed and key.shape == ()) and not raw:
        raise TypeError(f"key must be a jax.random key (jax.random.key(seed)), got "
                        f"{type(key).__name__} {getattr(key, 'dtype', '')}")
    config = model.config
    tokens = _prompt_tokens(prompt, config.vocab_size)[-config.max_len:]
    window = np.zeros(config.max_len, np.int32)
    window[: tokens.size] = tokens
    graphdef, state = nnx.split(model)
    out = _sample(graphdef, state, jnp.asarray(window), jnp.int32(tokens.size), key,
                  jnp.float32(temperature), jnp.float32(1.0 if top_p is None else top_p),
                  steps=int(steps), top_k=None if top_k is None else int(top_k))
    if tokenizer is not None:
        return tokenizer.decode(np.asarray(out))
    return np.asarray(out, np.uint8).tobytes()
