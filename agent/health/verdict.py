"""Turn raw node figures into the health verdict and the ``R/health`` message.

Pure: no psutil, no I/O, no clock. The monitor gathers the figures (sysinfo, the MicroK8s
backend, the Kubernetes API) and hands them in, so every rule here is a plain table test.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping
from typing import Any, Protocol

SCHEMA = 1
OK = "ok"
DEGRADED = "degraded"
CRITICAL = "critical"
_RANK = {OK: 0, DEGRADED: 1, CRITICAL: 2}

MEMORY_CGROUP_HINT = (
    "memory cgroup not enabled "
    "(add cgroup_enable=memory cgroup_memory=1 to the kernel command line)"
)
NOT_RUNNING = "MicroK8s is installed but not running"

# (flag, reason while set now, severity while set now, reason once it has occurred since boot).
# Under-voltage risks SD-card corruption and throttling means the SoC hit its hard limit, so
# both are critical while they last; capping and the soft limit only slow the node down.
# Anything that has merely occurred since boot is degraded: the supply or cooling is marginal.
_THROTTLE_FLAGS: tuple[tuple[str, str, str, str], ...] = (
    ("under_voltage", "under-voltage now", CRITICAL, "under-voltage has occurred since boot"),
    ("throttled", "throttled now", CRITICAL, "throttling has occurred since boot"),
    ("freq_capped", "frequency capped now", DEGRADED, "frequency capping has occurred since boot"),
    (
        "soft_temp_limit",
        "soft temperature limit active now",
        DEGRADED,
        "soft temperature limit has occurred since boot",
    ),
)

Finding = tuple[str, str]

DETECTOR_BLOCKS = ("certs", "clock", "microk8s_processes", "storage", "eviction", "readiness")
"""Keys of the detector blocks in the health message (agent.health.detectors)."""


class _ThresholdSource(Protocol):
    @property
    def temperature_warn_c(self) -> float: ...
    @property
    def temperature_crit_c(self) -> float: ...
    @property
    def disk_warn_percent(self) -> float: ...
    @property
    def disk_crit_percent(self) -> float: ...
    @property
    def memory_warn_percent(self) -> float: ...
    @property
    def memory_crit_percent(self) -> float: ...


@dataclasses.dataclass(frozen=True, slots=True)
class Thresholds:
    """Limits that move the status: reaching a warn limit is degraded, a crit limit critical."""

    temperature_warn_c: float = 75
    temperature_crit_c: float = 85
    disk_warn_percent: float = 85
    disk_crit_percent: float = 95
    memory_warn_percent: float = 90
    memory_crit_percent: float = 97

    @classmethod
    def from_settings(cls, h: _ThresholdSource) -> Thresholds:
        """Copy the limits from `config.HealthSettings` (or anything with the same attributes)."""
        return cls(
            temperature_warn_c=h.temperature_warn_c,
            temperature_crit_c=h.temperature_crit_c,
            disk_warn_percent=h.disk_warn_percent,
            disk_crit_percent=h.disk_crit_percent,
            memory_warn_percent=h.memory_warn_percent,
            memory_crit_percent=h.memory_crit_percent,
        )


def evaluate(
    system: Mapping[str, Any], microk8s: Mapping[str, Any], thresholds: Thresholds
) -> tuple[str, list[str]]:
    """Return the overall status (the worst finding) and one reason per finding.

    A value that is missing, null or of the wrong type is unknown, and unknown never produces
    a reason: the snapshot already says null, and guessing would page someone for nothing.
    """
    findings = [
        *_temperature(system.get("temperature_c"), thresholds),
        *_disks(system.get("disks"), thresholds),
        *_memory(system.get("memory"), thresholds),
        *_throttling(system.get("throttled")),
        *_microk8s(system, microk8s),
    ]
    return worst(findings), [reason for _, reason in findings]


def worst(findings: Iterable[Finding]) -> str:
    """The most severe finding's severity; ok when there is none."""
    return max((severity for severity, _ in findings), key=_RANK.__getitem__, default=OK)


def build_snapshot(
    *,
    node: str,
    cluster: str,
    ts: float,
    session: int,
    seq: int,
    system: Mapping[str, Any],
    microk8s: Mapping[str, Any],
    kube: Mapping[str, Any],
    agent: Mapping[str, Any] | None = None,
    thresholds: Thresholds,
    detectors: tuple[Mapping[str, Any], list[Finding]] | None = None,
) -> dict[str, Any]:
    """Assemble the ``R/health`` object of PROTOCOL.md, with status and reasons evaluated.

    `detectors` are the detector blocks and their findings (agent.health.detectors): the
    blocks are added as they are, the findings join the node's status and reasons.
    """
    status, reasons = evaluate(system, microk8s, thresholds)
    if detectors is not None and detectors[1]:
        status = worst([(status, ""), *detectors[1]])
        reasons += [reason for _, reason in detectors[1]]
    snapshot: dict[str, Any] = {
        "schema": SCHEMA,
        "node": node,
        "cluster": cluster,
        "ts": round(ts, 2),
        "session": session,
        "seq": seq,
        "status": status,
        "reasons": reasons,
        "system": dict(system),
        "microk8s": dict(microk8s),
        "kube": dict(kube),
    }
    if agent is not None:
        snapshot["agent"] = dict(agent)
    if detectors is not None:
        snapshot.update(detectors[0])
    return snapshot


def encode(snapshot: Mapping[str, Any]) -> bytes:
    """Serialise compactly; the message is retained on every node, so every byte counts.

    Raises:
        ValueError: a float is NaN or infinite, which JSON cannot carry.
    """
    text = json.dumps(snapshot, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return text.encode("utf-8")


def _number(value: object) -> float | None:
    # bool is an int subclass; a stray true must not read as 1 %.
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


def _against(value: float, warn: float, crit: float) -> tuple[str, float] | None:
    if value >= crit:
        return CRITICAL, crit
    if value >= warn:
        return DEGRADED, warn
    return None


def _temperature(value: object, t: Thresholds) -> list[Finding]:
    celsius = _number(value)
    if celsius is None:
        return []
    hit = _against(celsius, t.temperature_warn_c, t.temperature_crit_c)
    if hit is None:
        return []
    severity, limit = hit
    return [(severity, f"temperature {celsius:.1f} C >= {limit:.1f} C")]


def _disks(value: object, t: Thresholds) -> list[Finding]:
    if not isinstance(value, list):
        return []
    findings: list[Finding] = []
    for disk in value:
        if not isinstance(disk, Mapping):
            continue
        percent = _number(disk.get("percent"))
        if percent is None:
            continue
        hit = _against(percent, t.disk_warn_percent, t.disk_crit_percent)
        if hit is not None:
            severity, limit = hit
            mount = disk.get("mount", "?")
            findings.append((severity, f"disk {mount} {percent:.1f}% used >= {limit:.1f}%"))
    return findings


def _memory(value: object, t: Thresholds) -> list[Finding]:
    if not isinstance(value, Mapping):
        return []
    percent = _number(value.get("percent"))
    if percent is None:
        return []
    hit = _against(percent, t.memory_warn_percent, t.memory_crit_percent)
    if hit is None:
        return []
    severity, limit = hit
    return [(severity, f"memory {percent:.1f}% used >= {limit:.1f}%")]


def _throttling(value: object) -> list[Finding]:
    """One finding per firmware flag; an event still happening hides its "occurred" twin."""
    if not isinstance(value, Mapping):
        return []
    findings: list[Finding] = []
    for flag, now_reason, now_severity, occurred_reason in _THROTTLE_FLAGS:
        if value.get(flag) is True:
            findings.append((now_severity, now_reason))
        elif value.get(f"{flag}_occurred") is True:
            findings.append((DEGRADED, occurred_reason))
    raw = value.get("raw")
    if findings and isinstance(raw, str):
        severity, reason = findings[0]
        findings[0] = (severity, f"{reason} (throttled={raw})")
    return findings


def _microk8s(system: Mapping[str, Any], microk8s: Mapping[str, Any]) -> list[Finding]:
    if microk8s.get("installed") is not True:
        return []
    findings: list[Finding] = []
    if microk8s.get("running") is False:
        findings.append((CRITICAL, NOT_RUNNING))
    if system.get("memory_cgroup") is False:
        findings.append((DEGRADED, MEMORY_CGROUP_HINT))
    return findings
