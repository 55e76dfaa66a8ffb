"""Validation rules of the settings (pure): every problem is collected, none raised.

Kept apart from agent.config (schema, reading, rendering) so each stays readable; config.build()
calls `validate` after the values are typed.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from agent.settings import HealthSettings, MqttSettings, Settings

NAME_RE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
TOPIC_PREFIX_RE = re.compile(r"^[A-Za-z0-9_-]+(/[A-Za-z0-9_-]+)*$")


def _check_range(problems: list[str], where: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        problems.append(f"{where}: {value:g} is out of range [{low:g}, {high:g}]")


def _check_choice(
    problems: list[str], where: str, value: object, choices: tuple[object, ...]
) -> None:
    if value not in choices:
        problems.append(f"{where}: {value!r} is not one of {', '.join(map(repr, choices))}")


def _validate_identity(s: Settings, problems: list[str]) -> None:
    for where, value in (("node.name", s.node.name), ("node.cluster", s.node.cluster)):
        if not NAME_RE.fullmatch(value):
            problems.append(
                f"{where}: {value!r} must be lowercase letters, digits and '-', 1-63 characters,"
                " starting and ending with a letter or digit"
            )
    if not TOPIC_PREFIX_RE.fullmatch(s.mqtt.prefix):
        problems.append(f"mqtt.prefix: {s.mqtt.prefix!r} must be topic levels of [A-Za-z0-9_-]")


def _validate_mqtt(m: MqttSettings, problems: list[str]) -> None:
    if not m.host:
        problems.append("mqtt.host: must not be empty")
    _check_range(problems, "mqtt.port", m.port, 1, 65535)
    _check_range(problems, "mqtt.keepalive_s", m.keepalive_s, 5, 3600)
    _check_choice(problems, "mqtt.protocol", m.protocol, (5, 3))
    if bool(m.cert_file) != bool(m.key_file):
        problems.append("mqtt.cert_file and mqtt.key_file: give both or neither")
    if (m.ca_file or m.cert_file) and not m.tls:
        problems.append("mqtt.tls: must be true when ca_file or cert_file is set")
    if m.password_file and not m.username:
        problems.append("mqtt.username: required when mqtt.password_file is set")
    for key in ("password_file", "ca_file", "cert_file", "key_file"):
        value = getattr(m, key)
        if value and not Path(value).is_file():
            problems.append(f"mqtt.{key}: {value!r} is not a readable file")


def validate_mqtt(m: MqttSettings, problems: list[str]) -> None:
    """The `[mqtt]` rules alone; the operator config (agent.operator.settings) reuses them."""
    _validate_mqtt(m, problems)


def _validate_health(h: HealthSettings, problems: list[str]) -> None:
    _check_range(problems, "health.interval_s", h.interval_s, 0.05, 86400)
    _check_choice(problems, "health.qos", h.qos, (0, 1))
    _check_range(problems, "health.temperature_warn_c", h.temperature_warn_c, 0, 150)
    _check_range(problems, "health.temperature_crit_c", h.temperature_crit_c, 0, 150)
    for key in (
        "disk_warn_percent",
        "disk_crit_percent",
        "memory_warn_percent",
        "memory_crit_percent",
    ):
        _check_range(problems, f"health.{key}", getattr(h, key), 1, 100)
    if h.temperature_warn_c > h.temperature_crit_c:
        problems.append("health.temperature_warn_c: must not exceed temperature_crit_c")
    if h.disk_warn_percent > h.disk_crit_percent:
        problems.append("health.disk_warn_percent: must not exceed disk_crit_percent")
    if h.memory_warn_percent > h.memory_crit_percent:
        problems.append("health.memory_warn_percent: must not exceed memory_crit_percent")
    for path in h.disk_paths:
        if not path.startswith("/"):
            problems.append(f"health.disk_paths: {path!r} must be an absolute path")
    _validate_detectors(h, problems)


# (key, low, high) of the detectors' numeric limits; an interval below the floor would wear the
# card (fsync) or cost CPU for nothing.
_DETECTOR_RANGES: tuple[tuple[str, float, float], ...] = (
    ("detectors_interval_s", 1, 3600),
    ("cert_warn_days", 0, 3650),
    ("cert_crit_days", 0, 3650),
    ("certs_interval_s", 60, 86400 * 7),
    ("clock_offset_warn_s", 0.01, 86400),
    ("clock_offset_crit_s", 0.01, 86400),
    ("clock_window_s", 10, 86400),
    ("process_restarts_crit", 1, 1000),
    ("process_restart_window_s", 10, 86400),
    ("process_cpu_warn_percent", 1, 10000),
    ("process_cpu_window_s", 10, 86400),
    ("process_rss_growth_warn_mib_h", 1, 65536),
    ("fsync_warn_ms", 0.1, 60000),
    ("fsync_crit_ms", 0.1, 60000),
    ("fsync_interval_s", 60, 86400),
    ("fsync_window_s", 60, 86400 * 7),
    ("eviction_margin_percent", 0, 50),
    ("not_ready_warn_s", 1, 86400),
)


def _validate_detectors(h: HealthSettings, problems: list[str]) -> None:
    for key, low, high in _DETECTOR_RANGES:
        _check_range(problems, f"health.{key}", getattr(h, key), low, high)
    for warn, crit in (
        ("cert_crit_days", "cert_warn_days"),
        ("clock_offset_warn_s", "clock_offset_crit_s"),
        ("fsync_warn_ms", "fsync_crit_ms"),
    ):
        if getattr(h, warn) > getattr(h, crit):
            problems.append(f"health.{warn}: must not exceed {crit}")
    for key in ("proc_root", "fsync_path"):
        value = getattr(h, key)
        if value and not value.startswith("/"):
            problems.append(f"health.{key}: {value!r} must be an absolute path")


def _validate_rest(s: Settings, problems: list[str]) -> None:
    _check_range(problems, "http.port", s.http.port, 1, 65535)
    c = s.commands
    _check_range(problems, "commands.max_age_s", c.max_age_s, 1, 86400 * 7)
    _check_range(problems, "commands.clock_skew_s", c.clock_skew_s, 0, 3600)
    _check_range(problems, "commands.queue_size", c.queue_size, 1, 1024)
    _check_range(problems, "commands.journal_max_bytes", c.journal_max_bytes, 4096, 1 << 30)
    for key in c.trusted_keys:
        if not key:
            problems.append("commands.trusted_keys: empty path")
        elif not Path(key).is_file():
            problems.append(f"commands.trusted_keys: {key!r} is not a readable file")
    mk = s.microk8s
    _check_choice(problems, "microk8s.backend", mk.backend, ("auto", "snap", "cli"))
    for key in (
        "command_timeout_s",
        "status_interval_s",
        "status_timeout_s",
        "drain_timeout_s",
        "join_timeout_s",
    ):
        _check_range(problems, f"microk8s.{key}", getattr(mk, key), 0.1, 86400)
    if not mk.cluster_agent_url.startswith(("https://", "http://")):
        problems.append("microk8s.cluster_agent_url: must start with https://")
    _check_range(problems, "ha.interval_s", s.ha.interval_s, 0.1, 86400)
    _check_range(problems, "ha.probe_timeout_s", s.ha.probe_timeout_s, 0.05, 60)
    _check_range(problems, "ha.auto_remove_after_s", s.ha.auto_remove_after_s, 0, 86400 * 30)
    if not s.state.dir:
        problems.append("state.dir: must not be empty")
    _check_choice(problems, "log.level", s.log.level, ("debug", "info", "warning", "error"))
    _check_choice(problems, "log.format", s.log.format, ("auto", "json", "console"))
    _check_range(problems, "agent.max_rss_mib", s.agent.max_rss_mib, 0, 65536)


def validate(settings: Settings) -> list[str]:
    problems: list[str] = []
    _validate_identity(settings, problems)
    _validate_mqtt(settings.mqtt, problems)
    _validate_health(settings.health, problems)
    _validate_rest(settings, problems)
    return problems
