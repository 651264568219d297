"""The task seam: what a learning problem tells the trainer (a batch in, a loss and metrics out).

The trainer (loop, step, run folder) knows nothing of images: it asks a *task* to initialize
one model's variables, to run it on a batch and to score the outputs. Image classification is
one task; a language model is another, trained by the same loop.

A task is any object with these members (a :class:`typing.Protocol`, so no base class):

* ``init(key) -> {"params": ..., "model_state": ...}``: one model's variables; the
  non-trained *model state* (BatchNorm statistics, ``{}`` for none) is carried beside them;
* ``apply(params, model_state, batch, *, train) -> (outputs, new_model_state)``: the forward
  pass on the (already ternarized) ``params``; ``outputs`` are float32 logits whose last axis
  is the class (or vocabulary) axis;
* ``loss(outputs, batch) -> scalar``: the training loss of one model, averaged over the batch;
* ``train_metrics(outputs, batch) -> {name: scalar}``: reported per training step
  (``accuracy`` at least);
* ``eval_sums(outputs, batch, mask) -> {"loss": sum, "correct": sum, "count": sum}``: sums over
  the examples (or tokens) where ``mask`` is 1, so padded evaluation batches add nothing;
* optionally ``num_outputs`` and ``example_batch()``: the logits per example the loss needs
  and a one-example batch of zeros; with them the trainer checks the model's outputs before a
  run writes anything.

``batch`` is a dict of arrays; the image task reads ``batch["image"]`` and ``batch["label"]``.

Beside it, the *inputs* of a run (:class:`Inputs`): what the loop asks of the data, whatever
the dataset. Two forms, told apart by ``streamed``:

* :class:`DeviceResident` (``streamed = False``): the training set lives in device memory
  (``arrays``); ``epoch_plan(epoch) -> (idx, keys)`` gives every step's example indices
  ``(steps, M, B)`` and keys ``(steps, M)`` per model, and ``batch_at(arrays, idx, keys)``
  gathers (and augments) one step's batch ``(M, B, ...)`` inside the jitted step;
* :class:`Streamed` (``streamed = True``): ``train_batches(epoch)`` yields the host batches
  every model sees, as global arrays.

Both give ``test_batches()``: padded evaluation batches with their mask. The image task
normalizes with the pixel statistics its dataset declares. Each
:class:`~tern_jax.data.specs.Dataset` builds its own (:mod:`tern_jax.data.inputs`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import jax
import jax.numpy as jnp
import optax

from tern_jax.data.augment import normalize

__all__ = ["Task", "Inputs", "DeviceResident", "Streamed", "ImageClassification"]


@runtime_checkable
class Inputs(Protocol):
    """See the module docstring: the members every form of inputs has."""

    streamed: bool
    num_train: int  # training examples (distinct windows for text)
    num_test: int | None  # evaluation examples
    steps_per_epoch: int

    def test_batches(self) -> Iterator[tuple[dict, jax.Array]]: ...


@runtime_checkable
class DeviceResident(Inputs, Protocol):
    """Inputs held in device memory, batched inside the jitted step."""

    arrays: dict

    def epoch_plan(self, epoch: int) -> tuple[jax.Array, jax.Array]: ...

    def batch_at(self, arrays: dict, idx: jax.Array, keys: jax.Array) -> dict: ...


@runtime_checkable
class Streamed(Inputs, Protocol):
    """Inputs fed from the host, one global batch per step."""

    def train_batches(self, epoch: int) -> Iterator[dict]: ...


class Task(Protocol):
    """See the module docstring."""

    def init(self, key: jax.Array) -> dict: ...

    def apply(self, params: Any, model_state: dict, batch: dict, *,
              train: bool) -> tuple[jax.Array, dict]: ...

    def loss(self, outputs: jax.Array, batch: dict) -> jax.Array: ...

    def train_metrics(self, outputs: jax.Array, batch: dict) -> dict: ...

    def eval_sums(self, outputs: jax.Array, batch: dict, mask: jax.Array) -> dict: ...


@dataclasses.dataclass(frozen=True, eq=False)
class ImageClassification:
    """Softmax classification of NHWC images by a linen model taking ``train=``.

    uint8 images are normalized with ``mean``/``std`` (in [0, 1] units) inside the step; float
    images are taken as already normalized.
    """

    model: Any
    num_classes: int
    image_shape: tuple[int, ...]
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    label_smoothing: float = 0.0

    @property
    def num_outputs(self) -> int:
        """Logits per example the loss needs: one per class."""
        return self.num_classes

    def example_batch(self) -> dict:
        """One example of zeros, as a batch holds it (for shape checks)."""
        return {"image": jnp.zeros((1, *self.image_shape), jnp.uint8),
                "label": jnp.zeros((1,), jnp.int32)}

    def init(self, key: jax.Array) -> dict:
        variables = self.model.init(key, jnp.zeros((1, *self.image_shape)), train=False)
        return {"params": variables["params"],
                "model_state": variables.get("batch_stats", {})}

    def _inputs(self, images: jax.Array) -> jax.Array:
        if jnp.issubdtype(images.dtype, jnp.floating):
            return images
        if self.mean is None or self.std is None:
            raise ValueError("uint8 images need the dataset's mean and std to be normalized; "
                             "build the task with mean= and std=")
        return normalize(images, self.mean, self.std)

    def apply(self, params, model_state, batch, *, train):
        # model_state is the BatchNorm statistics (the linen "batch_stats" collection)
        variables = {"params": params}
        if model_state:
            variables["batch_stats"] = model_state
        x = self._inputs(batch["image"])
        if train and model_state:
            logits, updates = self.model.apply(variables, x, train=True,
                                               mutable=["batch_stats"])
            return logits.astype(jnp.float32), updates["batch_stats"]
        logits = self.model.apply(variables, x, train=train)
        return logits.astype(jnp.float32), model_state

    def loss(self, outputs, batch):
        targets = optax.smooth_labels(jax.nn.one_hot(batch["label"], self.num_classes),
                                      self.label_smoothing)
        return jnp.mean(optax.softmax_cross_entropy(outputs, targets))

    def train_metrics(self, outputs, batch):
        return {"accuracy": jnp.mean(jnp.argmax(outputs, -1) == batch["label"])}

    def eval_sums(self, outputs, batch, mask):
        ce = optax.softmax_cross_entropy_with_integer_labels(outputs, batch["label"])
        correct = jnp.argmax(outputs, -1) == batch["label"]
        return {"loss": jnp.sum(ce * mask), "correct": jnp.sum(correct * mask),
                "count": jnp.sum(mask)}
