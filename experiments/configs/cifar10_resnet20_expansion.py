"""CIFAR-10 ResNet-20 with residual expansion t_ex=2 and t_ex=4, default recipe (fp, then
ternary fine-tuning from it), 2 seeds; t_ex=1 is the row of cifar10_resnet20.py."""

from tern_jax.train.recipes import cifar10_best


def get_config():
    return cifar10_best("resnet20", variants=("fp", "tern_t2", "tern_t4"), seeds=(0, 1),
                        changes={"name": "cifar10_resnet20_expansion"})
