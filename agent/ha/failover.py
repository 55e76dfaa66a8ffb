"""Opt-in failover: when to remove a voter that a majority has witnessed down (pure planner).

`microk8s remove-node <node> --force` drops a dead member from dqlite and Kubernetes, so that the
dqlite leader can promote a stand-by and the member list stops counting a corpse. It is
irreversible for that node (it must be reset before it may join again), so the planner is strict:
the feature is off unless `ha.auto_remove_after_s` > 0; the member must be a voter witnessed down
(not merely unreachable from here, not in maintenance) for longer than that, continuously; quorum
must hold now and after the removal; and only one agent acts, the one on the lowest-named voter
that is up and reporting. Each address is attempted once per outage (again only after a failure
and another full delay). The monitor runs the command and publishes the steps as events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agent.config import NAME_RE
from agent.ha import peers, quorum
from agent.ha.membership import split_address


@dataclasses.dataclass(frozen=True, slots=True)
class Removal:
    address: str
    node: str | None
    target: str
    """What `remove-node` is given: the node name, else the member's IP (MicroK8s maps it)."""
    down_for_s: float


class AutoRemover:
    """Tracks how long each voter has been witnessed down and picks at most one to remove."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._down_since: dict[str, float] = {}
        self._attempts: dict[str, tuple[float, bool]] = {}

    def observe(self, cluster: Mapping[str, Any], now: float) -> None:
        """Start or stop the clock of each voter from the cluster view's statuses."""
        down = {m["address"] for m in _voters(cluster) if m.get("status") == peers.DOWN}
        for address in list(self._down_since):
            if address not in down:
                del self._down_since[address]
                self._attempts.pop(address, None)
        for address in down:
            self._down_since.setdefault(address, now)

    def decide(self, own_node: str, cluster: Mapping[str, Any], now: float) -> Removal | None:
        """The removal this node should run now, or None."""
        if self.after_s <= 0 or actor(cluster) != own_node:
            return None
        q = cluster.get("quorum") or {}
        if not q.get("ok"):
            return None
        for member in _voters(cluster):
            address = member["address"]
            since = self._down_since.get(address)
            if since is None or now - since <= self.after_s or not self._may_try(address, now):
                continue
            if not quorum.quorum(q["size"] - 1, q["reachable"]).ok:
                continue
            return Removal(address, member.get("node"), _target(member), round(now - since, 1))
        return None

    def _may_try(self, address: str, now: float) -> bool:
        attempt = self._attempts.get(address)
        if attempt is None:
            return True
        at, ok = attempt
        return not ok and now - at > self.after_s

    def record(self, address: str, *, ok: bool, now: float) -> None:
        """Remember an attempt, so a success is never repeated and a failure waits a full delay."""
        self._attempts[address] = (now, ok)


def actor(cluster: Mapping[str, Any]) -> str | None:
    """The lowest-named voter that is up and whose agent reported: the only one that acts."""
    reporters = set(cluster.get("reporters") or ())
    names = [
        m["node"]
        for m in _voters(cluster)
        if m.get("status") == peers.UP and m.get("node") in reporters
    ]
    return min(names) if names else None


def _voters(cluster: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [m for m in cluster.get("members") or () if m.get("role") == "voter"]


def _target(member: Mapping[str, Any]) -> str:
    node = member.get("node")
    if isinstance(node, str) and NAME_RE.fullmatch(node):
        return node
    return split_address(member["address"])[0]
