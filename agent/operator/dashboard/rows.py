"""The dashboard's snapshot (pure): node rows sorted by severity and the cluster banner.

Served as `GET /api/fleet` and pushed on `GET /events`; the page only draws it, so every rule
(what is stale, what is skewed, what counts as critical) lives here and is table-tested.
Ages are computed against `now` and the page keeps them ticking from `generated_at`.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable
from typing import Any

from agent.operator.dashboard.fleet_view import (
    FAILED_COMMANDS,
    SEVERITY_RANK,
    FleetView,
    HaReport,
    NodeRecord,
)

SNAPSHOT_SCHEMA = 1
_VERSION = re.compile(r"^v?(\d+)\.(\d+)(?:\.(\d+))?")


def snapshot(view: FleetView, now: float) -> dict[str, Any]:
    source = _ha_source(view)
    leader = source[1].leader if source else None
    versions = usual(r.health.version for r in view.nodes.values() if r.health)
    channels = usual(r.health.channel for r in view.nodes.values() if r.health)
    rows = [
        node_row(name, record, now, view.stale_after_s, leader=leader, skew=(versions, channels))
        for name, record in view.nodes.items()
    ]
    rows.sort(key=lambda row: (SEVERITY_RANK[row["severity"]], row["name"]))
    return {
        "schema": SNAPSHOT_SCHEMA,
        "prefix": view.prefix,
        "cluster": view.cluster,
        "generated_at": round(now, 3),
        "banner": banner(view, rows, source),
        "nodes": rows,
        "ignored_messages": view.ignored,
    }


# -- rows -----------------------------------------------------------------------------------


def _age(now: float, ts: float | None) -> float | None:
    return None if ts is None else round(max(0.0, now - ts), 1)


def last_seen(record: NodeRecord) -> float | None:
    """The newest time the node itself wrote in its messages, never later than their receipt.

    A retained message is received when the dashboard starts, so receipt time alone would make a
    node lost an hour ago look fresh; the node's own `ts` is clamped so a fast clock cannot make
    it look fresher than it is.
    """
    stamps = [
        record.presence.ts if record.presence else None,
        record.health.ts if record.health else None,
        record.ha.ts if record.ha else None,
        record.command.ts if record.command else None,
    ]
    known = [ts for ts in stamps if ts is not None]
    if not known:
        return record.seen_at
    newest = max(known)
    return newest if record.seen_at is None else min(newest, record.seen_at)


def _stale_reason(record: NodeRecord, now: float, stale_after_s: float) -> str | None:
    presence = record.presence.state if record.presence else "unknown"
    if presence != "online":
        return {"lost": "connection lost", "offline": "offline"}.get(presence, "no presence")
    if record.health_at is not None and now - record.health_at > stale_after_s:
        return f"no health for {now - record.health_at:.0f} s"
    return None


def _version_key(version: str) -> tuple[int, int, int] | None:
    match = _VERSION.match(version)
    if not match:
        return None
    return int(match[1]), int(match[2]), int(match[3] or 0)


def usual(values: Iterable[str | None]) -> str | None:
    """The fleet's most common value when nodes differ (else None: no skew).

    A tie goes to the newest-looking value (highest version numbers), so in a two-node fleet
    it is the node left behind that is highlighted.
    """
    counts = Counter(v for v in values if v)
    if len(counts) < 2:
        return None
    return max(counts, key=lambda v: (counts[v], _version_key(v) or (-1, -1, -1), v))


def _microk8s(record: NodeRecord, skew: tuple[str | None, str | None]) -> dict[str, Any]:
    health = record.health
    version = health.version if health else None
    channel = health.channel if health else None
    return {
        "version": version,
        "channel": channel,
        "running": health.microk8s_running if health else None,
        "version_skew": bool(skew[0] and version and version != skew[0]),
        "channel_skew": bool(skew[1] and channel and channel != skew[1]),
    }


def _severity(row: dict[str, Any]) -> tuple[str, list[str]]:
    """critical / warning / ok, with the short reasons that decided it."""
    critical, warning = [], []
    if row["presence"] == "lost":
        critical.append("connection lost")
    elif row["presence"] != "online":
        warning.append(row["presence"] if row["presence"] == "offline" else "no presence")
    status = (row["health"] or {}).get("status")
    if status == "critical":
        critical.append("health critical")
    elif status == "degraded":
        warning.append("health degraded")
    elif status is None:
        warning.append("no health")
    if row["stale"] and row["presence"] == "online":
        warning.append(row["stale_reason"])
    if row["under_voltage"]:
        warning.append("under-voltage")
    if row["microk8s"]["version_skew"] or row["microk8s"]["channel_skew"]:
        warning.append("version skew")
    command = row["command"]
    if command and command["status"] in FAILED_COMMANDS:
        warning.append(f"{command['verb'] or 'command'} {command['status']}")
    if row["maintenance"]:
        warning.append("maintenance")
    if critical:
        return "critical", critical + warning
    return ("warning", warning) if warning else ("ok", [])


def node_row(
    name: str,
    record: NodeRecord,
    now: float,
    stale_after_s: float,
    *,
    leader: str | None,
    skew: tuple[str | None, str | None],
) -> dict[str, Any]:
    presence, health, command = record.presence, record.health, record.command
    seen = last_seen(record)
    stale_reason = _stale_reason(record, now, stale_after_s)
    row: dict[str, Any] = {
        "name": name,
        "role": record.ha.role if record.ha else None,
        "leader": leader is not None and leader == name,
        "presence": presence.state if presence else "unknown",
        "presence_reason": presence.reason if presence else None,
        "session": presence.session if presence else None,
        "last_seen": seen,
        "last_seen_age_s": _age(now, seen),
        "stale": stale_reason is not None,
        "stale_reason": stale_reason,
        "health": None
        if health is None
        else {
            "status": health.status,
            "reasons": health.reasons,
            "age_s": _age(now, min(filter(None, (health.ts, record.health_at)), default=None)),
        },
        "temperature_c": health.temperature_c if health else None,
        "throttled": health.throttled if health else None,
        "under_voltage": health.under_voltage if health else None,
        "under_voltage_occurred": health.under_voltage_occurred if health else None,
        "disk_percent": health.disk_percent if health else None,
        "microk8s": _microk8s(record, skew),
        "agent_version": presence.agent_version if presence else None,
        "command": None
        if command is None
        else {
            "id": command.id,
            "verb": command.verb,
            "status": command.status,
            "age_s": _age(now, command.ts),
            "error": command.error,
        },
        "maintenance": record.ha.maintenance if record.ha else None,
    }
    row["severity"], row["why"] = _severity(row)
    return row


# -- banner ---------------------------------------------------------------------------------


def _ha_source(view: FleetView) -> tuple[str, HaReport] | None:
    """Whose HA verdict the banner shows: an online node's, a voter's, then the freshest."""

    def rank(item: tuple[str, HaReport, NodeRecord]) -> tuple[bool, bool, float]:
        _, ha, record = item
        online = record.presence is not None and record.presence.state == "online"
        return online, ha.role == "voter", ha.ts or 0.0

    reporting = [(n, r.ha, r) for n, r in view.nodes.items() if r.ha and r.ha.verdict]
    if not reporting:
        return None
    name, ha, _ = max(reporting, key=rank)
    return name, ha


def _counts(rows: list[dict[str, Any]]) -> dict[str, int]:
    counts = Counter(row["presence"] for row in rows)
    severities = Counter(row["severity"] for row in rows)
    return {
        "nodes": len(rows),
        "online": counts["online"],
        "offline": counts["offline"],
        "lost": counts["lost"],
        "critical": severities["critical"],
        "warning": severities["warning"],
        "ok": severities["ok"],
    }


def skew_notes(rows: list[dict[str, Any]]) -> list[str]:
    """`MicroK8s versions differ: v1.33.0 on pi-03; v1.32.3 on pi-01, pi-02` (one per field)."""
    notes = []
    for field, label in (("version", "MicroK8s versions"), ("channel", "channels")):
        holders: dict[str, list[str]] = {}
        for row in rows:
            value = row["microk8s"][field]
            if value:
                holders.setdefault(value, []).append(row["name"])
        if len(holders) > 1:
            ordered = sorted(holders.items(), key=lambda item: (len(item[1]), item[0]))
            listed = "; ".join(f"{value} on {', '.join(sorted(names))}" for value, names in ordered)
            notes.append(f"{label} differ: {listed}")
    return notes


def banner(
    view: FleetView, rows: list[dict[str, Any]], source: tuple[str, HaReport] | None
) -> dict[str, Any]:
    online = {row["name"] for row in rows if row["presence"] == "online"}
    maintenance = [
        {"node": r["name"], "reason": r["maintenance"]} for r in rows if r["maintenance"]
    ]
    result: dict[str, Any] = {
        "counts": _counts(rows),
        "maintenance": maintenance,
        "skew": skew_notes(rows),
        "rollout": view.rollout,
        "verdict": "unknown",
        "verdict_from": None,
        "voters_up": None,
        "voters_total": None,
        "needed": None,
        "margin": None,
        "reasons": [],
        "readiness": None,
        "leader": None,
        "disagree": [],
    }
    if source is None:
        result["reasons"] = ["no node publishes an HA verdict (R/ha): HA checks are off"]
        return result
    name, ha = source
    result.update(
        verdict=ha.verdict,
        verdict_from=name,
        voters_up=ha.quorum["reachable"],
        voters_total=ha.quorum["size"],
        needed=ha.quorum["needed"],
        margin=ha.quorum["margin"],
        reasons=ha.reasons,
        readiness=ha.readiness,
        leader=ha.leader,
        disagree=[
            {"node": n, "verdict": r.ha.verdict}
            for n, r in sorted(view.nodes.items())
            if n in online and r.ha and r.ha.verdict and r.ha.verdict != ha.verdict
        ],
    )
    return result
