"""Dataclass fields checked and parsed from their type annotations, each rule written once.

The annotation is the rule: ``bool``, ``str`` (non-empty), ``int``, ``float`` (finite),
``Literal[...]`` (the choices), ``X | None``, ``tuple[int, ...]`` / ``tuple[str, ...]``
(distinct values), ``tuple[tuple[int, float], ...]`` (``(epoch, factor)`` pairs),
``tuple[tuple[str, ...], ...]`` (``(pattern, spec)`` pairs, the spec left to the section's
own check), ``dict``
(keyword arguments: names to JSON values), and a :class:`Range` in ``Annotated[int, Range(1)]``
for the accepted values. A field whose annotation is itself a dataclass (a config section) is
left to that dataclass's own check. :func:`check_fields` checks a dataclass instance (the
sections of :class:`~tern_jax.train.config.Config`,
:class:`~tern_jax.models.transformer.TransformerConfig`,
:class:`~tern_jax.train.stack.ModelStack`); :func:`parse_value` reads a ``--set`` value.
Every message names the field, what it must be and the value given; ``owner`` (a class name)
leads it when given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from typing import Annotated, Literal, NamedTuple, Union

from tern_jax._args import is_int as _is_int

__all__ = ["Range", "check_fields", "parse_json_value", "parse_value"]


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
    elif base is dict or origin is dict:
        _check_keywords(name, value)
    elif dataclasses.is_dataclass(base):  # a section: it checks its own fields
        if not isinstance(value, base):
            raise TypeError(f"{name} must be a {base.__name__} (or a dict of its fields), got "
                            f"{value!r}")
    else:  # an annotation this checker does not know: a field added without its check
        raise TypeError(f"{name}: no check for the annotation {base!r}")


def _is_pattern_pairs(item) -> bool:
    """``tuple[str, ...]`` items of a ``tuple[...]`` field: ``(pattern, spec)`` pairs."""
    return typing.get_origin(item) is tuple and typing.get_args(item)[:1] == (str,)


def _check_tuple(name: str, item, bounds: Range | None, value) -> None:
    if _is_pattern_pairs(item):  # (pattern, spec) pairs; the section checks the specs
        pairs_ok = isinstance(value, (tuple, list)) and all(
            isinstance(p, (tuple, list)) and len(p) == 2 and isinstance(p[0], str)
            for p in value)
        if not pairs_ok:
            raise TypeError(f"{name} must be (pattern, spec) pairs, e.g. "
                            f"(('.*/kernel', ('fsdp', None)),); got {value!r}")
        return
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


_JSON_SCALARS = (str, int, float, bool, type(None))


def _check_keywords(name: str, value) -> None:
    """Keyword arguments: a dict of names to JSON values (numbers, strings, lists of them)."""
    if not isinstance(value, dict):
        raise TypeError(f"{name} must be a dict of keyword arguments such as "
                        f"{{'d_model': 128}}, got {value!r}")
    for key, item in value.items():
        if not isinstance(key, str) or not key.isidentifier():
            raise ValueError(f"{name}: keys must be argument names, got {key!r}")
        items = item if isinstance(item, (list, tuple)) else (item,)
        if not all(isinstance(v, _JSON_SCALARS) for v in items) or (
                isinstance(item, float) and not math.isfinite(item)):
            raise TypeError(f"{name}[{key!r}] must be a number, a string, true/false, None or "
                            f"a list of them (what config.json can hold), got {item!r}")


def check_fields(obj, names=None, owner: str | None = None) -> None:
    """Every field of the dataclass ``obj`` (or those in ``names``) against its annotation;
    ``owner`` prefixes each message's field name (``data.batch_size``)."""
    hints = typing.get_type_hints(type(obj), include_extras=True)
    for field in dataclasses.fields(obj):
        if names is None or field.name in names:
            label = f"{owner}.{field.name}" if owner else field.name
            _check_value(label, hints[field.name], getattr(obj, field.name))


def parse_value(value: str, annotation):
    """Parses a ``--set`` value for a field of the given type annotation."""
    base, _, optional = _unwrap(annotation)
    text = value.strip()
    if optional and text.lower() in ("none", "null"):
        return None
    if typing.get_origin(base) is tuple:
        item = typing.get_args(base)[0]
        if _is_pattern_pairs(item):  # JSON: [["pattern", ["fsdp", null]], ...]
            try:
                pairs = json.loads(text)
            except json.JSONDecodeError:
                raise ValueError("expected JSON (pattern, spec) pairs such as "
                                 '[[".*/kernel", ["fsdp", null]]]') from None
            return _tuples(pairs)
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


def _tuples(value):
    """JSON lists as tuples, nested."""
    if isinstance(value, list):
        return tuple(_tuples(v) for v in value)
    return value


def parse_json_value(value: str):
    """A ``--set`` value of a keyword argument: a JSON value (``512``, ``true``, ``[1, 2]``,
    ``"swiglu"``), or the text itself where it is no JSON (``swiglu``); ``none`` is None."""
    text = value.strip()
    if text.lower() in ("none", "null"):
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
