"""The language-model task: next-byte prediction by an NNX transformer, scored in bits per byte.

A :class:`~tern_jax.train.task.Task` like image classification, so the same loop, step, run
folder, checkpoints and command line train it. A config selects it with a transformer model
(``model.name="transformer_small"``, a named size of
:data:`tern_jax.models.TRANSFORMER_CONFIGS`, whose fields ``model.kwargs`` override: the
language-model family of :mod:`tern_jax.train.families`) on a dataset of tokens
(``data.dataset="text"``: ``data.text_path``, or by default the Python standard library's
sources; ``"tiny_shakespeare"``: TFDS), and its variants are the transformer rule presets
(:data:`tern_jax.presets.TRANSFORMER_RULES`). The vocabulary is the dataset's.

A batch is ``{"tokens": int32 (B, seq_len + 1)}``: the model reads ``tokens[:, :-1]`` and
predicts ``tokens[:, 1:]``. The loss is the mean cross entropy in bits per token (nats /
ln 2), in training and in evaluation. For bytes (the default) a token is a byte, so every loss
the trainer reports (``train_loss``, ``test_loss`` of ``metrics.jsonl``) is **bits per byte**;
``accuracy`` is next-byte accuracy. With a tokenizer (``data.tokenizer``, a ``tokenizer.json``
of the ``tokenizers`` package: :mod:`tern_jax.data.tokens`) the vocabulary is the
tokenizer's, the losses are bits per token (``loss_name`` ``bits/token``), and an evaluation
batch also holds the bytes each window's scored tokens cover (``"bytes"``), so the validation
loss is reported in bits per byte too (``test_bits_per_byte``: the total bits over the total
bytes), the figure that compares models of different tokenizers.

The trainer keeps parameters as plain nested dicts (stacked over its model axis); the task
turns them into a module with ``nnx.merge`` inside the compiled step, so the model is an
ordinary NNX module (:class:`tern_jax.models.transformer.Transformer`).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from tern_jax.activations import active_rules, quantize_inputs
from tern_jax.models.transformer import Transformer, TransformerConfig, transformer_config

__all__ = ["LanguageModel", "check_config", "loss_name", "model_config", "seq_len",
           "tokenizer_of"]

_LN2 = math.log(2.0)


def tokenizer_of(config):
    """The run's :class:`~tern_jax.data.tokens.Tokenizer` (``data.tokenizer``), or ``None``
    for bytes."""
    if config.data.tokenizer is None:
        return None
    from tern_jax.data.tokens import load_tokenizer

    return load_tokenizer(config.data.tokenizer)


def loss_name(config) -> str:
    """``bits/byte`` for a byte model; ``bits/token`` for a model of a tokenizer's tokens
    (its validation bits per byte are reported beside)."""
    return "bits/byte" if config.data.tokenizer is None else "bits/token"


def model_config(config, dataset) -> TransformerConfig:
    """The transformer a run config names: its named size, ``model.kwargs`` over it, the
    ``model.compute_dtype`` and the vocabulary: the tokenizer's (``data.tokenizer``), else the
    dataset's (``num_classes`` of a token set, the 256 bytes)."""
    kwargs = {"vocab_size": dataset.num_classes, "dtype": config.model.compute_dtype,
              **config.model.kwargs}
    tokenizer = tokenizer_of(config)
    if tokenizer is not None:
        given = config.model.kwargs.get("vocab_size")
        if given is not None and given != tokenizer.vocab_size:
            raise ValueError(
                f"model.kwargs.vocab_size={given} conflicts with data.tokenizer "
                f"{config.data.tokenizer}, which has {tokenizer.vocab_size} tokens; leave "
                "model.kwargs.vocab_size out (the model's vocabulary follows the tokenizer)")
        kwargs["vocab_size"] = tokenizer.vocab_size
    return transformer_config(config.model.name, **kwargs)


def seq_len(config, dataset) -> int:
    """Tokens per training window: ``data.seq_len``, or the model's ``max_len``."""
    return config.data.seq_len or model_config(config, dataset).max_len


def check_config(config) -> None:
    """What a language-model config needs beyond its fields and the registries' checks: its
    sizes (``model.kwargs``) make a transformer, and the window fits its context."""
    from tern_jax.data.specs import dataset_spec
    from tern_jax.packing import SUPER_BLOCK
    from tern_jax.presets import TRANSFORMER_RULES

    model = model_config(config, dataset_spec(config.data.dataset))
    widths = {"d_model": model.d_model, "the MLP's hidden width": model.d_model * model.mlp_ratio}
    for variant in config.model.variants:
        rules = TRANSFORMER_RULES.get(variant, ())
        odd = {name: w for name, w in widths.items() if w % SUPER_BLOCK}
        if odd and any(rule.activations == "int8_block" for rule in rules):
            shown = ", ".join(f"{name} {w}" for name, w in odd.items())
            raise ValueError(
                f"variant {variant!r} quantizes layer inputs in blocks of {SUPER_BLOCK} "
                f"features (activations='int8_block'), but this model's widths ({shown}) are "
                f"not all multiples of {SUPER_BLOCK}; use a model whose widths are (e.g. --set "
                f"model.kwargs.d_model={SUPER_BLOCK}) or another variant")
    if config.data.seq_len is not None and config.data.seq_len > model.max_len:
        raise ValueError(
            f"data.seq_len={config.data.seq_len} is above the model's max_len={model.max_len} "
            f"({config.model.name}); use data.seq_len <= {model.max_len} or a model with a "
            "longer context (model.kwargs.max_len)")


@dataclasses.dataclass(frozen=True, eq=False)
class LanguageModel:
    """Next-token prediction with a :class:`Transformer`; losses in bits per token (byte)."""

    config: TransformerConfig
    seq_len: int

    @functools.cached_property
    def graphdef(self):
        """The module's structure without its weights (``nnx.split``), built once."""
        abstract = nnx.eval_shape(lambda: Transformer(self.config, rngs=nnx.Rngs(0)))
        return nnx.split(abstract)[0]

    @property
    def scanned(self) -> str | None:
        """The parameter paths stacked over layers (``scan_layers``; ``None``: none)."""
        from tern_jax.models.transformer import SCANNED

        return SCANNED if self.config.scan_layers else None

    @property
    def num_outputs(self) -> int:
        """Logits per position: one per token of the vocabulary."""
        return self.config.vocab_size

    def example_batch(self) -> dict:
        """One window of zeros, as a batch holds it (for shape checks)."""
        return {"tokens": jnp.zeros((1, self.seq_len + 1), jnp.int32)}

    def init(self, key: jax.Array) -> dict:
        model = Transformer(self.config, rngs=nnx.Rngs(params=key))
        return {"params": nnx.to_pure_dict(nnx.state(model, nnx.Param)), "model_state": {}}

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
        sums = {"loss": jnp.sum(bits * weight), "correct": jnp.sum(correct * weight),
                "count": jnp.sum(weight)}
        if "bytes" in batch:  # a tokenizer's windows: the bytes their scored tokens cover
            sums["bytes"] = jnp.sum(batch["bytes"] * mask)
        return sums
