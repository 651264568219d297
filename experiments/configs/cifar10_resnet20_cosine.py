"""CIFAR-10 ResNet-20, the paper's recipe with cosine decay instead of the step schedule."""

from tern_jax.train.recipes import cifar10_paper


def get_config():
    return cifar10_paper("resnet20", variants=("fp", "tern"), seeds=(0, 1),
                         changes={"schedule.name": "cosine",
                                  "name": "cifar10_resnet20_cosine"})
