"""Opt-in failover: when to remove a member that a majority has witnessed down (pure planner).

`microk8s remove-node <node> --force` drops a dead member from dqlite and Kubernetes, so that the
dqlite leader can promote a stand-by and the member list stops counting a corpse (a dead member
left in dqlite also breaks its next join: "already known to dqlite"). It is irreversible for that
node (it must be reset before it may join again), so the planner is strict: the feature is off
unless `ha.auto_remove_after_s` > 0; the member must be witnessed down (not merely unreachable
from here, not in maintenance) for longer than that, continuously; the live dqlite view must
still list it; only one agent acts, the one on the lowest-named voter that is up and reporting;
and at most one removal happens per `auto_remove_after_s` window. Like a `join`, a removal is a
raft configuration change, so it is refused (an `auto_remove_refused` event, once per cause)
while another voter is down or the margin is 0 (etcd's rule: never reconfigure a cluster that
cannot tolerate a failure). Each address is attempted once per outage (again only after a failure
and another full delay). The monitor runs the command and publishes the steps as events.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agent.config import NAME_RE
from agent.ha import peers
from agent.ha.membership import split_address


@dataclasses.dataclass(frozen=True, slots=True)
class Removal:
    address: str
    node: str | None
    target: str
    """What `remove-node` is given: the node name, else the member's IP (MicroK8s maps it)."""
    down_for_s: float


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """A removal that is due but must not run now, and why (in words)."""

    address: str
    node: str | None
    reason: str


class AutoRemover:
    """Tracks how long each member has been witnessed down and picks at most one to remove."""

    def __init__(self, after_s: float) -> None:
        self.after_s = after_s
        self._down_since: dict[str, float] = {}
        self._attempts: dict[str, tuple[float, bool]] = {}
        self._last_removal_at: float | None = None

    def observe(self, cluster: Mapping[str, Any], now: float) -> None:
        """Start or stop the clock of each member from the cluster view's statuses."""
        down = {m["address"] for m in _members(cluster) if m.get("status") == peers.DOWN}
        for address in list(self._down_since):
            if address not in down:
                del self._down_since[address]
                self._attempts.pop(address, None)
        for address in down:
            self._down_since.setdefault(address, now)

    def decide(
        self, own_node: str, cluster: Mapping[str, Any], now: float, *, live: bool
    ) -> Removal | Refusal | None:
        """The removal this node should run now, why a due one may not, or None.

        Args:
            live: whether the members come from the live dqlite cluster (only then is a member
                known to be still listed).
        """
        if self.after_s <= 0 or actor(cluster) != own_node:
            return None
        last = self._last_removal_at
        if last is not None and now - last <= self.after_s:
            return None
        for member in _members(cluster):
            address = member["address"]
            since = self._down_since.get(address)
            if since is None or now - since <= self.after_s or not self._may_try(address, now):
                continue
            reason = removal_refusal(cluster, member, live=live)
            if reason is not None:
                return Refusal(address, member.get("node"), reason)
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
        if ok:
            self._last_removal_at = now


def removal_refusal(
    cluster: Mapping[str, Any], member: Mapping[str, Any], *, live: bool
) -> str | None:
    """Why removing `member` (witnessed down) must wait, or None when it is quorum-safe."""
    label = f"{member['address']}" + (f" ({member['node']})" if member.get("node") else "")
    if not live:
        return (
            f"{label} not removed: the live dqlite view is unavailable, and a member list from"
            " a file may be stale (it could name the wrong node)"
        )
    others = [
        m
        for m in _voters(cluster)
        if m["address"] != member["address"] and m.get("status") not in peers.SERVING
    ]
    if others:
        names = ", ".join(m.get("node") or m["address"] for m in others)
        return f"{label} not removed: voter(s) {names} are down too; bring them back first"
    q = cluster.get("quorum") or {}
    if not q.get("ok") or int(q.get("margin", 0)) <= 0:
        return (
            f"{label} not removed: quorum margin is {q.get('margin')}"
            f" ({q.get('reachable')} of {q.get('size')} voters reachable, {q.get('needed')}"
            " needed); a membership change now could stop the datastore"
        )
    return None


def actor(cluster: Mapping[str, Any]) -> str | None:
    """The lowest-named voter that is up and whose agent reported: the only one that acts."""
    reporters = set(cluster.get("reporters") or ())
    names = [
        m["node"]
        for m in _voters(cluster)
        if m.get("status") == peers.UP and m.get("node") in reporters
    ]
    return min(names) if names else None


def _members(cluster: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [m for m in cluster.get("members") or () if isinstance(m, Mapping)]


def _voters(cluster: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    return [m for m in _members(cluster) if m.get("role") == "voter"]


def _target(member: Mapping[str, Any]) -> str:
    node = member.get("node")
    if isinstance(node, str) and NAME_RE.fullmatch(node):
        return node
    return split_address(member["address"])[0]
