"""Experiment configs: one frozen dataclass names a run completely (with its seeds).

Experiments live as Python files exposing ``get_config() -> Config`` (``experiments/configs``);
the command line loads one by path or by built-in name and overrides fields with
``--set field=value``. Model *variants* are named rule presets (:mod:`tern_jax.presets`):
several variants and seeds of one architecture train together in one program, vmapped over a
leading model axis.

Every field is checked from its type annotation, once, when a config is made: its type, its
range (an :class:`Range` in ``Annotated``), its choices (``Literal``); the ``--set`` parser and
``from_json`` read the same annotations. The model family and the dataset then hold the config
against what they read (:func:`tern_jax.train.families.check_config`).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import re
import types
import typing
from pathlib import Path
from typing import Annotated, Literal, NamedTuple, Union

from tern_jax.presets import FULL_PRECISION, PRESETS
from tern_jax.train.families import check_config, is_full_precision, variant_rules

__all__ = ["Config", "FULL_PRECISION", "PRESETS", "Range", "Slot", "check_fields", "from_json",
           "is_full_precision", "load_config", "override", "quickstart_config", "variant_rules"]


class Range(NamedTuple):
    """The accepted values of a numeric field, written in its annotation
    (``Annotated[int, Range(1)]``: an integer >= 1); ``note`` ends the error message."""

    low: float | None = None
    high: float | None = None
    low_closed: bool = True
    high_closed: bool = False
    note: str = ""

    def holds(self, value) -> bool:
        low_ok = self.low is None or (value >= self.low if self.low_closed else value > self.low)
        high_ok = self.high is None or (value <= self.high if self.high_closed
                                        else value < self.high)
        return low_ok and high_ok

    def text(self) -> str:
        if self.high is None:
            return f"{'>=' if self.low_closed else '>'} {self.low}"
        return (f"in {'[' if self.low_closed else '('}{self.low}, {self.high}"
                f"{']' if self.high_closed else ')'}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unwrap(hint):
    """``(base type, Range or None, optional?)`` of a field's annotation."""
    bounds = None
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        bounds = next((e for e in extras if isinstance(e, Range)), None)
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    return hint, bounds, optional


def _choices(options) -> str:
    quoted = [repr(o) for o in options]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _check_value(name: str, hint, value) -> None:
    """One field's value against its annotation; the message names the field and the value."""
    base, bounds, optional = _unwrap(hint)
    if optional and value is None:
        return
    suffix = " or None" if optional else ""
    note = bounds.note if bounds else ""
    origin = typing.get_origin(base)
    if base is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false, got {value!r}")
    elif base is str:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string{suffix}, got {value!r}")
        if not value.strip():
            raise ValueError(f"{name} must be a non-empty string{suffix}, got {value!r}")
    elif origin is Literal:
        if value not in typing.get_args(base):
            raise ValueError(f"{name} must be {_choices(typing.get_args(base))}, got {value!r}")
    elif base is int:
        what = f"an integer{' ' + bounds.text() if bounds else ''}{suffix}{note}"
        if not _is_int(value):
            raise TypeError(f"{name} must be {what}, got {value!r}")
        if bounds and not bounds.holds(value):
            raise ValueError(f"{name} must be {what}, got {value!r}")
    elif base is float:
        if not _is_number(value):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if bounds and not bounds.holds(value):
            raise ValueError(f"{name} must be a number {bounds.text()}{note}, got {value!r}")
    elif origin is tuple:
        _check_tuple(name, typing.get_args(base)[0], bounds, value)
    else:  # an annotation this checker does not know: a field added without its check
        raise TypeError(f"{name}: no check for the annotation {base!r}")


def _check_tuple(name: str, item, bounds: Range | None, value) -> None:
    if typing.get_origin(item) is tuple:  # (epoch, factor) pairs
        pairs_ok = isinstance(value, (tuple, list)) and all(
            isinstance(p, (tuple, list)) and len(p) == 2 and _is_int(p[0]) and p[0] >= 1
            and _is_number(p[1]) and math.isfinite(p[1]) and p[1] > 0 for p in value)
        if not pairs_ok:
            raise ValueError(f"{name} must be (epoch, factor) pairs with epoch >= 1 and "
                             f"factor > 0, e.g. ((80, 0.1), (120, 0.1)); got {value!r}")
        return
    example, what = ("(0, 1)", "integers") if item is int else ("('fp', 'tern')", "names")
    if isinstance(value, dict):  # e.g. variants=PRESETS
        raise TypeError(f"{name}: you passed a dict of presets; pick names from it, e.g. "
                        f"{name}={example} (the dict has {', '.join(map(str, value))})")
    kind = _is_int if item is int else (lambda v: isinstance(v, str))
    if not isinstance(value, (tuple, list)) or not all(kind(v) for v in value):
        raise TypeError(f"{name} must be a tuple of {what}, e.g. {example}, got {value!r}")
    if not value:
        raise ValueError(f"{name} must hold at least one value, e.g. {example}")
    in_range = bounds is None or all(bounds.holds(v) for v in value)
    if not in_range or len(set(value)) != len(value):
        bound = f" {bounds.text()}" if bounds else ""
        raise ValueError(f"{name} must be distinct {what}{bound}, got {value!r}")


def check_fields(obj, names=None) -> None:
    """Every field of the dataclass ``obj`` (or those in ``names``) against its annotation."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for field in dataclasses.fields(obj):
        if names is None or field.name in names:
            _check_value(field.name, hints[field.name], getattr(obj, field.name))


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
    A field the chosen model family and dataset do not read must keep its default.
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
    optimizer: Literal["sgd", "adam"] = "sgd"  # sgd: momentum, Nesterov
    learning_rate: Annotated[float, _POSITIVE] = 0.1
    momentum: Annotated[float, _FRACTION] = 0.9
    nesterov: bool = True
    weight_decay: Annotated[float, _AT_LEAST_0] = 3e-4  # L2 added to the gradient, all params
    schedule: Literal["multistep", "cosine", "constant"] = "multistep"
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


def _parse(value: str, annotation):
    """Parses a ``--set`` value for a field of the given type annotation."""
    base, _, optional = _unwrap(annotation)
    text = value.strip()
    if optional and text.lower() in ("none", "null"):
        return None
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        if typing.get_origin(item) is tuple:
            try:
                pairs = [p.split(":") for p in text.replace(" ", "").split(",") if p]
                return tuple((int(epoch), float(factor)) for epoch, factor in pairs)
            except ValueError:
                raise ValueError("expected EPOCH:FACTOR pairs such as 80:0.1,120:0.1") from None
        if item is int:
            try:
                return tuple(int(t) for t in text.split(",") if t)
            except ValueError:
                raise ValueError("expected comma-separated integers such as 0,1") from None
        return tuple(t for t in text.split(",") if t)
    if base is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if base is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if base is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    return text


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
            changes[key] = _parse(value, hints[key])
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
