"""From YAML and `key.sub=value` overrides to a validated RunConfig, and back to YAML.

Values are coerced to the field's declared type (ints are accepted for floats, never the reverse)
and never silently adjusted; an unknown key or a wrong type is a ConfigError naming the field.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Any, Literal

import yaml

from rlsys.config.schema import ConfigError, RunConfig
from rlsys.config.validation import validate


# ----------------------------------------------------------------------------- building

def _strip_optional(tp):
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _describe(tp) -> str:
    tp, optional = _strip_optional(tp)
    if typing.get_origin(tp) is Literal:
        text = "one of " + ", ".join(map(str, typing.get_args(tp)))
    elif typing.get_origin(tp) is list:
        text = f"a list of {_describe(typing.get_args(tp)[0])}"
    elif dataclasses.is_dataclass(tp):
        text = f"a mapping with keys {', '.join(x.name for x in dataclasses.fields(tp))}"
    else:
        text = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(tp, str(tp))
    return text + (" or null" if optional else "")


def _coerce(path: str, value: Any, tp) -> Any:
    """Converts a YAML/CLI value to `tp`; raises ConfigError naming `path` otherwise."""
    base, optional = _strip_optional(tp)
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{path} = null: must be {_describe(tp)}")
    bad = ConfigError(f"{path} = {value!r}: must be {_describe(tp)}")
    if dataclasses.is_dataclass(base):
        if isinstance(value, base):
            return value
        if not isinstance(value, dict):
            raise bad
        return _build(base, value, path)
    origin = typing.get_origin(base)
    if origin is Literal:
        if value not in typing.get_args(base):
            raise bad
        return value
    if origin is list:
        if not isinstance(value, list):
            raise bad
        (item,) = typing.get_args(base)
        return [_coerce(f"{path}[{i}]", v, item) for i, v in enumerate(value)]
    if base is bool:
        if not isinstance(value, bool):
            raise bad
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad
        return value
    if base is float:
        if isinstance(value, str):
            # YAML 1.1 reads "1e-5" (no dot) as a string; it is the number users mean.
            try:
                return float(value)
            except ValueError:
                raise bad from None
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise bad
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise bad
        return value
    raise bad


def _build(cls, data: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = {x.name for x in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            where = f"{prefix}.{key}" if prefix else key
            raise ConfigError(f"{where}: unknown key; allowed keys here: {', '.join(sorted(names))}")
    kwargs = {}
    for fld in dataclasses.fields(cls):
        if fld.name in data:
            path = f"{prefix}.{fld.name}" if prefix else fld.name
            kwargs[fld.name] = _coerce(path, data[fld.name], hints[fld.name])
    return cls(**kwargs)


def _merge(base: dict, update: dict) -> dict:
    out = dict(base)
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[list[str], Any]:
    """'a.b=value' -> (['a','b'], value parsed as YAML, so 8 is int, true is bool, [..] a list)."""
    if "=" not in text:
        raise ConfigError(f"{text}: overrides look like key.sub=value")
    key, raw = text.split("=", 1)
    if not key:
        raise ConfigError(f"{text}: overrides look like key.sub=value")
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except yaml.YAMLError:
        value = raw
    return key.split("."), value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> RunConfig:
    """YAML file (optional) + dotted overrides -> a validated RunConfig."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"--config {path}: file not found")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as err:
            raise ConfigError(f"{path}: not valid YAML ({str(err).splitlines()[0]})") from None
        if not isinstance(loaded, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of config sections")
        data = loaded
    for text in overrides:
        keys, value = parse_override(text)
        nested: Any = value
        for key in reversed(keys):
            nested = {key: nested}
        data = _merge(data, nested)
    cfg = _build(RunConfig, data)
    validate(cfg)
    return cfg


# ----------------------------------------------------------------------------- printing

def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def to_yaml(cfg) -> str:
    return yaml.safe_dump(to_dict(cfg), sort_keys=False, default_flow_style=None, width=100)


def _list_item_type(tp):
    """X for a field typed list[X] or Optional[list[X]] with X a dataclass, else None."""
    tp, _ = _strip_optional(tp)
    if typing.get_origin(tp) is list:
        (item,) = typing.get_args(tp)
        if dataclasses.is_dataclass(item):
            return item
    return None


def documented_yaml(cls=RunConfig, indent: int = 0) -> str:
    """The full tree as YAML, each field's help as a comment above it (configs/reference.yaml)."""
    lines = []
    pad = "  " * indent
    default = cls()
    hints = typing.get_type_hints(cls)
    for fld in dataclasses.fields(cls):
        value = getattr(default, fld.name)
        lines.append(f"{pad}# {fld.metadata['help']}")
        item = _list_item_type(hints[fld.name])
        if item is not None:  # a list of sections: document the fields each item takes
            lines.append(f"{pad}# Each item:")
            lines.extend(f"{pad}#   {sub.name}: {sub.metadata['help']}" for sub in dataclasses.fields(item))
        if dataclasses.is_dataclass(value):
            lines.append(f"{pad}{fld.name}:")
            lines.append(documented_yaml(type(value), indent + 1))
            continue
        plain = [dataclasses.asdict(v) if dataclasses.is_dataclass(v) else v for v in value] \
            if isinstance(value, list) else value
        dumped = yaml.safe_dump({fld.name: plain}, sort_keys=False, width=200).rstrip("\n")
        lines.extend(pad + line for line in dumped.splitlines())
    return "\n".join(lines)
