"""ImageNet ResNets (18/34/50/101/152) in torchvision's layout.

Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016, table 1, as implemented by ``torchvision.models.resnet``
("ResNet v1.5": in a Bottleneck the stride sits on the 3x3 convolution).

Layout for an ``(N, 224, 224, 3)`` input::

    conv1 7x7/2 pad 3, 64        -> (N, 112, 112, 64)
    bn1, relu, maxpool 3x3/2 pad 1 -> (N, 56, 56, 64)
    layer1 (stride 1)            -> (N, 56, 56, 64 * e)
    layer2 (stride 2)            -> (N, 28, 28, 128 * e)
    layer3 (stride 2)            -> (N, 14, 14, 256 * e)
    layer4 (stride 2)            -> (N, 7, 7, 512 * e)
    global average pool, fc      -> (N, num_classes)

with expansion ``e = 1`` (BasicBlock, ResNet-18/34) or ``e = 4`` (Bottleneck,
ResNet-50/101/152). Every padding is explicit, ``((p, p), (p, p))`` exactly as in
PyTorch, so converted torchvision weights give the same logits (see
:mod:`tern_jax.models.convert`). Any input size of at least 32x32 works.

Module names mirror torchvision's ``state_dict`` keys, with the ``.`` between the
layer and the block index replaced by ``_`` and the ``downsample`` Sequential
flattened::

    torchvision                          flax parameter path
    conv1.weight                         conv1/kernel
    bn1.weight / bn1.bias                bn1/scale / bn1/bias
    bn1.running_mean / running_var       (batch_stats) bn1/mean / bn1/var
    layer{i}.{j}.conv{k}.weight          layer{i}_{j}/conv{k}/kernel
    layer{i}.{j}.bn{k}.weight            layer{i}_{j}/bn{k}/scale
    layer{i}.{j}.downsample.0.weight     layer{i}_{j}/downsample_conv/kernel
    layer{i}.{j}.downsample.1.weight     layer{i}_{j}/downsample_bn/scale
    fc.weight / fc.bias                  fc/kernel / fc/bias

(``i`` in 1..4, ``j`` from 0, ``k`` in 1..2 or 1..3.)

Initialization follows torchvision: convolutions He-normal with fan-out, BatchNorm
scale 1 / bias 0 (optionally scale 0 for the last BN of each block,
``zero_init_residual``), and PyTorch's default ``nn.Linear`` init for ``fc``
(kernel and bias ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``). BatchNorm uses
``epsilon=1e-5`` and flax ``momentum=0.9`` (PyTorch momentum 0.1).
"""

from __future__ import annotations

from typing import ClassVar

import jax.numpy as jnp
from flax import linen as nn

from tern_jax.models.common import (
    Dtype,
    batch_norm,
    check_model_fields,
    classifier,
    conv,
    torch_linear_bias_init,
    torch_linear_kernel_init,
)

#: depth -> (block type, blocks per layer)
RESNET_SPECS: dict[int, tuple[str, tuple[int, int, int, int]]] = {
    18: ("basic", (2, 2, 2, 2)),
    34: ("basic", (3, 4, 6, 3)),
    50: ("bottleneck", (3, 4, 6, 3)),
    101: ("bottleneck", (3, 4, 23, 3)),
    152: ("bottleneck", (3, 8, 36, 3)),
}
LAYER_WIDTHS: tuple[int, int, int, int] = (64, 128, 256, 512)


def resnet_spec(depth: int) -> tuple[str, tuple[int, int, int, int]]:
    """Return ``(block_type, blocks_per_layer)`` for a supported depth.

    Raises:
        ValueError: for a depth other than 18, 34, 50, 101 or 152.
    """
    if depth not in RESNET_SPECS:
        raise ValueError(
            f"ImageNet ResNet depth must be one of {sorted(RESNET_SPECS)}; got {depth!r}"
        )
    return RESNET_SPECS[depth]


def _shortcut(x: jnp.ndarray, out_ch: int, stride: int, train: bool, dtype: Dtype) -> jnp.ndarray:
    """Identity, or ``downsample_conv`` (1x1, ``stride``) + ``downsample_bn`` if the shape changes.

    Must be called from a block's ``nn.compact`` method (the layers become its children).
    """
    if stride == 1 and x.shape[-1] == out_ch:
        return x
    x = conv(out_ch, 1, stride, 0, dtype=dtype, name="downsample_conv")(x)
    return batch_norm(train, dtype=dtype, name="downsample_bn")(x)


class _ResidualBlock(nn.Module):
    """Fields shared by :class:`BasicBlock` and :class:`Bottleneck`.

    Attributes:
        features: width of the block's 3x3 convolution; the output has
            ``features * expansion`` channels.
        stride: stride of the block (on its 3x3 convolution and the ``downsample``).
        zero_init_residual: initialize the scale of the block's last BN to zero.
        dtype: computation dtype (parameters stay float32).
    """

    features: int
    stride: int = 1
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32

    expansion: ClassVar[int] = 1


class BasicBlock(_ResidualBlock):
    """torchvision ``BasicBlock``: 3x3 conv-BN-ReLU, 3x3 conv-BN, add, ReLU.

    ``(N, H, W, C_in) -> (N, H', W', features)`` with ``H' = floor((H - 1) / stride) + 1``.
    A ``downsample`` (1x1 conv with the block's stride + BN) projects the shortcut
    when the stride is not 1 or ``C_in != features``.
    """

    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        out_ch = self.features * self.expansion
        y = conv(self.features, 3, self.stride, 1, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
        y = conv(self.features, 3, 1, 1, dtype=self.dtype, name="conv2")(y)
        y = batch_norm(train, dtype=self.dtype, name="bn2", zero_scale=self.zero_init_residual)(y)
        return nn.relu(y + _shortcut(x, out_ch, self.stride, train, self.dtype))


class Bottleneck(_ResidualBlock):
    """torchvision ``Bottleneck`` (v1.5): 1x1 -> 3x3 (stride) -> 1x1 (x4), each with BN.

    ``(N, H, W, C_in) -> (N, H', W', 4 * features)``; the shortcut is projected by a
    1x1 conv + BN (``downsample_conv``, ``downsample_bn``) when the shape changes.
    """

    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        out_ch = self.features * self.expansion
        y = conv(self.features, 1, 1, 0, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
        y = conv(self.features, 3, self.stride, 1, dtype=self.dtype, name="conv2")(y)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn2")(y))
        y = conv(out_ch, 1, 1, 0, dtype=self.dtype, name="conv3")(y)
        y = batch_norm(train, dtype=self.dtype, name="bn3", zero_scale=self.zero_init_residual)(y)
        return nn.relu(y + _shortcut(x, out_ch, self.stride, train, self.dtype))


class ImageNetResNet(nn.Module):
    """ResNet-18/34/50/101/152 with torchvision's layout and parameter names.

    Attributes:
        depth: 18, 34 (BasicBlock) or 50, 101, 152 (Bottleneck).
        num_classes: size of the ``fc`` output (1000 for ImageNet).
        zero_init_residual: initialize the last BN scale of every block to zero
            (torchvision's option of the same name; off by default).
        dtype: computation dtype (parameters stay float32).

    ``model.apply(variables, x, train)`` with ``x`` of shape ``(N, H, W, 3)``
    (NHWC; 224x224 for ImageNet) returns logits ``(N, num_classes)``.
    """

    depth: int = 18
    num_classes: int = 1000
    zero_init_residual: bool = False
    dtype: Dtype = jnp.float32

    def __post_init__(self) -> None:  # fail at construction for a bad depth
        resnet_spec(self.depth)
        check_model_fields(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        kind, layers = resnet_spec(self.depth)
        block_cls = BasicBlock if kind == "basic" else Bottleneck
        x = jnp.asarray(x, self.dtype)
        x = conv(64, 7, 2, 3, dtype=self.dtype, name="conv1")(x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(x))
        x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        for i, (width, n_blocks) in enumerate(zip(LAYER_WIDTHS, layers, strict=True), start=1):
            for j in range(n_blocks):
                stride = 2 if (i > 1 and j == 0) else 1
                x = block_cls(
                    width,
                    stride=stride,
                    zero_init_residual=self.zero_init_residual,
                    dtype=self.dtype,
                    name=f"layer{i}_{j}",
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return classifier(
            self.num_classes,
            dtype=self.dtype,
            name="fc",
            kernel_init=torch_linear_kernel_init,
            bias_init=torch_linear_bias_init(x.shape[-1]),
        )(x)
