"""Building blocks shared by the model zoo.

Every model in :mod:`tern_jax.models` uses the same three layer recipes, so they live
here once:

* :func:`conv`: a square ``nn.Conv`` with explicit symmetric padding
  ``((pad, pad), (pad, pad))`` (as in PyTorch) and no bias, He-normal fan-out init
  by default;
* :func:`batch_norm`: ``nn.BatchNorm`` with PyTorch's defaults (``epsilon=1e-5``,
  momentum 0.1, i.e. flax ``momentum=0.9``), batch statistics when ``train``;
* :func:`classifier`: the final ``nn.Dense`` (zero bias unless told otherwise).

The helpers only construct modules; called inside an ``nn.compact`` method they
register under ``name`` exactly as an inline ``nn.Conv(..., name=name)`` would, so
parameter paths are those of the calling model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import linen as nn

from tern_jax._args import check_bool, check_float_dtype, check_int

Dtype = Any
Initializer = Callable[..., jax.Array]

#: He-normal, fan-out: ``N(0, sqrt(2 / (k * k * out_channels)))`` for an HWIO kernel
#: (torchvision's ``kaiming_normal_(mode="fan_out", nonlinearity="relu")``).
he_normal_fan_out: Initializer = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
#: He-normal, fan-in: ``N(0, sqrt(2 / fan_in))``.
he_normal_fan_in: Initializer = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
#: PyTorch ``nn.Linear`` default kernel init: ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``.
torch_linear_kernel_init: Initializer = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform"
)


def torch_linear_bias_init(fan_in: int) -> Initializer:
    """PyTorch ``nn.Linear`` default bias init ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``."""
    bound = 1.0 / math.sqrt(fan_in)

    def init(key: jax.Array, shape: tuple[int, ...], dtype: Dtype = jnp.float32) -> jax.Array:
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def conv(
    features: int,
    kernel: int,
    stride: int = 1,
    pad: int = 0,
    *,
    dtype: Dtype,
    name: str,
    kernel_init: Initializer = he_normal_fan_out,
) -> nn.Conv:
    """Bias-free ``kernel x kernel`` convolution with stride ``stride`` and ``pad`` per side."""
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        use_bias=False,
        kernel_init=kernel_init,
        dtype=dtype,
        name=name,
    )


def batch_norm(train: bool, *, dtype: Dtype, name: str, zero_scale: bool = False) -> nn.BatchNorm:
    """BatchNorm with PyTorch's defaults; scale initialized to 0 with ``zero_scale``, else 1."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        scale_init=nn.initializers.zeros if zero_scale else nn.initializers.ones,
        dtype=dtype,
        name=name,
    )


def classifier(
    num_classes: int,
    *,
    dtype: Dtype,
    name: str,
    kernel_init: Initializer,
    bias_init: Initializer = nn.initializers.zeros,
) -> nn.Dense:
    """Final dense layer ``(N, F) -> (N, num_classes)`` with a bias (zero by default)."""
    return nn.Dense(
        num_classes,
        kernel_init=kernel_init,
        bias_init=bias_init,
        dtype=dtype,
        name=name,
    )


def check_model_fields(module: nn.Module) -> None:
    """Checks a zoo model's common fields at construction (called from ``__post_init__``).

    ``num_classes`` and ``width`` are integers >= 1, ``dtype`` a floating dtype,
    ``dropout_rate`` a number in ``[0, 1)``, ``zero_init_residual`` a bool; raises
    ``TypeError``/``ValueError`` naming the class and the field.
    """
    cls = type(module).__name__
    check_int(module.num_classes, "num_classes", cls, minimum=1)
    check_float_dtype(module.dtype, "dtype", cls)
    if hasattr(module, "width"):
        check_int(module.width, "width", cls, minimum=1)
    if hasattr(module, "zero_init_residual"):
        check_bool(module.zero_init_residual, "zero_init_residual", cls)
    if hasattr(module, "dropout_rate"):
        rate = module.dropout_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)):
            raise TypeError(f"{cls}: dropout_rate must be a number in [0, 1), got "
                            f"{type(rate).__name__} {rate!r}")
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"{cls}: dropout_rate must be a number in [0, 1), got {rate}")
