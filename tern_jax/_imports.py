"""Objects named by import path, ``"package.module:Name"``, as big_vision names its models.

A config's ``model`` or ``dataset`` may name the user's own object this way, so a model or
dataset outside tern_jax trains without any edit to the library.
"""

from __future__ import annotations

import importlib
import traceback
from typing import Any

__all__ = ["UserCodeError", "describe", "is_import_path", "import_object", "where_it_failed"]


class UserCodeError(RuntimeError):
    """The user's own module or config file raised while tern_jax imported or ran it; the
    message names the file, the line and the exception (it is not tern_jax's error)."""


def where_it_failed(error: BaseException) -> str:
    """``file, line N: Type: message`` of the deepest frame of an exception raised in the
    user's code (a syntax error: where it is)."""
    if isinstance(error, SyntaxError) and error.filename:
        place = f"{error.filename}, line {error.lineno}"
        return f"{place}: {type(error).__name__}: {error.msg}"
    frames = [f for f in traceback.extract_tb(error.__traceback__)
              if "importlib" not in f.filename and "/tern_jax/" not in f.filename
              and not f.filename.startswith("<")]  # generated code: a dataclass's __init__
    place = f"{frames[-1].filename}, line {frames[-1].lineno}: " if frames else ""
    return f"{place}{type(error).__name__}: {error}"


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
    except Exception as e:  # noqa: BLE001 - the user's module raised: name where
        raise UserCodeError(f"{what} {path!r}: importing module {module_name!r} failed at "
                            f"{where_it_failed(e)}") from e
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
