"""Argument checks at the entry of public functions (no dependencies beyond NumPy and JAX).

Each check raises ``TypeError`` (wrong kind of value) or ``ValueError`` (right kind, outside
the accepted range) with a message of one form: ``func: name must be <what to pass>, got
<what came>``. Checks look only at Python values, shapes and dtypes, so they are free under
``jax.jit`` (shapes and dtypes are static there).
"""

from __future__ import annotations

import os
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np


def _got(value) -> str:
    if hasattr(value, "shape") and hasattr(value, "dtype"):
        return f"an array of shape {tuple(value.shape)} and dtype {value.dtype}"
    text = repr(value)
    if len(text) > 60:
        text = text[:57] + "..."
    return f"{type(value).__name__} {text}"


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


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
        raise TypeError(f"{func}: {name} must be {what}, got {_got(value)}")
    value = int(value)
    if (minimum is not None and value < minimum) or (maximum is not None and value > maximum):
        raise ValueError(f"{func}: {name} must be {what}, got {value}")
    return value


def check_optional_int(value, name: str, func: str, *, minimum: int | None = None) -> int | None:
    """``None`` or :func:`check_int`."""
    return check_int(value, name, func, minimum=minimum, optional=True)


def check_bool(value, name: str, func: str) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{func}: {name} must be True or False, got {_got(value)}")
    return bool(value)


def check_fraction(value, name: str, func: str) -> float:
    """A real number strictly between 0 and 1."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.number)):
        raise TypeError(f"{func}: {name} must be a number in (0, 1), got {_got(value)}")
    if not 0.0 < float(value) < 1.0:
        raise ValueError(f"{func}: {name} must be a number in (0, 1), got {value}")
    return float(value)


def check_path(value, name: str, func: str) -> Path:
    """A ``str`` or ``os.PathLike`` (not bytes, not empty), ``~`` expanded."""
    if isinstance(value, bytes) or not isinstance(value, (str, os.PathLike)):
        raise TypeError(f"{func}: {name} must be a str or os.PathLike path, got {_got(value)}")
    if not str(value).strip():
        raise ValueError(f"{func}: {name} is an empty path; give a file or folder name")
    return Path(value).expanduser()


def check_optional_path(value, name: str, func: str) -> Path | None:
    return None if value is None else check_path(value, name, func)


def check_key(value, name: str, func: str) -> None:
    """A JAX PRNG key: ``jax.random.key(seed)`` (or a legacy ``PRNGKey``, uint32 ``(2,)``)."""
    dtype = getattr(value, "dtype", None)
    if dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key):
        if getattr(value, "ndim", 0) != 0:
            raise ValueError(f"{func}: {name} must be one PRNG key, got {_got(value)}; "
                             "pass jax.random.key(seed)")
        return
    if dtype is not None and dtype == jnp.uint32 and tuple(value.shape) == (2,):
        return
    raise TypeError(f"{func}: {name} must be a JAX PRNG key such as jax.random.key(0), got "
                    f"{_got(value)}")


def check_float_dtype(value, name: str, func: str):
    """A floating dtype (``jnp.float32``, ``jnp.bfloat16``, ``"float16"`` ...) as a numpy dtype."""
    try:
        if value is None:
            raise TypeError
        dtype = jnp.dtype(value)
    except TypeError:
        raise TypeError(f"{func}: {name} must be a floating dtype such as jnp.float32 or "
                        f"jnp.bfloat16, got {_got(value)}") from None
    if not jnp.issubdtype(dtype, jnp.floating):
        raise ValueError(f"{func}: {name} must be a floating dtype such as jnp.float32 or "
                         f"jnp.bfloat16, got {dtype}")
    return dtype


def check_array(value, name: str, func: str, *, ndim: int | None = None,
                what: str = "an array") -> None:
    """Something with a shape and dtype (a NumPy or JAX array), of rank ``ndim`` if given."""
    if not (hasattr(value, "shape") and hasattr(value, "dtype")):
        raise TypeError(f"{func}: {name} must be {what}, got {_got(value)}")
    if ndim is not None and len(value.shape) != ndim:
        raise ValueError(f"{func}: {name} must be {what}, got shape {tuple(value.shape)}")


def check_callable(value, name: str, func: str, *, optional: bool = False) -> None:
    if value is None and optional:
        return
    if not callable(value):
        extra = " or None" if optional else ""
        raise TypeError(f"{func}: {name} must be a function such as print{extra}, got "
                        f"{_got(value)}")
