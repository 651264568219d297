"""CIFAR-10 ResNet-20 ternarized by fine-tuning the full-precision models of a finished run
(the authors' scripts support this: --resume with --fine_tune), 80 epochs, lr 0.01, cosine.

    tern-jax train --config experiments/configs/cifar10_resnet20_finetune.py \\
        --workdir runs/r20_ft --set init_from=runs/r20   # runs/r20: cifar10_resnet20.py
"""

from tern_jax.train.recipes import cifar10_paper


def get_config():
    return cifar10_paper("resnet20", variants=("tern", "tern_pc"), seeds=(0, 1), epochs=80,
                         learning_rate=0.01, schedule="cosine", init_variant="fp",
                         name="cifar10_resnet20_finetune")
