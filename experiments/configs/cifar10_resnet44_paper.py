"""CIFAR-10 ResNet-44, the paper's exact recipe from scratch (METHOD.md section 3): full
precision and ternarized (t_ex=1, all layers), 2 seeds, one program."""

from tern_jax.train.recipes import cifar10_paper


def get_config():
    return cifar10_paper("resnet44", variants=("fp", "tern"), seeds=(0, 1))
