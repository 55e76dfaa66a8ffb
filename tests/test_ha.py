"""Quorum arithmetic, verdicts and the upgrade gate (pure, table-driven)."""

from __future__ import annotations

from typing import Any

import pytest

from agent.ha import quorum
from agent.ha.membership import Member, Membership
from agent.ha.quorum import MemberProbe, Observation


# (size, reachable) -> needed, ok, margin, verdict
@pytest.mark.parametrize(
    "row",
    [
        (0, 0, 1, False, -1, "not_ha"),
        (1, 1, 1, True, 0, "not_ha"),
        (1, 0, 1, False, -1, "lost"),
        (2, 2, 2, True, 0, "not_ha"),
        (2, 1, 2, False, -1, "lost"),
        (3, 3, 2, True, 1, "healthy"),
        (3, 2, 2, True, 0, "at_risk"),
        (3, 1, 2, False, -1, "lost"),
        (3, 0, 2, False, -2, "lost"),
        (4, 4, 3, True, 1, "healthy"),
        (4, 3, 3, True, 0, "at_risk"),
        (5, 5, 3, True, 2, "healthy"),
        (5, 4, 3, True, 1, "degraded"),
        (5, 3, 3, True, 0, "at_risk"),
        (5, 2, 3, False, -1, "lost"),
        (7, 5, 4, True, 1, "degraded"),
    ],
)
def test_quorum_table(row: tuple[int, int, int, bool, int, str]) -> None:
    size, reachable, needed, ok, margin, verdict = row
    q = quorum.quorum(size, reachable)
    assert (q.size, q.reachable, q.needed, q.ok, q.margin) == (size, reachable, needed, ok, margin)
    assert quorum.classify(q) == verdict


VOTERS = (
    Member("127.0.0.11:19001", "voter", 1),
    Member("127.0.0.12:19001", "voter", 2),
    Member("127.0.0.13:19001", "voter", 3),
    Member("127.0.0.14:19001", "standby", 4),
)
NAMES = {"127.0.0.11": "pi-01", "127.0.0.12": "pi-02", "127.0.0.14": "pi-04"}


def observe(up: set[str], **changes: Any) -> Observation:
    probes = {m.address: MemberProbe(dqlite=m.address in up, apiserver=True) for m in VOTERS}
    values: dict[str, Any] = {
        "node": "pi-02",
        "ts": 1764160000.1234,
        "membership": Membership(VOTERS, "cluster.yaml", VOTERS[1]),
        "role": "voter",
        "probes": probes,
        "names": NAMES,
        "apiserver_ready": True,
    }
    values.update(changes)
    return Observation(**values)


ALL = {m.address for m in VOTERS}


def test_healthy_verdict_shape() -> None:
    v = quorum.build_verdict(observe(ALL))
    assert v["schema"] == 1
    assert v["node"] == "pi-02"
    assert v["role"] == "voter"
    assert v["address"] == "127.0.0.12:19001"
    assert v["voters"] == [
        {"address": "127.0.0.11:19001", "node": "pi-01", "reachable": True},
        {"address": "127.0.0.12:19001", "node": "pi-02", "reachable": True},
        {"address": "127.0.0.13:19001", "node": None, "reachable": True},
    ]
    assert v["quorum"] == {"size": 3, "reachable": 3, "needed": 2, "ok": True, "margin": 1}
    assert v["verdict"] == "healthy"
    assert v["reasons"] == []
    assert v["source"] == "cluster.yaml"
    assert v["maintenance"] is False
    assert v["members"][3]["role"] == "standby"
    assert v["members"][3]["node"] == "pi-04"


def test_standby_loss_does_not_count() -> None:
    v = quorum.build_verdict(observe(ALL - {"127.0.0.14:19001"}))
    assert v["verdict"] == "healthy"
    assert v["members"][3]["reachable"] is False


def test_at_risk_names_the_lost_voter() -> None:
    v = quorum.build_verdict(observe(ALL - {"127.0.0.11:19001"}))
    assert v["verdict"] == "at_risk"
    assert v["quorum"]["margin"] == 0
    assert "voter 127.0.0.11:19001 (pi-01) is unreachable" in v["reasons"]
    assert any("one more voter failure loses quorum" in r for r in v["reasons"])


def test_lost() -> None:
    v = quorum.build_verdict(observe({"127.0.0.12:19001"}, apiserver_ready=False))
    assert v["verdict"] == "lost"
    assert v["quorum"]["ok"] is False
    assert any(r.startswith("quorum lost: 1 of 3 voters reachable") for r in v["reasons"])
    assert "the local API server is not ready (/readyz failed)" in v["reasons"]


def test_unknown_membership_and_maintenance() -> None:
    v = quorum.build_verdict(
        observe(set(), membership=Membership(error="cannot read x"), role=None, maintenance="up")
    )
    assert v["verdict"] == "not_ha"
    assert v["source"] is None
    assert v["address"] is None
    assert "dqlite membership unknown: cannot read x" in v["reasons"]
    assert v["maintenance"] is True
    assert v["maintenance_reason"] == "up"


def test_changed_ignores_only_the_timestamp() -> None:
    first = quorum.build_verdict(observe(ALL))
    later = quorum.build_verdict(observe(ALL, ts=1764160099.0))
    assert not quorum.changed(first, later)
    assert quorum.changed(None, first)
    assert quorum.changed(first, quorum.build_verdict(observe(ALL - {"127.0.0.13:19001"})))


def _verdict(
    verdict: str, role: str | None, cluster: dict[str, Any] | None = None
) -> dict[str, Any]:
    q = {"size": 3, "reachable": 2, "needed": 2, "ok": True, "margin": 0}
    body: dict[str, Any] = {"role": role, "verdict": verdict, "quorum": q}
    if cluster is not None:
        body["cluster"] = cluster
    return body


@pytest.mark.parametrize(
    ("verdict", "role", "force", "rejected"),
    [
        ("healthy", "voter", False, False),
        ("degraded", "voter", False, False),
        ("not_ha", "voter", False, False),
        ("at_risk", "voter", False, True),
        ("lost", "voter", False, True),
        ("at_risk", None, False, True),
        ("at_risk", "voter", True, False),
        ("at_risk", "standby", False, False),
        ("at_risk", "spare", False, False),
        ("lost", "worker", False, False),
        ("at_risk", "standalone", False, False),
    ],
)
def test_upgrade_gate_table(verdict: str, role: str | None, force: bool, rejected: bool) -> None:
    reason = quorum.upgrade_gate(_verdict(verdict, role), force)
    assert (reason is not None) is rejected
    if reason:
        assert reason.startswith("would_break_quorum: ")
        assert "2 of 3 voters are reachable (2 needed, margin 0" in reason


def test_upgrade_gate_prefers_the_cluster_view() -> None:
    healthy = {"verdict": "healthy", "quorum": {"size": 3, "reachable": 3, "needed": 2}}
    # This node alone cannot reach a peer (at_risk locally), but the peers all vote: safe.
    assert quorum.upgrade_gate(_verdict("at_risk", "voter", healthy), False) is None
    # Another voter is in maintenance: the cluster is at risk even though this node sees all.
    risky = {"verdict": "at_risk", "quorum": {"size": 3, "reachable": 2, "needed": 2, "margin": 0}}
    assert quorum.upgrade_gate(_verdict("healthy", "voter", risky), False) is not None


def test_upgrade_gate_without_verdict_refuses_unless_forced() -> None:
    reason = quorum.upgrade_gate(None, False)
    assert reason is not None
    assert "no HA verdict yet" in reason
    assert quorum.upgrade_gate(None, True) is None
