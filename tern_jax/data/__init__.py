"""Data layer: in-memory datasets (CIFAR-10, digits), on-device augmentation, ImageNet streams.

Every dataset a run can name is declared once in :mod:`tern_jax.data.specs` (a
:class:`Dataset`: its specs and its loader). ``load_dataset(name)`` returns an
:class:`ArrayDataset` for the small datasets that fit in memory; ImageNet is streamed with
:func:`imagenet_batches` instead.
"""

from __future__ import annotations

import inspect
import os
from typing import Any

from tern_jax._args import check_optional_path
from tern_jax.data.arrays import ArrayDataset, subset
from tern_jax.data.augment import (
    apply_crop_flip,
    augment_and_normalize,
    crop_flip_params,
    epoch_permutation,
    normalize,
    random_crop_flip,
)
from tern_jax.data.cifar10 import (
    CIFAR10_CLASSES,
    CIFAR10_MEAN,
    CIFAR10_STD,
    DataNotFoundError,
    download_cifar10,
    load_cifar10,
    read_cifar_folder,
)
from tern_jax.data.digits import load_digits
from tern_jax.data.imagenet import (
    IMAGENET_MEAN,
    IMAGENET_NUM_CLASSES,
    IMAGENET_STD,
    eval_transform,
    imagenet_batches,
    train_transform,
)
from tern_jax.data.specs import (
    DATASETS,
    IMAGES,
    TOKENS,
    Dataset,
    ImageDataset,
    StreamedImageDataset,
    TokenDataset,
    dataset_spec,
)

__all__ = [
    "CIFAR10_CLASSES",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "DATASETS",
    "IMAGES",
    "TOKENS",
    "Dataset",
    "ImageDataset",
    "StreamedImageDataset",
    "TokenDataset",
    "dataset_spec",
    "IMAGENET_MEAN",
    "IMAGENET_NUM_CLASSES",
    "IMAGENET_STD",
    "ArrayDataset",
    "DataNotFoundError",
    "apply_crop_flip",
    "augment_and_normalize",
    "crop_flip_params",
    "download_cifar10",
    "epoch_permutation",
    "eval_transform",
    "imagenet_batches",
    "load_cifar10",
    "load_dataset",
    "load_digits",
    "normalize",
    "random_crop_flip",
    "read_cifar_folder",
    "subset",
    "train_transform",
]

def load_dataset(
    name: str, data_dir: str | os.PathLike[str] | None = None, **kw: Any
) -> ArrayDataset:
    """Load an in-memory image dataset by name.

    Args:
        name: ``"cifar10"`` (see :func:`load_cifar10`; ``kw`` may hold ``source``) or
            ``"digits"`` (see :func:`load_digits`; ``kw`` may hold ``test_fraction``,
            ``seed``; it takes no ``data_dir``: the data ships with scikit-learn), or the import
            path of a :class:`Dataset`.
        data_dir: where to look for the data.
        **kw: passed on to the loader.

    Returns:
        The :class:`ArrayDataset`.

    Raises:
        TypeError: ``name`` is not a str, ``data_dir`` not a path, or ``kw`` holds an argument
            the loader does not take.
        ValueError: unknown name, or a dataset that is streamed (ImageNet: use
            :func:`imagenet_batches`) or not of images.
    """
    if not isinstance(name, str):
        raise TypeError(f"load_dataset: name must be a str, one of {', '.join(DATASETS)}; got "
                        f"{type(name).__name__} {name!r}")
    check_optional_path(data_dir, "data_dir", "load_dataset")
    try:
        spec = dataset_spec(name)
    except ValueError as e:
        raise ValueError(f"load_dataset: {e}") from None
    if isinstance(spec, StreamedImageDataset):
        raise ValueError(f"{spec.name} does not fit in memory; stream it with "
                         "tern_jax.data.imagenet_batches()")
    if not isinstance(spec, ImageDataset):
        raise ValueError(f"load_dataset loads images; {spec.name} holds {spec.kind} "
                         "(tern_jax.data.text.load_text reads it)")
    allowed = [p for p in inspect.signature(spec.load).parameters if p != "data_dir"]
    unknown = sorted(set(kw) - set(allowed))
    if unknown:
        raise TypeError(f"load_dataset: {name!r} takes no argument {', '.join(unknown)}; it "
                        f"takes {', '.join(allowed)}")
    if "data.data_dir" in spec.fields:
        kw["data_dir"] = data_dir
    return spec.load(**kw)
