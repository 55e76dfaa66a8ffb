"""The live dqlite view against the files and Kubernetes: members, stale records, orphans (pure).

The live answer (`agent.ha.dqlite`) is the truth about who is a member and in which role; the
member list on disk is what dqlite last wrote and Kubernetes is what the nodes registered. The
differences are what operators trip over: a `cluster.yaml` that lists a node dqlite dropped, a
dead member dqlite still lists ("already known to dqlite" on the next join), a control-plane
node that never became a dqlite member. Each becomes one sentence naming the member.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence

from agent.ha.dqlite_wire import LiveView
from agent.ha.membership import SOURCE_DQLITE, Member, Membership


@dataclasses.dataclass(frozen=True, slots=True)
class KubeNode:
    """One Kubernetes node as the orphan check needs it."""

    name: str
    addresses: tuple[str, ...]
    """InternalIP addresses."""
    control_plane: bool
    """False for MicroK8s workers (label node.kubernetes.io/microk8s-worker)."""


def live_membership(files: Membership, view: LiveView) -> Membership:
    """The members as dqlite states them, with failure domains; this node found by address."""
    members = tuple(
        Member(
            address=node.address,
            role=node.role or "spare",
            id=node.id,
            failure_domain=meta.failure_domain
            if (meta := view.metadata.get(node.address))
            else None,
        )
        for node in view.members
    )
    own = files.self_member
    self_member = next((m for m in members if own is not None and m.address == own.address), None)
    return Membership(members, SOURCE_DQLITE, self_member or own)


def _label(member: Member, names: Mapping[str, str]) -> str:
    name = names.get(member.host)
    return f"{member.address} ({name})" if name else member.address


def differences(files: Membership, live: Sequence[Member], names: Mapping[str, str]) -> list[str]:
    """Where the member list on disk (or `microk8s status`) disagrees with dqlite."""
    if files.source is None or not live:
        return []
    where = files.source
    listed = {m.address: m for m in files.members}
    known = {m.address: m for m in live}
    reasons = []
    for member in live:
        old = listed.get(member.address)
        if old is None:
            reasons.append(
                f"dqlite lists {_label(member, names)} as {member.role}; {where} does not list it"
            )
        elif old.role != member.role:
            reasons.append(
                f"{_label(member, names)} is {member.role} in dqlite but {old.role} in {where}"
                " (dqlite changes roles by itself; the file catches up later)"
            )
    reasons += [
        f"{where} lists {_label(m, names)}, which dqlite no longer lists (a stale record)"
        for m in files.members
        if m.address not in known
    ]
    return reasons


def orphans(live: Sequence[Member], kube: Iterable[KubeNode] | None) -> list[str]:
    """dqlite members no Kubernetes node answers for, control-plane nodes dqlite lacks.

    `kube` None (the node list could not be read) or empty means unknown: nothing is claimed.
    """
    nodes = list(kube or ())
    if not nodes or not live:
        return []
    by_ip = {ip: node for node in nodes for ip in node.addresses}
    hosts = {m.host for m in live}
    reasons = [
        f"orphan: dqlite member {m.address} ({m.role}) is no Kubernetes node's address; if that"
        f" machine is gone, remove it (microk8s remove-node {m.host} --force) before it breaks"
        " a later join ('already known to dqlite')"
        for m in live
        if m.host not in by_ip
    ]
    reasons += [
        f"orphan: Kubernetes control-plane node {node.name}"
        f" ({', '.join(node.addresses) or 'no InternalIP'}) is not a dqlite member"
        for node in nodes
        if node.control_plane and not hosts.intersection(node.addresses)
    ]
    return reasons


def names_of(kube: Iterable[KubeNode]) -> dict[str, str]:
    """Node name by InternalIP."""
    return {ip: node.name for node in kube for ip in node.addresses}
