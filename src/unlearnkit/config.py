"""Configuration: YAML presets plus ``key=value`` overrides, validated into dataclasses.

The model
---------
Everything configurable in unlearnkit (a method, a task, an experiment) is a plain dataclass whose
init fields are its hyperparameters. A run's configuration is assembled in three cheap steps, all of
them before any model or data is touched:

1. ``load_yaml`` reads a preset file into a plain dict;
2. ``parse_overrides`` turns command-line items such as ``method.lr=1e-3`` into a nested dict, which
   ``deep_merge`` lays over the preset;
3. ``build`` turns the merged mapping into the dataclass. Unknown keys, missing required keys, values of
   the wrong type and values out of range are rejected with a one-line ``ConfigError`` that names the
   dotted key, the offending value and what is allowed.

A field's type hint drives coercion (``int``, ``float``, ``bool``, ``str``, ``Literal``, lists, tuples,
dicts, unions, nested dataclasses); its constraints (``gt/ge/lt/le``, ``choices``) and help text are
declared next to it with ``param(...)``. ``validate`` runs the very same checks on an instance that was
constructed directly in Python; ``to_dict`` and ``dump_yaml`` write the resolved configuration next to
results; ``field_docs`` lists the hyperparameters for the command line's help.

YAML is read with a YAML-1.2-flavoured loader: ``1e-3`` is a float (PyYAML alone reads it as a
string), only ``true``/``false`` are booleans (``yes``/``no``/``on``/``off`` stay strings) and dates stay
strings. Duplicate keys in a mapping are an error.

Only the standard library and PyYAML are imported, so this module imports fast.
"""

import copy
import dataclasses
import difflib
import enum
import functools
import operator
import os
import pathlib
import re
import types
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

__all__ = [
    "MISSING",
    "ConfigError",
    "build",
    "deep_merge",
    "dump_yaml",
    "field_docs",
    "load_yaml",
    "param",
    "parse_overrides",
    "to_dict",
    "validate",
]

T = TypeVar("T")

MISSING = dataclasses.MISSING
"""Marks "no default": the default of ``param`` and the default ``field_docs`` reports for required fields."""


class ConfigError(ValueError):
    """A configuration problem, reported as one line naming the key, the value and what is allowed."""

    def __init__(self, message: object = "") -> None:
        lines = (line.strip() for line in str(message).splitlines())
        super().__init__(" ".join(line for line in lines if line))


class _Mismatch(ConfigError):
    """A value of the wrong type at exactly ``self.path`` (lets unions report the most precise error)."""

    path: str = ""


# --------------------------------------------------------------------------------------------------
# Declaring fields
# --------------------------------------------------------------------------------------------------

_BOUNDS: tuple[tuple[str, str, Callable[[Any, Any], bool]], ...] = (
    ("gt", ">", operator.gt),
    ("ge", ">=", operator.ge),
    ("lt", "<", operator.lt),
    ("le", "<=", operator.le),
)


def param(
    default: Any = MISSING,
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
    choices: Iterable[Any] | None = None,
    help: str = "",
) -> Any:
    """A dataclass field with constraints and help text, for use as ``lr: float = param(1e-3, gt=0)``.

    The constraints are stored in ``field.metadata["constraints"]`` (only those given) and the help text in
    ``field.metadata["help"]``; ``build`` and ``validate`` check them after type coercion (for a list or
    tuple, on every element). A list, dict or set default is deep-copied for each instance. A default that
    violates its own constraints raises ``ConfigError`` when the class is defined. Returns the
    ``dataclasses.Field`` (typed ``Any`` so that ``lr: float = param(...)`` type-checks).
    """
    constraints: dict[str, Any] = {}
    for key, bound in (("gt", gt), ("ge", ge), ("lt", lt), ("le", le)):
        if bound is None:
            continue
        if isinstance(bound, bool) or not isinstance(bound, int | float):
            raise TypeError(f"param(): {key} must be a number, got {bound!r}")
        constraints[key] = bound
    if choices is not None:
        if isinstance(choices, str | bytes) or not isinstance(choices, Iterable):
            raise TypeError(f"param(): choices must be a list of allowed values, got {choices!r}")
        constraints["choices"] = tuple(choices)
        if not constraints["choices"]:
            raise TypeError("param(): choices must not be empty")
    if default is not MISSING:
        _check_constraints(default, constraints, "param default")
    metadata = {"constraints": constraints, "help": help}
    if isinstance(default, list | dict | set):
        return dataclasses.field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


# --------------------------------------------------------------------------------------------------
# Building and validating dataclasses
# --------------------------------------------------------------------------------------------------


def build(cls: type[T], values: Mapping[str, Any] | None = None, *, where: str = "") -> T:
    """Construct the dataclass ``cls`` from ``values``, checking keys, types and constraints.

    ``where`` is the dotted prefix used in messages (``"method.finetune"`` gives
    ``"method.finetune.lr = 'abc': expected float"``). Fields left out of ``values`` take their defaults;
    nested dataclass fields are built recursively from nested mappings. A ``ValueError`` raised by the
    class's ``__post_init__`` is re-raised as ``ConfigError`` prefixed with ``where`` (or the class name).
    """
    _require_dataclass_type(cls, "build")
    values = {} if values is None else values
    if not isinstance(values, Mapping):
        raise ConfigError(
            f"{where or cls.__name__}: expected a mapping of keys to values, got {_show(values)}"
        )
    fields = _hyper_fields(cls)
    _reject_unknown_keys(values, fields, where)
    _require_required_keys(values, fields, where)
    kwargs = _check_values(cls, values, where, strict=False)
    try:
        return cls(**kwargs)
    except ValueError as err:
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(f"{where or cls.__name__}: {err}") from err


def validate(obj: T, *, where: str = "") -> T:
    """Re-check the types and constraints of an already constructed dataclass instance.

    For objects built directly in Python (``GradAscent(lr=-1)``), which bypass ``build``. Runs the same
    checks as ``build`` (nested dataclass instances are validated too) and returns ``obj`` itself,
    unchanged, when it is valid; raises ``ConfigError`` otherwise. As nothing is converted, only values
    that need no conversion pass: an int is fine for a float field, but a float for an int field, a
    string for a number or a path, or a mapping for a nested dataclass is an error (lists and tuples are
    interchangeable for list and tuple fields).
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"validate() needs a dataclass instance, got {obj!r}")
    cls = type(obj)
    values = {name: getattr(obj, name) for name in _hyper_fields(cls) if hasattr(obj, name)}
    _check_values(cls, values, where, strict=True)
    return obj


def _check_values(cls: type, values: Mapping[str, Any], where: str, *, strict: bool) -> dict[str, Any]:
    """The one routine behind ``build`` and ``validate``: coerce each value, then check its constraints.

    ``strict`` (for ``validate``) accepts only values that need no conversion beyond int -> float.
    """
    hints = _type_hints(cls)
    fields = _hyper_fields(cls)
    checked: dict[str, Any] = {}
    for name, value in values.items():
        path = _join(where, name)
        coerced = _coerce(value, hints[name], path, strict)
        _check_constraints(coerced, fields[name].metadata.get("constraints"), path, value)
        checked[name] = coerced
    return checked


def _require_dataclass_type(cls: Any, caller: str) -> None:
    if not (isinstance(cls, type) and dataclasses.is_dataclass(cls)):
        raise TypeError(f"{caller}() needs a dataclass type, got {cls!r}")


def _hyper_fields(cls: type) -> dict[str, dataclasses.Field]:
    """The hyperparameter fields: init fields whose name does not end with '_' (those are diagnostics)."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init and not f.name.endswith("_")}


@functools.cache
def _type_hints(cls: type) -> dict[str, Any]:
    return get_type_hints(cls)


def _reject_unknown_keys(values: Mapping[Any, Any], fields: Mapping[str, Any], where: str) -> None:
    valid = sorted(fields)
    for key in values:
        if key in fields:
            continue
        message = f"unknown key '{_join(where, str(key))}'; valid keys: {', '.join(valid) or '(none)'}"
        close = difflib.get_close_matches(str(key), valid, n=1)
        if close:
            message += f" (did you mean '{close[0]}'?)"
        raise ConfigError(message)


def _require_required_keys(
    values: Mapping[str, Any], fields: Mapping[str, dataclasses.Field], where: str
) -> None:
    missing = [
        f"'{_join(where, name)}'"
        for name, f in fields.items()
        if name not in values and f.default is MISSING and f.default_factory is MISSING
    ]
    if missing:
        noun = "key" if len(missing) == 1 else "keys"
        raise ConfigError(f"missing required {noun} {', '.join(missing)}")


# --------------------------------------------------------------------------------------------------
# Type coercion
# --------------------------------------------------------------------------------------------------

_NUMBER_RE = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?")
_INT_RE = re.compile(r"[-+]?\d+")
_LIST_ORIGINS = (list, Sequence)
_SET_ORIGINS = (set, frozenset)
_DICT_ORIGINS = (dict, Mapping)


def _coerce(value: Any, tp: Any, path: str, strict: bool) -> Any:
    """``value`` converted to the type hint ``tp``, or a ``ConfigError`` naming ``path``.

    ``strict``: no string -> number, float -> int, str -> path or mapping -> dataclass conversions.
    """
    if tp is Any or tp is object:
        return value
    if tp is None or tp is type(None):
        if value is None:
            return None
        raise _mismatch(path, value, "None")
    origin = get_origin(tp) or tp
    if origin is Union or origin is types.UnionType:
        return _coerce_union(value, get_args(tp), path, strict)
    if origin is Literal:
        return _coerce_literal(value, get_args(tp), path)
    if origin is tuple:
        return _coerce_tuple(value, tp, path, strict)
    if origin in _LIST_ORIGINS or origin in _SET_ORIGINS:
        return _coerce_collection(value, tp, path, strict)
    if origin in _DICT_ORIGINS:
        return _coerce_dict(value, tp, path, strict)
    if tp in _SCALARS:
        return _SCALARS[tp](value, path, strict)
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        return _coerce_dataclass(value, tp, path, strict)
    if isinstance(tp, type):
        return _coerce_instance(value, tp, path, strict)
    return value  # typing constructs this module does not check (Callable, TypeVar, ...)


def _coerce_union(value: Any, options: tuple[Any, ...], path: str, strict: bool) -> Any:
    """First option that accepts ``value``; an option needing no conversion wins (``3.0`` stays a float)."""
    if value is None and type(None) in options:
        return None
    candidates = [tp for tp in options if tp is not type(None)]
    for tp in candidates:
        if _accepts_as_is(value, tp):
            return value
    errors: list[ConfigError] = []
    for tp in candidates:
        try:
            return _coerce(value, tp, path, strict)
        except ConfigError as err:
            errors.append(err)
    precise = [err for err in errors if not (isinstance(err, _Mismatch) and err.path == path)]
    if len(precise) == 1:
        raise precise[0]
    raise _mismatch(path, value, " | ".join(_type_name(tp) for tp in options))


def _accepts_as_is(value: Any, tp: Any) -> bool:
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float or tp is str:
        return isinstance(value, tp)
    if get_origin(tp) is Literal:
        return any(_same(value, choice) for choice in get_args(tp))
    return False


def _coerce_literal(value: Any, choices: tuple[Any, ...], path: str) -> Any:
    for choice in choices:
        if _same(value, choice):
            return choice
    raise _mismatch(path, value, f"one of: {_listing(choices)}")


def _coerce_tuple(value: Any, tp: Any, path: str, strict: bool) -> tuple[Any, ...]:
    args = get_args(tp)
    if not isinstance(value, list | tuple):
        raise _mismatch(path, value, _type_name(tp) if args else "tuple")
    if not args or (len(args) == 2 and args[1] is Ellipsis):
        item_tp = args[0] if args else Any
        return tuple(_coerce(item, item_tp, f"{path}[{i}]", strict) for i, item in enumerate(value))
    if len(value) != len(args):
        raise ConfigError(f"{path} = {_show(value)}: expected {_type_name(tp)} ({len(args)} items)")
    return tuple(
        _coerce(item, item_tp, f"{path}[{i}]", strict)
        for i, (item, item_tp) in enumerate(zip(value, args, strict=True))
    )


def _coerce_collection(value: Any, tp: Any, path: str, strict: bool) -> Any:
    """Lists (and ``Sequence``) from a list or tuple; sets also from a set. A scalar is never wrapped."""
    origin = get_origin(tp) or tp
    accepted: tuple[type, ...] = (list, tuple, set, frozenset) if origin in _SET_ORIGINS else (list, tuple)
    if not isinstance(value, accepted):
        raise _mismatch(path, value, _type_name(tp))
    args = get_args(tp)
    item_tp = args[0] if args else Any
    items = [_coerce(item, item_tp, f"{path}[{i}]", strict) for i, item in enumerate(value)]
    return frozenset(items) if origin is frozenset else set(items) if origin is set else items


def _coerce_dict(value: Any, tp: Any, path: str, strict: bool) -> dict[Any, Any]:
    if not isinstance(value, Mapping):
        raise _mismatch(path, value, _type_name(tp))
    key_tp, value_tp = get_args(tp) or (Any, Any)
    result: dict[Any, Any] = {}
    for key, item in value.items():
        try:
            checked_key = _coerce(key, key_tp, path, strict)
        except ConfigError:
            raise ConfigError(f"{path}: key {_show(key)}: expected {_type_name(key_tp)}") from None
        result[checked_key] = _coerce(item, value_tp, _join(path, str(key)), strict)
    return result


def _coerce_dataclass(value: Any, tp: type, path: str, strict: bool) -> Any:
    if isinstance(value, tp):
        return validate(value, where=path)
    if isinstance(value, Mapping) and not strict:
        return build(tp, value, where=path)
    raise _mismatch(path, value, tp.__name__ if strict else f"a mapping ({tp.__name__})")


def _coerce_instance(value: Any, tp: type, path: str, strict: bool) -> Any:
    if isinstance(value, tp):
        return value
    if not strict and issubclass(tp, pathlib.PurePath) and isinstance(value, str):
        return tp(value)
    raise _mismatch(path, value, tp.__name__)


def _to_bool(value: Any, path: str, strict: bool) -> bool:
    if isinstance(value, bool):
        return value
    raise _mismatch(path, value, "bool")


def _to_int(value: Any, path: str, strict: bool) -> int:
    number = _parse_number(value) if isinstance(value, str) and not strict else value
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise _mismatch(path, value, "int")
    if isinstance(number, float) and (strict or not number.is_integer()):
        raise _mismatch(path, value, "int")
    return int(number)


def _to_float(value: Any, path: str, strict: bool) -> float:
    number = _parse_number(value) if isinstance(value, str) and not strict else value
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise _mismatch(path, value, "float")
    return float(number)


def _to_str(value: Any, path: str, strict: bool) -> str:
    if isinstance(value, str):
        return value
    raise _mismatch(path, value, "str")


_SCALARS: dict[type, Callable[[Any, str, bool], Any]] = {
    bool: _to_bool,
    int: _to_int,
    float: _to_float,
    str: _to_str,
}


def _parse_number(text: str) -> int | float | None:
    """The number a numeric-looking string spells (``"1e-3"``, ``"12"``), else None."""
    text = text.strip()
    if _INT_RE.fullmatch(text):
        return int(text)
    if _NUMBER_RE.fullmatch(text):
        return float(text)
    return None


# --------------------------------------------------------------------------------------------------
# Constraints
# --------------------------------------------------------------------------------------------------


def _check_constraints(
    value: Any, constraints: Mapping[str, Any] | None, path: str, given: Any = MISSING
) -> None:
    """Check gt/ge/lt/le/choices on ``value`` (on each element of a list, tuple or set); None is exempt.

    Messages show ``given`` (the value as written, before coercion) when it is known.
    """
    if not constraints or value is None:
        return
    given = value if given is MISSING else given
    if isinstance(value, list | tuple | set | frozenset):
        same_shape = isinstance(given, list | tuple) and len(given) == len(value)
        for i, item in enumerate(value):
            _check_constraints(item, constraints, f"{path}[{i}]", given[i] if same_shape else item)
        return
    for key, symbol, op in _BOUNDS:
        if key in constraints and not _satisfies(op, value, constraints[key]):
            raise ConfigError(f"{path} = {_show(given)}: must be {symbol} {constraints[key]}{_interval(constraints)}")
    choices = constraints.get("choices")
    if choices is not None and not any(_same(value, choice) for choice in choices):
        raise ConfigError(f"{path} = {_show(given)}: must be one of: {_listing(choices)}")


def _interval(constraints: Mapping[str, Any]) -> str:
    """' (allowed: (0, 1])' when both a lower and an upper bound are set, else ''."""
    low = [(k, constraints[k]) for k in ("gt", "ge") if k in constraints]
    high = [(k, constraints[k]) for k in ("lt", "le") if k in constraints]
    if not low or not high:
        return ""
    (lk, lo), (hk, hi) = low[0], high[0]
    return f" (allowed: {'(' if lk == 'gt' else '['}{lo}, {hi}{')' if hk == 'lt' else ']'})"


def _satisfies(op: Callable[[Any, Any], bool], value: Any, bound: Any) -> bool:
    try:
        return bool(op(value, bound))
    except TypeError:
        return False


def _same(value: Any, choice: Any) -> bool:
    """Equality that does not confuse True with 1 (nor False with 0)."""
    return isinstance(value, bool) == isinstance(choice, bool) and value == choice


# --------------------------------------------------------------------------------------------------
# Messages
# --------------------------------------------------------------------------------------------------


def _mismatch(path: str, value: Any, expected: str) -> _Mismatch:
    err = _Mismatch(f"{path} = {_show(value)}: expected {expected}")
    err.path = path
    return err


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _show(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _listing(items: Iterable[Any]) -> str:
    return ", ".join(str(item) for item in items)


def _type_name(tp: Any) -> str:
    """A readable type string: ``list[int]``, ``int | None``, ``'sgd' | 'adam'``, ``Optim``."""
    if tp is Any:
        return "Any"
    if tp is None or tp is type(None):
        return "None"
    if tp is Ellipsis:
        return "..."
    if isinstance(tp, list):  # the argument list of Callable[[...], ...]
        return "[" + ", ".join(_type_name(a) for a in tp) + "]"
    origin, args = get_origin(tp), get_args(tp)
    if origin is Union or origin is types.UnionType:
        return " | ".join(_type_name(a) for a in args)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin is not None:
        name = getattr(origin, "__name__", str(origin))
        return f"{name}[{', '.join(_type_name(a) for a in args)}]" if args else name
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


# --------------------------------------------------------------------------------------------------
# Exporting
# --------------------------------------------------------------------------------------------------


def to_dict(obj: Any) -> dict[str, Any]:
    """A JSON-safe dict of a dataclass instance's hyperparameters, recursively.

    Nested dataclasses become dicts, tuples and sets become lists, paths become strings, enums their
    values. Fields whose name ends with ``_`` (diagnostics, not hyperparameters) and fields declared with
    ``field(init=False)`` are skipped.
    """
    if not dataclasses.is_dataclass(obj) or isinstance(obj, type):
        raise TypeError(f"to_dict() needs a dataclass instance, got {obj!r}")
    return {name: _plain(getattr(obj, name)) for name in _hyper_fields(type(obj))}


def _plain(value: Any) -> Any:
    """``value`` as JSON/YAML-safe builtins (str, int, float, bool, None, list, dict)."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, enum.Enum):
        return _plain(value.value)
    for kind in (int, float, str):
        if isinstance(value, kind):
            return kind(value)  # drops subclasses such as numpy.float64 that yaml.safe_dump rejects
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_dict(value)
    if isinstance(value, Mapping):
        return {k if isinstance(k, str) else str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        items = [_plain(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if callable(getattr(value, "tolist", None)):  # numpy arrays and scalars, torch tensors
        return _plain(value.tolist())
    return str(value)


def field_docs(cls: Any) -> list[tuple[str, str, Any, str]]:
    """``(name, type string, default, help)`` for each hyperparameter field of a dataclass (or instance).

    The default is ``MISSING`` for required fields; ``default_factory`` fields report a fresh default.
    Fields ending with ``_`` and ``init=False`` fields are left out, as in ``to_dict``.
    """
    cls = cls if isinstance(cls, type) else type(cls)
    _require_dataclass_type(cls, "field_docs")
    hints = _type_hints(cls)
    return [
        (name, _type_name(hints[name]), _default_of(f), f.metadata.get("help", ""))
        for name, f in _hyper_fields(cls).items()
    ]


def _default_of(f: dataclasses.Field) -> Any:
    if f.default is not MISSING:
        return f.default
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING


# --------------------------------------------------------------------------------------------------
# Overrides and merging
# --------------------------------------------------------------------------------------------------


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
    """Nested dict from ``key=value`` items: ``["a.b=1", "c=[x,y]"]`` -> ``{"a": {"b": 1}, "c": ["x", "y"]}``.

    Values are read as YAML (``1e-3`` is a float, ``null`` is None, ``[x,y]`` a list, quoted values stay
    strings); an empty value is the empty string. A later item for the same key wins. Raises
    ``ConfigError`` for an item without ``=``, an empty key or key part, an unparsable value, or a dotted
    key below a key that holds a non-mapping value.
    """
    if isinstance(items, str):
        raise TypeError("parse_overrides() needs a list of 'key=value' strings, not one string")
    result: dict[str, Any] = {}
    for item in items:
        parts, value = _split_override(item)
        _set_nested(result, parts, value, item)
    return result


def _split_override(item: str) -> tuple[list[str], Any]:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"bad override {item!r}: expected key=value")
    parts = [part.strip() for part in key.split(".")]
    if not all(parts):
        raise ConfigError(f"bad override {item!r}: empty part in key {key!r}")
    if not raw.strip():
        return parts, ""
    try:
        return parts, yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(f"bad override {item!r}: invalid value: {_yaml_problem(err)}") from None


def _set_nested(target: dict[str, Any], parts: list[str], value: Any, item: str) -> None:
    node = target
    for depth, part in enumerate(parts[:-1]):
        if part not in node:
            node[part] = {}
        elif not isinstance(node[part], dict):
            prefix = ".".join(parts[: depth + 1])
            raise ConfigError(
                f"bad override {item!r}: cannot set {'.'.join(parts)}: '{prefix}' is not a mapping"
            )
        node = node[part]
    node[parts[-1]] = value


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """A new dict: ``base`` with ``override`` laid over it.

    Where both sides hold a mapping the two are merged recursively; anything else (lists included)
    from ``override`` replaces the value in ``base``. Neither input is modified and the result shares
    no mutable values with them.
    """
    merged = {key: copy.deepcopy(value) for key, value in base.items()}
    for key, value in override.items():
        if isinstance(merged.get(key), Mapping) and isinstance(value, Mapping):
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


# --------------------------------------------------------------------------------------------------
# YAML files
# --------------------------------------------------------------------------------------------------

_FLOAT_TAG = "tag:yaml.org,2002:float"
_BOOL_TAG = "tag:yaml.org,2002:bool"
_TIMESTAMP_TAG = "tag:yaml.org,2002:timestamp"
# Floats PyYAML (YAML 1.1) misses: an exponent without a dot or without a sign, as in 1e-3, 1.5e3, 2E5.
_YAML12_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*\.[0-9_]*|\.[0-9_]+|[0-9][0-9_]*)[eE][-+]?[0-9]+$")
_YAML12_BOOL = re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$")


def _with_resolvers(base: type, drop: set[str]) -> dict[str, list[tuple[str, re.Pattern[str]]]]:
    return {
        first: [(tag, regexp) for tag, regexp in resolvers if tag not in drop]
        for first, resolvers in base.yaml_implicit_resolvers.items()
    }


class _Loader(yaml.SafeLoader):
    """SafeLoader reading 1e-3 as a float, only true/false as bools, dates as strings; no duplicate keys."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node)
            if key in seen:
                raise yaml.constructor.ConstructorError(
                    "while constructing a mapping",
                    node.start_mark,
                    f"duplicate key {key!r}",
                    key_node.start_mark,
                )
            seen.add(key)
        return super().construct_mapping(node, deep)


_Loader.yaml_implicit_resolvers = _with_resolvers(yaml.SafeLoader, {_BOOL_TAG, _TIMESTAMP_TAG})
_Loader.add_implicit_resolver(_BOOL_TAG, _YAML12_BOOL, list("tTfF"))
_Loader.add_implicit_resolver(_FLOAT_TAG, _YAML12_FLOAT, list("-+0123456789."))


class _Dumper(yaml.SafeDumper):
    """SafeDumper that quotes every string either PyYAML or ``_Loader`` would read as something else."""


_Dumper.yaml_implicit_resolvers = _with_resolvers(yaml.SafeDumper, set())
_Dumper.add_implicit_resolver(_FLOAT_TAG, _YAML12_FLOAT, list("-+0123456789."))


def _yaml_problem(err: yaml.YAMLError) -> str:
    problem = getattr(err, "problem", None) or getattr(err, "context", None)
    return str(problem) if problem else str(err)


def _yaml_line(err: yaml.YAMLError) -> str:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    return f" at line {mark.line + 1}" if mark is not None else ""


def load_yaml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The mapping stored in a YAML file; an empty file gives ``{}``.

    Raises ``ConfigError`` when the file is missing or unreadable, is not valid YAML (the message gives
    the line), or holds something other than a mapping at the top level.
    """
    name = os.fspath(path)
    try:
        with open(name, encoding="utf-8") as handle:
            text = handle.read()
    except FileNotFoundError:
        raise ConfigError(f"config file '{name}' not found") from None
    except IsADirectoryError:
        raise ConfigError(f"config file '{name}' is a directory, not a file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"config file '{name}' cannot be read: {err}") from None
    try:
        data = yaml.load(text, Loader=_Loader)
    except yaml.YAMLError as err:
        raise ConfigError(
            f"config file '{name}': invalid YAML{_yaml_line(err)}: {_yaml_problem(err)}"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"config file '{name}': top level must be a mapping of keys to values, got {type(data).__name__}"
        )
    return data


def dump_yaml(data: Mapping[str, Any]) -> str:
    """YAML text for ``data`` in its own key order, for writing resolved configs next to results.

    Values are first made plain (see ``to_dict``: tuples become lists, ...); strings that would read back
    as another type (``"1e-3"``, ``"yes"``) are quoted, so ``load_yaml(dump_yaml(d))`` gives ``d`` back.
    """
    return yaml.dump(
        _plain(data), Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
