"""Operator configuration: which broker, which cluster, which signing key, typed once.

Sources, later ones winning key by key: built-in defaults, the TOML file (`--config FILE`, else
`$EDGE_AGENT_OPERATOR_CONFIG`, else `~/.config/edge-agent/operator.toml` when it exists), then
command-line flags. Problems are collected and reported together, in the agent config's words
(agent.config reads the `[mqtt]` table, agent.config_rules validates it), so an operator fixes
the file in one pass.

The stable API, shared by every operator command (send, nodes, fleet, dashboard):
`add_options(parser)` adds the shared flags, `resolve(ns, environ)` turns parsed arguments and
the environment into a frozen `OperatorSettings` (or raises ConfigError), and `as_toml(settings)`
renders the effective configuration (`edge-agent operator-config`).

File format::

    cluster = "lab"
    signing_key = "ops-1.key"        # relative paths are relative to this file
    [mqtt]
    host = "broker.lan"
    port = 8883
    protocol = 5                     # or 3 (MQTT 3.1.1)
    tls = true
    ca_file = "pki/ca.crt"
    cert_file = "pki/operators/admin.crt"
    key_file = "pki/operators/admin.key"   # the TLS client key, as mosquitto_pub --key
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent import config, config_rules
from agent.config_rules import NAME_RE
from agent.errors import ConfigError
from agent.settings import MqttSettings

ENV_CONFIG = "EDGE_AGENT_OPERATOR_CONFIG"
DEFAULT_CLUSTER = "default"
TOP_KEYS = ("cluster", "signing_key")
MQTT_PATH_KEYS = ("password_file", "ca_file", "cert_file", "key_file")
_PEM_PUBLIC = b"-----BEGIN PUBLIC KEY-----"


def default_config_path(environ: Mapping[str, str]) -> Path:
    """`$XDG_CONFIG_HOME/edge-agent/operator.toml`, `~/.config/...` when XDG is unset."""
    base = environ.get("XDG_CONFIG_HOME") or str(Path(environ.get("HOME", "~")) / ".config")
    return Path(base).expanduser() / "edge-agent" / "operator.toml"


@dataclasses.dataclass(frozen=True, slots=True)
class OperatorSettings:
    """Everything an operator command needs to reach a cluster and sign for it."""

    mqtt: MqttSettings = dataclasses.field(default_factory=MqttSettings)
    cluster: str = DEFAULT_CLUSTER
    signing_key: str = ""
    # The file the values came from ("" when none was read), shown by `operator-config`.
    source: str = ""

    def cluster_base(self) -> str:
        """`{prefix}/{cluster}/nodes`: the parent of every node's `R`."""
        return f"{self.mqtt.prefix}/{self.cluster}/nodes"


# -- argparse -------------------------------------------------------------------------------


def _broker(value: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    if not sep:
        return value, 1883
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise argparse.ArgumentTypeError(f"bad port in {value!r} (1-65535)")
    return host, int(port)


def add_options(parser: argparse.ArgumentParser) -> None:
    """The shared operator flags. Defaults are SUPPRESS, so "not given" is distinguishable
    and the same options can be added to nested sub-parsers (options anywhere on the line)."""
    group = parser.add_argument_group("broker, cluster and signing (override the operator config)")
    add = group.add_argument
    quiet = argparse.SUPPRESS
    add(
        "--config",
        dest="operator_config",
        default=quiet,
        metavar="FILE",
        help=f"operator config TOML (default: ${ENV_CONFIG}, else ~/.config/edge-agent/"
        "operator.toml when it exists)",
    )
    add("--broker", type=_broker, default=quiet, metavar="HOST[:PORT]", help="MQTT broker")
    add("--protocol", type=int, choices=(3, 5), default=quiet, help="MQTT version: 5 or 3")
    add("--cluster", default=quiet, help=f"cluster name (default: {DEFAULT_CLUSTER!r})")
    add("--prefix", default=quiet, help="topic prefix (default: 'microk8s')")
    add("--username", default=quiet, help="MQTT user name")
    add("--password-file", default=quiet, metavar="FILE", help="file holding the MQTT password")
    add("--tls", action="store_const", const=True, default=quiet, help="connect with TLS")
    add(
        "--ca-file", "--cafile", default=quiet, metavar="FILE", help="TLS CA bundle (implies --tls)"
    )
    add(
        "--cert-file",
        "--cert",
        default=quiet,
        metavar="FILE",
        help="TLS client certificate (implies --tls)",
    )
    add(
        "--key-file",
        "--key",
        default=quiet,
        metavar="FILE",
        help="TLS client private key, as mosquitto_pub --key (not the signing key)",
    )
    add(
        "--signing-key",
        default=quiet,
        metavar="FILE",
        help="operator Ed25519 private key NAME.key that signs commands (key id = NAME)",
    )


_FLAG_TO_MQTT = {
    "protocol": "protocol",
    "prefix": "prefix",
    "username": "username",
    "password_file": "password_file",
    "tls": "tls",
    "ca_file": "ca_file",
    "cert_file": "cert_file",
    "key_file": "key_file",
}


def _flag_values(ns: argparse.Namespace) -> tuple[dict[str, Any], dict[str, Any]]:
    given = {key: value for key, value in vars(ns).items() if value is not None}
    mqtt = {dest: given[flag] for flag, dest in _FLAG_TO_MQTT.items() if flag in given}
    if "broker" in given:
        mqtt["host"], mqtt["port"] = given["broker"]
    for key in MQTT_PATH_KEYS:
        if key in mqtt:
            mqtt[key] = str(Path(mqtt[key]).expanduser())
    if mqtt.get("ca_file") or mqtt.get("cert_file"):
        mqtt["tls"] = True  # a CA or a client certificate on the line means TLS, as before
    top = {key: given[key] for key in TOP_KEYS if key in given}
    if "signing_key" in top:
        top["signing_key"] = str(Path(top["signing_key"]).expanduser())
    return top, mqtt


# -- file -----------------------------------------------------------------------------------


def _config_path(ns: argparse.Namespace, environ: Mapping[str, str]) -> tuple[Path | None, bool]:
    """The file to read and whether it must exist (named explicitly)."""
    named = getattr(ns, "operator_config", None) or environ.get(ENV_CONFIG)
    if named:
        return Path(named).expanduser(), True
    path = default_config_path(environ)
    return (path, False) if path.is_file() else (None, False)


def _relative_to(base: Path, value: str) -> str:
    path = Path(value).expanduser()
    return str(path if path.is_absolute() else base / path)


def _read_file(path: Path, problems: list[str]) -> tuple[dict[str, Any], dict[str, Any]]:
    data = config.read_file(path, problems)
    top: dict[str, Any] = {}
    mqtt: dict[str, Any] = {}
    for key, value in data.items():
        if key == "mqtt":
            mqtt = config.read_section("mqtt", value, problems)
        elif key in TOP_KEYS:
            if isinstance(value, str):
                top[key] = value
            else:
                problems.append(f"{path}: {key}: expected a string, got {value!r}")
        else:
            known = ", ".join([*TOP_KEYS, "[mqtt]"])
            problems.append(f"{path}: {key}: unknown key (known: {known})")
    base = path.parent
    for key in MQTT_PATH_KEYS:
        if mqtt.get(key):
            mqtt[key] = _relative_to(base, mqtt[key])
    if top.get("signing_key"):
        top["signing_key"] = _relative_to(base, top["signing_key"])
    return top, mqtt


# -- validation -----------------------------------------------------------------------------


def _check_signing_key(path: str, problems: list[str]) -> None:
    if not path:
        return
    key = Path(path)
    if key.suffix == ".pub":
        problems.append(
            f"signing_key: {path!r} is the public half; give the private key"
            f" {key.with_suffix('.key').name!r} (the .pub goes to the nodes' trusted_keys)"
        )
        return
    try:
        head = key.read_bytes()[:64]
    except OSError as exc:
        problems.append(f"signing_key: {path!r}: cannot read ({exc.strerror or exc})")
        return
    if head.startswith(_PEM_PUBLIC):
        problems.append(
            f"signing_key: {path!r} holds a public key; give the private key (NAME.key)"
        )


def validate(settings: OperatorSettings) -> list[str]:
    """Every problem of an operator configuration, in the agent config's words."""
    problems: list[str] = []
    if not NAME_RE.fullmatch(settings.cluster):
        problems.append(
            f"cluster: {settings.cluster!r} must be lowercase letters, digits and '-',"
            " 1-63 characters, starting and ending with a letter or digit"
        )
    if not config_rules.TOPIC_PREFIX_RE.fullmatch(settings.mqtt.prefix):
        problems.append(
            f"mqtt.prefix: {settings.mqtt.prefix!r} must be topic levels of [A-Za-z0-9_-]"
        )
    config_rules.validate_mqtt(settings.mqtt, problems)
    if settings.mqtt.key_file and not settings.mqtt.cert_file:
        problems.append(
            "mqtt.key_file (--key): the TLS client key, as in mosquitto_pub, goes with a"
            " certificate (--cert); to sign commands use --signing-key"
        )
    _check_signing_key(settings.signing_key, problems)
    return problems


def resolve(ns: argparse.Namespace, environ: Mapping[str, str] | None = None) -> OperatorSettings:
    """Defaults, then the config file, then flags; validated.

    Raises:
        ConfigError: listing every problem (unreadable file, unknown key, bad value).
    """
    environ = os.environ if environ is None else environ
    problems: list[str] = []
    path, required = _config_path(ns, environ)
    file_top: dict[str, Any] = {}
    file_mqtt: dict[str, Any] = {}
    if path is not None and (required or path.exists()):
        file_top, file_mqtt = _read_file(path, problems)
    flag_top, flag_mqtt = _flag_values(ns)
    try:
        mqtt = MqttSettings(**{**file_mqtt, **flag_mqtt})
    except TypeError as exc:  # pragma: no cover - keys are checked against the schema above
        raise ConfigError([str(exc)]) from exc
    settings = OperatorSettings(
        mqtt=mqtt,
        source=str(path) if path is not None else "",
        **{**file_top, **flag_top},
    )
    problems.extend(validate(settings))
    if problems:
        raise ConfigError(problems)
    return settings


def as_dict(settings: OperatorSettings) -> dict[str, Any]:
    """The effective configuration (the password file's path is shown, never its content)."""
    mqtt = dataclasses.asdict(settings.mqtt)
    return {"cluster": settings.cluster, "signing_key": settings.signing_key, "mqtt": mqtt}


def as_toml(settings: OperatorSettings) -> str:
    """`edge-agent operator-config` output: valid TOML that `--config` reads back."""
    data = as_dict(settings)
    header = (
        f"# from {settings.source}" if settings.source else "# no config file: defaults and flags"
    )
    top = [f"{key} = {json.dumps(data[key])}" for key in TOP_KEYS]
    return "\n".join([header, *top, "", ""]) + config.to_toml({"mqtt": data["mqtt"]})
