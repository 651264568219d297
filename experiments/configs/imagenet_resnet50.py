"""ImageNet ResNet-50 fine-tuned from torchvision's weights, ternarized (t_ex=1).

Pass the torchvision checkpoint: --set stages.pretrained=/path/to/resnet50-*.pth
"""

from tern_jax.train.recipes import imagenet_finetune


def get_config():
    return imagenet_finetune("resnet50", variants=("tern",))
