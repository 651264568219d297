"""CIFAR-10 ResNet-20: the ternarized model distils from the full-precision model that trains
beside it on the same batches (KL at temperature 4, weight 1); paper recipe otherwise."""

from tern_jax.train.recipes import cifar10_paper


def get_config():
    return cifar10_paper("resnet20", variants=("fp", "tern"), seeds=(0, 1),
                         changes={"stages.distill_weight": 1.0,
                                  "name": "cifar10_resnet20_distill"})
