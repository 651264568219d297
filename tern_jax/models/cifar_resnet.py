"""CIFAR ResNets of He et al. (2016), depth ``6n + 2`` (20/32/44/56/110).

Reference: K. He, X. Zhang, S. Ren, J. Sun, "Deep Residual Learning for Image
Recognition", CVPR 2016, section 4.2. The network is

* a 3x3 stem convolution with 16 filters (stride 1, padding 1) + BN + ReLU,
* three stages of ``n`` BasicBlocks with 16, 32 and 64 filters on feature maps of
  32x32, 16x16 and 8x8 (for a 32x32 input); the first block of stages 2 and 3
  downsamples with stride 2 in its first convolution,
* global average pooling and a fully connected classifier.

Shortcuts are the parameter-free "option A" of the paper: an identity when the
shape is unchanged; otherwise the input is subsampled with ``x[:, ::2, ::2, :]``
and the new channels are filled with zeros (appended after the existing ones).

Initialization follows the authors' CIFAR code (fb.resnet.torch): convolutions
``N(0, sqrt(2 / (k * k * out_channels)))`` (He/"kaiming" normal, fan-out), no
convolution bias, BatchNorm scale 1 and bias 0, and a He-normal (fan-in) kernel
with zero bias for the classifier. BatchNorm uses PyTorch's defaults: momentum 0.1
(flax ``momentum=0.9``) and ``epsilon=1e-5``.

Module names are stable so that parameters can be selected by regular
expressions on their paths::

    stem_conv/kernel                 (3, 3, 3, 16)
    stem_bn/scale, stem_bn/bias      (16,)
    stage{i}_block{j}/conv1/kernel   i in 1..3, j in 0..n-1
    stage{i}_block{j}/bn1/{scale,bias}
    stage{i}_block{j}/conv2/kernel
    stage{i}_block{j}/bn2/{scale,bias}
    head/kernel                      (64, num_classes)   (width 16; 4·width in general)
    head/bias                        (num_classes,)

The models know nothing about ternarization; quantizers act on the parameter
tree from outside.
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

CIFAR_STAGE_WIDTHS: tuple[int, int, int] = (16, 32, 64)


def blocks_per_stage(depth: int) -> int:
    """Return ``n`` for a CIFAR ResNet of the given depth ``6n + 2``.

    Raises:
        ValueError: if ``depth`` is not an integer of the form ``6n + 2`` with ``n >= 1``.
    """
    if not isinstance(depth, int) or isinstance(depth, bool) or depth < 8 or (depth - 2) % 6:
        raise ValueError(
            f"CIFAR ResNet depth must be 6n+2 with n >= 1 (e.g. 20, 32, 44, 56, 110); got {depth!r}"
        )
    return (depth - 2) // 6


def option_a_shortcut(x: jnp.ndarray, out_channels: int, stride: int) -> jnp.ndarray:
    """Parameter-free "option A" shortcut.

    Args:
        x: ``(N, H, W, C)`` input.
        out_channels: number of output channels ``C' >= C``.
        stride: 1 or 2; with 2 the input is subsampled as ``x[:, ::2, ::2, :]``.

    Returns:
        ``(N, ceil(H / stride), ceil(W / stride), C')`` with channels ``C..C'-1``
        equal to zero.
    """
    if stride != 1:
        x = x[:, ::stride, ::stride, :]
    extra = out_channels - x.shape[-1]
    if extra < 0:
        raise ValueError(f"option A cannot reduce channels ({x.shape[-1]} -> {out_channels})")
    if extra:
        x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return x


class CifarBasicBlock(nn.Module):
    """Two 3x3 conv-BN layers with an option-A shortcut.

    ``(N, H, W, C_in) -> (N, ceil(H/stride), ceil(W/stride), features)``.
    """

    features: int
    stride: int = 1
    dtype: Dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        s = self.stride
        y = conv(self.features, 3, s, 1, dtype=self.dtype, name="conv1")(x)
        y = nn.relu(batch_norm(train, dtype=self.dtype, name="bn1")(y))
        y = conv(self.features, 3, 1, 1, dtype=self.dtype, name="conv2")(y)
        y = batch_norm(train, dtype=self.dtype, name="bn2")(y)
        shortcut = option_a_shortcut(x, self.features, s)
        return nn.relu(y + shortcut.astype(y.dtype))


class CifarResNet(nn.Module):
    """CIFAR ResNet (He et al. 2016), depth ``6n + 2``.

    Attributes:
        depth: 20, 32, 44, 56, 110, ... (any ``6n + 2``).
        num_classes: size of the classifier output.
        dtype: computation dtype (parameters stay float32).
        width: filters of the stem and the first stage (the paper's 16); the second and
            third stages have ``2·width`` and ``4·width``.

    Call ``model.apply(variables, x, train)`` with ``x`` of shape ``(N, H, W, 3)``
    (32x32 for CIFAR; any size works thanks to global pooling). Returns logits
    ``(N, num_classes)``. With ``train=True`` BatchNorm uses batch statistics and
    updates ``batch_stats`` (pass ``mutable=["batch_stats"]``).
    """

    depth: int = 20
    num_classes: int = 10
    dtype: Dtype = jnp.float32
    width: int = CIFAR_STAGE_WIDTHS[0]

    def __post_init__(self) -> None:  # fail at construction for a bad depth
        blocks_per_stage(self.depth)
        check_model_fields(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        n = blocks_per_stage(self.depth)
        x = jnp.asarray(x, self.dtype)
        widths = [w * self.width // CIFAR_STAGE_WIDTHS[0] for w in CIFAR_STAGE_WIDTHS]
        x = conv(widths[0], 3, 1, 1, dtype=self.dtype, name="stem_conv")(x)
        x = nn.relu(batch_norm(train, dtype=self.dtype, name="stem_bn")(x))
        for i, width in enumerate(widths, start=1):
            for j in range(n):
                stride = 2 if (i > 1 and j == 0) else 1
                x = CifarBasicBlock(
                    width, stride=stride, dtype=self.dtype, name=f"stage{i}_block{j}"
                )(x, train=train)
        x = jnp.mean(x, axis=(1, 2))
        return classifier(
            self.num_classes, dtype=self.dtype, name="head", kernel_init=he_normal_fan_in
        )(x)
