"""Model zoo: shapes, exact parameter counts, naming, initialization and BatchNorm state.

Compilation dominates on CPU, so most structural checks use ``jax.eval_shape`` (no
computation) and forward passes reuse a few input shapes.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tern_jax.models import (
    MODEL_NAMES,
    AlexNet,
    CifarResNet,
    ImageNetResNet,
    SmallCNN,
    get_model,
    init_variables,
)
from tern_jax.models.cifar_resnet import CifarBasicBlock, option_a_shortcut
from tern_jax.models.imagenet_resnet import BasicBlock

CIFAR_SHAPE = (2, 32, 32, 3)
IMAGENET_SHAPE = (1, 64, 64, 3)


def _normal(shape: tuple[int, ...], seed: int) -> np.ndarray:
    # numpy inputs: jax.random would compile a sampler for every new shape
    return np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)


def _key(seed: int) -> jax.Array:
    # Initializers are distribution-agnostic to the PRNG implementation; "rbg" keys compile
    # much faster than the default threefry on CPU, which keeps these tests quick.
    return jax.random.key(seed, impl="rbg")


def _flat(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Flatten a nested dict into ``{"a/b/c": leaf}``."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        path = f"{prefix}/{k}" if prefix else str(k)
        if hasattr(v, "items"):
            out.update(_flat(v, path))
        else:
            out[path] = v
    return out


def _abstract_variables(model, input_shape) -> dict[str, Any]:
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(input_shape)))


def _param_count(model, input_shape) -> int:
    params = _abstract_variables(model, input_shape)["params"]
    return sum(math.prod(a.shape) for a in jax.tree.leaves(params))


def _numpy_variables(model, input_shape, seed: int = 0) -> dict[str, Any]:
    """Cheap stand-in for ``model.init``: random kernels, identity BatchNorm, no compilation."""
    rng = np.random.default_rng(seed)
    abstract = _abstract_variables(model, input_shape)

    def fill(path: str, a) -> np.ndarray:
        leaf = path.rsplit("/", 1)[-1]
        if leaf == "kernel":
            fan_in = math.prod(a.shape[:-1])
            # tile a small random pool: drawing 10^7+ normals for AlexNet would dominate
            pool = rng.standard_normal(min(math.prod(a.shape), 1 << 16), dtype=np.float32)
            return np.resize(pool, a.shape) * np.float32(np.sqrt(2.0 / fan_in))
        if leaf in ("scale", "var"):
            return np.ones(a.shape, np.float32)
        return np.zeros(a.shape, np.float32)

    return {
        col: _unflat({p: fill(p, a) for p, a in _flat(abstract[col]).items()}) for col in abstract
    }


def _unflat(flat: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for path, v in flat.items():
        node = out
        *mods, leaf = path.split("/")
        for m in mods:
            node = node.setdefault(m, {})
        node[leaf] = v
    return out


@pytest.fixture(scope="module")
def resnet20_variables() -> dict[str, Any]:
    return init_variables(CifarResNet(depth=20, num_classes=10), _key(0), CIFAR_SHAPE)


# ------------------------------------------------------------------------------ CIFAR


def test_resnet20_exact_param_count() -> None:
    # stem: conv 3*3*3*16 = 432, BN 2*16 = 32                                  ->     464
    # stage1: 3 blocks x 2 x (conv 3*3*16*16 = 2304 + BN 32)                    ->  14,016
    # stage2: block0 conv 3*3*16*32 = 4608 + 64, conv 3*3*32*32 = 9216 + 64     ->  13,952
    #         blocks 1-2: 2 x 2 x (9216 + 64)                                   ->  37,120
    # stage3: block0 conv 3*3*32*64 = 18432 + 128, conv 3*3*64*64 = 36864 + 128 ->  55,552
    #         blocks 1-2: 2 x 2 x (36864 + 128)                                 -> 147,968
    # head: 64*10 + 10                                                          ->     650
    # total                                                                     -> 269,722
    assert _param_count(CifarResNet(depth=20, num_classes=10), CIFAR_SHAPE) == 269_722


@pytest.mark.parametrize("depth", [20, 32, 44, 56, 110])
def test_cifar_param_count_and_output_shape(depth: int) -> None:
    # Generalising the count above to n = (depth - 2) / 6 blocks per stage, with 10 classes:
    # 1114 (stem + head) + 4672 n + (18560 n - 4608) + (73984 n - 18432) = 97216 n - 21926.
    n = (depth - 2) // 6
    expected = 97_216 * n - 21_926
    if depth == 110:
        assert expected == 1_727_962  # "1.7M" in He et al. 2016, table 6
    model = CifarResNet(depth=depth, num_classes=10)
    out, variables = jax.eval_shape(  # abstract: no computation, only tracing
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros(CIFAR_SHAPE))
    )
    assert out.shape == (2, 10)
    assert sum(math.prod(a.shape) for a in jax.tree.leaves(variables["params"])) == expected
    assert len(_flat(variables["params"])) == 3 + 3 * n * 6 + 2  # stem, blocks, head


def _cifar_forward_and_stage_shapes(depth: int, variables) -> None:
    """Logits, and the output of the stem and of every block: 16, 32 and 64 channels on
    32x32, 16x16 and 8x8 maps (the first block of stages 2 and 3 halves the map)."""
    model = CifarResNet(depth=depth, num_classes=10)
    x = _normal(CIFAR_SHAPE, 1)
    logits, state = jax.jit(
        lambda v, x: model.apply(
            v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
    )(variables, x)
    assert logits.shape == (2, 10) and logits.dtype == jnp.float32
    assert bool(jnp.all(jnp.isfinite(logits)))
    inter = state["intermediates"]
    assert inter["stem_conv"]["__call__"][0].shape == (2, 32, 32, 16)
    n = (depth - 2) // 6
    shapes = {f"stage{i}_block{j}": inter[f"stage{i}_block{j}"]["__call__"][0].shape
              for i in (1, 2, 3) for j in range(n)}
    expected = {f"stage{i}_block{j}": (2, side, side, width)
                for i, side, width in ((1, 32, 16), (2, 16, 32), (3, 8, 64)) for j in range(n)}
    assert shapes == expected
    assert not any(name.startswith("stage4") for name in inter)
    np.testing.assert_array_equal(np.asarray(inter["head"]["__call__"][0]), np.asarray(logits))


def test_resnet20_forward(resnet20_variables) -> None:
    _cifar_forward_and_stage_shapes(20, resnet20_variables)


def test_resnet56_forward() -> None:
    variables = _numpy_variables(CifarResNet(depth=56, num_classes=10), CIFAR_SHAPE)
    _cifar_forward_and_stage_shapes(56, variables)


def test_cifar_param_paths(resnet20_variables) -> None:
    paths = set(_flat(resnet20_variables["params"]))
    for p in (
        "stem_conv/kernel",
        "stem_bn/scale",
        "stem_bn/bias",
        "stage1_block0/conv1/kernel",
        "stage1_block0/bn1/scale",
        "stage2_block0/conv2/kernel",
        "stage3_block2/bn2/bias",
        "head/kernel",
        "head/bias",
    ):
        assert p in paths, p
    assert not any("stage4" in p or "block3" in p for p in paths)
    assert not any(p.endswith("conv1/bias") or p.endswith("conv2/bias") for p in paths)
    stats = set(_flat(resnet20_variables["batch_stats"]))
    assert {"stem_bn/mean", "stem_bn/var", "stage3_block2/bn2/var"} <= stats
    # kernel shapes: HWIO
    flat = _flat(resnet20_variables["params"])
    assert flat["stem_conv/kernel"].shape == (3, 3, 3, 16)
    assert flat["stage2_block0/conv1/kernel"].shape == (3, 3, 16, 32)
    assert flat["head/kernel"].shape == (64, 10)


def test_cifar_init_statistics(resnet20_variables) -> None:
    flat = _flat(resnet20_variables["params"])
    # He et al. 2016 / fb.resnet.torch: N(0, sqrt(2 / (k * k * out_channels)))
    for path, out_ch in (("stage3_block1/conv1/kernel", 64), ("stage2_block1/conv2/kernel", 32)):
        k = np.asarray(flat[path])
        expected = math.sqrt(2.0 / (3 * 3 * out_ch))
        assert abs(k.std() / expected - 1.0) < 0.05, (path, k.std(), expected)
        assert abs(k.mean()) < 0.1 * expected
    np.testing.assert_array_equal(np.asarray(flat["stage1_block0/bn1/scale"]), 1.0)
    np.testing.assert_array_equal(np.asarray(flat["stage1_block0/bn1/bias"]), 0.0)
    np.testing.assert_array_equal(np.asarray(flat["head/bias"]), 0.0)
    head_std = np.asarray(flat["head/kernel"]).std()
    assert abs(head_std / math.sqrt(2.0 / 64) - 1.0) < 0.15  # He-normal, fan-in = 64
    stats = _flat(resnet20_variables["batch_stats"])
    np.testing.assert_array_equal(np.asarray(stats["stem_bn/mean"]), 0.0)
    np.testing.assert_array_equal(np.asarray(stats["stem_bn/var"]), 1.0)


def test_train_updates_batch_stats(resnet20_variables) -> None:
    model = CifarResNet(depth=20, num_classes=10)
    x = 3.0 + _normal(CIFAR_SHAPE, 2)
    logits, updates = model.apply(resnet20_variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (2, 10)
    old = _flat(resnet20_variables["batch_stats"])
    new = _flat(updates["batch_stats"])
    assert set(old) == set(new)
    # momentum 0.9 (PyTorch 0.1): new_mean = 0.9 * 0 + 0.1 * batch_mean(stem_conv(x))
    assert not np.allclose(np.asarray(new["stem_bn/mean"]), 0.0)
    conv_out = jax.lax.conv_general_dilated(
        x,
        resnet20_variables["params"]["stem_conv"]["kernel"],
        (1, 1),
        ((1, 1), (1, 1)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(
        np.asarray(new["stem_bn/mean"]),
        0.1 * np.asarray(conv_out.mean(axis=(0, 1, 2))),
        rtol=1e-4,
        atol=1e-6,
    )
    assert not np.allclose(np.asarray(new["stage3_block2/bn2/var"]), 1.0)
    # eval mode leaves the state alone and does not need it to be mutable
    _, unchanged = model.apply(resnet20_variables, x, train=False, mutable=["batch_stats"])
    for k, v in _flat(unchanged["batch_stats"]).items():
        np.testing.assert_array_equal(np.asarray(v), np.asarray(old[k]))


def test_option_a_shortcut_zero_pads_channels() -> None:
    x = _normal((2, 8, 8, 16), 3)
    y = option_a_shortcut(x, 32, 2)
    assert y.shape == (2, 4, 4, 32)
    np.testing.assert_array_equal(np.asarray(y[..., :16]), np.asarray(x[:, ::2, ::2, :]))
    np.testing.assert_array_equal(np.asarray(y[..., 16:]), 0.0)
    np.testing.assert_array_equal(np.asarray(option_a_shortcut(x, 16, 1)), np.asarray(x))
    assert option_a_shortcut(jnp.zeros((1, 7, 7, 16)), 32, 2).shape == (1, 4, 4, 32)


def test_option_a_block_has_no_projection_params() -> None:
    block = CifarBasicBlock(32, stride=2)
    x = _normal((2, 8, 8, 16), 4)
    variables = block.init(_key(5), x)
    assert set(variables["params"]) == {"conv1", "bn1", "conv2", "bn2"}
    # Silence the residual branch (bn2 scale = bias = 0): output = relu(shortcut).
    params = jax.tree.map(lambda a: a, variables["params"])
    params["bn2"] = {"scale": jnp.zeros(32), "bias": jnp.zeros(32)}
    y = block.apply({"params": params, "batch_stats": variables["batch_stats"]}, x)
    assert y.shape == (2, 4, 4, 32)
    np.testing.assert_allclose(
        np.asarray(y[..., :16]), np.maximum(np.asarray(x[:, ::2, ::2, :]), 0.0), atol=1e-6
    )
    np.testing.assert_array_equal(np.asarray(y[..., 16:]), 0.0)


def test_invalid_depth_and_unknown_name() -> None:
    for bad in (21, 18, 2, 0, -4):
        with pytest.raises(ValueError, match="6n\\+2"):
            CifarResNet(depth=bad)
    with pytest.raises(ValueError, match="18, 34, 50, 101"):
        ImageNetResNet(depth=19)
    with pytest.raises(ValueError, match="resnet20") as info:
        get_model("resnet21", num_classes=10)
    for name in MODEL_NAMES:
        assert name in str(info.value)


# ----------------------------------------------------------------------------- registry


def test_registry_builds_every_model() -> None:
    assert MODEL_NAMES == (
        "resnet8",
        "resnet20",
        "resnet32",
        "resnet44",
        "resnet56",
        "resnet110",
        "resnet18",
        "resnet34",
        "resnet50",
        "resnet101",
        "alexnet",
        "small_cnn",
    )
    shapes = {"alexnet": (1, 224, 224, 3), "small_cnn": (1, 8, 8, 1)}
    for name in MODEL_NAMES:
        model = get_model(name, num_classes=7)
        assert model.num_classes == 7
        if name in ("resnet8", "resnet20", "resnet32", "resnet44", "resnet56", "resnet110"):
            assert isinstance(model, CifarResNet) and model.depth == int(name[6:])
            shape = CIFAR_SHAPE
        elif name.startswith("resnet"):
            assert isinstance(model, ImageNetResNet) and model.depth == int(name[6:])
            shape = IMAGENET_SHAPE
        else:
            shape = shapes[name]
        if name in ("resnet20", "resnet18", "alexnet", "small_cnn"):  # other depths: above/below
            out, _ = jax.eval_shape(
                lambda m=model, s=shape: m.init_with_output(jax.random.key(0), jnp.zeros(s))
            )
            assert out.shape == (shape[0], 7), name
    assert isinstance(get_model("AlexNet", 10), AlexNet)
    assert isinstance(get_model("small_cnn", 10, width=8), SmallCNN)
    with pytest.raises(ValueError, match="depth"):
        get_model("resnet20", 10, depth=32)


# ----------------------------------------------------------------------------- ImageNet


@pytest.mark.parametrize(
    ("depth", "expected"),
    [(18, 11_689_512), (34, 21_797_672), (50, 25_557_032), (101, 44_549_160)],
)
def test_imagenet_resnet_param_counts(depth: int, expected: int) -> None:
    # identical to torchvision.models.resnet{depth}(num_classes=1000)
    assert _param_count(ImageNetResNet(depth=depth, num_classes=1000), IMAGENET_SHAPE) == expected


def test_imagenet_resnet_names_match_torchvision() -> None:
    r18 = _flat(_abstract_variables(ImageNetResNet(depth=18), IMAGENET_SHAPE)["params"])
    assert r18["conv1/kernel"].shape == (7, 7, 3, 64)
    assert r18["layer1_0/conv2/kernel"].shape == (3, 3, 64, 64)
    assert r18["layer2_0/downsample_conv/kernel"].shape == (1, 1, 64, 128)
    assert r18["layer4_1/bn2/scale"].shape == (512,)
    assert r18["fc/kernel"].shape == (512, 1000)
    assert "layer1_0/downsample_conv/kernel" not in r18
    r50 = _flat(_abstract_variables(ImageNetResNet(depth=50), IMAGENET_SHAPE)["params"])
    # v1.5: stride 2 lives on the 3x3 conv2; layer1_0 projects 64 -> 256 with stride 1
    assert r50["layer1_0/downsample_conv/kernel"].shape == (1, 1, 64, 256)
    assert r50["layer2_0/conv1/kernel"].shape == (1, 1, 256, 128)
    assert r50["layer2_0/conv2/kernel"].shape == (3, 3, 128, 128)
    assert r50["layer3_5/conv3/kernel"].shape == (1, 1, 256, 1024)
    assert r50["fc/kernel"].shape == (2048, 1000)
    assert "layer3_6/conv1/kernel" not in r50


def test_imagenet_resnet18_forward_and_spatial_sizes() -> None:
    model = ImageNetResNet(depth=18, num_classes=1000)
    variables = _numpy_variables(model, IMAGENET_SHAPE)
    x = _normal(IMAGENET_SHAPE, 6)
    logits, state = jax.jit(
        lambda v, x: model.apply(
            v, x, train=False, capture_intermediates=True, mutable=["intermediates"]
        )
    )(variables, x)
    assert logits.shape == (1, 1000)
    assert bool(jnp.all(jnp.isfinite(logits)))
    inter = state["intermediates"]
    # 64 -> conv1 /2 -> 32 -> maxpool /2 -> 16 -> layer2..4 /2 each -> 2
    assert inter["conv1"]["__call__"][0].shape == (1, 32, 32, 64)
    assert inter["layer1_1"]["__call__"][0].shape == (1, 16, 16, 64)
    assert inter["layer4_1"]["__call__"][0].shape == (1, 2, 2, 512)


def test_imagenet_resnet_torchvision_init() -> None:
    # Check the initializers on one block only (a full init compiles every layer).
    block = BasicBlock(128, stride=2, zero_init_residual=True)
    v = _flat(block.init(_key(7), jnp.zeros((1, 8, 8, 64)))["params"])
    k = np.asarray(v["conv2/kernel"])  # kaiming normal, fan_out = 3 * 3 * 128
    assert abs(k.std() / math.sqrt(2.0 / (9 * 128)) - 1.0) < 0.05
    np.testing.assert_array_equal(np.asarray(v["bn2/scale"]), 0.0)
    np.testing.assert_array_equal(np.asarray(v["bn1/scale"]), 1.0)
    assert v["downsample_conv/kernel"].shape == (1, 1, 64, 128)


# ------------------------------------------------------------------------------ AlexNet


def test_alexnet_param_count() -> None:
    # convs: 11*11*3*96 + 5*5*96*256 + 3*3*256*384 + 3*3*384*384 + 3*3*384*256 = 3,745,824
    # BN (scale + bias): 2 * (96 + 256 + 384 + 384 + 256 + 4096 + 4096)        =    19,136
    # fc6 9216*4096 + fc7 4096*4096 (no bias, BN follows)                        = 54,525,952
    # head 4096*1000 + 1000                                                      =  4,097,000
    assert _param_count(AlexNet(num_classes=1000), (1, 224, 224, 3)) == 62_387_912


def test_alexnet_spatial_sizes_224() -> None:
    model = AlexNet(num_classes=10)
    x = jnp.zeros((1, 224, 224, 3))
    logits, state = jax.eval_shape(
        lambda: model.init_with_output(
            jax.random.key(0), x, capture_intermediates=True, mutable=True
        )
    )
    assert logits.shape == (1, 10)
    inter = state["intermediates"]
    assert inter["conv1"]["__call__"][0].shape == (1, 55, 55, 96)
    assert inter["conv2"]["__call__"][0].shape == (1, 27, 27, 256)
    assert inter["conv5"]["__call__"][0].shape == (1, 13, 13, 256)
    assert inter["fc6"]["__call__"][0].shape == (1, 4096)
    params = state["params"]
    assert params["fc6"]["kernel"].shape == (6 * 6 * 256, 4096)
    assert "bias" not in params["conv1"] and "bias" not in params["fc6"]
    assert params["head"]["kernel"].shape == (4096, 10)
    # 227x227 (the original paper's effective size) gives the same feature sizes
    out227, _ = jax.eval_shape(
        lambda: model.init_with_output(jax.random.key(0), jnp.zeros((1, 227, 227, 3)))
    )
    assert out227.shape == (1, 10)


def test_alexnet_forward_and_dropout() -> None:
    # A 64x64 input keeps this fast; the adaptive 6x6 average pool makes it valid.
    model = AlexNet(num_classes=10)
    variables = _numpy_variables(model, (2, 64, 64, 3))
    x = _normal((2, 64, 64, 3), 9)
    evals = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    assert evals.shape == (2, 10) and bool(jnp.all(jnp.isfinite(evals)))
    train_step = jax.jit(
        lambda v, x, k: model.apply(v, x, train=True, rngs={"dropout": k}, mutable=["batch_stats"])
    )
    outs = [train_step(variables, x, _key(s)) for s in (0, 1)]
    assert outs[0][0].shape == (2, 10)
    assert not np.allclose(np.asarray(outs[0][0]), np.asarray(outs[1][0]))
    assert not np.allclose(np.asarray(outs[0][1]["batch_stats"]["bn6"]["mean"]), 0.0)
    # without dropout, train mode needs no "dropout" rng
    no_drop = AlexNet(num_classes=10, dropout_rate=0.0)
    out, _ = jax.eval_shape(
        lambda: no_drop.apply(variables, x, train=True, mutable=["batch_stats"])
    )
    assert out.shape == (2, 10)
    with pytest.raises(ValueError, match="too small"):
        jax.eval_shape(lambda: model.apply(variables, jnp.zeros((1, 62, 62, 3))))


# ---------------------------------------------------------------------------- small CNN


def test_small_cnn() -> None:
    model = get_model("small_cnn", num_classes=10)
    variables = init_variables(model, _key(10), (4, 8, 8, 1))
    assert set(variables) == {"params", "batch_stats"}
    paths = set(_flat(variables["params"]))
    assert {"stem_conv/kernel", "head/kernel", "head/bias", "conv2/kernel"} <= paths
    x = np.random.default_rng(11).uniform(size=(4, 8, 8, 1)).astype(np.float32)
    logits, updates = model.apply(variables, x, train=True, mutable=["batch_stats"])
    assert logits.shape == (4, 10)
    assert not np.allclose(np.asarray(updates["batch_stats"]["stem_bn"]["mean"]), 0.0)
    # reduced-precision compute keeps float32 parameters
    bf16 = SmallCNN(num_classes=10, dtype=jnp.bfloat16)
    out = jax.eval_shape(lambda: bf16.apply(variables, x))
    assert out.dtype == jnp.bfloat16 and out.shape == (4, 10)
