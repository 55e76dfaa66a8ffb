"""The fleet as the dashboard shows it (pure): retained messages in, one JSON snapshot out.

Every byte comes from the broker, where any client with publish rights could have written it, so
nothing is trusted: payloads over `MAX_PAYLOAD_BYTES`, bad JSON, wrong types and unknown nodes
past `max_nodes` are counted and ignored, and only the few fields the page shows are copied out
(strings clipped, lists cut), so memory stays proportional to the number of nodes whatever
arrives. Presence follows PROTOCOL.md: `online`; `offline` with reason `shutdown` (a clean stop);
any other `offline` is the last will, shown as `lost` (Homie's word). A will whose session is
older than the last birth's is dropped. Values of a node that is not online are kept and marked
stale with their age (Sparkplug's rule), never dropped.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from typing import Any

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_NODES = 1000
MAX_TEXT = 160
MAX_REASONS = 8
MAX_FACTORS = 12
# A health report older than this (receipt or its own ts) is stale even while the node is online.
DEFAULT_STALE_AFTER_S = 90.0
NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")
HEALTH_STATUSES = frozenset({"ok", "degraded", "critical"})
HA_VERDICTS = frozenset({"healthy", "degraded", "at_risk", "lost", "not_ha"})
COMMAND_STATUSES = frozenset(
    {"accepted", "running", "succeeded", "failed", "timed_out", "rejected", "queued"}
)
FAILED_COMMANDS = frozenset({"failed", "timed_out", "rejected"})
SEVERITY_RANK = {"critical": 0, "warning": 1, "ok": 2}


# -- reading untrusted values ---------------------------------------------------------------


def _text(value: object, limit: int = MAX_TEXT) -> str | None:
    if not isinstance(value, str):
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _number(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and abs(number) < 1e15 else None


def _flag(value: object) -> bool | None:
    return value if isinstance(value, bool) else None


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _reasons(value: object) -> list[str]:
    if not isinstance(value, list):
        return []
    return [t for t in (_text(v) for v in value[:MAX_REASONS]) if t is not None]


def _one_of(value: object, allowed: frozenset[str]) -> str | None:
    return value if isinstance(value, str) and value in allowed else None


def decode(payload: bytes) -> dict[str, Any] | None:
    """A JSON object of at most MAX_PAYLOAD_BYTES, else None."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        return None
    try:
        body = json.loads(payload)
    except (ValueError, RecursionError):
        return None
    return body if isinstance(body, dict) else None


# -- per-message facts ----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Presence:
    state: str  # online | offline | lost
    session: int | None
    ts: float | None
    agent_version: str | None
    reason: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Health:
    ts: float | None
    status: str
    reasons: list[str]
    temperature_c: float | None
    throttled: bool | None
    under_voltage: bool | None
    under_voltage_occurred: bool | None
    disk_percent: float | None
    version: str | None
    channel: str | None
    microk8s_running: bool | None


@dataclasses.dataclass(frozen=True, slots=True)
class HaReport:
    ts: float | None
    role: str | None
    verdict: str | None
    quorum: dict[str, float | None]
    reasons: list[str]
    readiness: dict[str, Any] | None
    leader: str | None
    maintenance: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Command:
    id: str
    verb: str | None
    status: str
    ts: float | None
    error: str | None


def read_presence(body: Mapping[str, Any]) -> Presence | None:
    state = body.get("state")
    if state not in ("online", "offline"):
        return None
    reason = _text(body.get("reason"))
    if state == "offline" and reason != "shutdown":
        state = "lost"
    session = body.get("session")
    return Presence(
        state=state,
        session=session if isinstance(session, int) and not isinstance(session, bool) else None,
        ts=_number(body.get("ts")),
        agent_version=_text(body.get("agent_version"), 40),
        reason=reason,
    )


def _disk_percent(system: Mapping[str, Any]) -> float | None:
    disks = system.get("disks")
    if not isinstance(disks, list):
        return None
    values = [_number(_dict(d).get("percent")) for d in disks[:16]]
    known = [v for v in values if v is not None]
    return max(known) if known else None


def read_health(body: Mapping[str, Any]) -> Health:
    system = _dict(body.get("system"))
    throttled = _dict(system.get("throttled"))
    microk8s = _dict(body.get("microk8s"))
    return Health(
        ts=_number(body.get("ts")),
        status=_one_of(body.get("status"), HEALTH_STATUSES) or "unknown",
        reasons=_reasons(body.get("reasons")),
        temperature_c=_number(system.get("temperature_c")),
        throttled=_flag(throttled.get("throttled")),
        under_voltage=_flag(throttled.get("under_voltage")),
        under_voltage_occurred=_flag(throttled.get("under_voltage_occurred")),
        disk_percent=_disk_percent(system),
        version=_text(microk8s.get("version"), 40),
        channel=_text(microk8s.get("channel"), 60),
        microk8s_running=_flag(microk8s.get("running")),
    )


def _quorum(value: object) -> dict[str, float | None]:
    q = _dict(value)
    return {key: _number(q.get(key)) for key in ("size", "reachable", "needed", "margin")}


def _factor(item: object) -> bool | float | str | None:
    """A readiness factor as shown: `points/max` when scored (docs/ha.md), else its value."""
    if isinstance(item, dict):
        points, top = _number(item.get("points")), _number(item.get("max"))
        return None if points is None or top is None else f"{points:g}/{top:g}"
    if isinstance(item, bool):
        return item
    number = _number(item)
    return number if number is not None else _text(item, 60)


def _readiness(value: object) -> dict[str, Any] | None:
    readiness = _dict(value)
    if not readiness:
        return None
    factors: dict[str, Any] = {}
    for key, item in list(_dict(readiness.get("factors")).items())[:MAX_FACTORS]:
        shown = _factor(item)
        if shown is not None:
            factors[str(key)[:40]] = shown
    return {
        "score": _number(readiness.get("score")),
        "factors": factors,
        "reasons": _reasons(readiness.get("reasons")),
    }


def read_ha(body: Mapping[str, Any]) -> HaReport:
    # The peer-witnessed view (docs/ha.md "cluster") is the better cluster-wide answer.
    cluster = _dict(body.get("cluster"))
    verdict_source = cluster if cluster.get("verdict") in HA_VERDICTS else body
    leader = _dict(body.get("leader"))
    maintenance = _text(body.get("maintenance_reason")) if body.get("maintenance") is True else None
    return HaReport(
        ts=_number(body.get("ts")),
        role=_text(body.get("role"), 20),
        verdict=_one_of(verdict_source.get("verdict"), HA_VERDICTS),
        quorum=_quorum(verdict_source.get("quorum")),
        reasons=_reasons(verdict_source.get("reasons")),
        readiness=_readiness(body.get("readiness")),
        leader=_text(leader.get("node"), 64) or _text(leader.get("address"), 64),
        maintenance=maintenance or ("in maintenance" if body.get("maintenance") is True else None),
    )


def read_command(body: Mapping[str, Any], command_id: str) -> Command | None:
    status = _one_of(body.get("status"), COMMAND_STATUSES)
    if status is None:
        return None
    return Command(
        id=command_id[:80],
        verb=_text(body.get("verb"), 20),
        status=status,
        ts=_number(body.get("ts")),
        error=_text(body.get("error")) or _text(body.get("detail")),
    )


def read_rollout(body: Mapping[str, Any]) -> dict[str, Any]:
    """An optional `{prefix}/{cluster}/rollout` report (docs/protocol.md): progress fields."""
    shown: dict[str, Any] = {}
    for key in ("rollout", "channel", "node", "step", "state"):
        shown[key] = _text(body.get(key), 80)
    for key in ("done", "total", "failures", "max_failures", "ts"):
        shown[key] = _number(body.get(key))
    shown["aborted"] = _flag(body.get("aborted"))
    return shown


# -- the fleet ------------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class NodeRecord:
    """What is known of one node: the last fact of each kind with the time it was received."""

    presence: Presence | None = None
    health: Health | None = None
    health_at: float | None = None
    ha: HaReport | None = None
    command: Command | None = None
    seen_at: float | None = None

    def empty(self) -> bool:
        return self.presence is None and self.health is None and self.ha is None


class FleetView:
    """Folds the messages of one cluster into node records (rows.py draws them)."""

    def __init__(
        self,
        prefix: str,
        cluster: str,
        *,
        max_nodes: int = MAX_NODES,
        stale_after_s: float = DEFAULT_STALE_AFTER_S,
    ) -> None:
        self.prefix = prefix
        self.cluster = cluster
        self._head = f"{prefix}/{cluster}/nodes/"
        self._rollout_topic = f"{prefix}/{cluster}/rollout"
        self._max_nodes = max_nodes
        self.stale_after_s = stale_after_s
        self.nodes: dict[str, NodeRecord] = {}
        self.rollout: dict[str, Any] | None = None
        self.ignored = 0
        self.version = 0

    def filters(self) -> list[str]:
        """Topic filters to subscribe to: the leaves this view reads, and the rollout report."""
        leaves = ("state", "health", "ha", "cmd/+")
        return [f"{self._head}+/{leaf}" for leaf in leaves] + [self._rollout_topic]

    def replay_topics(self, topic: str) -> list[str]:
        """The exact leaves of a node this view holds, to fetch their retained copies (watcher)."""
        if not topic.startswith(self._head):
            return []
        node = topic[len(self._head) :].partition("/")[0]
        if node not in self.nodes:
            return []
        return [f"{self._head}{node}/{leaf}" for leaf in ("state", "health", "ha")]

    def apply(self, topic: str, payload: bytes, received_at: float) -> bool:
        """Fold one message in; True when the snapshot changed."""
        changed = self._apply(topic, payload, received_at)
        if changed:
            self.version += 1
        else:
            self.ignored += 1
        return changed

    def _apply(self, topic: str, payload: bytes, received_at: float) -> bool:
        if topic == self._rollout_topic:
            body = decode(payload)
            self.rollout = read_rollout(body) if body else None
            return body is not None or not payload
        if not topic.startswith(self._head):
            return False
        node, _, leaf = topic[len(self._head) :].partition("/")
        if not NODE_NAME.match(node):
            return False
        if not payload:
            return self._forget(node, leaf)
        body = decode(payload)
        if body is None:
            return False
        record = self.nodes.get(node)
        if record is None:
            if len(self.nodes) >= self._max_nodes:
                return False
            record = NodeRecord()
        if not _fold(record, leaf, body, received_at):
            return False
        self.nodes[node] = record
        return True

    def _forget(self, node: str, leaf: str) -> bool:
        """An empty retained message clears that leaf (someone removed the node on purpose)."""
        record = self.nodes.get(node)
        if record is None or leaf not in ("state", "health", "ha"):
            return False
        if leaf == "state":
            record.presence = None
        elif leaf == "health":
            record.health = record.health_at = None
        else:
            record.ha = None
        if record.empty():
            del self.nodes[node]
        return True


def _fold(record: NodeRecord, leaf: str, body: Mapping[str, Any], received_at: float) -> bool:
    if leaf == "state":
        presence = read_presence(body)
        if presence is None or _older_will(record.presence, presence):
            return False
        record.presence = presence
    elif leaf == "health":
        record.health = read_health(body)
        record.health_at = received_at
    elif leaf == "ha":
        record.ha = read_ha(body)
    elif leaf.startswith("cmd/") and leaf != "cmd/_invalid":
        command = read_command(body, leaf[4:])
        if command is None:
            return False
        record.command = command
    else:
        return False
    record.seen_at = received_at
    return True


def _older_will(current: Presence | None, new: Presence) -> bool:
    """A will from an earlier session than the birth we hold arrived late: drop it."""
    if current is None or current.state != "online" or new.state == "online":
        return False
    return new.session is not None and current.session is not None and new.session < current.session
