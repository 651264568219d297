"""Experiment configs: one frozen dataclass of sections names a run completely (with its seeds).

Experiments live as Python files exposing ``get_config() -> Config`` (``experiments/configs``);
the command line loads one by path or by built-in name and overrides values with
``--set section.field=value`` (``--set data.batch_size=128``,
``--set model.kwargs.d_model=512``, ``--set seeds=0,1``). Model *variants* are named rule
presets (:mod:`tern_jax.presets`): several variants and seeds of one architecture train
together in one program, vmapped over a leading model axis.

A config has two top-level values (``name``, ``seeds``), two switches of how it runs
(``scan_steps``, ``progress``) and seven sections, each a frozen dataclass:

=================  =========================================================================
``model``          :class:`ModelConfig`: which model (a built-in name or an import path), its
                   keyword arguments (sizes), variants, compute dtype, how the model axis runs
``data``           :class:`DataConfig`: the dataset, where it is, subsets, batches, windows
``optimizer``      :class:`OptimizerConfig`: SGD/Adam/AdamW, rate, momentum, weight decay
``schedule``       :class:`ScheduleConfig`: epochs, the rate's and the decay's schedules,
                   warm-ups
``checkpointing``  :class:`CheckpointConfig`: how often to evaluate and save, what to keep
``stages``         :class:`StagesConfig`: where models start (another run, torchvision), a
                   second fine-tuning stage, distillation
``sharding``       :class:`ShardingConfig`: the device mesh (``data`` x ``fsdp`` x ``tensor``)
                   and the rules placing the parameters on it
=================  =========================================================================

A section may be given as its dataclass or as a dict of its fields
(``Config(data={"dataset": "cifar10"})``). Every field is checked from its type annotation,
once, when a config is made (:mod:`tern_jax.fields`); the ``--set`` parser reads the same
annotations. The model family and the dataset then hold the config against what they read
(:func:`tern_jax.train.families.check_config`). Field names in messages, ``--set`` and
:func:`differences` are dotted paths (``optimizer.learning_rate``).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple

from tern_jax._imports import UserCodeError, where_it_failed
from tern_jax.fields import Range, check_fields, parse_json_value, parse_value
from tern_jax.presets import FULL_PRECISION, is_full_precision_rules
from tern_jax.train.families import check_config

__all__ = ["CheckpointConfig", "Config", "DataConfig", "ModelConfig", "OptimizerConfig",
           "ScheduleConfig", "ShardingConfig", "Slot", "StagesConfig", "config_from",
           "differences", "flatten", "from_json", "load_config", "override", "quickstart_config"]


_NONE_NOTE = Range(1, note=" (None: the whole set)")
_AT_LEAST_1 = Range(1)
_AT_LEAST_0 = Range(0)
_POSITIVE = Range(0, low_closed=False)
_FRACTION = Range(0, 1)  # [0, 1)

#: How the model axis is computed: "vmap", "unroll" (a loop inside the one program), or
#: "auto" = vmap on GPU/TPU, unroll on CPU (also :class:`tern_jax.train.stack.ModelStack`'s).
ModelAxis = Literal["auto", "vmap", "unroll"]


class Slot(NamedTuple):
    """One trained model of a run: its variant (a preset name) and its seed.

    ``str(slot)`` / :attr:`name` is the label written in metrics files and taken by the
    command line (``tern/seed0``); :meth:`parse` reads it back.
    """

    variant: str
    seed: int

    @property
    def name(self) -> str:
        return f"{self.variant}/seed{self.seed}"

    def __str__(self) -> str:
        return self.name

    @classmethod
    def parse(cls, name: str) -> Slot:
        """``"tern/seed0"`` -> ``Slot("tern", 0)``; a clear error for anything else."""
        found = re.fullmatch(r"(.+)/seed(-?\d+)", name) if isinstance(name, str) else None
        if found is None:
            raise ValueError(f"model {name!r} is not of the form VARIANT/seedN, e.g. tern/seed0")
        return cls(found.group(1), int(found.group(2)))


class _Section:
    """A config section: its fields checked from their annotations when it is made."""

    def __post_init__(self):
        check_fields(self, owner=_SECTION_NAMES[type(self)])


@dataclasses.dataclass(frozen=True)
class ModelConfig(_Section):
    """Which models a run trains.

    Attributes:
      name: a built-in model (:data:`tern_jax.models.MODELS`: ``resnet20``,
        ``transformer_llama``, ...) or the import path of the user's own
        (``"my_pkg.nets:MyNet"``: a linen module class or factory, or a
        :class:`~tern_jax.train.families.ModelFamily`).
      kwargs: keyword arguments of the model, over the named model's own (its sizes:
        ``{"d_model": 128}``; a CIFAR ResNet's ``{"width": 32}``); what ``config.json`` can hold.
      compute_dtype: the computation's dtype (bfloat16: GPU/TPU).
      variants: the rule presets trained side by side (``fp``: full precision).
      axis: how the model axis runs (:data:`ModelAxis`).
    """

    name: str = "small_cnn"
    kwargs: dict = dataclasses.field(default_factory=dict)
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    variants: tuple[str, ...] = ("fp", "tern")
    axis: ModelAxis = "auto"


@dataclasses.dataclass(frozen=True)
class DataConfig(_Section):
    """The data of a run and how it is batched.

    Attributes:
      dataset: a built-in dataset (:data:`tern_jax.data.DATASETS`) or the import path of the
        user's own ``Dataset``.
      data_dir: where the dataset's files are (datasets that read files).
      text_path: a language model's local text file or folder (None: the Python standard
        library's sources), or a token file (``tern-jax tokenizer encode``), streamed.
      tokenizer: a language model's ``tokenizer.json`` (``tokenizers`` package; ``tern-jax
        tokenizer train`` makes one): the model's vocabulary is its tokens (None: the 256
        bytes).
      train_subset, test_subset: use only this many training / test examples (cheap proxies;
        for text, test windows).
      augment: pad-4 random crop and flip (the CIFAR recipe), on device.
      stream: feed batches from the host (the ImageNet path) instead of device memory.
      seq_len: a language model's window (None: the model's ``max_len``).
      steps_per_epoch: a language model's steps per "epoch" (None: one pass over the text).
      batch_size: examples per training step (every model sees its own batch of this size).
      eval_batch_size: examples per evaluation step (padding is masked).
    """

    dataset: str = "digits"
    data_dir: str | None = None
    text_path: str | None = None
    tokenizer: str | None = None
    train_subset: Annotated[int | None, _NONE_NOTE] = None
    test_subset: Annotated[int | None, _NONE_NOTE] = None
    augment: bool = True
    stream: bool = False
    seq_len: Annotated[int | None, _AT_LEAST_1] = None
    steps_per_epoch: Annotated[int | None, _AT_LEAST_1] = None
    batch_size: Annotated[int, _AT_LEAST_1] = 64
    eval_batch_size: Annotated[int, _AT_LEAST_1] = 500


@dataclasses.dataclass(frozen=True)
class OptimizerConfig(_Section):
    """The optimizer (:mod:`tern_jax.train.optim`); defaults: the paper's CIFAR recipe.

    Attributes:
      name: ``sgd`` (momentum, Nesterov), ``adam``, or ``adamw`` (weight decay decoupled from
        Adam's step).
      learning_rate: the peak rate.
      momentum, nesterov: SGD's.
      weight_decay: L2 added to the gradient (``adamw``: to the step), every parameter.
      label_smoothing: of the classification targets (image classifiers).
    """

    name: Literal["sgd", "adam", "adamw"] = "sgd"
    learning_rate: Annotated[float, _POSITIVE] = 0.1
    momentum: Annotated[float, _FRACTION] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, _AT_LEAST_0] = 3e-4
    label_smoothing: Annotated[float, _FRACTION] = 0.0


@dataclasses.dataclass(frozen=True)
class ScheduleConfig(_Section):
    """How long a run trains and how its rates move.

    Attributes:
      epochs: epochs of training.
      name: the learning rate's schedule: ``multistep`` (``milestones``), ``cosine``,
        ``constant``, or ``bitnet`` (BitNet b1.58's two halves, :mod:`tern_jax.train.optim`).
      milestones: ``(epoch, factor)`` pairs of the multistep schedule.
      warmup_epochs: a linear warm-up of the rate first.
      weight_decay: the weight decay's schedule: ``constant`` or ``bitnet`` (decaying to 0 by
        half the steps).
      threshold_warmup: epochs over which every threshold Δ ramps from
        ``threshold_warmup_start`` times its value to its value (0: off; evaluation always
        uses the full Δ).
      threshold_warmup_start: the ramp's first factor (0 keeps every nonzero weight).
    """

    epochs: Annotated[int, _AT_LEAST_1] = 12
    name: Literal["multistep", "cosine", "constant", "bitnet"] = "multistep"
    milestones: tuple[tuple[int, float], ...] = ((6, 0.1), (9, 0.1))
    warmup_epochs: Annotated[int, _AT_LEAST_0] = 0
    weight_decay: Literal["constant", "bitnet"] = "constant"
    threshold_warmup: Annotated[float, _AT_LEAST_0] = 0.0
    threshold_warmup_start: Annotated[float, Range(0, 1, high_closed=True)] = 0.0


@dataclasses.dataclass(frozen=True)
class CheckpointConfig(_Section):
    """When a run evaluates and saves.

    Attributes:
      every: epochs between checkpoints (0: only at the end).
      keep: checkpoints kept (a run keeps at least its last).
      eval_every: epochs between test evaluations (the last epoch is always evaluated).
    """

    every: Annotated[int, Range(0, note=" (0: only at the end)")] = 5
    keep: Annotated[int, Range(1, note=" (a run must keep its last checkpoint)")] = 2
    eval_every: Annotated[int, _AT_LEAST_1] = 1


@dataclasses.dataclass(frozen=True)
class StagesConfig(_Section):
    """Where the models start, a second stage, and what they learn from.

    Attributes:
      init_from: start every model from the final params of ``init_variant`` of another run.
      pretrained: or from a torchvision ResNet state_dict (.pth), as the paper's ImageNet
        recipe does.
      init_variant: the variant of ``init_from`` to start from.
      finetune_epochs: > 0: the two-stage recipe. The fp models train ``schedule.epochs``
        epochs first (the run's ``pretrain/``), then every other variant starts from the fp
        model of its seed and trains ``finetune_epochs`` more (``finetune/``) at
        ``finetune_learning_rate`` with ``finetune_schedule``.
      distill_weight: weight of the KL term distilling each ternary model from the fp model
        of its seed trained alongside (0: off).
      distill_temperature: its softmax temperature.
    """

    init_from: str | None = None
    pretrained: str | None = None
    init_variant: str = "fp"
    finetune_epochs: Annotated[int, _AT_LEAST_0] = 0
    finetune_learning_rate: Annotated[float, _POSITIVE] = 0.01
    finetune_schedule: Literal["cosine", "constant"] = "cosine"
    distill_weight: Annotated[float, _AT_LEAST_0] = 0.0
    distill_temperature: Annotated[float, _POSITIVE] = 4.0


#: One dimension's entry of a sharding rule's spec: a mesh axis, several, or None (not split).
SpecEntry = str | tuple[str, ...] | None
#: A stack's model axis split over a mesh axis, or not (None).
MeshAxis = Literal["data", "fsdp", "tensor"]


@dataclasses.dataclass(frozen=True)
class ShardingConfig(_Section):
    """How the devices form a mesh and where the parameters lie on it
    (:mod:`tern_jax.sharding`). The defaults are plain data parallelism.

    Attributes:
      data: devices on the ``data`` axis (data parallel); 0: every device left over after
        ``fsdp`` x ``tensor``.
      fsdp: devices on the ``fsdp`` axis: the batch is split over it as over ``data``, and
        the parameters and optimizer states too (fully sharded data parallel).
      tensor: devices on the ``tensor`` axis (tensor parallel: weights split along their
        heads or hidden features).
      rules: ``(pattern, spec)`` pairs placing each parameter (a regular expression over its
        path; one mesh axis, a tuple of them, or None per dimension, not counting the stacked
        model axis; or spec None: replicated), the first that applies wins; on the command
        line as JSON: ``--set 'sharding.rules=[[".*/kernel", ["fsdp", null]]]'``. None: the
        model family's defaults (:data:`tern_jax.sharding.TRANSFORMER_SHARDING`,
        :data:`tern_jax.sharding.CNN_SHARDING`).
      model_axis: the mesh axis the stacked models (variants x seeds) are split over; None:
        every device holds every model.
      gather: what the forward pass gathers of a ternary kernel split over ``fsdp``:
        ``"weights"``, its fp32 latent weights (XLA's gather); ``"codes"``, its int8 codes
        (4x fewer bytes); ``"packed"``, its codes packed 4 to a byte (16x fewer; 2 to a byte
        for ``t_ex > 1``). The same training either way: the codes are the whole tensor's
        (:mod:`tern_jax.gather`). Full-precision parameters and variants gather weights.

    The product ``data x fsdp x tensor`` is the device count (every process's together).
    """

    data: Annotated[int, Range(0, note=" (0: the devices left over)")] = 0
    fsdp: Annotated[int, _AT_LEAST_1] = 1
    tensor: Annotated[int, _AT_LEAST_1] = 1
    rules: tuple[tuple[str, tuple[SpecEntry, ...] | None], ...] | None = None
    model_axis: MeshAxis | None = None
    gather: Literal["weights", "codes", "packed"] = "weights"

    def __post_init__(self):
        super().__post_init__()
        if self.gather != "weights" and self.model_axis is not None:
            raise ValueError(
                f"sharding.gather={self.gather!r} gathers codes inside one model's program, "
                f"which does not support models split over sharding.model_axis="
                f"{self.model_axis!r}; use sharding.model_axis=None, or sharding.gather="
                "'weights'")
        if self.rules is not None:
            from tern_jax.sharding import check_rules

            object.__setattr__(self, "rules", check_rules(self.rules, what="sharding.rules"))


#: The sections of a :class:`Config`, by field name.
SECTIONS: dict[str, type] = {
    "model": ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig,
    "schedule": ScheduleConfig, "checkpointing": CheckpointConfig, "stages": StagesConfig,
    "sharding": ShardingConfig}
_SECTION_NAMES = {cls: name for name, cls in SECTIONS.items()}


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run. Defaults: the offline digits quickstart's model
    and data with the paper's CIFAR optimizer (see the module docstring for the sections).

    A field the chosen model family and dataset do not read must keep its default (or "off":
    ``None``, ``False``, 0).
    """

    name: str = "quickstart_digits"
    seeds: Annotated[tuple[int, ...], _AT_LEAST_0] = (0,)
    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    schedule: ScheduleConfig = dataclasses.field(default_factory=ScheduleConfig)
    checkpointing: CheckpointConfig = dataclasses.field(default_factory=CheckpointConfig)
    stages: StagesConfig = dataclasses.field(default_factory=StagesConfig)
    sharding: ShardingConfig = dataclasses.field(default_factory=ShardingConfig)
    # steps per compiled call; 0 = a whole epoch as one lax.scan on GPU/TPU, single steps on CPU
    scan_steps: Annotated[int, _AT_LEAST_0] = 0
    progress: bool = True

    def __post_init__(self):
        for name, cls in SECTIONS.items():  # a dict of a section's fields becomes the section
            value = getattr(self, name)
            if isinstance(value, dict):
                object.__setattr__(self, name, _section(cls, name, value))
        check_fields(self)
        # the model family and the dataset: names, kinds, variants, fields
        family = check_config(self).family
        stages, schedule = self.stages, self.schedule
        if stages.finetune_epochs:
            if all(is_full_precision_rules(family.rules(v)) for v in self.model.variants):
                raise ValueError("stages.finetune_epochs > 0 needs a ternary variant to "
                                 "fine-tune, e.g. model.variants=fp,tern")
            if stages.init_from or stages.pretrained:
                raise ValueError("stages.finetune_epochs > 0 trains its own full-precision "
                                 "start; drop stages.init_from/pretrained, or set "
                                 "stages.finetune_epochs=0")
        if schedule.name == "bitnet" and 2 * schedule.warmup_epochs >= schedule.epochs:
            raise ValueError(
                f"schedule.name='bitnet' drops the rate at half the epochs; its warm-up must "
                f"end before: schedule.warmup_epochs={schedule.warmup_epochs} with "
                f"schedule.epochs={schedule.epochs}; use warmup_epochs < epochs / 2")
        if stages.distill_weight and FULL_PRECISION not in self.model.variants:
            raise ValueError("stages.distill_weight > 0 needs an 'fp' variant in "
                             "model.variants as the teacher")

    @property
    def slots(self) -> tuple[Slot, ...]:
        """The trained models in model-axis order, variant-major."""
        return tuple(Slot(v, s) for v in self.model.variants for s in self.seeds)

    @property
    def model_names(self) -> list[str]:
        """One label per trained model, variant-major: ``tern/seed1``."""
        return [slot.name for slot in self.slots]

    def to_dict(self) -> dict:
        """The config as nested plain values (sections as dicts), as ``config.json`` holds it."""
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)


def _section(cls, name: str, values: dict):
    """A section from a dict of its fields; an unknown key is named with the section's keys
    (and the section that has it, if one does)."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        elsewhere = [path for key in unknown for path in _all_paths()
                     if path.rsplit(".", 1)[-1] == key]
        hint = f"; did you mean {' or '.join(elsewhere)}?" if elsewhere else ""
        raise ValueError(f"{name} has no field {', '.join(unknown)}; its fields: "
                         f"{', '.join(sorted(known))}{hint}")
    return cls(**values)


_GENERATED_INIT = Config.__init__


def _init(self, *args, **kwargs):
    unknown = sorted(set(kwargs) - {f.name for f in dataclasses.fields(Config)})
    if unknown:  # a section's field given at the top: named by its dotted path
        raise _unknown(unknown[0])
    _GENERATED_INIT(self, *args, **kwargs)


_init.__doc__ = _GENERATED_INIT.__doc__
Config.__init__ = _init


def config_from(values: dict) -> Config:
    """A config from dotted paths to values (``{"data.batch_size": 128,
    "model.kwargs.d_model": 64}``; a path left out keeps its default), made and checked once:
    what a recipe builds with a caller's changes on top."""
    top, sections = {}, {}
    for key, value in values.items():
        if key.startswith("model.kwargs."):
            sections.setdefault("model", {}).setdefault("kwargs", {})[
                key.removeprefix("model.kwargs.")] = value
        elif key not in _all_paths():
            raise _unknown(key)
        elif "." in key:
            section, name = key.split(".", 1)
            if name == "kwargs":
                value = {**value, **sections.get(section, {}).get("kwargs", {})}
            sections.setdefault(section, {})[name] = value
        else:
            top[key] = value
    return Config(**top, **sections)


def quickstart_config() -> Config:
    """Digits (scikit-learn's bundled 8x8 scans), full precision vs ternarized, 2 CPU cores.

    No crop/flip augmentation: shifting an 8x8 digit by up to 4 pixels or mirroring it
    destroys it. Cosine decay over 15 epochs of SGD with Nesterov momentum.
    """
    return Config(name="quickstart_digits",
                  model=ModelConfig("small_cnn"),
                  data=DataConfig("digits", augment=False, batch_size=64),
                  optimizer=OptimizerConfig(learning_rate=0.05, weight_decay=5e-4),
                  schedule=ScheduleConfig(epochs=15, name="cosine"),
                  checkpointing=CheckpointConfig(every=5))


def flatten(config: Config) -> dict[str, Any]:
    """``{dotted path: value}`` of every field (``data.batch_size``; ``model.kwargs`` whole)."""
    flat = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if field.name in SECTIONS:
            for inner in dataclasses.fields(value):
                flat[f"{field.name}.{inner.name}"] = getattr(value, inner.name)
        else:
            flat[field.name] = value
    return flat


def _all_paths() -> list[str]:
    paths = []
    for field in dataclasses.fields(Config):
        if field.name in SECTIONS:
            paths += [f"{field.name}.{f.name}" for f in dataclasses.fields(SECTIONS[field.name])]
        else:
            paths.append(field.name)
    return paths


def _hint(path: str):
    """The annotation of a dotted path (``data.batch_size``)."""
    if "." not in path:
        return typing.get_type_hints(Config, include_extras=True)[path]
    section, name = path.split(".", 1)
    return typing.get_type_hints(SECTIONS[section], include_extras=True)[name]


def _unknown(path: str) -> ValueError:
    paths = _all_paths()
    leaf = path.rsplit(".", 1)[-1]
    near = [p for p in paths if p.rsplit(".", 1)[-1] == leaf]
    hint = f"; did you mean {' or '.join(near)}?" if near else f"; fields: {', '.join(paths)}"
    return ValueError(f"unknown config field {path!r}{hint}")


def override(config: Config, changes) -> Config:
    """``config`` with values replaced: ``field=value`` strings (the ``--set`` form:
    ``seeds=0,1``, ``schedule.milestones=80:0.1,120:0.1``, ``model.kwargs.d_model=512``), or a
    dict of dotted paths to values (``{"data.batch_size": 128}``)."""
    if isinstance(changes, dict):
        items = list(changes.items())
        parse = False
    elif isinstance(changes, str) or not isinstance(changes, (list, tuple)):
        raise TypeError(f"override: changes must be a list of 'path=value' strings or a dict "
                        f"of dotted paths, got {changes!r}; e.g. ['data.batch_size=8']")
    else:
        items = []
        for item in changes:
            if "=" not in item:
                raise ValueError(f"override {item!r} is not of the form field=value "
                                 "(e.g. data.batch_size=128)")
            key, value = item.split("=", 1)
            items.append((key.strip(), value))
        parse = True
    top, sections = {}, {}
    paths = set(_all_paths())
    for key, value in items:
        if key.startswith("model.kwargs."):
            name = key.removeprefix("model.kwargs.")
            kwargs = sections.setdefault("model", {}).setdefault(
                "kwargs", dict(sections.get("model", {}).get("kwargs", config.model.kwargs)))
            kwargs[name] = parse_json_value(value) if parse else value
            continue
        if key not in paths:
            raise _unknown(key)
        if parse:
            try:
                value = parse_value(value, _hint(key)) if key != "model.kwargs" else \
                    json.loads(value)
            except (ValueError, json.JSONDecodeError) as e:
                raise ValueError(f"bad value for {key}: {value!r} ({e})") from None
        if "." in key:
            section, name = key.split(".", 1)
            sections.setdefault(section, {})[name] = value
        else:
            top[key] = value
    for section, values in sections.items():
        top[section] = dataclasses.replace(getattr(config, section), **values)
    return dataclasses.replace(config, **top)


def load_config(name_or_path: str | None) -> Config:
    """A config from a Python file with ``get_config()``, or ``"quickstart"``/``None``."""
    if name_or_path in (None, "", "quickstart"):
        return quickstart_config()
    path = Path(name_or_path)
    if not path.exists() and not path.suffix:
        # a bare name: look in ./experiments/configs
        candidate = Path("experiments") / "configs" / f"{name_or_path}.py"
        if candidate.exists():
            path = candidate
    if path.is_dir():
        raise ValueError(f"config {name_or_path!r} is a folder; give a Python file with "
                         "get_config() in it")
    if path.is_file() and path.suffix != ".py":
        raise ValueError(f"config {name_or_path!r} is not a Python file (.py); a config is "
                         "Python code with get_config()")
    if not path.is_file():
        raise FileNotFoundError(
            f"config {name_or_path!r} not found; give a path to a Python file with get_config() "
            "(e.g. experiments/configs/cifar10_resnet20.py) or 'quickstart'"
        )
    spec = importlib.util.spec_from_file_location(f"tern_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as e:  # noqa: BLE001 - the user's config file raised: name where
        raise UserCodeError(f"config {path} failed to load at {where_it_failed(e)}") from e
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    try:
        config = module.get_config()
    except (ValueError, TypeError) as e:  # a Config refused: its own clear message
        raise type(e)(f"config {path}: {e}") from None
    except Exception as e:  # noqa: BLE001 - the user's get_config raised: name where
        raise UserCodeError(f"config {path}: get_config() failed at {where_it_failed(e)}") from e
    if not isinstance(config, Config):
        raise TypeError(f"{path}: get_config() must return tern_jax.train.Config")
    return config


def _tuples(value):
    """JSON lists back to the tuples the annotations name (pairs of milestones too)."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def from_json(text: str) -> Config:
    """The config of a ``config.json`` (:meth:`Config.to_json`); a key that is no field (at
    the top or in a section) is an error naming it."""
    data = json.loads(text)
    if not isinstance(data, dict):
        raise ValueError("config.json must hold an object of the config's fields")
    top = {f.name for f in dataclasses.fields(Config)}
    unknown = sorted(set(data) - top)
    if unknown:
        raise ValueError(f"config.json holds keys that are no Config field: {', '.join(unknown)}"
                         f"; fields: {', '.join(sorted(top))}")
    values = {}
    for key, value in data.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise ValueError(f"config.json: {key} must be an object of its fields")
            value = {k: (v if k == "kwargs" else _tuples(v)) for k, v in value.items()}
        else:
            value = _tuples(value)
        values[key] = value
    return Config(**values)


def differences(a: Config, b: Config) -> dict[str, tuple]:
    """The fields whose values differ, by dotted path in field order: ``{path: (a's, b's)}``.

    The one comparison of two configs: resuming a run and the processes of one job use it.
    """
    flat_a, flat_b = flatten(a), flatten(b)
    return {path: (flat_a[path], flat_b[path]) for path in flat_a
            if flat_a[path] != flat_b[path]}
