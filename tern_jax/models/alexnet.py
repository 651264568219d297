"""AlexNet with BatchNorm after every convolution and hidden dense layer.

This is the AlexNet variant used for ternary-weight ImageNet experiments (Z. He,
B. Gong, D. Fan, "Optimize Deep Convolutional Neural Network with Ternarized
Weights and High Accuracy", WACV 2019), i.e. the classic single-tower AlexNet
(A. Krizhevsky, I. Sutskever, G. Hinton, NIPS 2012) without grouped convolutions
or local response normalisation, with BN inserted after each conv / hidden fc.

Spatial sizes for an ``(N, 224, 224, 3)`` input (a 227x227 input gives the same
sizes)::

    conv1 11x11/4 pad 2, 96  + bn1 + relu  -> (N, 55, 55, 96)
    maxpool 3x3/2                          -> (N, 27, 27, 96)
    conv2 5x5 pad 2, 256     + bn2 + relu  -> (N, 27, 27, 256)
    maxpool 3x3/2                          -> (N, 13, 13, 256)
    conv3 3x3 pad 1, 384     + bn3 + relu  -> (N, 13, 13, 384)
    conv4 3x3 pad 1, 384     + bn4 + relu  -> (N, 13, 13, 384)
    conv5 3x3 pad 1, 256     + bn5 + relu  -> (N, 13, 13, 256)
    maxpool 3x3/2                          -> (N, 6, 6, 256)
    adaptive average pool to 6x6 (identity at 224/227), flatten (NHWC order) -> (N, 9216)
    dropout, fc6 4096 + bn6 + relu
    dropout, fc7 4096 + bn7 + relu
    head                                   -> (N, num_classes)

As in torchvision, an adaptive average pool to 6x6 precedes the classifier, so
any input of at least 63x63 works (smaller inputs collapse a max-pool to zero).

Parameter paths: ``conv{1..5}/kernel``, ``bn{1..7}/{scale,bias}``,
``fc{6,7}/kernel``, ``head/{kernel,bias}``. Convolutions and hidden dense layers
have no bias (the following BN has one). Initialization: He-normal fan-out for
convolutions, He-normal fan-in for ``fc6``/``fc7``, and PyTorch's ``nn.Linear``
default (uniform, bound ``1/sqrt(fan_in)``) for the ``head`` kernel with a zero
bias. BatchNorm: ``epsilon=1e-5``, flax ``momentum=0.9``.

Dropout is active only with ``train=True`` and then needs a ``"dropout"`` RNG:
``model.apply(v, x, train=True, rngs={"dropout": key}, mutable=["batch_stats"])``.
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
    torch_linear_kernel_init,
)


def adaptive_avg_pool(x: jnp.ndarray, output_size: tuple[int, int]) -> jnp.ndarray:
    """PyTorch ``AdaptiveAvgPool2d`` for NHWC input (static shapes).

    Output bin ``i`` along an axis of length ``L`` averages the input indices
    ``floor(i * L / out) .. ceil((i + 1) * L / out) - 1``.
    """
    h, w = x.shape[1], x.shape[2]
    oh, ow = output_size
    if (h, w) == (oh, ow):
        return x

    def bins(length: int, out: int) -> list[tuple[int, int]]:
        return [((i * length) // out, -((-(i + 1) * length) // out)) for i in range(out)]

    rows = [jnp.mean(x[:, a:b], axis=1) for a, b in bins(h, oh)]  # each (N, W, C)
    x = jnp.stack(rows, axis=1)  # (N, oh, W, C)
    cols = [jnp.mean(x[:, :, a:b], axis=2) for a, b in bins(w, ow)]
    return jnp.stack(cols, axis=2)  # (N, oh, ow, C)


class AlexNet(nn.Module):
    """AlexNet-BN (He, Gong & Fan 2019 / Krizhevsky et al. 2012).

    Attributes:
        num_classes: size of the ``head`` output (1000 for ImageNet).
        dropout_rate: dropout before ``fc6`` and ``fc7`` when ``train=True``
            (0 disables it).
        dtype: computation dtype (parameters stay float32).

    ``model.apply(variables, x, train)`` with NHWC ``x`` of shape ``(N, 224, 224, 3)``
    returns logits ``(N, num_classes)``.
    """

    num_classes: int = 1000
    dropout_rate: float = 0.5
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:  # fail at construction for a bad field
        check_model_fields(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        def bn(name: str) -> nn.BatchNorm:
            return batch_norm(train, dtype=self.dtype, name=name)

        def cv(features: int, kernel: int, stride: int, pad: int, name: str) -> nn.Conv:
            return conv(features, kernel, stride, pad, dtype=self.dtype, name=name)

        def pool(y: jnp.ndarray) -> jnp.ndarray:
            return nn.max_pool(y, (3, 3), strides=(2, 2), padding="VALID")

        x = jnp.asarray(x, self.dtype)
        x = pool(nn.relu(bn("bn1")(cv(96, 11, 4, 2, "conv1")(x))))
        x = pool(nn.relu(bn("bn2")(cv(256, 5, 1, 2, "conv2")(x))))
        x = nn.relu(bn("bn3")(cv(384, 3, 1, 1, "conv3")(x)))
        x = nn.relu(bn("bn4")(cv(384, 3, 1, 1, "conv4")(x)))
        x = pool(nn.relu(bn("bn5")(cv(256, 3, 1, 1, "conv5")(x))))
        if x.shape[1] < 1 or x.shape[2] < 1:
            raise ValueError("AlexNet input is too small; use at least 63x63 (224x224 standard)")
        x = adaptive_avg_pool(x, (6, 6))
        x = x.reshape((x.shape[0], -1))
        for idx in (6, 7):
            x = nn.Dropout(self.dropout_rate, deterministic=not train)(x)
            x = nn.Dense(
                4096,
                use_bias=False,
                kernel_init=he_normal_fan_in,
                dtype=self.dtype,
                name=f"fc{idx}",
            )(x)
            x = nn.relu(bn(f"bn{idx}")(x))
        return classifier(
            self.num_classes, dtype=self.dtype, name="head", kernel_init=torch_linear_kernel_init
        )(x)
