"""Dataclass fields checked and parsed from their type annotations, each rule written once.

The annotation is the rule: ``bool``, ``str`` (non-empty), ``int``, ``float`` (finite),
``Literal[...]`` (the choices), ``X | None``, ``tuple[int, ...]`` / ``tuple[str, ...]``
(distinct values), ``tuple[tuple[int, float], ...]`` (``(epoch, factor)`` pairs), and a
:class:`Range` in ``Annotated[int, Range(1)]`` for the accepted values. :func:`check_fields`
checks a dataclass instance (:class:`~tern_jax.train.config.Config`,
:class:`~tern_jax.train.stack.ModelStack`); :func:`parse_value` reads a ``--set`` value.
Every message names the field, what it must be and the value given.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from typing import Annotated, Literal, NamedTuple, Union

__all__ = ["Range", "check_fields", "parse_value"]


class Range(NamedTuple):
    """The accepted values of a numeric field, written in its annotation
    (``Annotated[int, Range(1)]``: an integer >= 1); ``note`` ends the error message."""

    low: float | None = None
    high: float | None = None
    low_closed: bool = True
    high_closed: bool = False
    note: str = ""

    def holds(self, value) -> bool:
        low_ok = self.low is None or (value >= self.low if self.low_closed else value > self.low)
        high_ok = self.high is None or (value <= self.high if self.high_closed
                                        else value < self.high)
        return low_ok and high_ok

    def text(self) -> str:
        if self.high is None:
            return f"{'>=' if self.low_closed else '>'} {self.low}"
        return (f"in {'[' if self.low_closed else '('}{self.low}, {self.high}"
                f"{']' if self.high_closed else ')'}")


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _unwrap(hint):
    """``(base type, Range or None, optional?)`` of a field's annotation."""
    bounds = None
    if typing.get_origin(hint) is Annotated:
        hint, *extras = typing.get_args(hint)
        bounds = next((e for e in extras if isinstance(e, Range)), None)
    optional = False
    if typing.get_origin(hint) in (Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        optional = len(args) < len(typing.get_args(hint))
        hint = args[0]
    return hint, bounds, optional


def _choices(options) -> str:
    quoted = [repr(o) for o in options]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def _check_value(name: str, hint, value) -> None:
    """One field's value against its annotation; the message names the field and the value."""
    base, bounds, optional = _unwrap(hint)
    if optional and value is None:
        return
    suffix = " or None" if optional else ""
    note = bounds.note if bounds else ""
    origin = typing.get_origin(base)
    if base is bool:
        if not isinstance(value, bool):
            raise TypeError(f"{name} must be true or false, got {value!r}")
    elif base is str:
        if not isinstance(value, str):
            raise TypeError(f"{name} must be a string{suffix}, got {value!r}")
        if not value.strip():
            raise ValueError(f"{name} must be a non-empty string{suffix}, got {value!r}")
    elif origin is Literal:
        if value not in typing.get_args(base):
            raise ValueError(f"{name} must be {_choices(typing.get_args(base))}, got {value!r}")
    elif base is int:
        what = f"an integer{' ' + bounds.text() if bounds else ''}{suffix}{note}"
        if not _is_int(value):
            raise TypeError(f"{name} must be {what}, got {value!r}")
        if bounds and not bounds.holds(value):
            raise ValueError(f"{name} must be {what}, got {value!r}")
    elif base is float:
        if not _is_number(value):
            raise TypeError(f"{name} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if bounds and not bounds.holds(value):
            raise ValueError(f"{name} must be a number {bounds.text()}{note}, got {value!r}")
    elif origin is tuple:
        _check_tuple(name, typing.get_args(base)[0], bounds, value)
    else:  # an annotation this checker does not know: a field added without its check
        raise TypeError(f"{name}: no check for the annotation {base!r}")


def _check_tuple(name: str, item, bounds: Range | None, value) -> None:
    if typing.get_origin(item) is tuple:  # (epoch, factor) pairs
        pairs_ok = isinstance(value, (tuple, list)) and all(
            isinstance(p, (tuple, list)) and len(p) == 2 and _is_int(p[0]) and p[0] >= 1
            and _is_number(p[1]) and math.isfinite(p[1]) and p[1] > 0 for p in value)
        if not pairs_ok:
            raise ValueError(f"{name} must be (epoch, factor) pairs with epoch >= 1 and "
                             f"factor > 0, e.g. ((80, 0.1), (120, 0.1)); got {value!r}")
        return
    example, what = ("(0, 1)", "integers") if item is int else ("('fp', 'tern')", "names")
    if isinstance(value, dict):  # e.g. variants=PRESETS
        raise TypeError(f"{name}: you passed a dict of presets; pick names from it, e.g. "
                        f"{name}={example} (the dict has {', '.join(map(str, value))})")
    kind = _is_int if item is int else (lambda v: isinstance(v, str))
    if not isinstance(value, (tuple, list)) or not all(kind(v) for v in value):
        raise TypeError(f"{name} must be a tuple of {what}, e.g. {example}, got {value!r}")
    if not value:
        raise ValueError(f"{name} must hold at least one value, e.g. {example}")
    in_range = bounds is None or all(bounds.holds(v) for v in value)
    if not in_range or len(set(value)) != len(value):
        bound = f" {bounds.text()}" if bounds else ""
        raise ValueError(f"{name} must be distinct {what}{bound}, got {value!r}")


def check_fields(obj, names=None) -> None:
    """Every field of the dataclass ``obj`` (or those in ``names``) against its annotation."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for field in dataclasses.fields(obj):
        if names is None or field.name in names:
            _check_value(field.name, hints[field.name], getattr(obj, field.name))


def parse_value(value: str, annotation):
    """Parses a ``--set`` value for a field of the given type annotation."""
    base, _, optional = _unwrap(annotation)
    text = value.strip()
    if optional and text.lower() in ("none", "null"):
        return None
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        if typing.get_origin(item) is tuple:
            try:
                pairs = [p.split(":") for p in text.replace(" ", "").split(",") if p]
                return tuple((int(epoch), float(factor)) for epoch, factor in pairs)
            except ValueError:
                raise ValueError("expected EPOCH:FACTOR pairs such as 80:0.1,120:0.1") from None
        if item is int:
            try:
                return tuple(int(t) for t in text.split(",") if t)
            except ValueError:
                raise ValueError("expected comma-separated integers such as 0,1") from None
        return tuple(t for t in text.split(",") if t)
    if base is bool:
        if text.lower() in ("1", "true", "yes"):
            return True
        if text.lower() in ("0", "false", "no"):
            return False
        raise ValueError(f"expected true/false, got {value!r}")
    if base is int:
        try:
            return int(text)
        except ValueError:
            raise ValueError("expected an integer") from None
    if base is float:
        try:
            return float(text)
        except ValueError:
            raise ValueError("expected a number") from None
    return text
