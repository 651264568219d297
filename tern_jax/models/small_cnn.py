"""A tiny CNN for the 8x8 grey-scale digits of ``sklearn.datasets.load_digits``.

Used by the quickstart: it trains to high accuracy in seconds on a laptop CPU.
Layout for an ``(N, 8, 8, 1)`` input::

    stem_conv 3x3 pad 1, 32  + stem_bn + relu  -> (N, 8, 8, 32)
    conv2 3x3/2 pad 1, 64    + bn2 + relu      -> (N, 4, 4, 64)
    conv3 3x3 pad 1, 64      + bn3 + relu      -> (N, 4, 4, 64)
    global average pool                        -> (N, 64)
    head                                       -> (N, num_classes)

Parameter paths: ``stem_conv/kernel``, ``stem_bn/{scale,bias}``, ``conv2/kernel``,
``bn2/{scale,bias}``, ``conv3/kernel``, ``bn3/{scale,bias}``, ``head/{kernel,bias}``.
Initialization as in the CIFAR ResNets (He et al. 2016): He-normal fan-out
convolutions without bias, BN scale 1 / bias 0, He-normal fan-in head kernel with
zero bias. BatchNorm: ``epsilon=1e-5``, flax ``momentum=0.9``.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import linen as nn

from tern_jax.models.common import (
    Dtype,
    batch_norm,
    check_model_fields,
    classifier,
    conv,
    he_normal_fan_in,
)


class SmallCNN(nn.Module):
    """Three-conv CNN for small grey-scale images.

    Attributes:
        num_classes: size of the ``head`` output (10 for digits).
        width: channels of the stem; the two later convs use ``2 * width``.
        dtype: computation dtype (parameters stay float32).

    ``model.apply(variables, x, train)`` with NHWC ``x`` of shape ``(N, 8, 8, 1)``
    (any size / channel count works) returns logits ``(N, num_classes)``.
    """

    num_classes: int = 10
    width: int = 32
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:  # fail at construction for a bad field
        check_model_fields(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        def conv_bn_relu(y: jnp.ndarray, features: int, stride: int, conv_name: str, bn: str):
            y = conv(features, 3, stride, 1, dtype=self.dtype, name=conv_name)(y)
            return nn.relu(batch_norm(train, dtype=self.dtype, name=bn)(y))

        x = jnp.asarray(x, self.dtype)
        x = conv_bn_relu(x, self.width, 1, "stem_conv", "stem_bn")
        x = conv_bn_relu(x, 2 * self.width, 2, "conv2", "bn2")
        x = conv_bn_relu(x, 2 * self.width, 1, "conv3", "bn3")
        x = jnp.mean(x, axis=(1, 2))
        return classifier(
            self.num_classes, dtype=self.dtype, name="head", kernel_init=he_normal_fan_in
        )(x)
