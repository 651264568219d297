"""CIFAR-10 ResNet-20 with residual expansion t_ex=2 and t_ex=4 (paper recipe), 2 seeds."""

from tern_jax.train.recipes import cifar10_paper


def get_config():
    return cifar10_paper("resnet20", variants=("tern_t2", "tern_t4"), seeds=(0, 1),
                         name="cifar10_resnet20_expansion")
