"""The datasets a run can name: one declaration each, in one registry (:data:`DATASETS`).

A :class:`Dataset` declares what a model needs to know before any data is read (the classes or
vocabulary, the shape of one example, an image set's pixel statistics) and builds the inputs
the training loop consumes (:meth:`Dataset.inputs`). Three kinds, one class each:

* :class:`ImageDataset`: images that fit in memory; ``load`` returns an
  :class:`~tern_jax.data.arrays.ArrayDataset` (uint8 NHWC images). Batched on the devices
  (:class:`~tern_jax.data.inputs.DeviceImages`), or from the host with ``data.stream``;
* :class:`StreamedImageDataset`: images read from the host as they are needed; ``load``
  returns a function ``batches(train, batch_size, *, seed=0, start_epoch=0)`` of host batches
  ``(images, labels)`` for training, ``(images, labels, mask)`` padded for evaluation;
* :class:`TokenDataset`: a token corpus; ``load`` returns a
  :class:`~tern_jax.data.text.TextDataset`. ``num_classes`` is its vocabulary (the 256 bytes);
  a run with a tokenizer (``data.tokenizer``) tokenizes it in memory, and a ``data.text_path``
  that is a token file (:mod:`tern_jax.data.tokens`) is streamed from the disk instead.

``load`` is called with the config fields the dataset reads (``fields``: dotted paths such as
``data.data_dir``, passed by their last name). Restoring a run's weights builds the models from
the declared figures alone, so reading a checkpoint never loads a dataset.

**Adding a dataset** is one entry in :data:`DATASETS` (its loader may live anywhere). **A
user's own dataset** needs no edit here: a config's ``data.dataset="my_pkg.data:my_dataset"``
names a :class:`Dataset` (or a function of no argument returning one) by import path.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any, ClassVar

import jax
import numpy as np

from tern_jax._imports import describe, import_object, is_import_path
from tern_jax.data.arrays import ArrayDataset, subset
from tern_jax.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, load_cifar10
from tern_jax.data.digits import DIGITS_MEAN, DIGITS_STD, load_digits
from tern_jax.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_NUM_CLASSES,
    IMAGENET_STD,
    IMAGENET_TRAIN_SIZE,
    IMAGENET_VAL_SIZE,
    imagenet_batches,
)
from tern_jax.data.inputs import DeviceImages, DeviceText, StreamedImages, StreamedText
from tern_jax.data.pipeline import ArraySource, batch_dataset, batch_iterator
from tern_jax.data.text import VOCAB_SIZE, load_text

__all__ = ["DATASETS", "IMAGES", "TOKENS", "Dataset", "ImageDataset", "StreamedImageDataset",
           "TokenDataset", "dataset_spec"]

#: Kinds of input (a model family reads one kind; a dataset holds one).
IMAGES, TOKENS = "images", "tokens"


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One dataset: its declared figures and its loader (see the module docstring).

    Attributes:
      name: the name a config gives (lower case).
      num_classes: classes of an image dataset, the vocabulary size of a token one.
      input_shape: one image ``(H, W, C)``; ``()`` for a token stream.
      load: the loader, called with ``fields`` as keywords.
      fields: the config fields the loader reads (``data.data_dir``, ``data.text_path``); a
        run on this dataset refuses the others set.
      aliases: other names accepted for it.
    """

    kind: ClassVar[str]

    name: str
    num_classes: int
    input_shape: tuple[int, ...]
    load: Callable[..., Any]
    fields: tuple[str, ...] = ()
    aliases: tuple[str, ...] = ()

    def __post_init__(self):
        if type(self) is Dataset:
            raise TypeError(f"dataset {self.name!r}: declare it as an ImageDataset, a "
                            "StreamedImageDataset or a TokenDataset (tern_jax.data), which "
                            "say how it is loaded and batched")

    def open(self, config) -> Any:
        """The data (or the batch function of a streamed dataset) for a run ``config``: the one
        place a dataset is loaded."""
        values = {}
        for path in self.fields:
            section, name = path.split(".", 1) if "." in path else (None, path)
            values[name] = getattr(getattr(config, section) if section else config, name)
        return self.load(**values)

    def inputs(self, config, task, mesh):
        """The :class:`~tern_jax.train.task.Inputs` of a run of ``config`` (and its ``task``)
        on ``mesh``: the data loaded and placed as the loop consumes it."""
        raise NotImplementedError


def _check_stats(dataset) -> None:
    channels = dataset.input_shape[-1] if dataset.input_shape else None
    for what in ("mean", "std"):
        value = getattr(dataset, what)
        if (not isinstance(value, tuple) or len(value) != channels
                or not all(isinstance(v, (int, float)) for v in value)):
            raise ValueError(f"dataset {dataset.name!r}: {what} must be a tuple of "
                             f"{channels} per-channel numbers in [0, 1] units (pixel / 255), "
                             f"one per channel of input_shape {dataset.input_shape}; got "
                             f"{value!r}")


def _process_batches(config, mesh) -> tuple[int, int]:
    """This process's rows of a training and of an evaluation batch.

    The evaluation batch is rounded up to a multiple of the device count (padding is masked).
    """
    processes, devices = jax.process_count(), mesh.size
    eval_batch = -(-config.data.eval_batch_size // devices) * devices
    return config.data.batch_size // processes, eval_batch // processes


@dataclasses.dataclass(frozen=True, eq=False)
class ImageDataset(Dataset):
    """Images that fit in memory (see the module docstring); ``mean`` and ``std``: the
    per-channel pixel statistics, in ``[0, 1]`` units, the task normalizes with."""

    kind: ClassVar[str] = IMAGES

    mean: tuple[float, ...] = dataclasses.field(default=None, kw_only=True)
    std: tuple[float, ...] = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self):
        _check_stats(self)

    def _loaded(self, config):
        data = self.open(config)
        if not isinstance(data, ArrayDataset):
            raise TypeError(f"dataset {self.name!r}: its loader returned a "
                            f"{type(data).__name__}; an ImageDataset's load() returns a "
                            "tern_jax.data.ArrayDataset")
        if (data.num_classes, data.image_shape) != (self.num_classes, tuple(self.input_shape)):
            raise ValueError(
                f"dataset {self.name!r} declares {self.num_classes} classes of "
                f"{tuple(self.input_shape)} images but loaded {data.num_classes} classes of "
                f"{data.image_shape} images; make its declaration match its data")
        self._check_arrays(data)
        if config.data.train_subset or config.data.test_subset:
            data = subset(data, config.data.train_subset, config.data.test_subset, seed=0)
        return data

    def _check_arrays(self, data) -> None:
        """What the loader returned against the declaration: uint8 pixels (the statistics are
        in pixel / 255 units) and integer labels in ``[0, num_classes)``; checked once, when
        the data is opened, outside ``jit``."""
        for split in ("train", "test"):
            images = np.asarray(getattr(data, f"{split}_images"))
            labels = np.asarray(getattr(data, f"{split}_labels"))
            if len(images) != len(labels) or not len(images):
                raise ValueError(f"dataset {self.name!r} loaded {len(images)} {split} images "
                                 f"and {len(labels)} {split} labels; give one label per image "
                                 "and at least one of each split")
            if images.dtype != np.uint8:
                scaled = (" in [0, 1]: return (images * 255).round().astype(np.uint8)"
                          if images.size and 0 <= images.min() and images.max() <= 1 else "")
                raise ValueError(
                    f"dataset {self.name!r} loaded {split} images of dtype {images.dtype}; an "
                    f"ImageDataset holds uint8 pixels 0..255 (its mean and std are in pixel / "
                    f"255 units){scaled}")
            if not np.issubdtype(labels.dtype, np.integer):
                raise ValueError(f"dataset {self.name!r} loaded {split} labels of dtype "
                                 f"{labels.dtype}; give integer class indices")
            bad = (labels < 0) | (labels >= self.num_classes)
            if bad.any():
                raise ValueError(
                    f"dataset {self.name!r} loaded {int(bad.sum())} {split} label(s) outside "
                    f"0..{self.num_classes - 1} (e.g. {int(labels[bad][0])}) but declares "
                    f"num_classes={self.num_classes}; fix the labels or the declaration")

    def inputs(self, config, task, mesh):
        data = self._loaded(config)
        if not config.data.stream:
            return DeviceImages(data, seeds=[s.seed for s in config.slots],
                                batch_size=config.data.batch_size,
                                eval_batch_size=config.data.eval_batch_size,
                                augment=config.data.augment, mesh=mesh)
        batch, eval_batch = _process_batches(config, mesh)
        train = ArraySource(data.train_images, data.train_labels)
        test = ArraySource(data.test_images, data.test_labels)
        return StreamedImages(
            lambda epoch: batch_iterator(batch_dataset(
                train, batch, shuffle=True, seed=config.seeds[0], start_epoch=epoch),
                num_workers=0),
            lambda: batch_iterator(batch_dataset(
                test, eval_batch, shuffle=False, drop_remainder=False, pad_remainder=True),
                num_workers=0),
            num_train=len(data.train_labels), batch_size=config.data.batch_size, mesh=mesh,
            num_test=len(data.test_labels))


@dataclasses.dataclass(frozen=True, eq=False)
class StreamedImageDataset(Dataset):
    """Images read from the host as needed (see the module docstring); ``num_train`` and
    ``num_test``: its examples; ``mean``/``std`` as :class:`ImageDataset`'s."""

    kind: ClassVar[str] = IMAGES

    mean: tuple[float, ...] = dataclasses.field(default=None, kw_only=True)
    std: tuple[float, ...] = dataclasses.field(default=None, kw_only=True)
    num_train: int = dataclasses.field(default=None, kw_only=True)
    num_test: int | None = dataclasses.field(default=None, kw_only=True)

    def __post_init__(self):
        _check_stats(self)
        if not isinstance(self.num_train, int) or self.num_train < 1:
            raise ValueError(f"dataset {self.name!r}: num_train must be the number of training "
                             f"examples, got {self.num_train!r}")

    def inputs(self, config, task, mesh):
        batch, eval_batch = _process_batches(config, mesh)
        batches = self.open(config)
        return StreamedImages(
            lambda epoch: batches(True, batch, seed=config.seeds[0], start_epoch=epoch),
            lambda: batches(False, eval_batch),
            num_train=config.data.train_subset or self.num_train,
            batch_size=config.data.batch_size, mesh=mesh, num_test=self.num_test)


@dataclasses.dataclass(frozen=True, eq=False)
class TokenDataset(Dataset):
    """A token corpus (see the module docstring): random training windows of the task's
    ``seq_len`` on the devices, or streamed from a token file."""

    kind: ClassVar[str] = TOKENS

    def inputs(self, config, task, mesh):
        from tern_jax.data.tokens import is_token_file, load_tokenizer, open_token_file

        tokenizer = (load_tokenizer(config.data.tokenizer) if config.data.tokenizer is not None
                     else None)
        model = getattr(task, "config", None)
        vocab = getattr(model, "vocab_size", self.num_classes)
        common = {"seeds": [s.seed for s in config.slots], "seq_len": task.seq_len,
                  "batch_size": config.data.batch_size,
                  "eval_batch_size": config.data.eval_batch_size,
                  "steps_per_epoch": config.data.steps_per_epoch,
                  "test_subset": config.data.test_subset, "mesh": mesh}
        path = config.data.text_path if "data.text_path" in self.fields else None
        if path is not None and is_token_file(path):
            if tokenizer is None:
                raise ValueError(f"data.text_path {path} is a token file, which holds a "
                                 "tokenizer's tokens; set data.tokenizer to the tokenizer.json "
                                 "that made it")
            return StreamedText(open_token_file(path, tokenizer, vocab),
                                token_lengths=tokenizer.token_lengths, **common)
        data = self.open(config)
        if tokenizer is not None:
            from tern_jax.data.tokens import tokenize_text

            data = tokenize_text(data, tokenizer)
        return DeviceText(data, **common)


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
    ImageDataset("digits", 10, (8, 8, 1), load_digits, mean=DIGITS_MEAN, std=DIGITS_STD),
    ImageDataset("cifar10", 10, (32, 32, 3), load_cifar10, ("data.data_dir",),
                 aliases=("cifar-10", "cifar_10"), mean=CIFAR10_MEAN, std=CIFAR10_STD),
    # the standard 224x224 crops of the paper's ImageNet recipe (random-resized / center crop)
    StreamedImageDataset("imagenet", IMAGENET_NUM_CLASSES, (224, 224, 3), _imagenet_stream,
                         ("data.data_dir",), aliases=("imagenet2012",), mean=IMAGENET_MEAN,
                         std=IMAGENET_STD, num_train=IMAGENET_TRAIN_SIZE,
                         num_test=IMAGENET_VAL_SIZE),
    # bytes: text_path (a file or folder), or by default the Python standard library's sources
    TokenDataset("text", VOCAB_SIZE, (), functools.partial(load_text, "python_stdlib"),
                 ("data.text_path",)),
    TokenDataset("python_stdlib", VOCAB_SIZE, (), functools.partial(load_text,
                                                                    "python_stdlib")),
    TokenDataset("tiny_shakespeare", VOCAB_SIZE, (),
                 functools.partial(load_text, "tiny_shakespeare"), ("data.data_dir",)),
)}
_NAMES = {alias: d for d in DATASETS.values() for alias in (d.name, *d.aliases)}


def dataset_spec(name: str) -> Dataset:
    """The :class:`Dataset` a config's ``data.dataset`` names: a built-in name (any case, or an
    alias such as ``cifar-10``) or an import path ``"package.module:name"`` of a
    :class:`Dataset` or of a function of no argument returning one."""
    if not isinstance(name, str):
        raise TypeError(f"data.dataset must be a name such as 'cifar10', got "
                        f"{type(name).__name__}")
    if is_import_path(name):
        found = import_object(name, "dataset")
        if callable(found) and not isinstance(found, (Dataset, type)):
            found = found()
        if not isinstance(found, Dataset):
            raise TypeError(f"dataset {name!r} names {describe(found)}; it must name a "
                            "tern_jax.data.Dataset (ImageDataset, StreamedImageDataset, "
                            "TokenDataset) or a function of no argument returning one")
        return found
    key = name.strip().lower()
    if key not in _NAMES:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}, or "
                         "name your own tern_jax.data.Dataset as 'package.module:name'")
    return _NAMES[key]
