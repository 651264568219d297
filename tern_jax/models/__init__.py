"""Flax (linen) model zoo.

All models take NHWC float input and are called as ``model.apply(variables, x, train)``;
with ``train=True`` BatchNorm uses batch statistics and ``batch_stats`` must be
mutable. None of them knows about ternarization: quantizers select parameters by
regular expressions on their paths (e.g. ``stage1_block0/conv1/kernel``).

Example::

    model = get_model("resnet20", num_classes=10)
    variables = init_variables(model, jax.random.key(0), (1, 32, 32, 3))
    logits = model.apply(variables, x, train=False)
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from tern_jax._args import check_int, check_key
from tern_jax.models.alexnet import AlexNet
from tern_jax.models.cifar_resnet import CifarBasicBlock, CifarResNet
from tern_jax.models.imagenet_resnet import BasicBlock, Bottleneck, ImageNetResNet
from tern_jax.models.small_cnn import SmallCNN
from tern_jax.models.transformer import (
    TRANSFORMER_CONFIGS,
    Transformer,
    TransformerConfig,
    generate,
    transformer_config,
)

__all__ = [
    "MODEL_NAMES",
    "AlexNet",
    "BasicBlock",
    "Bottleneck",
    "CifarBasicBlock",
    "CifarResNet",
    "ImageNetResNet",
    "SmallCNN",
    "TRANSFORMER_CONFIGS",
    "Transformer",
    "TransformerConfig",
    "generate",
    "get_model",
    "init_variables",
    "transformer_config",
]

_REGISTRY: dict[str, Callable[..., nn.Module]] = {
    "resnet8": partial(CifarResNet, depth=8),  # a cheap proxy for CPU exploration
    "resnet20": partial(CifarResNet, depth=20),
    "resnet32": partial(CifarResNet, depth=32),
    "resnet44": partial(CifarResNet, depth=44),
    "resnet56": partial(CifarResNet, depth=56),
    "resnet110": partial(CifarResNet, depth=110),
    "resnet18": partial(ImageNetResNet, depth=18),
    "resnet34": partial(ImageNetResNet, depth=34),
    "resnet50": partial(ImageNetResNet, depth=50),
    "resnet101": partial(ImageNetResNet, depth=101),
    "alexnet": AlexNet,
    "small_cnn": SmallCNN,
}

_IMAGE_MODELS = (AlexNet, CifarResNet, ImageNetResNet, SmallCNN)

#: Names accepted by :func:`get_model`. ``resnet8``..``resnet110`` are the CIFAR
#: ResNets (6n+2); ``resnet18``..``resnet101`` are the ImageNet (torchvision) ones.
MODEL_NAMES: tuple[str, ...] = tuple(_REGISTRY)


def get_model(name: str, num_classes: int, **kwargs: Any) -> nn.Module:
    """Build a model by name.

    Args:
        name: one of :data:`MODEL_NAMES` (case-insensitive).
        num_classes: number of output logits.
        **kwargs: forwarded to the model class (e.g. ``dtype=jnp.bfloat16``,
            ``dropout_rate`` for AlexNet, ``zero_init_residual`` for ImageNet ResNets).

    Raises:
        TypeError: ``name`` is not a str, ``num_classes`` not an integer, or a keyword the
            model does not have (the message lists those it has).
        ValueError: for an unknown name (the message lists the valid names), a
            ``num_classes`` below 1, or a bad field value (e.g. a non-floating ``dtype``).
    """
    if not isinstance(name, str):
        raise TypeError(f"get_model: name must be a str, one of {', '.join(MODEL_NAMES)}; got "
                        f"{type(name).__name__} {name!r}")
    key = name.strip().lower()
    if key not in _REGISTRY:
        raise ValueError(f"get_model: unknown model {name!r}; valid names: "
                         f"{', '.join(MODEL_NAMES)}")
    check_int(num_classes, "num_classes", "get_model", minimum=1)
    if "depth" in kwargs:
        raise ValueError(f"get_model: model {name!r} has a fixed depth; do not pass depth=")
    factory = _REGISTRY[key]
    cls = factory.func if isinstance(factory, partial) else factory
    fields = sorted(f.name for f in dataclasses.fields(cls)
                    if f.name not in ("parent", "name", "depth", "num_classes"))
    unknown = sorted(set(kwargs) - set(fields) - {"name"})
    if unknown:
        raise TypeError(f"get_model: model {name!r} ({cls.__name__}) has no field "
                        f"{', '.join(unknown)}; its fields are {', '.join(fields)}")
    return factory(num_classes=num_classes, **kwargs)


def init_variables(
    model: nn.Module, rng: jax.Array, input_shape: Sequence[int], dtype: Any = jnp.float32
) -> dict[str, Any]:
    """Initialize ``model`` (jit-compiled) on a zero input of ``input_shape`` (NHWC, with batch).

    Args:
        model: a linen module (e.g. from :func:`get_model`).
        rng: a JAX PRNG key, ``jax.random.key(seed)``.
        input_shape: the input's shape with the batch axis, positive integers; NHWC
            (4 entries) for the image models of this zoo.
        dtype: the input's dtype (floating for the image models).

    Returns:
        ``{"params": ..., "batch_stats": ...}`` as plain nested dicts
        (``batch_stats`` is ``{}`` for a model without BatchNorm).

    Raises:
        TypeError/ValueError naming the argument, before anything is traced.
    """
    func = "init_variables"
    if not isinstance(model, nn.Module):
        raise TypeError(f"{func}: model must be a flax.linen Module such as "
                        f"get_model('resnet20', 10), got {type(model).__name__} {model!r:.40}")
    check_key(rng, "rng", func)
    if isinstance(input_shape, (str, bytes)) or not isinstance(input_shape, Sequence):
        raise TypeError(f"{func}: input_shape must be a tuple of ints such as (1, 32, 32, 3), "
                        f"got {type(input_shape).__name__} {input_shape!r}")
    shape = tuple(check_int(d, f"input_shape[{i}]", func, minimum=1)
                  for i, d in enumerate(input_shape))
    try:
        dtype = jnp.dtype(dtype)
    except TypeError:
        raise TypeError(f"{func}: dtype must be a dtype such as jnp.float32, got "
                        f"{dtype!r}") from None
    if isinstance(model, _IMAGE_MODELS):
        if len(shape) != 4:
            raise ValueError(f"{func}: input_shape must be NHWC with the batch axis, e.g. "
                             f"(1, 32, 32, 3), for {type(model).__name__}; got {shape}")
        if not jnp.issubdtype(dtype, jnp.floating):
            raise ValueError(f"{func}: dtype must be a floating dtype such as jnp.float32 for "
                             f"{type(model).__name__}'s images, got {dtype}")

    @jax.jit
    def _init(key: jax.Array) -> Any:
        return model.init(key, jnp.zeros(shape, dtype), train=False)

    variables = _init(rng)
    return {
        "params": _to_dict(variables.get("params", {})),
        "batch_stats": _to_dict(variables.get("batch_stats", {})),
    }


def _to_dict(tree: Any) -> Any:
    if hasattr(tree, "items"):
        return {k: _to_dict(v) for k, v in tree.items()}
    return tree
