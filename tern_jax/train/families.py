"""Model families: what a config's ``model.name`` names, each declared once.

A :class:`ModelFamily` declares everything the trainer, the command line and the reports ask
of a kind of model, so nothing downstream tests which family it holds:

* its task (how a batch becomes a loss), built from the config and the :class:`Dataset`
  alone (:meth:`ModelFamily.task`), and the kind of input its models read;
* its variant presets and the config fields only it reads;
* its capabilities: what its loss is called (``bits/byte`` for a byte language model), the
  result metrics it reports, the export formats it writes (``packed``, ``gguf``) and whether
  it samples text.

:func:`resolve` turns a config's names into a :class:`Resolved` (the family and the
dataset), once; the loop, the run folder and the command line receive it. Everything a report
needs (the loss's name, the metrics) is written into the run folder, so reading a finished
run never imports the model's package.

**Adding a family** is one :class:`ModelFamily` in :data:`FAMILIES`. **A user's own model**
needs no edit to tern_jax: a config's ``model.name="my_pkg.nets:MyNet"`` names, by import
path, either

* a Flax linen module class, or any function, called as ``MyNet(num_classes=N, **kwargs)``
  (``model.kwargs``; with ``dtype=`` too when ``model.compute_dtype`` is not float32) and
  returning a linen module applied as ``model.apply(variables, images, train=...)`` to float
  NHWC images: an image classifier, trained with the CNN presets
  (:data:`tern_jax.presets.PRESETS`), BatchNorm statistics in ``batch_stats`` if it has any;
* or a :class:`ModelFamily` of its own, which declares its capabilities as the built-in ones
  do (an export to GGUF and sampling need a task with a ``config``
  (:class:`~tern_jax.models.transformer.TransformerConfig`) and a ``graphdef``, as
  :class:`~tern_jax.train.language_model.LanguageModel` has).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax.numpy as jnp
from flax import linen as nn

from tern_jax._imports import describe, import_object, is_import_path
from tern_jax.data.specs import DATASETS, IMAGES, TOKENS, Dataset, dataset_spec
from tern_jax.models import MODEL_NAMES, TRANSFORMER_CONFIGS, get_model
from tern_jax.presets import (
    PRESETS,
    TRANSFORMER_RULES,
    Presets,
    is_full_precision_rules,
    preset_rules,
)
from tern_jax.rules import Rule
from tern_jax.sharding import CNN_SHARDING, TRANSFORMER_SHARDING
from tern_jax.train import language_model
from tern_jax.train.task import ImageClassification, Task

__all__ = ["FAMILIES", "IMAGE_CLASSIFIER", "LANGUAGE_MODEL", "ModelFamily", "Resolved",
           "check_config", "family_of", "is_full_precision", "resolve"]

#: Result metrics a family may declare: final-epoch accuracy, and bits per byte (the
#: validation loss of a byte-level language model).
ACCURACY, BITS_PER_BYTE = "accuracy", "bits_per_byte"
#: Export formats (``tern-jax export --format``).
PACKED, GGUF = "packed", "gguf"


@dataclasses.dataclass(frozen=True, eq=False)
class ModelFamily:
    """One kind of model a run trains (see the module docstring).

    Attributes:
      task_name: what it learns, in words (``"image classification"``), for messages.
      reads: the kind of input of its models (a dataset must hold the same kind).
      models: the built-in names it builds (lower case); empty for a user's own family.
      presets: its variants (:mod:`tern_jax.presets`).
      fields: the config fields (dotted paths) only this family reads; a run of another
        family refuses them.
      build: ``build(config, dataset) -> Task``.
      check: ``check(config)``: what a config of this family needs beyond the common checks
        (its model's keyword arguments, ...), before anything is written.
      loss_name: what its loss is called in tables and plots.
      results: its result metrics (:data:`ACCURACY`, :data:`BITS_PER_BYTE`).
      exports: the export formats it writes (:data:`PACKED`, :data:`GGUF`).
      samples: whether ``tern-jax sample`` generates text with it.
      sharding: its default sharding rules (:mod:`tern_jax.sharding`), for a run whose
        ``sharding.rules`` is None; a dimension they do not divide stays whole. None:
        every parameter replicated.
    """

    task_name: str
    reads: str
    models: tuple[str, ...]
    presets: Presets
    fields: tuple[str, ...]
    build: Callable[..., Task]
    check: Callable[..., None] | None = None
    loss_name: str = "loss"
    results: tuple[str, ...] = (ACCURACY,)
    exports: tuple[str, ...] = (PACKED,)
    samples: bool = False
    sharding: tuple | None = None

    def task(self, config, dataset: Dataset) -> Task:
        """The task ``config`` trains on ``dataset`` (no data is read)."""
        return self.build(config, dataset)

    def rules(self, variant: str) -> tuple[Rule, ...]:
        """The rules of one of its variants (a clear error naming the choices otherwise)."""
        return preset_rules(variant, self.presets)


def _image_model(config, num_classes: int) -> nn.Module:
    dtype = jnp.dtype(config.model.compute_dtype)
    extra = {} if dtype == jnp.float32 else {"dtype": dtype}
    if not is_import_path(config.model.name):
        return get_model(config.model.name, num_classes, **extra, **config.model.kwargs)
    factory = import_object(config.model.name, "model")
    try:
        model = factory(num_classes=num_classes, **extra, **config.model.kwargs)
    except TypeError as e:
        raise TypeError(f"model {config.model.name!r} could not be built with num_classes and "
                        f"model.kwargs {config.model.kwargs}: {e}") from None
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {config.model.name!r} returned {describe(model)}; it must "
                        "return a flax.linen Module")
    return model


def _image_classification(config, dataset: Dataset) -> Task:
    model = _image_model(config, dataset.num_classes)
    return ImageClassification(model, dataset.num_classes, tuple(dataset.input_shape),
                               tuple(dataset.mean), tuple(dataset.std),
                               config.optimizer.label_smoothing)


def _check_image_model(config) -> None:
    _image_model(config, 2)  # its keyword arguments, before anything is written


def _language_model(config, dataset: Dataset) -> Task:
    return language_model.LanguageModel(language_model.model_config(config, dataset),
                                        language_model.seq_len(config, dataset))


#: Image classifiers (:mod:`tern_jax.models`): CIFAR and ImageNet ResNets, AlexNet, a small CNN.
IMAGE_CLASSIFIER = ModelFamily(
    "image classification", IMAGES, MODEL_NAMES, PRESETS,
    ("optimizer.label_smoothing", "data.augment", "data.stream", "data.train_subset",
     "stages.pretrained"),
    _image_classification, _check_image_model, sharding=CNN_SHARDING)
#: Byte-level transformer language models (:data:`tern_jax.models.TRANSFORMER_CONFIGS`).
LANGUAGE_MODEL = ModelFamily(
    "language model", TOKENS, tuple(TRANSFORMER_CONFIGS), TRANSFORMER_RULES,
    ("data.seq_len", "data.steps_per_epoch"), _language_model, language_model.check_config,
    loss_name="bits/byte", results=(BITS_PER_BYTE, ACCURACY), exports=(PACKED, GGUF),
    samples=True, sharding=TRANSFORMER_SHARDING)

#: Every built-in family.
FAMILIES: tuple[ModelFamily, ...] = (IMAGE_CLASSIFIER, LANGUAGE_MODEL)


def family_of(model: str) -> ModelFamily:
    """The family of a model name: a built-in name (any case) or an import path."""
    if not isinstance(model, str):
        raise TypeError(f"model.name must be a name such as 'resnet20', got "
                        f"{type(model).__name__}")
    if is_import_path(model):
        found = import_object(model, "model")
        if isinstance(found, ModelFamily):
            return found
        if not callable(found):
            raise TypeError(f"model {model!r} names {describe(found)}; it must name a "
                            "flax.linen Module class (or a function returning one) or a "
                            "tern_jax.train.families.ModelFamily")
        return IMAGE_CLASSIFIER
    key = model.strip().lower()
    for family in FAMILIES:
        if key in family.models:
            return family
    names = [name for family in FAMILIES for name in family.models]
    raise ValueError(f"unknown model {model!r}; choose one of {', '.join(names)}, or name your "
                     "own as 'package.module:Name'")


class Resolved(NamedTuple):
    """A config's names resolved: its model family and its dataset."""

    family: ModelFamily
    dataset: Dataset

    def task(self, config) -> Task:
        return self.family.task(config, self.dataset)


def resolve(config) -> Resolved:
    """The family and the dataset a config names (import paths are imported here)."""
    return Resolved(family_of(config.model.name), dataset_spec(config.data.dataset))


def is_full_precision(variant: str, config) -> bool:
    """Whether a variant of ``config``'s model trains without ternarization."""
    return is_full_precision_rules(family_of(config.model.name).rules(variant))


def _asks_for_something(value, default) -> bool:
    """A value other than the default and other than "off" (``None``, ``False``, 0)."""
    return value != default and value not in (None, False, 0)


def _sections(config) -> dict:
    """``{dotted path: (value, default)}`` of every field of the config's sections (read from
    the config itself: this module knows no config class)."""
    out = {}
    for field in dataclasses.fields(config):
        section = getattr(config, field.name)
        if not dataclasses.is_dataclass(section):
            continue
        for f in dataclasses.fields(section):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            out[f"{field.name}.{f.name}"] = (getattr(section, f.name), default)
    return out


def check_config(config) -> Resolved:
    """The family and dataset of ``config``, held against each other and against its fields.

    Raises a ValueError naming the model and the dataset when they read different kinds of
    input, the variant when it is not a preset of the family, and every field set that this
    run would not read (with who reads it).
    """
    resolved = resolve(config)
    family, dataset = resolved
    if family.reads != dataset.kind:
        fits = [d.name for d in DATASETS.values() if d.kind == family.reads]
        raise ValueError(
            f"model {config.model.name!r} ({family.task_name}) reads {family.reads}, but "
            f"dataset {config.data.dataset!r} holds {dataset.kind}; give it a dataset of "
            f"{family.reads} ({', '.join(fits)}) or choose a model that reads {dataset.kind}")
    for variant in config.model.variants:
        family.rules(variant)
    if config.stages.init_variant not in family.presets:
        raise ValueError(f"stages.init_variant must be one of {', '.join(family.presets)}, "
                         f"got {config.stages.init_variant!r}")
    readers = {}
    for f in {family, *FAMILIES}:
        for name in f.fields:
            readers.setdefault(name, []).append(f"{f.task_name} runs")
    for d in {dataset, *DATASETS.values()}:
        for name in d.fields:
            readers.setdefault(name, []).append(f"dataset {d.name}")
    fields = _sections(config)
    for name in dataset.fields:
        if name not in fields:
            raise ValueError(f"dataset {dataset.name!r} reads {name!r}, which is no config "
                             "field")
    for name, who in readers.items():
        if name in family.fields or name in dataset.fields:
            continue
        value, default = fields[name]
        if _asks_for_something(value, default):
            raise ValueError(
                f"{name}={value!r} is not read by this run ({family.task_name}, model "
                f"{config.model.name!r} on dataset {config.data.dataset!r}); it is read by "
                f"{', '.join(sorted(set(who)))}. Leave {name} out")
    if family.check is not None:
        family.check(config)
    return resolved
