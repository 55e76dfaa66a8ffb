"""`edge-agent snap-configure`: the snap's configure hook, validating `snap set` with agent.config.

snapd runs snap/hooks/configure after every `snap set microk8s-edge-agent ...`. A non-zero exit
rolls the change back, so an invalid value never reaches the daemon: the previous
$SNAP_DATA/agent.toml and the running agent stay as they were. The options are the TOML keys, but
snapd forbids `_` in option names, so `mqtt.password-file` is the TOML key `mqtt.password_file`.

Secrets never travel as option values (snapd keeps options in its state, readable by `snap get`):
the password and the TLS key are files under $SNAP_COMMON, named by `mqtt.password-file` and
`mqtt.key-file`, and their values are never echoed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from agent import config, durable
from agent.errors import AgentError, CommandTimedOut, ConfigError, ProcessError
from agent.microk8s import process
from agent.platform import snap_paths

SNAPCTL = "snapctl"
APP = "daemon"
SNAPCTL_TIMEOUT_S = 60.0
# Same meanings as the agent's own exit codes (agent/cli.py).
EXIT_OK = 0
EXIT_CONFIG = 2
EXIT_FAILURE = 3

# `snap set` options that would put a secret into snapd's state, and where it belongs instead.
INLINE_SECRETS = {
    ("mqtt", "password"): ("mqtt.password-file", "mqtt-password"),
    ("mqtt", "key"): ("mqtt.key-file", "mqtt-client.key"),
    ("mqtt", "tls-key"): ("mqtt.key-file", "mqtt-client.key"),
}
_PRIVATE_KEY = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
# snapd's instance name: a snap name plus an optional `_<key>` (parallel installs).
_INSTANCE = re.compile(r"^[a-z0-9](?:-?[a-z0-9])*(?:_[a-z0-9]{1,10})?$")

HEADER = """\
# Written by the snap's configure hook from `snap set microk8s-edge-agent ...`: edits here are
# replaced at the next `snap set`. TOML keys spell '_' where snap options spell '-'.
"""


def option_name(section: str, key: str) -> str:
    """How `snap set` spells a TOML key: `mqtt.password_file` -> `mqtt.password-file`."""
    return f"{section}.{key.replace('_', '-')}"


def _secret_path_problem(where: str, value: Any, snap_common: str) -> str | None:
    """None when `value` is an absolute, normalised path below $SNAP_COMMON; never shows value."""
    if isinstance(value, str) and value.startswith("/"):
        normal = os.path.normpath(value)
        if normal == value and normal.startswith(snap_common.rstrip("/") + "/"):
            return None
    return (
        f"{where}: must be the absolute path of a file under {snap_common}"
        " (the value is not shown: it may be a secret)"
    )


def _option_problem(section: str, key: str, value: Any, snap_common: str) -> str | None:
    where = f"{section}.{key}"
    if (section, key) in INLINE_SECRETS:
        file_option, example = INLINE_SECRETS[(section, key)]
        return (
            f"{where}: secrets are not accepted as option values (not stored, not shown);"
            f" write it to a file under {snap_common} (e.g. {snap_common}/{example}, mode 0600)"
            f" and set {file_option} to that path"
        )
    if isinstance(value, str) and _PRIVATE_KEY.search(value):
        return (
            f"{where}: looks like a private key (not stored, not shown); put keys in files under"
            f" {snap_common} and set mqtt.key-file to the path"
        )
    name = key.replace("-", "_")
    if (section, name) in config.SECRET_KEYS:
        return _secret_path_problem(where, value, snap_common)
    if isinstance(value, dict):
        return f"{where}: expected a single value, got a group of options"
    return None


def to_sections(
    options: Mapping[str, Any], snap_common: str
) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """Map the `snapctl get -d` document onto TOML sections; secrets checked, never echoed.

    Returns the sections (keys in TOML spelling) and the problems found.
    """
    sections: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for section, group in options.items():
        if not isinstance(group, dict):
            problems.append(
                f"{section}: expected a group of options, e.g. `snap set microk8s-edge-agent"
                f" {section}.<key>=<value>`"
            )
            continue
        for key, value in group.items():
            problem = _option_problem(section, key, value, snap_common)
            if problem:
                problems.append(problem)
            else:
                sections.setdefault(section, {})[key.replace("-", "_")] = value
    return sections, problems


def render(sections: Mapping[str, Mapping[str, Any]]) -> str:
    return HEADER + config.to_toml(sections)


def has_broker(sections: Mapping[str, Mapping[str, Any]]) -> bool:
    """The daemon runs once `mqtt.host` was set: without a broker it could only retry."""
    return bool(sections.get("mqtt", {}).get("host"))


def service_commands(sections: Mapping[str, Mapping[str, Any]], instance: str) -> list[list[str]]:
    """snapctl argv lists that apply the new file: enable and restart, or stop and disable."""
    service = f"{instance}.{APP}"
    if has_broker(sections):
        return [[SNAPCTL, "start", "--enable", service], [SNAPCTL, "restart", service]]
    return [[SNAPCTL, "stop", "--disable", service]]


async def _snapctl(argv: Sequence[str]) -> str:
    try:
        done = await process.run(argv, timeout_s=SNAPCTL_TIMEOUT_S)
    except (ProcessError, CommandTimedOut) as exc:
        raise AgentError(f"{' '.join(argv[:2])}: {exc}") from exc
    if done.exit_code != 0:
        raise AgentError(f"{' '.join(argv[:2])} failed ({done.exit_code}): {done.output.strip()}")
    return done.output


async def read_options() -> dict[str, Any]:
    """The snap's options for every config section (unset sections are simply absent)."""
    output = await _snapctl([SNAPCTL, "get", "-d", *config.SECTIONS])
    try:
        document = json.loads(output)
    except json.JSONDecodeError as exc:
        raise AgentError(f"snapctl get printed something that is not JSON: {exc}") from exc
    if not isinstance(document, dict):
        raise AgentError("snapctl get printed JSON that is not an object")
    return document


def _snap_env(environ: Mapping[str, str]) -> tuple[Path, str, str]:
    snap_data = environ.get("SNAP_DATA", "")
    snap_common = environ.get("SNAP_COMMON", "")
    instance = environ.get("SNAP_INSTANCE_NAME") or environ.get("SNAP_NAME", "")
    if not (snap_data and snap_common and instance):
        raise AgentError("snap-configure runs as the snap's configure hook ($SNAP_DATA not set)")
    if not _INSTANCE.fullmatch(instance):
        raise AgentError(f"unexpected snap instance name {instance!r}")
    return Path(snap_data), snap_common, instance


async def configure(environ: Mapping[str, str]) -> None:
    """Read, validate, write agent.toml, then (re)start or stop the daemon.

    Raises:
        ConfigError: the options are invalid; nothing was written.
        AgentError: snapctl or the file system failed; the previous file is back in place.
    """
    snap_data, snap_common, instance = _snap_env(environ)
    sections, problems = to_sections(await read_options(), snap_common)
    try:
        config.parse(sections)
    except ConfigError as exc:
        problems.extend(exc.problems)
    if problems:
        raise ConfigError(problems)
    target = snap_data / snap_paths.CONFIG_FILE
    previous = target.read_bytes() if target.is_file() else None
    durable.atomic_write(target, render(sections).encode())
    try:
        for argv in service_commands(sections, instance):
            await _snapctl(argv)
    except AgentError:
        _restore(target, previous)
        raise


def _restore(target: Path, previous: bytes | None) -> None:
    """Put the previous file back, so the files match the options snapd rolls back to."""
    if previous is None:
        target.unlink(missing_ok=True)
    else:
        durable.atomic_write(target, previous)


def cmd_snap_configure(args: argparse.Namespace) -> int:
    del args
    try:
        asyncio.run(configure(os.environ))
    except ConfigError as exc:
        print(f"edge-agent: {exc}", file=sys.stderr)
        print("  (snap options spell '_' as '-': mqtt.password-file)", file=sys.stderr)
        return EXIT_CONFIG
    except AgentError as exc:
        print(f"edge-agent: snap-configure failed: {exc}", file=sys.stderr)
        return EXIT_FAILURE
    return EXIT_OK


def add_command(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "snap-configure",
        help="the snap's configure hook: validate `snap set` options, write $SNAP_DATA/agent.toml",
    )
    parser.set_defaults(func=cmd_snap_configure)
