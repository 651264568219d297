"""Flax (linen) model zoo.

All models take NHWC float input and are called as ``model.apply(variables, x, train)``;
with ``train=True`` BatchNorm uses batch statistics and ``batch_stats`` must be
mutable. None of them knows about ternarisation: quantisers select parameters by
regular expressions on their paths (e.g. ``stage1_block0/conv1/kernel``).

Example::

    model = get_model("resnet20", num_classes=10)
    variables = init_variables(model, jax.random.key(0), (1, 32, 32, 3))
    logits = model.apply(variables, x, train=False)
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from tern_jax.models.alexnet import AlexNet
from tern_jax.models.cifar_resnet import CifarBasicBlock, CifarResNet
from tern_jax.models.imagenet_resnet import BasicBlock, Bottleneck, ImageNetResNet
from tern_jax.models.small_cnn import SmallCNN

__all__ = [
    "MODEL_NAMES",
    "AlexNet",
    "BasicBlock",
    "Bottleneck",
    "CifarBasicBlock",
    "CifarResNet",
    "ImageNetResNet",
    "SmallCNN",
    "get_model",
    "init_variables",
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
        ValueError: for an unknown name (the message lists the valid names).
    """
    key = name.strip().lower() if isinstance(name, str) else name
    if key not in _REGISTRY:
        raise ValueError(f"unknown model {name!r}; valid names: {', '.join(MODEL_NAMES)}")
    if "depth" in kwargs:
        raise ValueError(f"model {name!r} has a fixed depth; do not pass depth=")
    return _REGISTRY[key](num_classes=num_classes, **kwargs)


def init_variables(
    model: nn.Module, rng: jax.Array, input_shape: Sequence[int], dtype: Any = jnp.float32
) -> dict[str, Any]:
    """Initialise ``model`` (jit-compiled) on a zero input of ``input_shape`` (NHWC, with batch).

    Returns:
        ``{"params": ..., "batch_stats": ...}`` as plain nested dicts
        (``batch_stats`` is ``{}`` for a model without BatchNorm).
    """
    shape = tuple(int(d) for d in input_shape)

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
