"""The language-model task: next-byte prediction by an NNX transformer, scored in bits per byte.

A :class:`~tern_jax.train.task.Task` like image classification, so the same loop, step, run
folder, checkpoints and command line train it. A config selects it with a transformer model
(``model="transformer_small"``, :data:`tern_jax.models.TRANSFORMER_CONFIGS`) on a text dataset
(``dataset="text"``: ``text_path``, or by default the Python standard library's sources;
``"tiny_shakespeare"``: TFDS), and its variants are the transformer rule presets
(:data:`tern_jax.presets_lm.TRANSFORMER_RULES`).

A batch is ``{"tokens": int32 (B, seq_len + 1)}``: the model reads ``tokens[:, :-1]`` and
predicts ``tokens[:, 1:]``. The loss is the mean cross entropy in **bits per byte** (nats /
ln 2), in training and in evaluation, so every loss the trainer reports (``train_loss``,
``test_loss`` of ``metrics.jsonl``) is bits per byte; ``accuracy`` is next-byte accuracy.

The trainer keeps parameters as plain nested dicts (stacked over its model axis); the task
turns them into a module with ``nnx.merge`` inside the compiled step, so the model is an
ordinary NNX module (:class:`tern_jax.models.transformer.Transformer`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from tern_jax.activations import active_rules, quantize_inputs
from tern_jax.models.transformer import Transformer, TransformerConfig, transformer_config

__all__ = ["TEXT_DATASETS", "LanguageModel", "check_config", "language_model_task", "model_config",
           "seq_len"]

#: Datasets a language model trains on (``"text"``: ``text_path``, or the Python standard
#: library's ``.py`` files when ``text_path`` is None).
TEXT_DATASETS = ("text", "python_stdlib", "tiny_shakespeare")
_LN2 = math.log(2.0)


def model_config(config) -> TransformerConfig:
    """The transformer a run config names (its ``model`` and ``compute_dtype``)."""
    return transformer_config(config.model, dtype=config.compute_dtype)


def seq_len(config) -> int:
    """Tokens per training window: ``config.seq_len``, or the model's ``max_len``."""
    return config.seq_len or model_config(config).max_len


def check_config(config) -> None:
    """The checks a language-model config needs beyond the field types (clear ValueErrors).

    Run where the task and the inputs are built, before any text is read.
    """
    from tern_jax.presets_lm import TRANSFORMER_RULES

    try:
        model = model_config(config)
    except ValueError as e:
        raise ValueError(f"model: {e}") from None
    if config.dataset not in TEXT_DATASETS:
        raise ValueError(
            f"model {config.model!r} is a language model; dataset must be one of "
            f"{', '.join(TEXT_DATASETS)} (text: text_path=, or the Python standard library), got "
            f"{config.dataset!r}")
    if config.text_path is not None and config.dataset != "text":
        raise ValueError(f"text_path is read by dataset='text'; got dataset={config.dataset!r}")
    if config.seq_len is not None and config.seq_len > model.max_len:
        raise ValueError(
            f"seq_len={config.seq_len} is above the model's max_len={model.max_len} "
            f"({config.model}); use seq_len <= {model.max_len} or a model with a longer context")
    for variant in config.variants:
        if variant not in TRANSFORMER_RULES:
            raise ValueError(f"unknown variant {variant!r} for a transformer; choose from "
                             f"{', '.join(TRANSFORMER_RULES)}")
    if config.train_subset is not None:
        raise ValueError("train_subset counts images; a text run trains on random windows of "
                         "the whole training split (leave it None)")


@dataclasses.dataclass(frozen=True, eq=False)
class LanguageModel:
    """Next-token prediction with a :class:`Transformer`; losses in bits per token (byte)."""

    config: TransformerConfig

    def __post_init__(self):
        abstract = nnx.eval_shape(lambda: Transformer(self.config, rngs=nnx.Rngs(0)))
        object.__setattr__(self, "graphdef", nnx.split(abstract)[0])

    def init(self, key: jax.Array) -> dict:
        model = Transformer(self.config, rngs=nnx.Rngs(params=key))
        return {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param)), "batch_stats": {}}

    def apply(self, params, model_state, batch, *, train):
        del train  # no dropout, no batch statistics
        model = nnx.merge(self.graphdef, params)
        model = quantize_inputs(model, active_rules())  # rules with 8-bit activations
        return model(batch["tokens"][:, :-1]), model_state

    def _cross_entropy(self, logits, batch):
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["tokens"][:, 1:])
        return ce / _LN2

    def loss(self, outputs, batch):
        return jnp.mean(self._cross_entropy(outputs, batch))

    def train_metrics(self, outputs, batch):
        return {"accuracy": jnp.mean(jnp.argmax(outputs, -1) == batch["tokens"][:, 1:])}

    def eval_sums(self, outputs, batch, mask):
        bits = self._cross_entropy(outputs, batch)
        weight = jnp.broadcast_to(mask[:, None], bits.shape)
        correct = jnp.argmax(outputs, -1) == batch["tokens"][:, 1:]
        return {"loss": jnp.sum(bits * weight), "correct": jnp.sum(correct * weight),
                "count": jnp.sum(weight)}


def language_model_task(config) -> LanguageModel:
    """The task of a language-model run config (checked by :func:`check_config` first)."""
    check_config(config)
    return LanguageModel(model_config(config))
