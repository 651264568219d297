"""CIFAR-10 ResNet-20: the second stage of the default recipe on its own, fine-tuning the
ternarized models (t_ex=1) from the full-precision models of an existing run, e.g. the
paper-recipe row, whose fp models are the default recipe's first stage (same recipe, seeds
and batches). So one paper-recipe run plus this one give both table rows:

    tern-jax train --config experiments/configs/cifar10_resnet20_paper.py --workdir runs/r20_paper
    tern-jax train --config experiments/configs/cifar10_resnet20_finetune.py \\
        --workdir runs/r20_finetune --set stages.init_from=runs/r20_paper
"""

from tern_jax.train import override, stage_configs
from tern_jax.train.recipes import cifar10_best


def get_config():
    _, finetune = stage_configs(cifar10_best("resnet20", variants=("fp", "tern")), "unused")
    return override(finetune, {"name": "cifar10_resnet20_finetune",
                               "stages.init_from": "runs/r20_paper"})
