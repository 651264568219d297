"""What a model needs to know of a dataset before any of it is read: classes and input shape.

Restoring a run's weights builds the models from these figures alone (``jax.eval_shape`` of
the initialization), so reading a checkpoint never loads a dataset.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["DatasetSpec", "dataset_spec"]


class DatasetSpec(NamedTuple):
    """The shape of one example and the number of classes of a named dataset."""

    name: str
    num_classes: int
    image_shape: tuple[int, int, int]


_SPECS = {
    "digits": DatasetSpec("digits", 10, (8, 8, 1)),
    "cifar10": DatasetSpec("cifar10", 10, (32, 32, 3)),
    # the standard 224x224 crops of the paper's ImageNet recipe (random-resized / center crop)
    "imagenet": DatasetSpec("imagenet", 1000, (224, 224, 3)),
}
_ALIASES = {"cifar-10": "cifar10", "cifar_10": "cifar10", "imagenet2012": "imagenet"}


def dataset_spec(name: str) -> DatasetSpec:
    """The :class:`DatasetSpec` of ``name`` (``digits``, ``cifar10``, ``imagenet``)."""
    if not isinstance(name, str):
        raise TypeError(f"dataset must be a name such as 'cifar10', got {type(name).__name__}")
    key = _ALIASES.get(name.lower(), name.lower())
    if key not in _SPECS:
        raise ValueError(f"unknown dataset {name!r}; choose one of {', '.join(_SPECS)}")
    return _SPECS[key]
