"""ImageNet ResNet-34 fine-tuned from torchvision's weights, ternarized (t_ex=1).

Pass the torchvision checkpoint: --set stages.pretrained=/path/to/resnet34-*.pth
"""

from tern_jax.train.recipes import imagenet_finetune


def get_config():
    return imagenet_finetune("resnet34", variants=("tern",))
