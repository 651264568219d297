"""CIFAR-10 ResNet-44, the library's default recipe (`cifar10_best`): the paper's recipe
trains full precision, then the ternarized model (t_ex=1, all layers) fine-tunes from it;
2 seeds. The paper's exact recipe is `cifar10_resnet44_paper.py`."""

from tern_jax.train.recipes import cifar10_best


def get_config():
    return cifar10_best("resnet44", variants=("fp", "tern"), seeds=(0, 1))
