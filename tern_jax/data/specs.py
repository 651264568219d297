"""The datasets a run can name: one declaration each, in one registry (:data:`DATASETS`).

A :class:`Dataset` says what a model needs to know before any data is read (the kind of
input, the classes or vocabulary, the shape of one example) and how to get the data:
``load(**fields)`` returns it, where ``fields`` are the config fields the loader reads
(``data_dir``, ``text_path``), passed as keywords. What ``load`` returns depends on
``kind`` and ``streamed``:

* images in memory: an :class:`~tern_jax.data.arrays.ArrayDataset` (uint8 NHWC images);
* images streamed (``streamed=True``): a function ``batches(train, batch_size, *, seed=0,
  start_epoch=0)`` returning an iterator of host batches ``(images, labels)`` for training,
  ``(images, labels, mask)`` padded for evaluation;
* tokens: a :class:`~tern_jax.data.text.TextDataset` (bytes).

Restoring a run's weights builds the models from the declared figures alone (``jax.eval_shape``
of the initialization), so reading a checkpoint never loads a dataset.

**Adding a dataset** is one entry in :data:`DATASETS` (its loader may live anywhere). **A
user's own dataset** needs no edit here: a config's ``dataset="my_pkg.data:my_dataset"`` names
a :class:`Dataset` (or a function of no argument returning one) by import path.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import numpy as np

from tern_jax._imports import describe, import_object, is_import_path
from tern_jax.data.cifar10 import load_cifar10
from tern_jax.data.digits import load_digits
from tern_jax.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_NUM_CLASSES,
    IMAGENET_STD,
    IMAGENET_TRAIN_SIZE,
    IMAGENET_VAL_SIZE,
    imagenet_batches,
)
from tern_jax.data.text import VOCAB_SIZE, load_text

__all__ = ["DATASETS", "IMAGES", "TOKENS", "Dataset", "dataset_spec"]

#: Kinds of input (a model family reads one kind; a dataset holds one).
IMAGES, TOKENS = "images", "tokens"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One dataset: its specs and its loader (see the module docstring).

    Attributes:
      name: the name a config gives (lower case).
      kind: :data:`IMAGES` or :data:`TOKENS`.
      num_classes: classes of an image dataset, the vocabulary size of a token one.
      input_shape: one image ``(H, W, C)``; ``()`` for a token stream.
      load: the loader, called with ``fields`` as keywords.
      fields: the config fields the loader reads (``data_dir``, ``text_path``); a run on this
        dataset refuses the others set.
      streamed: whether ``load`` returns host batches instead of the whole dataset.
      mean, std: per-channel pixel statistics in ``[0, 1]`` units of a streamed image dataset
        (an in-memory one carries its own).
      num_train, num_test: examples of a streamed dataset.
      aliases: other names accepted for it.
    """

    name: str
    kind: str
    num_classes: int
    input_shape: tuple[int, ...]
    load: Callable[..., Any]
    fields: tuple[str, ...] = ()
    streamed: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    num_train: int | None = None
    num_test: int | None = None
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if self.kind not in (IMAGES, TOKENS):
            raise ValueError(f"dataset {self.name!r}: kind must be {IMAGES!r} or {TOKENS!r}, got "
                             f"{self.kind!r}")

    def open(self, config) -> Any:
        """The data (or the batch function of a streamed dataset) for a run ``config``: the one
        place a dataset is loaded."""
        return self.load(**{name: getattr(config, name) for name in self.fields})


def _imagenet_stream(data_dir=None):
    """ImageNet's host batches: uint8 random-resized crops for training, center crops padded
    to whole batches for evaluation (the validation split)."""
    def batches(train: bool, batch_size: int, *, seed: int = 0, start_epoch: int = 0):
        if train:
            return imagenet_batches("train", batch_size, data_dir=data_dir, train=True,
                                    seed=seed, start_epoch=start_epoch, num_epochs=1,
                                    dtype=np.uint8)
        return imagenet_batches("validation", batch_size, data_dir=data_dir, train=False,
                                pad_remainder=True, dtype=np.uint8)

    return batches


#: Every built-in dataset.
DATASETS: dict[str, Dataset] = {d.name: d for d in (
    Dataset("digits", IMAGES, 10, (8, 8, 1), load_digits),
    Dataset("cifar10", IMAGES, 10, (32, 32, 3), load_cifar10, ("data_dir",),
            aliases=("cifar-10", "cifar_10")),
    # the standard 224x224 crops of the paper's ImageNet recipe (random-resized / center crop)
    Dataset("imagenet", IMAGES, IMAGENET_NUM_CLASSES, (224, 224, 3), _imagenet_stream,
            ("data_dir",), streamed=True, mean=IMAGENET_MEAN, std=IMAGENET_STD,
            num_train=IMAGENET_TRAIN_SIZE, num_test=IMAGENET_VAL_SIZE,
            aliases=("imagenet2012",)),
    # bytes: text_path (a file or folder), or by default the Python standard library's sources
    Dataset("text", TOKENS, VOCAB_SIZE, (), functools.partial(load_text, "python_stdlib"),
            ("text_path",)),
    Dataset("python_stdlib", TOKENS, VOCAB_SIZE, (), functools.partial(load_text,
                                                                       "python_stdlib")),
    Dataset("tiny_shakespeare", TOKENS, VOCAB_SIZE, (),
            functools.partial(load_text, "tiny_shakespeare"), ("data_dir",)),
)}
_NAMES = {alias: d for d in DATASETS.values() for alias in (d.name, *d.aliases)}


def dataset_spec(name: str) -> Dataset:
    """The :class:`Dataset` a config's ``dataset`` names: a built-in name (any case, or an
    alias such as ``cifar-10``) or an import path ``"package.module:name"`` of a
    :class:`Dataset` or of a function of no argument returning one."""
    if not isinstance(name, str):
        raise TypeError(f"dataset must be a name such as 'cifar10', got {type(name).__name__}")
    if is_import_path(name):
        found = import_object(name, "dataset")
        if callable(found) and not isinstance(found, (Dataset, type)):
            found = found()
        if not isinstance(found, Dataset):
            raise TypeError(f"dataset {name!r} names {describe(found)}; it must name a "
                            "tern_jax.data.Dataset or a function of no argument returning one")
        return found
    key = name.strip().lower()
    if key not in _NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or "
                         "name your own tern_jax.data.Dataset as 'package.module:name'")
    return _NAMES[key]
