"""Objects named by import path, ``"package.module:Name"``, as big_vision names its models.

A config's ``model`` or ``dataset`` may name the user's own object this way, so a model or
dataset outside tern_jax trains without any edit to the library.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["describe", "is_import_path", "import_object"]


def is_import_path(name: Any) -> bool:
    """Whether ``name`` is written as ``"module:attribute"`` (a built-in name has no colon)."""
    return isinstance(name, str) and ":" in name


def import_object(path: str, what: str) -> Any:
    """The object at ``"package.module:Name"`` (``Name`` may be dotted: ``Outer.inner``).

    ``what`` names the config field in the errors, which say what was given and what is wrong.
    """
    module_name, _, attribute = path.partition(":")
    if not module_name.strip() or not attribute.strip():
        raise ValueError(f"{what} {path!r}: an import path is written 'package.module:Name'")
    try:
        obj = importlib.import_module(module_name.strip())
    except ImportError as e:
        raise ImportError(f"{what} {path!r}: cannot import module {module_name!r} ({e}); is its "
                          "folder on PYTHONPATH?") from None
    for part in attribute.strip().split("."):
        if not hasattr(obj, part):
            raise ValueError(f"{what} {path!r}: module {module_name!r} has no {attribute!r}")
        obj = getattr(obj, part)
    return obj


def describe(obj: Any) -> str:
    """What an imported object is, for messages: ``the class TinyNet``, ``a dict``."""
    if isinstance(obj, type):
        return f"the class {obj.__name__}"
    return f"a {type(obj).__name__}"
