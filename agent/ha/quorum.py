"""HA verdicts: quorum arithmetic, the `R/ha` message, and the quorum gate for upgrades (pure).

Raft keeps the datastore writable while a majority of voters can talk to each other, so
everything here follows from `needed = size // 2 + 1` and `margin = reachable - needed`: margin is
how many more voters may fail before quorum is lost (PROTOCOL.md, HA verdict). Inputs are facts
gathered elsewhere (membership files, probes, peers); no I/O, no clock.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

from agent.ha import readiness
from agent.ha.dqlite_wire import Node
from agent.ha.membership import Member, Membership

SCHEMA = 1
HA_MIN_VOTERS = 3
"""MicroK8s calls a cluster HA from three voters on (`ha_cluster_formed()`: more than two)."""
VOLATILE_KEYS = frozenset({"ts"})
"""Fields that change every round and so do not count as a change of verdict."""
VOTER_ROLES = frozenset({"voter", None})
"""Roles whose refresh may take a voter away (None: unknown, so assume the worst)."""
RISKY_VERDICTS = frozenset({"at_risk", "lost"})
WOULD_BREAK_QUORUM = "would_break_quorum"
SERVING = frozenset({"up", "partitioned", "agent_down"})
"""Cluster-view statuses of a voter that still votes (as `agent.ha.peers.SERVING`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Quorum:
    size: int
    reachable: int
    needed: int
    ok: bool
    margin: int

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True, slots=True)
class MemberProbe:
    """What one probe round found for one member; None means "not probed"."""

    dqlite: bool
    apiserver: bool | None = None
    cluster_agent: bool | None = None


def quorum(size: int, reachable: int) -> Quorum:
    """Raft majority arithmetic; `margin` goes negative once quorum is lost."""
    needed = size // 2 + 1
    return Quorum(size, reachable, needed, reachable >= needed, reachable - needed)


def classify(q: Quorum) -> str:
    """healthy, degraded, at_risk, lost or not_ha.

    Lost beats not_ha: a two-node cluster whose only voter is unreachable has no datastore, and
    saying so is more useful than saying it was never HA.
    """
    if q.size == 0:
        return "not_ha"
    if not q.ok:
        return "lost"
    if q.size < HA_MIN_VOTERS:
        return "not_ha"
    if q.margin == 0:
        return "at_risk"
    return "healthy" if q.reachable == q.size else "degraded"


def _label(address: str, names: Mapping[str, str | None]) -> str:
    name = names.get(address)
    return f"{address} ({name})" if name else address


def quorum_reasons(
    verdict: str, q: Quorum, down: Sequence[str], names: Mapping[str, str | None]
) -> list[str]:
    """The verdict in words; `down` are the voter addresses counted as unreachable."""
    reasons = [f"voter {_label(a, names)} is unreachable" for a in down]
    figures = f"{q.reachable} of {q.size} voters reachable, {q.needed} needed"
    if verdict == "lost":
        reasons.append(
            f"quorum lost: {figures}; the datastore is read-only until voters return"
            " (MicroK8s docs: 'Recover from lost quorum')"
        )
    elif verdict == "at_risk":
        reasons.append(f"no margin: {figures}; one more voter failure loses quorum")
    elif verdict == "degraded":
        reasons.append(f"quorum holds with margin {q.margin}: {figures}")
    elif verdict == "not_ha" and q.size == 0:
        reasons.append("no dqlite voters known")
    elif verdict == "not_ha":
        reasons.append(
            f"only {q.size} voter(s); {HA_MIN_VOTERS} are needed for the control plane to"
            " survive a failure"
        )
    return reasons


@dataclasses.dataclass(frozen=True, slots=True)
class Observation:
    """Everything one round gathered, ready to be turned into a verdict."""

    node: str
    ts: float
    membership: Membership
    role: str | None
    probes: Mapping[str, MemberProbe]
    """By member address."""
    names: Mapping[str, str]
    """Node name by member host (IP)."""
    apiserver_ready: bool | None = None
    maintenance: str | None = None
    leader: Node | None = None
    """The dqlite leader, when the live cluster was asked and named one."""
    no_leader: str | None = None
    """The dqlite error when the live cluster was asked and no leader could be found."""
    notes: tuple[str, ...] = ()
    """Reasons from the live view: differences with cluster.yaml, orphans, why it is missing."""
    flags: Mapping[str, list[str] | None] = dataclasses.field(default_factory=dict)
    """Risk flags by node name, from the nodes' health messages (`readiness.risk_flags`)."""


def _member_entry(member: Member, obs: Observation) -> dict[str, Any]:
    probe = obs.probes.get(member.address)
    return {
        "address": member.address,
        "node": obs.names.get(member.host),
        "role": member.role,
        "reachable": probe.dqlite if probe else False,
        "apiserver": probe.apiserver if probe else None,
        "cluster_agent": probe.cluster_agent if probe else None,
        "failure_domain": member.failure_domain,
    }


def _leader(obs: Observation) -> dict[str, Any] | None:
    if obs.leader is None:
        return None
    host = obs.leader.address.rpartition(":")[0].strip("[]")
    return {"address": obs.leader.address, "node": obs.names.get(host)}


def build_verdict(obs: Observation) -> dict[str, Any]:
    """The `R/ha` message (PROTOCOL.md) plus source, address, members and maintenance."""
    membership = obs.membership
    members = [_member_entry(m, obs) for m in membership.members]
    voters = [
        {"address": e["address"], "node": e["node"], "reachable": e["reachable"]}
        for e in members
        if e["role"] == "voter"
    ]
    q = quorum(len(voters), sum(1 for v in voters if v["reachable"]))
    counted = classify(q)
    names = {e["address"]: e["node"] for e in members}
    down = [v["address"] for v in voters if not v["reachable"]]
    reasons = quorum_reasons(counted, q, down, names)
    verdict = counted
    if obs.no_leader is not None:
        # Votes may add up, but without a leader nothing is written: that is a lost datastore.
        verdict = "lost"
        reasons.append(f"no dqlite leader: {obs.no_leader}")
    reasons.extend(obs.notes)
    reasons.extend(_side_reasons(obs))
    me = membership.self_member
    return {
        "schema": SCHEMA,
        "node": obs.node,
        "ts": round(obs.ts, 3),
        "role": obs.role,
        "address": me.address if me else None,
        "voters": voters,
        "quorum": q.to_dict(),
        "apiserver_ready": obs.apiserver_ready,
        "verdict": verdict,
        "reasons": reasons,
        "source": membership.source,
        "maintenance": obs.maintenance is not None,
        "maintenance_reason": obs.maintenance,
        "members": members,
        "leader": _leader(obs),
        "readiness": readiness.assess(
            members, q.to_dict(), leader_known=obs.no_leader is None, flags=obs.flags
        ),
    }


def _side_reasons(obs: Observation) -> list[str]:
    reasons = []
    if obs.membership.source is None and obs.role != "worker":
        reasons.append(f"dqlite membership unknown: {obs.membership.error}")
    elif obs.membership.error:
        reasons.append(f"membership from {obs.membership.source}: {obs.membership.error}")
    if obs.role == "worker":
        reasons.append("this node is a worker: it runs no datastore (ask a control-plane node)")
    if obs.apiserver_ready is False:
        reasons.append("the local API server is not ready (/readyz failed)")
    if obs.maintenance:
        reasons.append(f"in maintenance: {obs.maintenance}")
    return reasons


def changed(previous: Mapping[str, Any] | None, current: Mapping[str, Any]) -> bool:
    """True when anything but the timestamp differs (publish-on-change)."""
    if previous is None:
        return True
    strip = VOLATILE_KEYS
    return {k: v for k, v in previous.items() if k not in strip} != {
        k: v for k, v in current.items() if k not in strip
    }


def encode(verdict: Mapping[str, Any]) -> bytes:
    return json.dumps(verdict, separators=(",", ":"), ensure_ascii=False).encode()


def upgrade_gate(verdict: Mapping[str, Any] | None, force: bool) -> str | None:
    """Why an upgrade of this node must not start now, or None when it may.

    A refresh restarts this node's k8s-dqlite. For a voter that is one more unreachable voter,
    so with margin 0 (or quorum already lost) it would stop the datastore. The cluster view (what
    a majority of agents witnessed) is preferred over this node's own view, because a node that
    alone cannot reach a peer does not make the peer's vote disappear.
    """
    if force:
        return None
    if verdict is None:
        return (
            f"{WOULD_BREAK_QUORUM}: no HA verdict yet, so quorum cannot be checked;"
            " retry after one HA interval, or resend with force"
        )
    role = verdict.get("role")
    cluster = verdict.get("cluster") or {}
    numbers = cluster.get("quorum") or verdict.get("quorum") or {}
    state = cluster.get("verdict") or verdict.get("verdict")
    if role not in VOTER_ROLES or state not in RISKY_VERDICTS:
        return None
    who = "this node is a voter" if role == "voter" else "this node may be a voter"
    return (
        f"{WOULD_BREAK_QUORUM}: {who} and its refresh restarts its datastore, but only"
        f" {numbers.get('reachable')} of {numbers.get('size')} voters are reachable"
        f" ({numbers.get('needed')} needed, margin {numbers.get('margin')}, verdict {state});"
        " bring the other voters back first, or resend with force"
    )


def join_gate(
    verdicts: Sequence[Mapping[str, Any]], host: str, *, force: bool, worker: bool
) -> str | None:
    """Why joining the cluster at `host` must wait, or None when it may go ahead.

    A control-plane join adds a dqlite member, a raft configuration change: etcd's rule is to
    never add a member to a cluster that cannot tolerate a failure. So it is refused while any
    voter is down or the margin is 0, judged from the verdict of the agent at `host` (else any
    agent listing it). A cluster of one or two voters with all of them up is let through: dqlite
    adds the newcomer as a spare and promotes it only once three nodes are online, and refusing
    would make HA unreachable. Worker joins add no dqlite member and are never gated.
    """
    if force or worker:
        return None
    verdict = _verdict_for(verdicts, host)
    if verdict is None:
        return (
            f"{WOULD_BREAK_QUORUM}: no agent of the cluster at {host} has published an HA"
            " verdict, so its quorum cannot be checked; wait for one, or resend with force"
        )
    view = verdict.get("cluster") or verdict
    numbers = view.get("quorum") or {}
    state = view.get("verdict")
    down = _down_voters(view)
    if not down and state not in ("lost", "at_risk"):
        return None
    why = f"voter(s) {', '.join(down)} down" if down else f"verdict {state}"
    return (
        f"{WOULD_BREAK_QUORUM}: the cluster at {host} cannot take a membership change now"
        f" ({why}; {numbers.get('reachable')} of {numbers.get('size')} voters reachable,"
        f" {numbers.get('needed')} needed, margin {numbers.get('margin')}, as {verdict.get('node')}"
        " reports); bring the voters back first, or resend with force"
    )


def _verdict_for(verdicts: Sequence[Mapping[str, Any]], host: str) -> Mapping[str, Any] | None:
    def hosts(verdict: Mapping[str, Any]) -> set[str]:
        entries = verdict.get("members") or ()
        return {_host(e.get("address")) for e in entries if isinstance(e, Mapping)}

    own = [v for v in verdicts if _host(v.get("address")) == host]
    listing = [v for v in verdicts if host in hosts(v)]
    return next(iter(own + listing), None)


def _host(address: object) -> str:
    return address.rpartition(":")[0].strip("[]") if isinstance(address, str) else ""


def _down_voters(view: Mapping[str, Any]) -> list[str]:
    """Voters not serving: by status in a cluster view, by `reachable` in a node's own view."""
    down = []
    for member in view.get("members") or ():
        if not isinstance(member, Mapping) or member.get("role") != "voter":
            continue
        status = member.get("status")
        serving = status in SERVING if status is not None else member.get("reachable") is True
        if not serving:
            down.append(str(member.get("node") or member.get("address")))
    return down
