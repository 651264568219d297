"""Model families: what a config's ``model`` names, each declared once (:data:`FAMILIES`).

A :class:`ModelFamily` declares its task (how a batch becomes a loss), the kind of input its
models read (:data:`~tern_jax.data.specs.IMAGES` or :data:`~tern_jax.data.specs.TOKENS`), its
variant presets and the config fields only its task reads. The datasets are declared the same
way in :mod:`tern_jax.data.specs`. :func:`check_config` holds a config against both, once,
when the config is made: the model and dataset exist and read the same kind of input, the
variants are presets of the family, and no field is set that the run would not read.

**Adding a family** is one entry in :data:`FAMILIES`. **A user's own model** needs no edit to
tern_jax: a config's ``model="my_pkg.nets:MyNet"`` names, by import path, either

* a Flax linen module class, or any function, called as ``MyNet(num_classes=N)`` (with
  ``dtype=`` too when ``compute_dtype`` is not float32) and returning a linen module that is
  applied as ``model.apply(variables, images, train=...)`` to float NHWC images and returns
  logits: an image classifier, trained with the CNN presets (:data:`tern_jax.presets.PRESETS`,
  rules over ``.*/kernel``), BatchNorm statistics in ``batch_stats`` if it has any;
* or a :class:`ModelFamily` of its own (its task, input kind, presets and fields).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp
from flax import linen as nn

from tern_jax._imports import describe, import_object, is_import_path
from tern_jax.data.specs import DATASETS, IMAGES, TOKENS, Dataset, dataset_spec
from tern_jax.models import MODEL_NAMES, TRANSFORMER_CONFIGS, get_model
from tern_jax.presets import PRESETS, TRANSFORMER_RULES, Presets, preset_rules
from tern_jax.rules import Rule
from tern_jax.train import language_model
from tern_jax.train.task import ImageClassification, Inputs, Task

__all__ = ["FAMILIES", "IMAGE_CLASSIFIER", "LANGUAGE_MODEL", "ModelFamily", "check_config",
           "family_of", "is_full_precision", "task_for", "variant_rules"]


@dataclasses.dataclass(frozen=True, eq=False)
class ModelFamily:
    """One kind of model a run trains (see the module docstring).

    Attributes:
      task: what it learns, in words (``"image classification"``), for messages.
      reads: the kind of input of its models (a dataset must hold the same kind).
      models: the names a config gives its models (lower case).
      presets: its variants (:mod:`tern_jax.presets`).
      fields: the config fields only this task reads; a run of another family refuses them.
      build: ``build(config, dataset, inputs) -> Task``; ``inputs`` are the run's loaded
        :class:`~tern_jax.train.task.Inputs`, or ``None`` when restoring without data.
      check: ``check(config)``: what a config of this family needs beyond the common checks.
      loss_name: what its loss is called in tables and plots (``bits/byte``: a language model).
    """

    task: str
    reads: str
    models: tuple[str, ...]
    presets: Presets
    fields: tuple[str, ...]
    build: Callable[..., Task]
    check: Callable[..., None] | None = None
    loss_name: str = "loss"


def _image_model(config, num_classes: int) -> nn.Module:
    dtype = jnp.dtype(config.compute_dtype)
    if not is_import_path(config.model):
        return get_model(config.model, num_classes, dtype=dtype)
    factory = import_object(config.model, "model")
    model = factory(num_classes=num_classes, **({} if dtype == jnp.float32 else
                                                {"dtype": dtype}))
    if not isinstance(model, nn.Module):
        raise TypeError(f"model {config.model!r} returned {describe(model)}; it must return a "
                        "flax.linen Module")
    return model


def _image_classification(config, dataset: Dataset, inputs: Inputs | None) -> Task:
    model = _image_model(config, dataset.num_classes)
    # uint8 images are normalized in the step with the statistics of the loaded data
    mean = std = None
    if inputs is not None:
        mean, std = inputs.mean, inputs.std
    return ImageClassification(model, dataset.num_classes, tuple(dataset.input_shape),
                               None if mean is None else tuple(mean),
                               None if std is None else tuple(std), config.label_smoothing)


def _language_model(config, dataset: Dataset, inputs: Inputs | None) -> Task:
    del dataset, inputs  # a byte model: its vocabulary is the dataset's
    return language_model.LanguageModel(language_model.model_config(config))


#: Image classifiers (:mod:`tern_jax.models`): CIFAR and ImageNet ResNets, AlexNet, a small CNN.
IMAGE_CLASSIFIER = ModelFamily(
    "image classification", IMAGES, MODEL_NAMES, PRESETS,
    ("label_smoothing", "augment", "stream", "train_subset", "pretrained"),
    _image_classification)
#: Byte-level transformer language models (:data:`tern_jax.models.TRANSFORMER_CONFIGS`).
LANGUAGE_MODEL = ModelFamily(
    "language model", TOKENS, tuple(TRANSFORMER_CONFIGS), TRANSFORMER_RULES,
    ("seq_len", "steps_per_epoch"), _language_model, language_model.check_config, "bits/byte")

#: Every built-in family.
FAMILIES: tuple[ModelFamily, ...] = (IMAGE_CLASSIFIER, LANGUAGE_MODEL)


def family_of(model) -> ModelFamily:
    """The family of a config's ``model``: a built-in name (any case) or an import path."""
    if not isinstance(model, str):
        raise TypeError(f"model must be a name such as 'resnet20', got {type(model).__name__}")
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


def variant_rules(name: str, model: str | None = None) -> tuple[Rule, ...] | None:
    """The rules of the variant ``name`` of ``model``'s family (``None``: the CNN presets)."""
    return preset_rules(name, PRESETS if model is None else family_of(model).presets)


def is_full_precision(variant: str, model: str | None = None) -> bool:
    """Whether a variant trains without ternarization (its preset has no rules)."""
    return variant_rules(variant, model) is None


def _asks_for_something(value, default) -> bool:
    """A value other than the default and other than "off" (``None``, ``False``, 0)."""
    return value != default and value not in (None, False, 0)


def check_config(config) -> tuple[ModelFamily, Dataset]:
    """The family and dataset of ``config``, held against each other and against its fields.

    Raises a ValueError naming the model and the dataset when they read different kinds of
    input, the variant when it is not a preset of the family, and every field set that this
    run would not read (with who reads it).
    """
    family = family_of(config.model)
    dataset = dataset_spec(config.dataset)
    if family.reads != dataset.kind:
        fits = [d.name for d in DATASETS.values() if d.kind == family.reads]
        raise ValueError(
            f"model {config.model!r} ({family.task}) reads {family.reads}, but dataset "
            f"{config.dataset!r} holds {dataset.kind}; give it a dataset of {family.reads} "
            f"({', '.join(fits)}) or choose a model that reads {dataset.kind}")
    for variant in config.variants:
        preset_rules(variant, family.presets)
    if config.init_variant not in family.presets:
        raise ValueError(f"init_variant must be one of {', '.join(family.presets)}, got "
                         f"{config.init_variant!r}")
    readers = {}
    for f in {family, *FAMILIES}:
        for name in f.fields:
            readers.setdefault(name, []).append(f"{f.task} runs")
    for d in {dataset, *DATASETS.values()}:
        for name in d.fields:
            readers.setdefault(name, []).append(f"dataset {d.name}")
    defaults = {f.name: f.default for f in dataclasses.fields(config)}
    for name in dataset.fields:
        if name not in defaults:
            raise ValueError(f"dataset {dataset.name!r} reads {name!r}, which is no config field")
    for name, who in readers.items():
        if name in family.fields or name in dataset.fields:
            continue
        value = getattr(config, name)
        if _asks_for_something(value, defaults[name]):
            raise ValueError(
                f"{name}={value!r} is not read by this run ({family.task}, model "
                f"{config.model!r} on dataset {config.dataset!r}); it is read by "
                f"{', '.join(sorted(set(who)))}. Leave {name} out")
    if family.check is not None:
        family.check(config)
    return family, dataset


def task_for(config, inputs: Inputs | None = None) -> Task:
    """The task a config trains, built by its model family; ``inputs``: the loaded data (the
    statistics of its images), or ``None`` to build the models from the declared specs."""
    # the config was held against its family and dataset when it was made (Config)
    return family_of(config.model).build(config, dataset_spec(config.dataset), inputs)
