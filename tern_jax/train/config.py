"""Experiment configs: one frozen dataclass names a run completely (with its seeds).

Experiments live as Python files exposing ``get_config() -> Config`` (``experiments/configs``);
the command line loads one by path or by built-in name and overrides fields with
``--set field=value``. Model *variants* are named rule presets (:mod:`tern_jax.presets`):
several variants and seeds of one architecture train together in one program, vmapped over a
leading model axis.

Every field is checked from its type annotation, once, when a config is made: its type, its
range (a :class:`~tern_jax.train.fields.Range` in ``Annotated``), its choices (``Literal``);
the ``--set`` parser reads the same annotations (:mod:`tern_jax.train.fields`). The model
family and the dataset then hold the config against what they read
(:func:`tern_jax.train.families.check_config`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import re
import typing
from pathlib import Path
from typing import Annotated, Literal, NamedTuple

from tern_jax.presets import FULL_PRECISION, PRESETS
from tern_jax.train.families import check_config, is_full_precision, variant_rules
from tern_jax.train.fields import Range, check_fields, parse_value

__all__ = ["Config", "FULL_PRECISION", "PRESETS", "Slot", "differences", "from_json",
           "is_full_precision", "load_config", "override", "quickstart_config", "variant_rules"]


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


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run. Defaults: the offline digits quickstart.

    ``model`` and ``dataset`` are a built-in name (:mod:`tern_jax.train.families`,
    :mod:`tern_jax.data.specs`) or the import path of the user's own (``"my_pkg.nets:MyNet"``).
    A field the chosen model family and dataset do not read must keep its default (or "off":
    ``None``, ``False``, 0).
    """

    name: str = "quickstart_digits"
    # data
    dataset: str = "digits"  # "cifar10" | "digits" | "imagenet" | "text" | ... | "pkg.mod:name"
    data_dir: str | None = None
    # use only this many training / test images (cheap proxies)
    train_subset: Annotated[int | None, _NONE_NOTE] = None
    test_subset: Annotated[int | None, _NONE_NOTE] = None
    augment: bool = True  # pad-4 random crop + flip (CIFAR recipe); on device
    stream: bool = False  # feed batches from the host (ImageNet path) instead of device memory
    # language models (model="transformer_*", dataset="text"|"tiny_shakespeare"): a local text
    # file or folder (None: the Python standard library's sources), the window length (None:
    # the model's max_len) and the steps of an "epoch" (None: one pass over the text)
    text_path: str | None = None
    seq_len: Annotated[int | None, _AT_LEAST_1] = None
    steps_per_epoch: Annotated[int | None, _AT_LEAST_1] = None
    # model
    model: str = "small_cnn"
    compute_dtype: Literal["float32", "bfloat16", "float16"] = "float32"  # bfloat16: GPU/TPU
    variants: tuple[str, ...] = ("fp", "tern")
    model_axis: ModelAxis = "auto"
    seeds: Annotated[tuple[int, ...], _AT_LEAST_0] = (0,)
    # optimization (the paper's CIFAR recipe, METHOD.md section 3)
    epochs: Annotated[int, _AT_LEAST_1] = 12
    batch_size: Annotated[int, _AT_LEAST_1] = 64
    optimizer: Literal["sgd", "adam", "adamw"] = "sgd"  # sgd: momentum, Nesterov; adamw:
    # weight decay decoupled from Adam's step (tern_jax.train.optim)
    learning_rate: Annotated[float, _POSITIVE] = 0.1
    momentum: Annotated[float, _FRACTION] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, _AT_LEAST_0] = 3e-4  # L2 added to the gradient, all params
    schedule: Literal["multistep", "cosine", "constant", "bitnet"] = "multistep"
    # "bitnet": BitNet b1.58's two-stage schedules, the rate dropping at half the steps and the
    # weight decay decaying to 0 by then (tern_jax.train.optim)
    weight_decay_schedule: Literal["constant", "bitnet"] = "constant"
    milestones: tuple[tuple[int, float], ...] = ((6, 0.1), (9, 0.1))
    warmup_epochs: Annotated[int, _AT_LEAST_0] = 0
    label_smoothing: Annotated[float, _FRACTION] = 0.0
    # fine-tuning: start every model from the final params of another run's model ...
    init_from: str | None = None
    # ... or from a torchvision ResNet state_dict (.pth), as the paper's ImageNet recipe does
    pretrained: str | None = None
    init_variant: str = "fp"
    # two-stage recipe: with finetune_epochs > 0 the fp model trains `epochs` epochs first (the
    # run's pretrain/ folder), then every other variant starts from the fp model of its seed
    # and trains finetune_epochs more with its own learning rate and schedule (finetune/)
    finetune_epochs: Annotated[int, _AT_LEAST_0] = 0
    finetune_learning_rate: Annotated[float, _POSITIVE] = 0.01
    finetune_schedule: Literal["cosine", "constant"] = "cosine"  # milestones: the first stage
    # distillation from the full-precision model trained alongside (weight on the KL term)
    distill_weight: Annotated[float, _AT_LEAST_0] = 0.0
    distill_temperature: Annotated[float, _POSITIVE] = 4.0
    # threshold warm-up: every threshold Δ is scaled by a factor that ramps linearly from
    # threshold_warmup_start to 1 over the first threshold_warmup epochs (0 = off). Scale 0
    # keeps every nonzero weight (a binary-like start); test evaluation always uses the full Δ.
    threshold_warmup: Annotated[float, _AT_LEAST_0] = 0.0
    threshold_warmup_start: Annotated[float, Range(0, 1, high_closed=True)] = 0.0
    # bookkeeping
    eval_batch_size: Annotated[int, _AT_LEAST_1] = 500
    # epochs between test evaluations (the last epoch is always evaluated)
    eval_every: Annotated[int, _AT_LEAST_1] = 1
    checkpoint_every: Annotated[int, Range(0, note=" (0: only at the end)")] = 5
    keep_checkpoints: Annotated[int, Range(1, note=" (a run must keep its last checkpoint)")] = 2
    # steps per compiled call; 0 = a whole epoch as one lax.scan
    scan_steps: Annotated[int, _AT_LEAST_0] = 0
    progress: bool = True

    def __post_init__(self):
        check_fields(self)
        check_config(self)  # the model family and the dataset: names, kinds, variants, fields
        if self.finetune_epochs:
            if all(is_full_precision(v, self.model) for v in self.variants):
                raise ValueError("finetune_epochs > 0 needs a ternary variant to fine-tune, "
                                 "e.g. variants=fp,tern")
            if self.init_from or self.pretrained:
                raise ValueError("finetune_epochs > 0 trains its own full-precision start; "
                                 "drop init_from/pretrained, or set finetune_epochs=0")
        if self.schedule == "bitnet" and 2 * self.warmup_epochs >= self.epochs:
            raise ValueError(f"schedule='bitnet' drops the rate at half the epochs; its warm-up "
                             f"must end before: warmup_epochs={self.warmup_epochs} with "
                             f"epochs={self.epochs}; use warmup_epochs < epochs / 2")
        if self.distill_weight and FULL_PRECISION not in self.variants:
            raise ValueError("distill_weight > 0 needs an 'fp' variant in the run as the teacher")

    @property
    def slots(self) -> tuple[Slot, ...]:
        """The trained models in model-axis order, variant-major."""
        return tuple(Slot(v, s) for v in self.variants for s in self.seeds)

    @property
    def model_names(self) -> list[str]:
        """One label per trained model, variant-major: ``tern/seed1``."""
        return [slot.name for slot in self.slots]

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)


def quickstart_config() -> Config:
    """Digits (scikit-learn's bundled 8x8 scans), full precision vs ternarized, 2 CPU cores.

    No crop/flip augmentation: shifting an 8x8 digit by up to 4 pixels or mirroring it
    destroys it. Cosine decay over 15 epochs of SGD with Nesterov momentum.
    """
    return Config(name="quickstart_digits", dataset="digits", model="small_cnn", augment=False,
                  epochs=15, batch_size=64, learning_rate=0.05, schedule="cosine",
                  weight_decay=5e-4, checkpoint_every=5)


def override(config: Config, assignments: list[str] | tuple[str, ...]) -> Config:
    """Applies ``field=value`` strings (``seeds=0,1``, ``milestones=80:0.1,120:0.1``)."""
    hints = typing.get_type_hints(Config)
    changes = {}
    for item in assignments:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form field=value")
        key, value = item.split("=", 1)
        key = key.strip()
        if key not in hints:
            raise ValueError(
                f"unknown config field {key!r}; fields: {', '.join(sorted(hints))}"
            )
        try:
            changes[key] = parse_value(value, hints[key])
        except ValueError as e:
            raise ValueError(f"bad value for {key}: {value!r} ({e})") from None
    return dataclasses.replace(config, **changes)


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
    if not path.is_file():
        raise FileNotFoundError(
            f"config {name_or_path!r} not found; give a path to a Python file with get_config() "
            "(e.g. experiments/configs/cifar10_resnet20.py) or 'quickstart'"
        )
    spec = importlib.util.spec_from_file_location(f"tern_jax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ValueError(f"{path} defines no get_config()")
    config = module.get_config()
    if not isinstance(config, Config):
        raise TypeError(f"{path}: get_config() must return tern_jax.train.Config")
    return config


def from_json(text: str) -> Config:
    """The config of a ``config.json`` (:meth:`Config.to_json`); a key that is no field is an
    error naming it (every field written by earlier versions is still a field)."""
    data = json.loads(text)
    hints = typing.get_type_hints(Config)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"config.json holds keys that are no Config field: {', '.join(unknown)}"
                         f"; fields: {', '.join(sorted(hints))}")
    for key, value in data.items():
        if isinstance(value, list):
            data[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return Config(**data)


def differences(a: Config, b: Config) -> dict[str, tuple]:
    """The fields whose values differ, in field order: ``{name: (a's value, b's value)}``.

    The one comparison of two configs: resuming a run and the processes of one job use it.
    """
    return {f.name: (getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(Config)
            if getattr(a, f.name) != getattr(b, f.name)}
