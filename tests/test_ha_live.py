"""The live-view logic (pure): readiness score, risk flags, reconciliation, orphans, join gate."""

from __future__ import annotations

from typing import Any

import pytest

from agent.ha import quorum, readiness, reconcile
from agent.ha.dqlite_wire import LiveView, Metadata, Node
from agent.ha.membership import Member, Membership

A, B, C, D, E = (f"127.0.0.1{i}:19001" for i in range(1, 6))
NODE = {A: "pi-01", B: "pi-02", C: "pi-03", D: "pi-04", E: "pi-05"}


def member(address: str, role: str = "voter", *, up: bool = True, fd: int | None = 1) -> Any:
    return {
        "address": address,
        "node": NODE[address],
        "role": role,
        "reachable": up,
        "failure_domain": fd,
    }


def q(size: int, reachable: int) -> dict[str, Any]:
    return quorum.quorum(size, reachable).to_dict()


THREE = [member(A), member(B), member(C)]


@pytest.mark.parametrize(
    ("members", "numbers", "leader", "flags", "expected"),
    [
        # MicroK8s defaults: three voters, all in failure domain 1, nothing else.
        (THREE, q(3, 3), True, {}, (40, (20, 0, 0, 20))),
        # One voter lost: margin 0; a voter runs hot.
        (
            [member(A), member(B), member(C, up=False)],
            q(3, 2),
            True,
            {"pi-02": ["temperature 82 C"]},
            (13, (0, 0, 0, 13)),
        ),
        # Three domains, an online stand-by: everything but a second margin point.
        (
            [member(A, fd=1), member(B, fd=2), member(C, fd=3), member(D, "standby")],
            q(3, 3),
            True,
            {},
            (80, (20, 20, 20, 20)),
        ),
        # Five voters in five domains, margin 2, only a spare to promote.
        (
            [*(member(a, fd=i) for i, a in enumerate((A, B, C, D, E))), member(A, "spare")],
            q(5, 5),
            True,
            {},
            (90, (40, 10, 20, 20)),
        ),
        # Two domains, 2 + 1: losing the larger one loses quorum.
        (
            [member(A, fd=1), member(B, fd=1), member(C, fd=2)],
            q(3, 3),
            True,
            {},
            (50, (20, 0, 10, 20)),
        ),
        # Unknown failure domains give no spread points; an offline stand-by does not count.
        (
            [
                member(A, fd=None),
                member(B, fd=None),
                member(C, fd=None),
                member(D, "standby", up=False),
            ],
            q(3, 3),
            True,
            {},
            (40, (20, 0, 0, 20)),
        ),
        # Quorum lost or no leader: 0 whatever the factors.
        (
            [member(A), member(B, up=False), member(C, up=False)],
            q(3, 1),
            True,
            {},
            (0, (0, 0, 0, 20)),
        ),
        (THREE, q(3, 3), False, {}, (0, (20, 0, 0, 20))),
    ],
)
def test_readiness_table(
    members: list[dict[str, Any]],
    numbers: dict[str, Any],
    leader: bool,
    flags: dict[str, list[str]],
    expected: tuple[int, tuple[int, int, int, int]],
) -> None:
    score, points = expected
    block = readiness.assess(members, numbers, leader_known=leader, flags=flags)
    factors = block["factors"]
    got = tuple(factors[k]["points"] for k in ("margin", "standby", "spread", "voter_risks"))
    assert (block["score"], got) == (score, points)
    assert block["score"] == 0 or block["score"] == sum(points)
    assert 0 <= block["score"] <= 100


def test_readiness_reasons_say_why_in_words() -> None:
    block = readiness.assess(
        [member(A), member(B), member(C, up=False)],
        q(3, 2),
        leader_known=True,
        flags={"pi-01": ["under-voltage now"], "pi-02": None},
    )
    assert block["reasons"] == [
        "quorum margin 0: one more voter failure stops the datastore",
        "no online stand-by or spare: a lost voter cannot be replaced",
        "all 3 voters with a known failure domain are in domain 1: one shared failure"
        " (power, switch) takes them all",
        "voter pi-01: under-voltage now",
    ]
    assert block["factors"]["voter_risks"]["unknown"] == ["pi-02", "pi-03"]


@pytest.mark.parametrize(
    ("health", "flags"),
    [
        (None, None),
        ("not a mapping", None),
        ({"status": "ok", "system": {"temperature_c": 50.0}}, []),
        (
            {"status": "critical", "reasons": ["temperature 86.0 C >= 85.0 C"]},
            ["health critical: temperature 86.0 C >= 85.0 C"],
        ),
        ({"system": {"temperature_c": 76.5}}, ["temperature 76.5 C"]),
        (
            {"system": {"throttled": {"raw": "0x50005", "under_voltage": True, "throttled": True}}},
            ["under-voltage now", "throttled now"],
        ),
        ({"system": {"disks": [{"mount": "/", "percent": 91.0}, "junk"]}}, ["disk / 91% full"]),
        # Detector blocks (issue 14), read by key: null is unknown, junk is ignored.
        (
            {
                "certs": {"status": "warn", "reasons": ["server.crt expires in 5 days"]},
                "clock": None,
                "storage": {"status": "ok", "reasons": []},
                "eviction": "junk",
                "microk8s_processes": {"reasons": ["kubelite restarted 4 times"]},
            },
            [
                "certs: server.crt expires in 5 days",
                "microk8s_processes: kubelite restarted 4 times",
            ],
        ),
        ({"clock": {"status": "critical"}}, ["clock: status critical"]),
        ({"system": {"temperature_c": True, "throttled": "0x0", "disks": 3}}, []),
    ],
)
def test_risk_flags_read_defensively(health: Any, flags: list[str] | None) -> None:
    assert readiness.risk_flags(health, 75.0, 85.0) == flags


# --- reconciliation -------------------------------------------------------------------------


def files(*records: tuple[str, str], source: str = "cluster.yaml") -> Membership:
    members = tuple(Member(a, r) for a, r in records)
    return Membership(members, source, members[0])


def test_live_membership_takes_roles_and_domains_from_dqlite() -> None:
    view = LiveView(
        leader=Node(1, B),
        members=(Node(1, A, "voter"), Node(2, B, "standby")),
        metadata={A: Metadata(3, 0)},
    )
    merged = reconcile.live_membership(files((A, "spare")), view)
    assert merged.source == "dqlite"
    assert merged.members == (Member(A, "voter", 1, 3), Member(B, "standby", 2, None))
    assert merged.self_member == Member(A, "voter", 1, 3)


def test_differences_name_each_member() -> None:
    live = (Member(A, "voter"), Member(B, "voter"), Member(D, "standby"))
    on_disk = files((A, "voter"), (B, "spare"), (C, "voter"))
    assert reconcile.differences(on_disk, live, {"127.0.0.12": "pi-02"}) == [
        "127.0.0.12:19001 (pi-02) is voter in dqlite but spare in cluster.yaml (dqlite changes"
        " roles by itself; the file catches up later)",
        "dqlite lists 127.0.0.14:19001 as standby; cluster.yaml does not list it",
        "cluster.yaml lists 127.0.0.13:19001, which dqlite no longer lists (a stale record)",
    ]
    assert reconcile.differences(Membership(), live, {}) == []


def test_orphans_both_ways() -> None:
    live = (Member(A, "voter"), Member(B, "voter"), Member(C, "spare"))
    kube = [
        reconcile.KubeNode("pi-01", ("127.0.0.11",), True),
        reconcile.KubeNode("pi-02", ("127.0.0.12",), True),
        reconcile.KubeNode("pi-04", ("127.0.0.14",), True),
        reconcile.KubeNode("worker-1", ("127.0.0.20",), False),
    ]
    reasons = reconcile.orphans(live, kube)
    assert len(reasons) == 2
    assert reasons[0].startswith(
        "orphan: dqlite member 127.0.0.13:19001 (spare) is no Kubernetes node's address;"
    )
    assert "microk8s remove-node 127.0.0.13 --force" in reasons[0]
    assert reasons[1] == (
        "orphan: Kubernetes control-plane node pi-04 (127.0.0.14) is not a dqlite member"
    )
    # An unreadable or empty node list claims nothing.
    assert reconcile.orphans(live, None) == reconcile.orphans(live, []) == []


# --- verdict ----------------------------------------------------------------------------------


def observation(**extra: Any) -> quorum.Observation:
    members = tuple(Member(a, "voter") for a in (A, B, C))
    membership = Membership(members, "dqlite", members[0])
    probes = {a: quorum.MemberProbe(dqlite=True) for a in (A, B, C)}
    names = {"127.0.0.11": "pi-01", "127.0.0.12": "pi-02"}
    return quorum.Observation("pi-01", 0.0, membership, "voter", probes, names, **extra)


def test_leader_is_named_and_no_leader_means_lost() -> None:
    verdict = quorum.build_verdict(observation(leader=Node(9, B)))
    assert verdict["verdict"] == "healthy"
    assert verdict["leader"] == {"address": B, "node": "pi-02"}
    lost = quorum.build_verdict(observation(no_leader="no available dqlite leader server found"))
    assert lost["verdict"] == "lost"
    assert lost["leader"] is None
    assert "no dqlite leader: no available dqlite leader server found" in lost["reasons"]
    assert lost["readiness"]["score"] == 0


# --- join gate --------------------------------------------------------------------------------


def verdict_of(node: str, address: str, state: str, *statuses: str) -> dict[str, Any]:
    members = [
        {"address": a, "node": NODE[a], "role": "voter", "status": s}
        for a, s in zip((A, B, C), statuses, strict=False)
    ]
    up = sum(1 for s in statuses if s == "up")
    cluster = {"members": members, "quorum": q(len(statuses), up), "verdict": state}
    return {"node": node, "address": address, "members": members, "cluster": cluster}


HEALTHY = verdict_of("pi-01", A, "healthy", "up", "up", "up")
AT_RISK = verdict_of("pi-02", B, "at_risk", "up", "up", "down")
SINGLE = verdict_of("pi-01", A, "not_ha", "up")


@pytest.mark.parametrize(
    ("verdicts", "force", "worker", "refused"),
    [
        ([HEALTHY], False, False, None),
        ([SINGLE], False, False, None),  # one voter up: the join is what makes HA possible
        ([verdict_of("pi-01", A, "lost", "down")], False, False, "voter(s) pi-01 down"),
        ([AT_RISK], False, False, "voter(s) pi-03 down"),
        ([AT_RISK], True, False, None),
        ([AT_RISK], False, True, None),  # a worker adds no dqlite member
        ([], False, False, "no agent of the cluster at 127.0.0.12 has published"),
        # The verdict of the agent at the join address wins over any other listing it.
        ([HEALTHY, AT_RISK], False, False, "as pi-02 reports"),
    ],
)
def test_join_gate(
    verdicts: list[dict[str, Any]], force: bool, worker: bool, refused: str | None
) -> None:
    host = (
        "127.0.0.11" if verdicts and verdicts[0]["cluster"]["quorum"]["size"] == 1 else "127.0.0.12"
    )
    reason = quorum.join_gate(verdicts, host, force=force, worker=worker)
    if refused is None:
        assert reason is None
    else:
        assert reason is not None
        assert reason.startswith("would_break_quorum: ")
        assert refused in reason
