"""The peer-witnessed view of the cluster (pure): what a majority of the agents could reach.

Each agent publishes what it reached on `R/ha`. One agent's failed probe says little (its own
link may be the broken one), so a member counts as `down` only when most of the agents that
reported recently could not reach it; when only this node cannot, the member is `partitioned`
from here. The idea is SuperEdge's edge-health (neighbours vote on a node's health), carried over
MQTT so no second control plane is needed. Fed with (node, decoded message, received_at): the
messages are untrusted and arrive already reduced to typed records by `agent.link.inbound`, so
nothing here can be tripped by a peer's odd types. No I/O.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agent.ha import quorum
from agent.link.inbound import Cleared, Invalid, PeerVerdict, Presence

UP = "up"
DOWN = "down"
PARTITIONED = "partitioned"
AGENT_DOWN = "agent_down"
MAINTENANCE = "maintenance"
UNREACHABLE = "unreachable"
"""Unreachable from this node while no other agent has reported on it: not yet witnessed."""
UNKNOWN = "unknown"
SERVING = quorum.SERVING
"""Statuses of a voter that still votes (its dqlite answers a majority of the agents)."""


@dataclasses.dataclass(slots=True)
class _Report:
    verdict: Mapping[str, Any]
    received_at: float


@dataclasses.dataclass(slots=True)
class _Presence:
    state: str
    session: int


class PeerBook:
    """The latest verdict and presence of every other node, with the reception time."""

    def __init__(self, own_node: str, window_s: float) -> None:
        """Args:
        own_node: this node's name (its own echoes from the broker are ignored).
        window_s: how long a report counts after it was received.
        """
        self._own = own_node
        self.window_s = window_s
        self._reports: dict[str, _Report] = {}
        self._presence: dict[str, _Presence] = {}

    def record_verdict(
        self, node: str, verdict: PeerVerdict | Cleared | Invalid, received_at: float
    ) -> None:
        """Keep a peer's verdict; an empty retained message forgets the peer."""
        if node == self._own or isinstance(verdict, Invalid):
            return
        if isinstance(verdict, Cleared):
            self._reports.pop(node, None)
        elif verdict.node == node:
            self._reports[node] = _Report(verdict.as_report(), received_at)

    def record_presence(self, node: str, presence: Presence | Cleared | Invalid) -> None:
        """Keep a peer's online/offline state; a will older than the last birth is dropped."""
        if not isinstance(presence, Presence):
            return
        known = self._presence.get(node)
        if known is not None and presence.session < known.session:
            return
        self._presence[node] = _Presence(presence.state, presence.session)

    def offline(self, node: str | None) -> bool:
        known = self._presence.get(node) if node else None
        return known is not None and known.state == "offline"

    def names(self) -> dict[str, str]:
        """Node name by dqlite host, from the addresses peers state for themselves."""
        names: dict[str, str] = {}
        for node, report in self._reports.items():
            host = host_of(report.verdict.get("address"))
            if host is not None:
                names[host] = node
        return names

    def fresh(self, now: float) -> dict[str, Mapping[str, Any]]:
        """Verdicts received within the window from peers not known to be offline."""
        return {
            node: report.verdict
            for node, report in self._reports.items()
            if now - report.received_at <= self.window_s and not self.offline(node)
        }

    def view(self, own: Mapping[str, Any], now: float) -> dict[str, Any]:
        """The `cluster` section of this node's verdict, from its own and its peers' reports."""
        reports = {**self.fresh(now), self._own: own}
        members = [self._member_view(entry, reports) for entry in own.get("members", [])]
        voters = [m for m in members if m["role"] == "voter"]
        q = quorum.quorum(len(voters), sum(1 for v in voters if v["status"] in SERVING))
        verdict = quorum.classify(q)
        names = {m["address"]: m["node"] for m in members}
        # Members are described one by one above, so the quorum reasons name no addresses.
        reasons = [*_member_reasons(members), *quorum.quorum_reasons(verdict, q, [], names)]
        return {
            "reporters": sorted(reports),
            "members": members,
            "quorum": q.to_dict(),
            "verdict": verdict,
            "reasons": reasons,
        }

    def _member_view(
        self, entry: Mapping[str, Any], reports: Mapping[str, Mapping[str, Any]]
    ) -> dict[str, Any]:
        address = entry["address"]
        opinions = {node: _reach(report, address) for node, report in reports.items()}
        unreachable_by = sorted(node for node, ok in opinions.items() if ok is False)
        voting = [ok for ok in opinions.values() if ok is not None]
        status = _status(
            in_maintenance=any(_in_maintenance(r, address) for r in reports.values()),
            # A lone report is not a witness: this node may be the one that is cut off.
            majority_down=len(voting) >= 2 and 2 * len(unreachable_by) > len(voting),
            alone=len(voting) < 2,
            own_reach=opinions.get(self._own),
            agent_offline=self.offline(entry.get("node")),
        )
        return {
            "address": address,
            "node": entry.get("node"),
            "role": entry.get("role"),
            "status": status,
            "unreachable_by": unreachable_by,
        }


def host_of(address: object) -> str | None:
    """The IP of `IP:port` / `[IPv6]:port`; members are matched by host, since each node runs
    one dqlite and two agents may list a member with different ports (a stale cluster.yaml)."""
    if not isinstance(address, str) or ":" not in address:
        return None
    return address.rpartition(":")[0].strip("[]")


def _reach(report: Mapping[str, Any], address: str) -> bool | None:
    """What a report says about one member: True/False, or None when it does not list it."""
    host = host_of(address)
    for key in ("members", "voters"):
        for entry in report.get(key) or ():
            if isinstance(entry, Mapping) and host_of(entry.get("address")) == host:
                reachable = entry.get("reachable")
                return reachable if isinstance(reachable, bool) else None
    return None


def _in_maintenance(report: Mapping[str, Any], address: str) -> bool:
    return host_of(report.get("address")) == host_of(address) and report.get("maintenance") is True


def _status(
    *,
    in_maintenance: bool,
    majority_down: bool,
    alone: bool,
    own_reach: bool | None,
    agent_offline: bool,
) -> str:
    if in_maintenance:
        return MAINTENANCE
    if majority_down:
        return DOWN
    if own_reach is False:
        return UNREACHABLE if alone else PARTITIONED
    if own_reach is None:
        return UNKNOWN
    return AGENT_DOWN if agent_offline else UP


def _member_reasons(members: list[dict[str, Any]]) -> list[str]:
    reasons = []
    for m in members:
        label = f"{m['role']} {m['address']}" + (f" ({m['node']})" if m["node"] else "")
        by = ", ".join(m["unreachable_by"])
        if m["status"] == DOWN:
            reasons.append(f"{label} is down: unreachable from {by}")
        elif m["status"] == PARTITIONED:
            reasons.append(f"{label} is unreachable from this node only (partitioned)")
        elif m["status"] == UNREACHABLE:
            reasons.append(f"{label} is unreachable from this node; no other agent reported yet")
        elif m["status"] == AGENT_DOWN:
            reasons.append(f"{label}: dqlite answers but its agent is offline")
        elif m["status"] == MAINTENANCE:
            reasons.append(f"{label} is in maintenance (not counted as a failure)")
    return reasons
