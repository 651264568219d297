"""ImageNet ResNet-18 fine-tuned with residual expansion t_ex=2 and t_ex=4.

Pass the torchvision checkpoint: --set stages.pretrained=/path/to/resnet18-*.pth
"""

from tern_jax.train.recipes import imagenet_finetune


def get_config():
    return imagenet_finetune("resnet18", variants=("tern_t2", "tern_t4"),
                             changes={"name": "imagenet_resnet18_expansion"})
