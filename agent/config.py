"""Settings: TOML file, then `EDGE_AGENT_<SECTION>_<KEY>` environment overrides, then validation.

Every problem is collected before failing, so an operator fixes a file in one pass. The schema
(sections, keys, types, defaults) is declared once, as frozen dataclasses; the TOML reader, the
environment reader, `check-config` and the snap configure hook all derive from it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import tomllib
import typing
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from agent import config_rules
from agent.config_rules import NAME_RE
from agent.errors import ConfigError
from agent.settings import (
    AgentSettings,
    CommandSettings,
    HaSettings,
    HealthSettings,
    HttpSettings,
    LogSettings,
    MicroK8sSettings,
    MqttSettings,
    NodeSettings,
    Settings,
    StateSettings,
)

ENV_PREFIX = "EDGE_AGENT_"
# Environment variables that are not settings (so they are not reported as unknown keys).
ENV_NOT_SETTINGS = frozenset({"EDGE_AGENT_CONFIG"})
SECRET_KEYS = frozenset({("mqtt", "password_file"), ("mqtt", "key_file")})


SECTIONS: dict[str, type[Any]] = {
    f.name: typing.get_type_hints(Settings)[f.name] for f in dataclasses.fields(Settings)
}


def _field_types(section_cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(section_cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(section_cls)}


def _coerce_bool(value: Any) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in {"true", "false", "1", "0", "yes", "no"}:
        return value.lower() in {"true", "1", "yes"}
    return None


def _coerce_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
        return int(value)
    return None


def _coerce_float(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _coerce_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


_SCALARS: dict[Any, tuple[Callable[[Any], Any], str]] = {
    bool: (_coerce_bool, "true or false"),
    int: (_coerce_int, "an integer"),
    float: (_coerce_float, "a number"),
    str: (_coerce_str, "a string"),
}


def _coerce(value: Any, kind: Any, where: str, problems: list[str]) -> Any:
    """Convert a TOML or environment value to the declared type, or record why not."""
    if typing.get_origin(kind) is tuple:
        return _coerce_list(value, where, problems)
    convert, expected = _SCALARS[kind]
    result = convert(value)
    if result is None:
        problems.append(f"{where}: expected {expected}, got {value!r}")
    return result


def _coerce_list(value: Any, where: str, problems: list[str]) -> tuple[str, ...] | None:
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            try:
                value = json.loads(text)
            except json.JSONDecodeError:
                problems.append(f"{where}: expected a JSON list or comma-separated strings")
                return None
        else:
            value = [part.strip() for part in text.split(",") if part.strip()]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return tuple(value)
    problems.append(f"{where}: expected a list of strings, got {value!r}")
    return None


def _file_where(section: str, key: str) -> str:
    return f"{section}.{key}"


def _env_where(section: str, key: str) -> str:
    return f"${ENV_PREFIX}{section.upper()}_{key.upper()}"


def _read_section(
    name: str, raw: Any, problems: list[str], namer: typing.Callable[[str, str], str]
) -> dict[str, Any]:
    section_cls = SECTIONS[name]
    fields = _field_types(section_cls)
    if not isinstance(raw, dict):
        problems.append(f"[{name}]: expected a table")
        return {}
    values: dict[str, Any] = {}
    for key, value in raw.items():
        where = namer(name, key)
        if key not in fields:
            problems.append(f"{where}: unknown key (known: {', '.join(sorted(fields))})")
            continue
        coerced = _coerce(value, fields[key], where, problems)
        if coerced is not None:
            values[key] = coerced
    return values


def read_section(name: str, raw: Any, problems: list[str]) -> dict[str, Any]:
    """One table of the agent schema (e.g. `mqtt`), typed; the operator config reuses it."""
    return _read_section(name, raw, problems, _file_where)


def _from_mapping(
    data: Mapping[str, Any],
    problems: list[str],
    namer: typing.Callable[[str, str], str] = _file_where,
) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for name, raw in data.items():
        if name not in SECTIONS:
            problems.append(f"[{name}]: unknown section (known: {', '.join(SECTIONS)})")
            continue
        out[name] = _read_section(name, raw, problems, namer)
    return out


def _env_overrides(environ: Mapping[str, str], problems: list[str]) -> dict[str, dict[str, Any]]:
    raw: dict[str, dict[str, Any]] = {}
    for var, value in sorted(environ.items()):
        if not var.startswith(ENV_PREFIX) or var in ENV_NOT_SETTINGS:
            continue
        rest = var[len(ENV_PREFIX) :].lower()
        section = next((s for s in SECTIONS if rest.startswith(s + "_")), None)
        if section is None:
            problems.append(f"${var}: unknown section (known: {', '.join(SECTIONS)})")
            continue
        raw.setdefault(section, {})[rest[len(section) + 1 :]] = value
    return _from_mapping(raw, problems, _env_where)


def _merge(*layers: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    merged: dict[str, dict[str, Any]] = {}
    for layer in layers:
        for section, values in layer.items():
            merged.setdefault(section, {}).update(values)
    return merged


def read_file(path: Path, problems: list[str]) -> dict[str, Any]:
    try:
        with path.open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        problems.append(f"{path}: no such file")
    except PermissionError:
        problems.append(f"{path}: permission denied")
    except tomllib.TOMLDecodeError as exc:
        problems.append(f"{path}: not valid TOML ({exc})")
    return {}


def build(values: Mapping[str, Mapping[str, Any]], problems: list[str]) -> Settings:
    """Build validated Settings from already-typed section values, appending problems."""
    sections = {name: SECTIONS[name](**dict(values.get(name, {}))) for name in SECTIONS}
    settings = Settings(**sections)
    problems.extend(config_rules.validate(settings))
    return settings


def load(path: str | Path | None, environ: Mapping[str, str] | None = None) -> Settings:
    """Read the file (if any), apply environment overrides, validate.

    Raises:
        ConfigError: listing every problem found.
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    file_values: dict[str, dict[str, Any]] = {}
    if path is not None:
        file_values = _from_mapping(read_file(Path(path), problems), problems)
    env_values = _env_overrides(environ, problems)
    settings = build(_merge(file_values, env_values), problems)
    if problems:
        raise ConfigError(problems)
    return settings


def parse(data: Mapping[str, Any]) -> Settings:
    """Validate TOML-shaped data that is not in a file yet (the snap's `snapctl get -d` document).

    Raises:
        ConfigError: listing every problem found, in the same words as `load`.
    """
    problems: list[str] = []
    settings = build(_from_mapping(data, problems), problems)
    if problems:
        raise ConfigError(problems)
    return settings


def as_dict(settings: Settings, *, mask_secrets: bool = True) -> dict[str, dict[str, Any]]:
    """The effective configuration, secrets masked, ready for TOML or JSON output."""
    out: dict[str, dict[str, Any]] = {}
    for name in SECTIONS:
        section = dataclasses.asdict(getattr(settings, name))
        for key, value in section.items():
            if isinstance(value, tuple):
                section[key] = list(value)
            if mask_secrets and (name, key) in SECRET_KEYS and value:
                section[key] = "***"
        out[name] = section
    return out


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value), ensure_ascii=False)


def to_toml(data: Mapping[str, Mapping[str, Any]]) -> str:
    """Render sections as TOML (our values are flat scalars and string lists only)."""
    lines: list[str] = []
    for section, values in data.items():
        lines.append(f"[{section}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
        lines.append("")
    return "\n".join(lines)


def field_kind(section: str, key: str) -> Any:
    """The declared type of one key, or None when the key does not exist."""
    if section not in SECTIONS:
        return None
    return _field_types(SECTIONS[section]).get(key)


__all__ = [
    "NAME_RE",
    "SECTIONS",
    "AgentSettings",
    "CommandSettings",
    "HaSettings",
    "HealthSettings",
    "HttpSettings",
    "LogSettings",
    "MicroK8sSettings",
    "MqttSettings",
    "NodeSettings",
    "Settings",
    "StateSettings",
    "as_dict",
    "build",
    "field_kind",
    "load",
    "parse",
    "read_section",
    "to_toml",
]
