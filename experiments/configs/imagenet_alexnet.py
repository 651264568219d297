"""ImageNet AlexNet-BN, ternarized with first/last layers in full precision and all layers.

torchvision has no BatchNorm AlexNet, so unlike the ResNets this run starts from scratch
unless --set stages.init_from=RUN_DIR names a full-precision run to fine-tune.
"""

from tern_jax.train.recipes import imagenet_finetune


def get_config():
    return imagenet_finetune("alexnet", variants=("tern_fl", "tern"))
