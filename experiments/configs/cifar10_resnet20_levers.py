"""CIFAR-10 ResNet-20, one change at a time against the paper's quantizer, same recipe:
paper (per tensor), per-channel scales, TWN and absmean, beside full precision; 2 seeds.
Models with the same seed see the same batches, so the differences are the quantizers'."""

from tern_jax.train.recipes import cifar10_paper


def get_config():
    return cifar10_paper("resnet20", variants=("fp", "tern", "tern_pc", "twn", "absmean"),
                         seeds=(0, 1), changes={"name": "cifar10_resnet20_levers"})
