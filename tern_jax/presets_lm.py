"""Ternarization rules for transformer language models, as data.

The rules are ordinary :class:`tern_jax.Rule` tuples over the parameter paths of
:class:`tern_jax.models.transformer.Transformer` (``embed/embedding``,
``blocks/0/attn/query/kernel`` ``(d_model, heads, head_dim)``, ``blocks/0/attn/out/kernel``
``(heads, head_dim, d_model)``, ``blocks/0/mlp/up/kernel``, ``head/kernel``); any model that
names its layers the same way (Flax NNX's ``nnx.Embed`` / ``nnx.Linear`` / ``nnx.LinearGeneral``
do: ``embedding``, ``kernel``) takes them unchanged. Norm scales (rank 1) are never matched.

The presets (:data:`TRANSFORMER_RULES`), one changed setting each against ``"tern"``:

=============  ==========================================================================
``fp``         ``None``: full precision
``tern``       the paper's whole network: every kernel and the token embedding, one
               ``Δ``/``α`` per tensor, ``δ = 0.05``, ``t_ex = 1``
``tern_pc``    one scale per output channel: dense kernels ``axis=-1``, the rank-3
               query/key/value kernels ``axis=(1, 2)`` (one per (head, feature) output), the
               attention output kernel ``axis=-1``, the embedding ``axis=0`` (one per token:
               the row a lookup returns, and the output channel of a tied head)
``tern_ph``    one scale per attention head: query/key/value ``axis=1``, attention output
               ``axis=0``; other kernels per output channel as ``tern_pc``
``tern_t2``    residual expansion ``t_ex = 2`` (thresholds 0.05, 0.1)
``twn``        Ternary Weight Networks' threshold (``Δ = 0.7·mean|W|``)
``absmean``    BitNet b1.58's quantizer (``α = mean|W|``, codes ``round(W/α)``), whole network
``tern_fl``    the paper's quantizer with the embedding and the output head in full
               precision, BitNet's convention (the paper's "first and last layers in full
               precision" for AlexNet): one line, :data:`EMBEDDINGS_AND_HEAD_FP`
``tern_a8``    ``tern`` with 8-bit layer inputs in llama.cpp's ``Q8_K`` blocks (W1.58A8:
               :mod:`tern_jax.activations`), what an exported ``TQ1_0``/``TQ2_0`` file computes
=============  ==========================================================================

Keeping the embedding and head in full precision is one rule placed first (the first match
wins), before any of the sets above::

    rules = (tern_jax.presets_lm.EMBEDDINGS_AND_HEAD_FP, *TRANSFORMER_RULES["absmean"])

With a tied head (``tie_embeddings=True``) there is no ``head/kernel``: the embedding is the
head, and its rule decides both.
"""

from __future__ import annotations

from tern_jax.rules import Rule

__all__ = [
    "EMBEDDINGS_AND_HEAD",
    "EMBEDDINGS_AND_HEAD_FP",
    "ATTENTION_QKV",
    "ATTENTION_OUT",
    "WEIGHTS",
    "TRANSFORMER_RULES",
    "transformer_rules",
]

#: The token embedding and the untied output head.
EMBEDDINGS_AND_HEAD = r"(.*/)?(embed/embedding|head/kernel)"
#: The query, key and value kernels ``(d_model, heads, head_dim)``.
ATTENTION_QKV = r".*/attn/(query|key|value)/kernel"
#: The attention output kernel ``(heads, head_dim, d_model)``.
ATTENTION_OUT = r".*/attn/out/kernel"
#: Every weight matrix of the network: kernels of any rank and embedding tables.
WEIGHTS = r"(.*/)?(kernel|embedding)"

#: BitNet's convention in one line: put it before the other rules.
EMBEDDINGS_AND_HEAD_FP = Rule(EMBEDDINGS_AND_HEAD, None)

_PER_CHANNEL = (
    Rule(ATTENTION_QKV, axis=(1, 2)),
    Rule(r"(.*/)?embed/embedding", axis=0),
    Rule(WEIGHTS, axis=-1),
)
_PER_HEAD = (
    Rule(ATTENTION_QKV, axis=1),
    Rule(ATTENTION_OUT, axis=0),
    Rule(r"(.*/)?embed/embedding", axis=0),
    Rule(WEIGHTS, axis=-1),
)

#: Named rule sets for transformers (see the module docstring); ``None`` is full precision.
TRANSFORMER_RULES: dict[str, tuple[Rule, ...] | None] = {
    "fp": None,
    "tern": (Rule(WEIGHTS),),
    "tern_pc": _PER_CHANNEL,
    "tern_ph": _PER_HEAD,
    "tern_t2": (Rule(WEIGHTS, t_ex=2),),
    "twn": (Rule(WEIGHTS, method="twn"),),
    "absmean": (Rule(WEIGHTS, method="absmean"),),
    "tern_fl": (EMBEDDINGS_AND_HEAD_FP, Rule(WEIGHTS)),
    "tern_a8": (Rule(WEIGHTS, activations="int8_block"),),
}


def transformer_rules(name: str) -> tuple[Rule, ...] | None:
    """The rules of the preset ``name`` in :data:`TRANSFORMER_RULES`; a clear error otherwise."""
    if not isinstance(name, str) or name not in TRANSFORMER_RULES:
        raise ValueError(f"unknown transformer rule preset {name!r}; choose one of "
                         f"{', '.join(TRANSFORMER_RULES)}")
    return TRANSFORMER_RULES[name]
