"""Experiment configs: ml_collections config files, command-line overrides, and clear errors.

A config file is a Python file with `get_config() -> ConfigDict` (see `configs/`). On the command line
`--config configs/X.py` loads it and `--config.a.b=value` overrides a field; an unknown field or a value of the
wrong type is a one-line `ConfigError` that names the field and lists the valid ones. `--help` (see `focused.cli`)
lists the config files, or with `--config X` every field of X.
"""

from __future__ import annotations

import ast
import dataclasses
import os
import runpy
from collections.abc import Mapping, Sequence
from typing import Any

import ml_collections


class ConfigError(ValueError):
    """A bad config file, field name or value (the message is one line)."""


_PLACEHOLDER_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "dict": dict, "Mapping": dict}


def _placeholder_type(annotation: str) -> type:
    """`"Mapping[str, Any] | None"` → dict, `"int | None"` → int, `"tuple[int, int] | None"` → tuple, ..."""
    first = str(annotation).split("|")[0].strip().split("[")[0]
    return _PLACEHOLDER_TYPES.get(first, tuple)


def section(instance: Any) -> ml_collections.ConfigDict:
    """A config section holding every field of a config dataclass (None fields accept a value of their type).

    `section(LlamaConfig(...))` is `config.model`; `section(TrainConfig(...))` is `config.train`; the library
    turns a section back into the dataclass with `<Class>.from_dict(section.to_dict())`, which rejects unknown keys.
    """
    out = ml_collections.ConfigDict()
    for field in dataclasses.fields(instance):
        value = getattr(instance, field.name)
        if value is None:
            value = ml_collections.config_dict.placeholder(_placeholder_type(field.type))
        elif isinstance(value, dict):
            value = dict(value)
        out[field.name] = value
    return out


def checked_fields(cls: type, values: Mapping[str, Any], where: str | None = None) -> dict[str, Any]:
    """`values` (a dict or ConfigDict) as a plain dict, after checking every key names a field of dataclass `cls`.

    An unknown key is a one-line ValueError naming it, the section (`where`, e.g. "config.train") and the valid keys.
    """
    values = dict(values.to_dict() if hasattr(values, "to_dict") else values)
    valid = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in {where or cls.__name__}; valid keys: {', '.join(valid)}")
    return values


def _valid_keys(config: ml_collections.ConfigDict, dotted: str) -> tuple[str, list[str]]:
    """Walks `dotted` through `config`; returns (first bad prefix, valid keys at that level)."""
    node: Any = config
    walked: list[str] = []
    for part in dotted.split("."):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            keys = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            return ".".join([*walked, part]), keys
        node = node[part]
        walked.append(part)
    return "", []


def _parse_value(text: str) -> Any:
    """`7` → int, `1e-3` → float, `(1,2)` → tuple, `True` / `true` → bool, anything else stays a string."""
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        pass
    try:
        return float(text)  # inf, nan
    except ValueError:
        return text


def _overrides(argv: Sequence[str]) -> list[tuple[str, str]]:
    pairs = []
    for arg in argv:
        if arg.startswith("--config."):
            name, sep, value = arg[len("--config.") :].partition("=")
            if not sep:
                raise ConfigError(f"override {arg} has no value: write --config.{name}=VALUE")
            pairs.append((name, value))
    return pairs


def _config_path(argv: Sequence[str]) -> str | None:
    for i, arg in enumerate(argv):
        if arg == "--config" and i + 1 < len(argv):
            return argv[i + 1]
        if arg.startswith("--config="):
            return arg.split("=", 1)[1]
    return None


def load_config(argv: Sequence[str]) -> ml_collections.ConfigDict:
    """Parses `[prog, --config FILE, --config.a.b=v, ...]` into a locked ConfigDict."""
    path = _config_path(argv)
    if path is None:
        raise ConfigError("no config given: pass --config configs/<name>.py (--help lists the configs)")
    if not os.path.isfile(path):
        raise ConfigError(f"config file {path} not found: pass --config configs/<name>.py")
    try:
        config = runpy.run_path(path)["get_config"]()
    except Exception as e:  # a broken config file
        raise ConfigError(f"config file {path} failed to load: {type(e).__name__}: {e}") from e
    known = {a for a in argv[1:] if a.startswith("--config.") or a.startswith("--config=")}
    positional_path = {argv[i + 1] for i, a in enumerate(argv[:-1]) if a == "--config"}
    stray = [a for a in argv[1:] if a not in known and a != "--config" and a not in positional_path]
    if stray:
        raise ConfigError(f"unexpected argument(s) {stray}: only --config FILE and --config.a.b=VALUE are accepted")
    for name, text in _overrides(argv):
        bad, keys = _valid_keys(config, name)
        if bad:
            raise ConfigError(f"unknown config key '{bad}' (from --config.{name}); valid keys there: {', '.join(keys)}")
        *parents, leaf = name.split(".")
        node = config
        for part in parents:
            node = node[part]
        value = _parse_value(text)
        if isinstance(node[leaf], str) and not isinstance(value, str):
            value = text  # a string field keeps the text as written (e.g. a path that looks like a number)
        try:
            node[leaf] = value
        except (TypeError, ValueError) as e:
            raise ConfigError(f"bad config override --config.{name}={text}: {str(e).splitlines()[0]}") from e
    config.lock()
    return config
