"""torchvision ResNet -> flax conversion: logits must match the torch model in eval mode."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tern_jax.models import ImageNetResNet
from tern_jax.models.convert import from_torchvision, load_torchvision_checkpoint

torch = pytest.importorskip("torch")
tnn = torch.nn

# --------------------------------------------------------------------------------------
# A minimal torch ResNet with torchvision's state_dict keys and forward pass, used when
# torchvision is unavailable (its PyPI wheels are tied to specific torch builds).
# --------------------------------------------------------------------------------------


class _TorchBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2 = tnn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class _TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample=None) -> None:
        super().__init__()
        self.conv1 = tnn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = tnn.BatchNorm2d(planes)
        self.conv2 = tnn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn2 = tnn.BatchNorm2d(planes)
        self.conv3 = tnn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class _TorchResNet(tnn.Module):
    def __init__(self, block, layers, num_classes: int = 1000) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = tnn.Conv2d(3, 64, 7, 2, 3, bias=False)
        self.bn1 = tnn.BatchNorm2d(64)
        self.relu = tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(3, 2, 1)
        self.layer1 = self._make_layer(block, 64, layers[0], 1)
        self.layer2 = self._make_layer(block, 128, layers[1], 2)
        self.layer3 = self._make_layer(block, 256, layers[2], 2)
        self.layer4 = self._make_layer(block, 512, layers[3], 2)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512 * block.expansion, num_classes)

    def _make_layer(self, block, planes: int, blocks: int, stride: int):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(
                tnn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                tnn.BatchNorm2d(planes * block.expansion),
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


_SPECS = {
    "resnet18": (_TorchBasicBlock, (2, 2, 2, 2)),
    "resnet50": (_TorchBottleneck, (3, 4, 6, 3)),
}


def _torch_resnet(arch: str, num_classes: int = 1000) -> tnn.Module:
    try:
        import torchvision

        return getattr(torchvision.models, arch)(weights=None, num_classes=num_classes)
    except Exception:  # torchvision missing or incompatible with this torch build
        block, layers = _SPECS[arch]
        return _TorchResNet(block, layers, num_classes)


def _randomized(arch: str, num_classes: int = 1000, seed: int = 0) -> tnn.Module:
    """A torch ResNet with random weights and random (but sane) BN affine/running stats."""
    torch.manual_seed(seed)
    model = _torch_resnet(arch, num_classes)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, tnn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.2, 0.2)
                m.running_mean.uniform_(-0.2, 0.2)
                m.running_var.uniform_(0.5, 2.0)
        model.fc.weight.mul_(10.0)  # logits of order 1, so that atol=1e-4 is a tight check
    return model.eval()


@pytest.mark.parametrize("arch", ["resnet18", "resnet50"])
def test_logits_match_torch(arch: str) -> None:
    model_t = _randomized(arch, num_classes=1000)
    x = np.random.default_rng(1).standard_normal((1, 3, 64, 64)).astype(np.float32)
    with torch.no_grad():
        ref = model_t(torch.from_numpy(x)).numpy()

    variables = from_torchvision(model_t.state_dict(), arch)
    assert set(variables) == {"params", "batch_stats"}
    leaves = [variables["params"]["conv1"]["kernel"], variables["batch_stats"]["bn1"]["var"]]
    assert all(a.dtype == np.float32 for a in leaves)
    assert variables["params"]["conv1"]["kernel"].shape == (7, 7, 3, 64)

    depth = int(arch.removeprefix("resnet"))
    model = ImageNetResNet(depth=depth, num_classes=1000)
    out = jax.jit(lambda v, x: model.apply(v, x, train=False))(
        variables, jnp.asarray(x.transpose(0, 2, 3, 1))
    )
    out = np.asarray(out)
    assert out.shape == ref.shape == (1, 1000)
    assert np.std(ref) > 0.5  # the comparison is not between near-zero logits
    np.testing.assert_allclose(out, ref, atol=1e-4, rtol=0)


def test_num_classes_inferred_and_module_prefix_stripped() -> None:
    sd = _randomized("resnet18", num_classes=7).state_dict()
    sd = {f"module.{k}": v for k, v in sd.items()}  # as saved from nn.DataParallel
    variables = from_torchvision(sd, "resnet18")
    assert variables["params"]["fc"]["kernel"].shape == (512, 7)
    assert variables["params"]["layer2_0"]["downsample_conv"]["kernel"].shape == (1, 1, 64, 128)
    assert variables["batch_stats"]["layer2_0"]["downsample_bn"]["mean"].shape == (128,)
    assert "downsample_conv" not in variables["params"]["layer1_0"]


def test_wrong_key_raises() -> None:
    sd = dict(_randomized("resnet18", num_classes=10).state_dict())
    good = dict(sd)

    sd["layer1.0.conv1.weightt"] = sd.pop("layer1.0.conv1.weight")
    with pytest.raises(ValueError, match=r"layer1\.0\.conv1\.weight") as info:
        from_torchvision(sd, "resnet18")
    assert "missing" in str(info.value) and "unexpected" in str(info.value)

    extra = dict(good, **{"layer5.0.conv1.weight": good["conv1.weight"]})
    with pytest.raises(ValueError, match=r"unexpected.*layer5\.0\.conv1\.weight"):
        from_torchvision(extra, "resnet18")

    bad_shape = dict(good, **{"layer1.0.conv2.weight": torch.zeros(64, 64, 1, 1)})
    with pytest.raises(ValueError, match=r"layer1\.0\.conv2\.weight.*\(64, 64, 3, 3\)"):
        from_torchvision(bad_shape, "resnet18")

    # a ResNet-18 state_dict is not a ResNet-34 one
    with pytest.raises(ValueError, match=r"missing.*layer1\.2\.conv1\.weight"):
        from_torchvision(good, "resnet34")

    with pytest.raises(ValueError, match="unsupported arch"):
        from_torchvision(good, "resnet19")


def test_numpy_state_dict_and_checkpoint_file(tmp_path) -> None:
    model_t = _randomized("resnet18", num_classes=5)
    sd = model_t.state_dict()
    from_np = from_torchvision({k: v.numpy() for k, v in sd.items()}, "resnet18")
    path = tmp_path / "resnet18.pth"
    torch.save({"epoch": 3, "state_dict": sd}, path)
    from_file = load_torchvision_checkpoint(path, "resnet18")
    np.testing.assert_array_equal(
        from_np["params"]["layer3_1"]["conv2"]["kernel"],
        from_file["params"]["layer3_1"]["conv2"]["kernel"],
    )
    np.testing.assert_array_equal(from_file["params"]["fc"]["kernel"], sd["fc.weight"].numpy().T)
