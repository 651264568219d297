"""Every rule preset of the package, as data: the named variants a run trains.

A *variant* names a rule set; the full-precision variant (:data:`FULL_PRECISION`) holds
:data:`FULL_PRECISION_RULES`, one rule that keeps every parameter as it is, so
``quantize_params(params, PRESETS["fp"])`` returns the weights unchanged (``None`` would mean
the default rules, which ternarize every kernel); :func:`is_full_precision_rules` tells such a
rule set.
Each model family has its presets: :data:`PRESETS` for the CNNs of :mod:`tern_jax.models`
(rules over ``.*/kernel``), :data:`TRANSFORMER_RULES` for the transformer language model. The
same names mean the same idea in both (``tern``, ``tern_pc``, ``tern_t2``, ``twn``,
``absmean``, ``tern_fl``); :func:`preset_rules` looks one up with a clear error.

CNN presets (:data:`PRESETS`): ``tern`` is the paper's whole network, per tensor, ``t_ex=1``;
``tern_t2``/``tern_t4`` residual expansion; ``tern_fl`` the first and last layers in full
precision (the paper's AlexNet variant); ``tern_pc``/``tern_pc_t2`` one ``Δ``/``α`` per output
channel; ``twn`` and ``absmean`` other quantizers.

Transformer rules are ordinary :class:`tern_jax.Rule` tuples over the parameter paths of
:class:`tern_jax.models.transformer.Transformer` (``embed/embedding``,
``blocks/0/attn/query/kernel`` ``(d_model, heads, head_dim)``, ``blocks/0/attn/out/kernel``
``(heads, head_dim, d_model)``, ``blocks/0/mlp/up/kernel``, ``head/kernel``); any model that
names its layers the same way (Flax NNX's ``nnx.Embed`` / ``nnx.Linear`` / ``nnx.LinearGeneral``
do: ``embedding``, ``kernel``) takes them unchanged. Norm scales (rank 1) are never matched.

The presets (:data:`TRANSFORMER_RULES`), one changed setting each against ``"tern"``:

=============  ==========================================================================
``fp``         :data:`FULL_PRECISION_RULES`: full precision
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
``tern_hf``    ``tern`` with 8-bit inputs of one scale per token for the block linears, the
               head's input in full precision: what transformers' BitNet format computes
               (:func:`tern_jax.export_hf.to_hf`)
=============  ==========================================================================

Keeping the embedding and head in full precision is one rule placed first (the first match
wins), before any of the sets above::

    rules = (tern_jax.presets.EMBEDDINGS_AND_HEAD_FP, *TRANSFORMER_RULES["absmean"])

With a tied head (``tie_embeddings=True``) there is no ``head/kernel``: the embedding is the
head, and its rule decides both.
"""

from __future__ import annotations

from tern_jax.rules import Rule

__all__ = [
    "FULL_PRECISION",
    "FULL_PRECISION_RULES",
    "PRESETS",
    "EMBEDDINGS_AND_HEAD",
    "EMBEDDINGS_AND_HEAD_FP",
    "ATTENTION_QKV",
    "ATTENTION_OUT",
    "WEIGHTS",
    "TRANSFORMER_RULES",
    "is_full_precision_rules",
    "preset_rules",
]

Presets = dict[str, "tuple[Rule, ...]"]

#: The variant that trains in full precision (the teacher and the parent of the ternary models).
FULL_PRECISION = "fp"

#: The full-precision variant's rules: every parameter kept as it is.
FULL_PRECISION_RULES: tuple[Rule, ...] = (Rule(r".*", None),)

# First conv and classifier of every model in tern_jax.models (CIFAR/digits: stem_conv, head;
# torchvision ResNets: conv1, fc; AlexNet: conv1, head). Full paths only: a block's inner
# "stage1_block0/conv1" is not the first layer.
_FIRST_LAST = r"(stem_conv|conv1|head|fc)/kernel"

#: Named rule sets of the CNNs (see the module docstring).
PRESETS: Presets = {
    FULL_PRECISION: FULL_PRECISION_RULES,
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

#: Named rule sets for transformers (see the module docstring).
TRANSFORMER_RULES: Presets = {
    FULL_PRECISION: FULL_PRECISION_RULES,
    "tern": (Rule(WEIGHTS),),
    "tern_pc": _PER_CHANNEL,
    "tern_ph": _PER_HEAD,
    "tern_t2": (Rule(WEIGHTS, t_ex=2),),
    "twn": (Rule(WEIGHTS, method="twn"),),
    "absmean": (Rule(WEIGHTS, method="absmean"),),
    "tern_fl": (EMBEDDINGS_AND_HEAD_FP, Rule(WEIGHTS)),
    "tern_a8": (Rule(WEIGHTS, activations="int8_block"),),
    "tern_hf": (Rule(EMBEDDINGS_AND_HEAD), Rule(WEIGHTS, activations="int8")),
}


def is_full_precision_rules(rules: tuple[Rule, ...]) -> bool:
    """Whether ``rules`` keep every parameter as it is (no rule ternarizes anything)."""
    return all(rule.method is None for rule in rules)


def preset_rules(name: str, presets: Presets = PRESETS) -> tuple[Rule, ...]:
    """The rules of the variant ``name`` in ``presets`` (:data:`PRESETS` or
    :data:`TRANSFORMER_RULES`; full precision: :data:`FULL_PRECISION_RULES`); a clear error
    naming the choices for any other name."""
    if isinstance(name, dict):
        raise TypeError(f"you passed a dict of presets; pick one by name: one of "
                        f"{', '.join(map(str, name))}")
    if not isinstance(name, str) or name not in presets:
        raise ValueError(f"unknown variant {name!r}; choose from {', '.join(presets)}")
    return presets[name]
