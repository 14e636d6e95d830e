"""Typed configuration: dataclasses filled from TOML tables with strict checking.

``from_mapping(cls, data, prefix)`` builds a dataclass from a dict (a TOML table): unknown
keys, wrong types and values the dataclass' own ``check()`` rejects raise ``ConfigError``
naming the key (``prefix.key``), so a typo in a device model never passes silently.
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import math
import numbers
import os
import textwrap
import types
import typing
from collections.abc import Iterable
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

from grapes_hw.errors import ConfigError

T = TypeVar("T")

DEFAULT_LR: dict[str, float] = {"sgd": 0.1, "momentum": 0.01, "nag": 0.01, "rmsprop": 0.001,
                                "adam": 0.001}
"""Learning rate used when none is given, per optimizer. One rate for all was a trap: Adam and
RMSprop normalise the step to about ``lr`` per weight, so at SGD's 0.1 they jump around (Adam
with propagating GRAPES on 6-bit weights reached 0.22 on digits at 0.1); momentum and Nesterov
take steps about ``1 / (1 - gamma)`` = 10 times SGD's, so they get a tenth of it."""


RULES: dict[str, dict] = {
    "sgd": {"grapes": "off"},
    "grapes": {"grapes": "propagating"},
    "grapes-local": {"grapes": "local"},
    "lr-matched": {"grapes": "off", "lr_matched": True},
}
"""Learning-rule names (``grapes-hw continual --rules``): TrainConfig overrides on the base."""


def default_lr(optimizer: str) -> float:
    """The learning rate ``optimizer`` runs at when none is given (:data:`DEFAULT_LR`)."""
    try:
        return DEFAULT_LR[optimizer]
    except KeyError:
        raise ConfigError("optimizer", f"got {optimizer!r}; allowed values: "
                                         f"{', '.join(DEFAULT_LR)}") from None


def default_lr_text() -> str:
    """The defaults of :data:`DEFAULT_LR` as text for help messages."""
    by_lr: dict[float, list[str]] = {}
    for name, lr in DEFAULT_LR.items():
        by_lr.setdefault(lr, []).append(name)
    return ", ".join(f"{'/'.join(names)} {lr:g}" for lr, names in by_lr.items())


def did_you_mean(value: str, allowed: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest of ``allowed`` to ``value``, or ``""``."""
    if not isinstance(value, str):
        return ""
    close = difflib.get_close_matches(value, [str(a) for a in allowed], n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown_keys_error(unknown: Iterable[str], allowed: Iterable[str], prefix: str = "",
                       shown: Iterable[str] | None = None) -> ConfigError:
    """The error for keys of a table that are not allowed: names the first one (as
    ``prefix.key``), every unknown key with a "did you mean" for near misses among
    ``allowed``, and the allowed keys (as ``shown``, e.g. tables in brackets)."""
    unknown = sorted(unknown)
    allowed = list(allowed)
    first = f"{prefix}.{unknown[0]}" if prefix else unknown[0]
    named = ", ".join(f"{k!r}{did_you_mean(k, allowed)}" for k in unknown)
    what = "unknown key" if len(unknown) == 1 else "unknown keys"
    listed = ", ".join(allowed if shown is None else shown)
    return ConfigError(first, f"{what} {named}; allowed keys: {listed}")


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Return ``value`` as type ``tp`` or raise ConfigError naming ``key``."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            allowed_s = ", ".join(map(repr, allowed))
            raise ConfigError(key, f"got {value!r}{did_you_mean(value, allowed)}; "
                                   f"allowed values: {allowed_s}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(value, a, key)
            except ConfigError as e:
                errors.append(e.message)
        raise ConfigError(key, f"got {value!r}; expected {_type_name(tp)}")
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(key, f"got {value!r}; expected a list")
        (item,) = get_args(tp)[:1] or (Any,)
        out = [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(out) if origin is tuple else out
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(key, f"got {value!r}; expected a table")
        return dict(value)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(key, f"got {value!r}; expected a table")
        return from_mapping(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"got {value!r}; expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral):
            raise ConfigError(key, f"got {value!r}; expected an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise ConfigError(key, f"got {value!r}; expected a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"got {value!r}; expected a string")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {key}")


def from_mapping(cls: type[T], data: dict, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data`` with strict key and type checks."""
    if not isinstance(data, dict):
        raise ConfigError(prefix or cls.__name__, f"expected a table, got {data!r}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:  # before the required keys: a typo is reported as a typo, not as a gap
        raise unknown_keys_error(unknown, sorted(fields), prefix)
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key)
    missing = [
        n for n, f in fields.items()
        if n not in kwargs
        and f.default is dataclasses.MISSING
        and f.default_factory is dataclasses.MISSING  # type: ignore[misc]
    ]
    if missing:
        key = f"{prefix}.{missing[0]}" if prefix else missing[0]
        raise ConfigError(key, "required key is missing")
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if callable(check):
        try:
            check()
        except ConfigError as e:
            if prefix and not e.field.startswith(prefix + "."):
                raise ConfigError(f"{prefix}.{e.field}", e.message) from None
            raise
    return obj


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain JSON-able data."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


@functools.cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstrings of a dataclass' fields (the string literal after each field), read
    from its source with ``ast``, whitespace normalised; ``{}`` when the source is not
    available. Units are stated there (``"... (weight units, ...)"``)."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError, SyntaxError):
        return {}
    body = next((n.body for n in tree.body if isinstance(n, ast.ClassDef)), [])
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(inspect.cleandoc(nxt.value.value).split())
    return docs


LR_MAX = 1e6
"""The largest learning rate accepted: far above any that trains, and far below where the
float32 arithmetic of an update (``lr / batch * delta * x``) overflows (~1e38)."""


def is_positive_lr(lr: Any) -> bool:
    """A usable learning rate: a number in (0, LR_MAX] (not a bool)."""
    return (isinstance(lr, numbers.Real) and not isinstance(lr, bool) and math.isfinite(lr)
            and 0 < lr <= LR_MAX)


def check_types(obj: Any, skip: Iterable[str] = ()) -> None:
    """Every field of dataclass ``obj`` has its annotated type (``bool`` a bool, ``int`` an
    integer, not 1.5 or True, ...): a dataclass built in Python gets the checks a TOML table
    gets from :func:`from_mapping`, as ConfigError naming the field. ``Literal`` fields are
    left to the dataclass' ``check()``; a path object passes where a string is allowed."""
    hints = get_type_hints(type(obj))
    skip = set(skip)
    for f in dataclasses.fields(obj):
        if f.name in skip:  # checked by the dataclass' check(), with a better message
            continue
        v, tp = getattr(obj, f.name), hints[f.name]
        if isinstance(v, os.PathLike) and str in (get_args(tp) or (tp,)):
            continue
        if get_origin(tp) is Literal:  # the dataclass' check() names the allowed values
            continue
        _coerce(v, tp, f.name)


def require(cond: bool, field: str, message: str) -> None:
    """Raise ConfigError(field, message) unless ``cond``; for ``check()`` methods."""
    if not cond:
        raise ConfigError(field, message)


__all__ = ["DEFAULT_LR", "check_types", "default_lr", "default_lr_text", "did_you_mean",
           "LR_MAX", "field_docs", "from_mapping", "is_positive_lr", "to_dict", "require", "typing",
           "unknown_keys_error"]
