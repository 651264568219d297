"""Argument checks at the entry of public functions (no dependencies beyond NumPy and JAX).

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, outside
the accepted range) with a message of one form: ``func: name must be <what to pass>, got
<what came>``, built by :func:`argument_error` (which other modules use for their own checks,
with :func:`describe` for the value). Checks look only at Python values, shapes and dtypes, so
they are free under ``jax.jit`` (shapes and dtypes are static there). :func:`is_int` is the
package's one test for an integer argument (defined in :mod:`tern_jax.core`, which loads alone
and so imports nothing of the package).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from tern_jax.core import is_int

__all__ = ["argument_error", "describe", "is_int", "check_int", "check_optional_int",
           "check_bool", "check_fraction", "check_path", "check_optional_path", "check_key",
           "check_float_dtype", "check_array", "check_callable", "unwritable_path_error"]


def describe(value) -> str:
    """What came, for the ``got ...`` of a message: an array's shape and dtype, else the type
    and a short repr."""
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def argument_error(error: type[Exception], func: str, name: str, what: str,
                   got: str) -> Exception:
    """The package's one form of argument error, to raise: ``func: name must be what, got got``.

    ``error`` is ``TypeError`` (wrong kind of value) or ``ValueError`` (outside the range);
    ``got`` is :func:`describe` of the value, or the value itself once its kind is known.
    """
    return error(f"{func}: {name} must be {what}, got {got}")


def check_int(value, name: str, func: str, *, minimum: int | None = None,
              maximum: int | None = None, optional: bool = False) -> int | None:
    """``value`` as an ``int``: an integer (not a bool or a float) within the bounds.

    With ``optional=True``, ``None`` is accepted too (and returned).
    """
    if optional and value is None:
        return None
    if minimum is not None and maximum is not None:
        what = f"an integer in [{minimum}, {maximum}]"
    elif minimum is not None:
        what = f"an integer >= {minimum}"
    elif maximum is not None:
        what = f"an integer <= {maximum}"
    else:
        what = "an integer"
    if optional:
        what += " or None"
    if not is_int(value):
        raise argument_error(TypeError, func, name, what, describe(value))
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise argument_error(ValueError, func, name, what, value)
    return value


def check_optional_int(value, name: str, func: str, *, minimum: int | None = None) -> int | None:
    """``None`` or :func:`check_int`."""
    return check_int(value, name, func, minimum=minimum, optional=True)


def check_bool(value, name: str, func: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise argument_error(TypeError, func, name, "True or False", describe(value))
    return bool(value)


def check_fraction(value, name: str, func: str) -> float:
    """A real number strictly between 0 and 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise argument_error(TypeError, func, name, "a number in (0, 1)", describe(value))
    if not 0.0 < float(value) < 1.0:
        raise argument_error(ValueError, func, name, "a number in (0, 1)", value)
    return float(value)


def check_path(value, name: str, func: str) -> Path:
    """A ``str`` or ``os.PathLike`` (not bytes, not empty), ``~`` expanded."""
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise argument_error(TypeError, func, name, "a str or os.PathLike path", describe(value))
    if not str(value).strip():
        raise ValueError(f"{func}: {name} is an empty path; give a file or folder name")
    return Path(value).expanduser()


def unwritable_path_error(path: Path, func: str) -> OSError | None:
    """Why ``path`` (a file or folder about to be created) cannot be, or ``None``.

    Looks at its nearest existing ancestor: a file there is a ``NotADirectoryError``, a folder
    this process cannot write into a ``PermissionError``; each message names ``path`` as the
    caller gave it and the ancestor at fault, never a temporary file. A missing parent folder
    is not an error here (a folder export creates it; a file writer checks it itself).
    """
    path = Path(path)
    ancestor = path.parent
    while not ancestor.exists() and ancestor != ancestor.parent:
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        return NotADirectoryError(f"{func}: cannot create {path}: {ancestor} is a file, not a "
                                  "folder; choose a path inside a folder")
    if not os.access(ancestor, os.W_OK | os.X_OK):
        return PermissionError(f"{func}: cannot create {path}: the folder {ancestor} is not "
                               "writable (permission denied); choose a folder you can write to")
    return None


def check_optional_path(value, name: str, func: str) -> Path | None:
    return None if value is None else check_path(value, name, func)


def check_key(value, name: str, func: str) -> None:
    """A JAX PRNG key: ``jax.random.key(seed)`` (or a legacy ``PRNGKey``, uint32 ``(2,)``)."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if getattr(value, "ndim", 0) != 0:
            raise argument_error(ValueError, func, name, "one PRNG key",
                                 f"{describe(value)}; pass jax.random.key(seed)")
        return
    if dtype is not None and dtype == jnp.uint32 and tuple(value.shape) == (2,):
        return
    raise argument_error(TypeError, func, name, "a JAX PRNG key such as jax.random.key(0)",
                         describe(value))


def check_float_dtype(value, name: str, func: str):
    """A floating dtype (``jnp.float32``, ``jnp.bfloat16``, ``"float16"`` ...) as a numpy dtype."""
    what = "a floating dtype such as jnp.float32 or jnp.bfloat16"
    try:
        if value is None:
            raise TypeError
        dtype = jnp.dtype(value)
    except TypeError:
        raise argument_error(TypeError, func, name, what, describe(value)) from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise argument_error(ValueError, func, name, what, dtype)
    return dtype


def check_array(value, name: str, func: str, *, ndim: int | None = None,
                what: str = "an array") -> None:
    """Something with a shape and dtype (a NumPy or JAX array), of rank ``ndim`` if given."""
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        raise argument_error(TypeError, func, name, what, describe(value))
    if ndim is not None and len(value.shape) != ndim:
        raise argument_error(ValueError, func, name, what, f"shape {tuple(value.shape)}")


def check_callable(value, name: str, func: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not callable(value):
        what = "a function such as print" + (" or None" if optional else "")
        raise argument_error(TypeError, func, name, what, describe(value))
