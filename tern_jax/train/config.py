"""Experiment configs: one frozen dataclass names a run completely (with its seeds).

Experiments live as Python files exposing ``get_config() -> Config`` (``experiments/configs``);
the command line loads one by path or by built-in name and overrides fields with
``--set field=value``. Model *variants* are named rule presets (:mod:`tern_jax.train.presets`):
several variants and seeds of one architecture train together in one program, vmapped over a
leading model axis.

This file is slightly longer than the project's ~350-line guide: the Config and the checks
of its fields (types, ranges, combinations) are kept in one place.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import typing
from pathlib import Path

from tern_jax.train.presets import (  # noqa: F401 (re-exported: the config's vocabulary)
    FULL_PRECISION,
    PRESETS,
    Slot,
    is_full_precision,
    is_language_model,
    presets_for,
    variant_rules,
)

__all__ = ["Config", "FULL_PRECISION", "PRESETS", "Slot", "is_full_precision", "variant_rules",
           "is_language_model", "presets_for", "load_config", "override", "quickstart_config",
           "differences"]

#: Accepted ranges of numeric fields: (lowest, lowest allowed?, highest, highest allowed?).
_RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "train_subset": (1, True, None, False), "test_subset": (1, True, None, False),
    "epochs": (1, True, None, False), "batch_size": (1, True, None, False),
    "learning_rate": (0, False, None, False), "momentum": (0, True, 1, False),
    "weight_decay": (0, True, None, False), "warmup_epochs": (0, True, None, False),
    "label_smoothing": (0, True, 1, False), "finetune_epochs": (0, True, None, False),
    "finetune_learning_rate": (0, False, None, False), "distill_weight": (0, True, None, False),
    # threshold_warmup and threshold_warmup_start: checked together in Config.__post_init__
    "distill_temperature": (0, False, None, False), "eval_batch_size": (1, True, None, False),
    "eval_every": (1, True, None, False), "checkpoint_every": (0, True, None, False),
    "keep_checkpoints": (1, True, None, False), "scan_steps": (0, True, None, False),
    "seeds": (0, True, None, False),
    "seq_len": (1, True, None, False), "steps_per_epoch": (1, True, None, False),
}

_NOTES = {
    "train_subset": " (None: the whole set)", "test_subset": " (None: the whole set)",
    "checkpoint_every": " (0: only at the end)",
    "keep_checkpoints": " (a run must keep its last checkpoint)",
}


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _range_text(name: str, kind: str) -> str:
    low, low_in, high, high_in = _RANGES[name]
    if high is None:
        bound = f"{'>=' if low_in else '>'} {low}"
        return f"{kind} {bound}"
    return f"{kind} in {'[' if low_in else '('}{low}, {high}{']' if high_in else ')'}"


def _in_range(name: str, value) -> bool:
    low, low_in, high, high_in = _RANGES[name]
    ok_low = value >= low if low_in else value > low
    ok_high = high is None or (value <= high if high_in else value < high)
    return ok_low and ok_high


def _check_fields(config) -> None:
    """Every field of the right type and in its range; the message names the field."""
    hints = typing.get_type_hints(type(config))
    for name, hint in hints.items():
        value = getattr(config, name)
        text = str(hint)
        optional = "None" in text
        if optional and value is None:
            continue
        suffix = " or None" if optional else ""
        if hint is bool:
            if not isinstance(value, bool):
                raise TypeError(f"{name} must be true or false, got {value!r}")
        elif hint is str or text == "str | None":
            if not isinstance(value, str):
                raise TypeError(f"{name} must be a string{suffix}, got {value!r}")
            if not value.strip():
                raise ValueError(f"{name} must be a non-empty string{suffix}, got {value!r}")
        elif hint is int or text == "int | None":
            what = (_range_text(name, "an integer") if name in _RANGES else "an integer")
            what += suffix + _NOTES.get(name, "")
            if not _is_int(value):
                raise TypeError(f"{name} must be {what}, got {value!r}")
            if name in _RANGES and not _in_range(name, value):
                raise ValueError(f"{name} must be {what}, got {value!r}")
        elif hint is float:
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TypeError(f"{name} must be a number, got {value!r}")
            if not math.isfinite(value):
                raise ValueError(f"{name} must be a finite number, got {value!r}")
            if name in _RANGES and not _in_range(name, value):
                raise ValueError(f"{name} must be {_range_text(name, 'a number')}, got {value!r}")
        elif text.startswith("tuple[tuple"):
            pairs_ok = isinstance(value, (tuple, list)) and all(
                isinstance(p, (tuple, list)) and len(p) == 2 and _is_int(p[0]) and p[0] >= 1
                and _is_number(p[1]) and p[1] > 0 for p in value)
            if not pairs_ok:
                raise ValueError(f"{name} must be (epoch, factor) pairs with epoch >= 1 and "
                                 f"factor > 0, e.g. ((80, 0.1), (120, 0.1)); got {value!r}")
        elif text.startswith("tuple[int"):
            if not isinstance(value, (tuple, list)) or not all(_is_int(v) for v in value):
                raise TypeError(f"{name} must be a tuple of integers, e.g. (0, 1), got {value!r}")
            bad = [v for v in value if name in _RANGES and not _in_range(name, v)]
            if bad or len(set(value)) != len(value):
                raise ValueError(f"{name} must be distinct integers >= 0, got {value!r}")
        elif text.startswith("tuple[str"):
            if not isinstance(value, (tuple, list)) or not all(isinstance(v, str) for v in value):
                raise TypeError(f"{name} must be a tuple of names, e.g. ('fp', 'tern'), got "
                                f"{value!r}")
            if len(set(value)) != len(value):
                raise ValueError(f"{name} must not repeat a name, got {value!r}")
    # model and dataset names are checked by the task that builds them (task_for)
    if config.compute_dtype not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"compute_dtype must be 'float32', 'bfloat16' or 'float16', got "
                         f"{config.compute_dtype!r}")
    if config.init_variant not in PRESETS:
        raise ValueError(f"init_variant must be one of {', '.join(PRESETS)}, got "
                         f"{config.init_variant!r}")


@dataclasses.dataclass(frozen=True)
class Config:
    """Everything that defines a training run. Defaults: the offline digits quickstart."""

    name: str = "quickstart_digits"
    # data
    dataset: str = "digits"  # "cifar10" | "digits" | "imagenet"
    data_dir: str | None = None
    train_subset: int | None = None  # use only this many training images (cheap proxies)
    test_subset: int | None = None
    augment: bool = True  # pad-4 random crop + flip (CIFAR recipe); on device
    stream: bool = False  # feed batches from the host (ImageNet path) instead of device memory
    # language models (model="transformer_*", dataset="text"|"tiny_shakespeare"): a local text
    # file or folder (None: the Python standard library's sources), the window length (None:
    # the model's max_len) and the steps of an "epoch" (None: one pass over the text)
    text_path: str | None = None
    seq_len: int | None = None
    steps_per_epoch: int | None = None
    # model
    model: str = "small_cnn"
    compute_dtype: str = "float32"  # "bfloat16" for mixed precision on GPU/TPU
    variants: tuple[str, ...] = ("fp", "tern")
    # how the model axis is computed: "vmap", "unroll" (a loop inside the one program), or
    # "auto" = vmap on GPU/TPU, unroll on CPU
    model_axis: str = "auto"
    seeds: tuple[int, ...] = (0,)
    # optimization (the paper's CIFAR recipe, METHOD.md section 3)
    epochs: int = 12
    batch_size: int = 64
    optimizer: str = "sgd"  # "sgd" (momentum, Nesterov) | "adam"
    learning_rate: float = 0.1
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 3e-4  # L2 added to the gradient, all parameters
    schedule: str = "multistep"  # "multistep" | "cosine" | "constant"
    milestones: tuple[tuple[int, float], ...] = ((6, 0.1), (9, 0.1))
    warmup_epochs: int = 0
    label_smoothing: float = 0.0
    # fine-tuning: start every model from the final params of another run's model ...
    init_from: str | None = None
    # ... or from a torchvision ResNet state_dict (.pth), as the paper's ImageNet recipe does
    pretrained: str | None = None
    init_variant: str = "fp"
    # two-stage recipe: with finetune_epochs > 0 the fp model trains `epochs` epochs first (the
    # run's pretrain/ folder), then every other variant starts from the fp model of its seed
    # and trains finetune_epochs more with its own learning rate and schedule (finetune/)
    finetune_epochs: int = 0
    finetune_learning_rate: float = 0.01
    finetune_schedule: str = "cosine"  # "cosine" | "constant"
    # distillation from the full-precision model trained alongside (weight on the KL term)
    distill_weight: float = 0.0
    distill_temperature: float = 4.0
    # threshold warm-up: every threshold Δ is scaled by a factor that ramps linearly from
    # threshold_warmup_start to 1 over the first threshold_warmup epochs (0 = off). Scale 0
    # keeps every nonzero weight (a binary-like start); test evaluation always uses the full Δ.
    threshold_warmup: float = 0.0
    threshold_warmup_start: float = 0.0
    # bookkeeping
    eval_batch_size: int = 500
    eval_every: int = 1  # epochs between test evaluations (the last epoch is always evaluated)
    checkpoint_every: int = 5  # epochs; 0 = only at the end
    keep_checkpoints: int = 2
    scan_steps: int = 0  # steps per compiled call; 0 = a whole epoch as one lax.scan
    progress: bool = True

    def __post_init__(self):
        _check_fields(self)
        for v in self.variants:
            variant_rules(v, self.model)
        if not self.variants or not self.seeds:
            raise ValueError("a run needs at least one variant and one seed")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("batch_size and epochs must be positive")
        if self.optimizer not in ("sgd", "adam"):
            raise ValueError(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        if self.schedule not in ("multistep", "cosine", "constant"):
            raise ValueError(
                f"schedule must be 'multistep', 'cosine' or 'constant', got {self.schedule!r}"
            )
        if self.model_axis not in ("auto", "vmap", "unroll"):
            raise ValueError(f"model_axis must be auto, vmap or unroll, got {self.model_axis!r}")
        if self.threshold_warmup < 0 or not 0.0 <= self.threshold_warmup_start <= 1.0:
            raise ValueError(
                "threshold_warmup must be >= 0 epochs and threshold_warmup_start in [0, 1], got "
                f"{self.threshold_warmup} and {self.threshold_warmup_start}"
            )
        if self.finetune_epochs < 0:
            raise ValueError(f"finetune_epochs must be >= 0, got {self.finetune_epochs}")
        if self.finetune_epochs:
            if self.finetune_schedule not in ("cosine", "constant"):
                raise ValueError(
                    f"finetune_schedule must be 'cosine' or 'constant', got "
                    f"{self.finetune_schedule!r} (milestones belong to the first stage)"
                )
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
    text = value.strip()
    if text.lower() in ("none", "null") and "None" in str(annotation):
        return None
    if "tuple[tuple" in str(annotation):
        pairs = [p for p in text.replace(" ", "").split(",") if p]
        out = []
        try:
            for p in pairs:
                epoch, factor = p.split(":")
                out.append((int(epoch), float(factor)))
        except ValueError:
            raise ValueError("expected EPOCH:FACTOR pairs such as 80:0.1,120:0.1") from None
        return tuple(out)
    if "tuple[int" in str(annotation):
        try:
            return tuple(int(t) for t in text.split(",") if t)
        except ValueError:
            raise ValueError("expected comma-separated integers such as 0,1") from None
    if "tuple[str" in str(annotation):
        return tuple(t for t in text.split(",") if t)
    if "bool" in str(annotation):
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if "int" in str(annotation) and "float" not in str(annotation):
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if "float" in str(annotation):
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
    data = json.loads(text)
    hints = typing.get_type_hints(Config)
    for key, value in list(data.items()):
        if key not in hints:
            data.pop(key)
        elif isinstance(value, list):
            data[key] = tuple(tuple(v) if isinstance(v, list) else v for v in value)
    return Config(**data)


def differences(a: Config, b: Config) -> dict[str, tuple]:
    """The fields whose values differ, in field order: ``{name: (a's value, b's value)}``.

    The one comparison of two configs: resuming a run and the processes of one job use it.
    """
    return {f.name: (getattr(a, f.name), getattr(b, f.name)) for f in dataclasses.fields(Config)
            if getattr(a, f.name) != getattr(b, f.name)}
