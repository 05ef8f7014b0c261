"""Checks for values read from files other people made (checkpoint and prior metadata, loader options).

Each field of a file's JSON object is checked against a declared :class:`Check` (its type and range);
the first violation is one :class:`FedleakError` line naming the field, with the offending value cut
to a short prefix so a hostile file cannot flood the terminal. Keyword options of a builder or loader
are checked against the function's own signature: only the options it declares, of its types.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Any

from fedleak.errors import FedleakError

ECHO = 40  # characters of an offending value shown in an error message
MAX_TEXT = 200  # longest string accepted in a metadata field
OPTION_TYPES = (str, int, float, bool)  # the option types a file may set


def short(value: Any) -> str:
    """``repr(value)`` cut to :data:`ECHO` characters."""
    text = repr(value)
    return text if len(text) <= ECHO else text[: ECHO - 1] + "…"


@dataclass(frozen=True)
class Check:
    """A field's test and, for the error message, what it expects."""

    test: Callable[[Any], bool]
    expect: str


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (_is_int(v) or isinstance(v, float)) and math.isfinite(v)


def integer(lo: int, hi: int | None = None) -> Check:
    bounds = f"from {lo} to {hi}" if hi is not None else f"≥ {lo}"
    return Check(lambda v: _is_int(v) and lo <= v and (hi is None or v <= hi), f"an integer {bounds}")


def number(lo: float, hi: float, open_low: bool = False) -> Check:
    low = (lambda v: v > lo) if open_low else (lambda v: v >= lo)
    return Check(lambda v: _is_number(v) and low(v) and v <= hi,
                 f"a number in {'(' if open_low else '['}{lo}, {hi}]")


def text() -> Check:
    return Check(lambda v: isinstance(v, str) and len(v) <= MAX_TEXT, f"a string of at most {MAX_TEXT} characters")


def optional(check: Check) -> Check:
    return Check(lambda v: v is None or check.test(v), f"null or {check.expect}")


def one_of(*values: int) -> Check:
    return Check(lambda v: _is_int(v) and v in values, " or ".join(map(str, values)))


def size(hi: int) -> Check:
    """An image size: a positive integer, or an ``[H, W]`` pair of them."""
    side = integer(1, hi).test
    return Check(lambda v: side(v) or (isinstance(v, (list, tuple)) and len(v) == 2 and all(map(side, v))),
                 f"a positive integer ≤ {hi} or an [H, W] pair of them")


def numbers(lo: float, hi: float, open_low: bool = False) -> Check:
    each = number(lo, hi, open_low)
    return Check(lambda v: isinstance(v, (list, tuple)) and len(v) <= 4 and all(map(each.test, v)),
                 f"a list of at most 4 numbers, each {each.expect}")


def texts() -> Check:
    each = text().test
    return Check(lambda v: isinstance(v, list) and all(map(each, v)), "a list of strings")


def mapping() -> Check:
    return Check(lambda v: isinstance(v, dict) and all(isinstance(k, str) for k in v), "an object with string keys")


def check_fields(data: Any, fields: dict[str, Check], required: Collection[str], what: str) -> dict[str, Any]:
    """``data`` if it is a JSON object of known ``fields``, each passing its check; else one error."""
    if not isinstance(data, dict):
        raise FedleakError(f"{what} is not a JSON object (got {type(data).__name__})")
    for key in data:
        if key not in fields:
            raise FedleakError(f"{what}: unknown field {short(key)}")
    for key in required:
        if key not in data:
            raise FedleakError(f"{what}: missing field {key!r}")
    for key, value in data.items():
        if not fields[key].test(value):
            raise FedleakError(f"{what}: field {key!r} must be {fields[key].expect}, got {short(value)}")
    return data


def declared_options(fn: Callable[..., Any], fixed: Collection[str]) -> dict[str, tuple[type, ...] | None]:
    """The keyword options ``fn`` declares beyond its ``fixed`` parameters, each with the types its
    annotation (or default) allows — ``None`` where those are not among str, int, float, bool, None."""
    try:
        params = inspect.signature(fn, eval_str=True).parameters
    except (NameError, TypeError, ValueError, SyntaxError):  # unresolvable annotations: use the defaults
        params = inspect.signature(fn).parameters
    return {name: _allowed(p) for name, p in params.items()
            if name not in fixed and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def _allowed(p: inspect.Parameter) -> tuple[type, ...] | None:
    annotation = p.annotation
    if annotation is p.empty or isinstance(annotation, str):
        kind = type(p.default)
        return (kind,) if kind in OPTION_TYPES else None
    members = typing.get_args(annotation) if typing.get_origin(annotation) in (typing.Union, types.UnionType) \
        else (annotation,)
    if all(m in OPTION_TYPES or m is type(None) for m in members):
        return tuple(members)
    return None


def fits(value: Any, allowed: tuple[type, ...]) -> bool:
    """Whether ``value`` is of one of the ``allowed`` types (an int passes for a float, a bool for
    nothing but bool; strings at most :data:`MAX_TEXT` long; numbers finite)."""
    if value is None:
        return type(None) in allowed
    if isinstance(value, bool):
        return bool in allowed
    if isinstance(value, int):
        return int in allowed or float in allowed
    if isinstance(value, float):
        return float in allowed and math.isfinite(value)
    if isinstance(value, str):
        return str in allowed and len(value) <= MAX_TEXT
    return False


def check_options(options: dict[str, Any], declared: dict[str, tuple[type, ...] | None], what: str) -> None:
    """Refuse an option ``what`` does not declare, or of a type it does not declare (``None``: any)."""
    for key, value in options.items():
        if key not in declared:
            names = ", ".join(declared) or "none"
            raise FedleakError(f"{what} has no option {short(key)} (options: {names})")
        allowed = declared[key]
        if allowed is not None and not fits(value, allowed):
            expect = " or ".join("null" if t is type(None) else t.__name__ for t in allowed)
            raise FedleakError(f"{what} option {key!r} must be {expect}, got {short(value)}")
