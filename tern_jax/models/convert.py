"""Convert torchvision ResNet checkpoints to :class:`~tern_jax.models.ImageNetResNet` variables.

The flax model mirrors torchvision's module names (see
:mod:`tern_jax.models.imagenet_resnet`), so conversion is a straight mapping:

=======================================  ==========================================
torchvision key                          flax variable
=======================================  ==========================================
``<m>.weight`` of a conv, (O, I, kh, kw) ``params/<m'>/kernel``, (kh, kw, I, O)
``fc.weight``, (out, in)                 ``params/fc/kernel``, (in, out)
``fc.bias``                              ``params/fc/bias``
``<bn>.weight`` / ``<bn>.bias``          ``params/<bn'>/scale`` / ``params/<bn'>/bias``
``<bn>.running_mean`` / ``running_var``  ``batch_stats/<bn'>/mean`` / ``.../var``
``<bn>.num_batches_tracked``             ignored
=======================================  ==========================================

where ``<m'>`` is ``<m>`` with ``layer{i}.{j}`` -> ``layer{i}_{j}``,
``downsample.0`` -> ``downsample_conv`` and ``downsample.1`` -> ``downsample_bn``.
A ``module.`` prefix on every key (from ``nn.DataParallel``) is stripped.

PyTorch is only needed by :func:`load_torchvision_checkpoint`; it is imported lazily.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from os import PathLike
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from tern_jax.models.imagenet_resnet import ImageNetResNet

TORCHVISION_ARCHS: dict[str, int] = {
    "resnet18": 18,
    "resnet34": 34,
    "resnet50": 50,
    "resnet101": 101,
    "resnet152": 152,
}

_IGNORED_SUFFIX = ".num_batches_tracked"
_BN_LEAF_TO_TORCH = {
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}


def _arch_depth(arch: str) -> int:
    key = arch.strip().lower() if isinstance(arch, str) else arch
    if key not in TORCHVISION_ARCHS:
        raise ValueError(
            f"unsupported arch {arch!r}; expected one of {', '.join(TORCHVISION_ARCHS)}"
        )
    return TORCHVISION_ARCHS[key]


def _torch_module_name(flax_modules: tuple[str, ...]) -> str:
    parts = []
    for name in flax_modules:
        m = re.fullmatch(r"layer(\d+)_(\d+)", name)
        if m:
            parts.append(f"layer{m.group(1)}.{m.group(2)}")
        elif name == "downsample_conv":
            parts.append("downsample.0")
        elif name == "downsample_bn":
            parts.append("downsample.1")
        else:
            parts.append(name)
    return ".".join(parts)


def _expected_entries(
    depth: int, num_classes: int
) -> dict[str, tuple[str, tuple[str, ...], tuple[int, ...], str]]:
    """torch key -> (collection, flax path, flax shape, kind) for the flax ResNet.

    ``kind`` is ``"conv"`` (OIHW -> HWIO), ``"linear"`` ((out, in) -> (in, out)) or
    ``"copy"``.
    """
    model = ImageNetResNet(depth=depth, num_classes=num_classes)
    shapes = jax.eval_shape(
        lambda: model.init(jax.random.key(0), jnp.zeros((1, 64, 64, 3), jnp.float32))
    )
    entries: dict[str, tuple[str, tuple[str, ...], tuple[int, ...], str]] = {}

    def walk(collection: str, tree: Any, path: tuple[str, ...]) -> None:
        if hasattr(tree, "items"):
            for k, v in tree.items():
                walk(collection, v, (*path, str(k)))
            return
        modules, leaf = path[:-1], path[-1]
        torch_module = _torch_module_name(modules)
        shape = tuple(tree.shape)
        if leaf == "kernel":
            torch_leaf, kind = "weight", ("conv" if len(shape) == 4 else "linear")
        elif leaf == "bias" and modules[-1] == "fc":
            torch_leaf, kind = "bias", "copy"
        else:
            torch_leaf, kind = _BN_LEAF_TO_TORCH[leaf], "copy"
        entries[f"{torch_module}.{torch_leaf}"] = (collection, path, shape, kind)

    for collection in ("params", "batch_stats"):
        walk(collection, shapes[collection], ())
    return entries


def _torch_shape(flax_shape: tuple[int, ...], kind: str) -> tuple[int, ...]:
    if kind == "conv":
        kh, kw, cin, cout = flax_shape
        return (cout, cin, kh, kw)
    if kind == "linear":
        fan_in, fan_out = flax_shape
        return (fan_out, fan_in)
    return flax_shape


def _to_numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # torch.Tensor, without importing torch
        value = value.detach().cpu().float().numpy()
    return np.asarray(value, dtype=np.float32)


def _format_keys(keys: list[str], limit: int = 10) -> str:
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def from_torchvision(state_dict: Mapping[str, Any], arch: str) -> dict[str, Any]:
    """Convert a torchvision ResNet ``state_dict`` to flax variables.

    Args:
        state_dict: mapping of torchvision parameter names to ``torch.Tensor`` or
            array-likes, e.g. ``torchvision.models.resnet50().state_dict()``.
        arch: ``"resnet18"``, ``"resnet34"``, ``"resnet50"``, ``"resnet101"`` or
            ``"resnet152"``. ``num_classes`` is read from ``fc.weight``.

    Returns:
        ``{"params": ..., "batch_stats": ...}`` (nested dicts of float32 numpy arrays)
        for ``ImageNetResNet(depth, num_classes)``; evaluate with ``train=False`` on
        NHWC input to reproduce the torch model's eval-mode logits.

    Raises:
        ValueError: unknown ``arch``; a missing, unexpected or mis-shaped key (the
            message names the key and the expected torch-layout shape).
    """
    depth = _arch_depth(arch)
    sd = {str(k): v for k, v in state_dict.items()}
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    if "fc.weight" not in sd:
        raise ValueError(
            f"missing key 'fc.weight' (expected shape (num_classes, {512 if depth < 50 else 2048}))"
            f" in the {arch} state_dict"
        )
    fc_shape = tuple(sd["fc.weight"].shape)
    if len(fc_shape) != 2:
        raise ValueError(
            f"key 'fc.weight': expected a 2-D (num_classes, in) tensor, got {fc_shape}"
        )
    entries = _expected_entries(depth, int(fc_shape[0]))

    ignored = {
        k
        for k in sd
        if k.endswith(_IGNORED_SUFFIX) and k[: -len(_IGNORED_SUFFIX)] + ".running_mean" in entries
    }
    missing = [k for k in entries if k not in sd]
    unexpected = [k for k in sd if k not in entries and k not in ignored]
    if missing or unexpected:
        parts = []
        if missing:
            details = [f"{k} (shape {_torch_shape(entries[k][2], entries[k][3])})" for k in missing]
            parts.append(f"missing key(s): {_format_keys(details)}")
        if unexpected:
            parts.append(f"unexpected key(s): {_format_keys(unexpected)}")
        raise ValueError(f"state_dict does not match torchvision {arch}: " + "; ".join(parts))

    variables: dict[str, Any] = {"params": {}, "batch_stats": {}}
    for key, (collection, path, flax_shape, kind) in entries.items():
        value = sd[key]
        expected = _torch_shape(flax_shape, kind)
        got = tuple(value.shape)
        if got != expected:
            raise ValueError(f"key {key!r}: expected shape {expected} for {arch}, got {got}")
        array = _to_numpy(value)
        if kind == "conv":
            array = array.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        elif kind == "linear":
            array = array.T  # (out, in) -> (in, out)
        node = variables[collection]
        for name in path[:-1]:
            node = node.setdefault(name, {})
        node[path[-1]] = np.ascontiguousarray(array, dtype=np.float32)
    return variables


def load_torchvision_checkpoint(path: str | PathLike[str], arch: str) -> dict[str, Any]:
    """Load a torchvision ResNet ``.pth`` file and convert it with :func:`from_torchvision`.

    The file may hold a plain ``state_dict`` or a dict with a ``"state_dict"`` or
    ``"model"`` entry (training checkpoints). It is read with
    ``torch.load(..., map_location="cpu", weights_only=True)``.

    Raises:
        ImportError: if PyTorch is not installed (``pip install torch``).
        ValueError: see :func:`from_torchvision`.
    """
    try:
        import torch
    except ImportError as err:  # pragma: no cover - depends on the environment
        raise ImportError(
            "load_torchvision_checkpoint needs PyTorch to read .pth files; "
            "install it with `pip install torch`"
        ) from err
    obj = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            inner = obj.get(wrapper)
            if isinstance(inner, Mapping):
                obj = inner
                break
    if not isinstance(obj, Mapping):
        raise ValueError(f"{path!s} does not contain a state_dict (got {type(obj).__name__})")
    return from_torchvision(obj, arch)
