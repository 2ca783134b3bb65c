"""Frozen dataclass configs read from TOML, overridable by name, saved beside every output.

Every concept has its own frozen dataclass (``DegradeConfig``, ``PairsConfig``, ``DistillConfig``,
...) that validates itself in ``__post_init__`` and raises :class:`ConfigError`. This module only
moves values between TOML files, ``key=value`` overrides and those dataclasses.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

from fluxsr_cli.errors import ConfigError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

T = TypeVar("T")


def read_toml(path: str | Path, section: str | None = None) -> dict[str, Any]:
    """Read a TOML file, or one ``[section]`` of it (an absent section reads as empty)."""
    path = Path(path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found; check the path") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: not valid TOML ({e}); fix the syntax") from None
    if section is None:
        return data
    value = data.get(section, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{path}: [{section}] must be a table")
    return value


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a TOML or string value to the annotated field type ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "")):
            if type(None) in args:
                return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{where}: bad value {value!r}")
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (tuple, list):
        if isinstance(value, str):
            text = value.strip()
            try:
                value = json.loads(text) if text.startswith("[") else [v for v in text.split(",") if v.strip()]
            except json.JSONDecodeError:
                raise ConfigError(f"{where}: cannot read {value!r} as a list") from None
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], where) for v in value)
        if origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, where) for v, a in zip(value, args, strict=True))
        inner = args[0] if args else Any
        return list(_convert(v, inner, where) for v in value)
    if tp is Any:
        return value
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on"):
            return True
        if isinstance(value, str) and value.lower() in ("false", "0", "no", "off"):
            return False
        raise ConfigError(f"{where}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            as_float = float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
        if as_float != int(as_float):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(as_float)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if not isinstance(value, (str, int, float)):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    if tp is Path:
        return Path(str(value))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table")
        return from_dict(tp, value, where=where)
    return value


def from_dict(cls: type[T], data: dict[str, Any], where: str = "config") -> T:
    """Build the dataclass ``cls`` from a plain dict; unknown keys are an error, not ignored."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(
            f"{where}: unknown setting(s) {', '.join(unknown)}; valid ones are {', '.join(sorted(fields))}"
        )
    kwargs = {k: _convert(v, hints[k], f"{where}.{k}") for k, v in data.items()}
    try:
        return cls(**kwargs)
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None


def with_overrides(config: T, overrides: dict[str, Any] | list[str], where: str = "override") -> T:
    """Return ``config`` with fields replaced; ``overrides`` is a dict or ``["key=value", ...]``.

    Dotted keys reach nested dataclasses (``stage2.noise_prob=0.3``). Values given as strings are
    converted to the field's type.
    """
    if isinstance(overrides, list):
        pairs: dict[str, Any] = {}
        for item in overrides:
            key, sep, value = item.partition("=")
            if not sep or not key.strip():
                raise ConfigError(f"{where}: {item!r} is not KEY=VALUE")
            pairs[key.strip()] = value.strip()
        overrides = pairs
    data = to_dict(config)
    for key, value in overrides.items():
        node = data
        parts = key.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"{where}: {key!r} names no nested setting")
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"{where}: unknown setting {key!r}; valid ones are {', '.join(sorted(node))}")
        node[parts[-1]] = value
    return from_dict(type(config), data, where=where)


def to_dict(config: Any) -> dict[str, Any]:
    """A dataclass as plain TOML/JSON-friendly values (paths as strings, tuples as lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v) if f.init}
        if isinstance(v, Path):
            return str(v)
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)


def load_config(cls: type[T], path: str | Path | None, section: str | None = None,
                overrides: dict[str, Any] | list[str] | None = None) -> T:
    """Read ``cls`` from ``path`` (``[section]`` if given), then apply ``overrides``."""
    data = read_toml(path, section) if path is not None else {}
    where = f"{path}" + (f" [{section}]" if section else "") if path is not None else cls.__name__
    config = from_dict(cls, data, where=where)
    if overrides:
        config = with_overrides(config, overrides)
    return config


def save_config(config: Any, path: str | Path, section: str | None = None) -> None:
    """Write ``config`` as TOML (``[section]`` if given), atomically."""
    from fluxsr_cli.atomic import atomic_write_text

    data = to_dict(config)
    text = dumps_toml({section: data} if section else data)
    atomic_write_text(Path(path), text)


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return json.dumps(v, ensure_ascii=False)
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if v is None:
        return '"none"'
    raise TypeError(f"cannot write {v!r} as TOML")


def dumps_toml(data: dict[str, Any], prefix: str = "") -> str:
    """A small TOML writer for config dicts (scalars, lists and nested tables)."""
    lines = []
    tables = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    out = "\n".join(lines) + ("\n" if lines else "")
    for key, value in tables:
        name = f"{prefix}{key}"
        out += f"\n[{name}]\n" + dumps_toml(value, prefix=f"{name}.")
    return out
