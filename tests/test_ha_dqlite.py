"""HA against real dqlite: `dqlite-demo` clusters on 127.0.0.11-15, subprocess agents, mosquitto.

Each agent reads its member list the way it would on a node — a backend dir with `info.yaml`
(itself) and a `cluster.yaml` this test writes listing only itself, as hand-started dqlite nodes
leave it — and asks the live cluster (`ha.dqlite_tls = false`: dqlite-demo has no TLS; the TLS
path is in test_dqlite_client.py). The real `dqlite` shell is the witness for who leads.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_fakes import write_backend_dir
from tests.conftest import AgentProcess, Broker, agent_config, watch
from tests.dqlite_nodes import DqliteCluster, start_cluster
from tests.paths import MICROK8S_CLI

pytestmark = pytest.mark.broker

HA = "microk8s/lab/nodes/+/ha"
NAMES = ("pi-01", "pi-02", "pi-03")
HA_SETTINGS = {
    "enabled": True,
    "interval_s": 0.5,
    "probe_timeout_s": 1.0,
    "dqlite_tls": False,
    "auto_remove_after_s": 1.0,
}
ELECTION_BOUND_S = 30.0
"""Raft elects a new leader within ~5 s here (measured 4 s); agents see it one round later."""
FIXTURES = str(MICROK8S_CLI)
CAPTURE = os.environ.get("HA_CAPTURE")  # write the R/ha messages here (for docs/ha.md)


@pytest.fixture
async def three(tmp_path: Path) -> AsyncIterator[DqliteCluster]:
    cluster = await start_cluster(tmp_path / "dqlite", 3)
    yield cluster
    cluster.stop()


def start_agents(
    spawn_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    broker: Broker,
    cluster: DqliteCluster,
    names: tuple[str, ...] = NAMES,
) -> dict[str, Path]:
    """One agent per name on the first nodes; returns each one's fake `microk8s` call log."""
    logs = {}
    for name, address in zip(names, cluster.addresses, strict=False):
        home = tmp_path / name
        # cluster.yaml lists only this node: what a hand-started dqlite node leaves on disk.
        backend = write_backend_dir(home / "backend", [(address, 0)], (address, 0))
        config = agent_config(
            home,
            broker,
            node={"name": name},
            health={"interval_s": 5},
            ha=HA_SETTINGS,
            # The fake `microk8s` (tests/fakes) logs the auto-remove's remove-node calls.
            microk8s={"backend_dir": str(backend), "backend": "cli", "cli": "microk8s"},
        )
        logs[name] = home / "microk8s-calls.log"
        spawn_agent(config, env={"FAKE_MICROK8S_LOG": str(logs[name]), "FAKE_FIXTURES": FIXTURES})
    return logs


def of(node: str, predicate: Callable[[dict[str, Any]], bool]) -> Callable[[str, Any], bool]:
    return lambda topic, payload: (
        topic.endswith(f"/{node}/ha") and isinstance(payload, dict) and predicate(payload)
    )


def events(payload: dict[str, Any]) -> list[str]:
    return [e["event"] for e in payload.get("events", [])]


def voters(payload: dict[str, Any]) -> list[str]:
    return [m["address"] for m in payload["members"] if m["role"] == "voter"]


async def collect(
    w: Any, names: tuple[str, ...], predicate: Callable[[dict[str, Any]], bool], mark: int
) -> dict[str, dict[str, Any]]:
    found = {}
    for name in names:
        _, found[name] = await w.wait_for(
            of(name, predicate), timeout_s=ELECTION_BOUND_S, after=mark
        )
    return found


async def test_three_voters_then_the_leader_dies_then_a_second_voter(
    tmp_path: Path,
    broker: Broker,
    spawn_agent: Callable[..., AgentProcess],
    three: DqliteCluster,
) -> None:
    leader = await three.leader()
    by_address = dict(zip(three.addresses, NAMES, strict=True))

    def healthy(p: dict[str, Any]) -> bool:
        return (
            p["verdict"] == "healthy"
            and p["leader"] == {"address": leader, "node": by_address[leader]}
            and p["cluster"]["reporters"] == list(NAMES)
            and all(m["node"] for m in p["members"])
        )

    async with watch(broker, HA) as w:
        start_agents(spawn_agent, tmp_path, broker, three)
        before = await collect(w, NAMES, healthy, 0)
        for name, verdict in before.items():
            assert verdict["source"] == "dqlite"
            assert voters(verdict) == three.addresses
            assert all(m["failure_domain"] == 0 for m in verdict["members"])  # demo's default
            own = next(a for a, n in by_address.items() if n == name)
            others = [a for a in three.addresses if a != own]
            # cluster.yaml lists only this node: dqlite's live list is reported as different.
            for address in others:
                assert any(
                    r.startswith(f"dqlite lists {address} ({by_address[address]}) as voter")
                    for r in verdict["reasons"]
                ), verdict["reasons"]
            assert verdict["readiness"]["factors"]["margin"]["points"] == 20

        # The leader crashes: raft elects another one; margin 0 everywhere.
        three.node(leader).kill()
        mark = len(w.messages)

        def at_risk(p: dict[str, Any]) -> bool:
            return (
                p["verdict"] == "at_risk"
                and p["leader"] is not None
                and p["leader"]["address"] != leader
                and p["quorum"]["margin"] == 0
            )

        after = await collect(w, NAMES, at_risk, mark)
        new_leader = await three.leader()
        for verdict in after.values():
            assert verdict["leader"]["address"] == new_leader
            dead = next(m for m in verdict["members"] if m["address"] == leader)
            assert dead == {**dead, "role": "voter", "reachable": False}  # still listed, 3 nodes
            assert verdict["readiness"]["factors"]["margin"]["points"] == 0
        # Auto-remove is on (1 s), but a removal at margin 0 is refused, in words.
        _, refused = await w.wait_for(
            lambda t, p: (
                isinstance(p, dict)
                and any(e["event"] == "auto_remove_refused" for e in p.get("events", []))
            ),
            timeout_s=ELECTION_BOUND_S,
            after=mark,
        )
        event = next(e for e in refused["events"] if e["event"] == "auto_remove_refused")
        assert event["address"] == leader
        assert "quorum margin is 0" in event["reason"]

        # A second voter dies: no leader can be elected; every agent says lost, in dqlite's words.
        second = next(a for a in three.addresses if a not in (leader, new_leader))
        three.node(second).kill()
        mark = len(w.messages)
        # (The old leader may still claim leadership until its election timeout: lost by the
        # numbers first, then without a leader.)
        lost = await collect(w, NAMES, lambda p: p["verdict"] == "lost" and not p["leader"], mark)
        for verdict in lost.values():
            assert any(
                r.startswith("no dqlite leader: no available dqlite leader server found")
                for r in verdict["reasons"]
            ), verdict["reasons"]
            assert verdict["readiness"]["score"] == 0
    if CAPTURE:
        Path(CAPTURE).write_text(json.dumps({"before": before, "after": after, "lost": lost}))


@pytest.mark.timeout(300)
async def test_five_nodes_a_standby_is_promoted_and_the_verdict_follows(
    tmp_path: Path,
    broker: Broker,
    spawn_agent: Callable[..., AgentProcess],
) -> None:
    five = await start_cluster(tmp_path / "dqlite", 5)
    try:
        roles = await five.roles()
        assert sorted(roles.values()) == ["stand-by", "stand-by", "voter", "voter", "voter"]
        names = tuple(f"pi-0{i}" for i in range(1, 6))
        async with watch(broker, HA) as w:
            logs = start_agents(spawn_agent, tmp_path, broker, five, names[:3])
            _, first = await w.wait_for(
                of("pi-01", lambda p: p["source"] == "dqlite" and p["verdict"] == "healthy"),
                timeout_s=ELECTION_BOUND_S,
            )
            standbys = [m["address"] for m in first["members"] if m["role"] == "standby"]
            assert sorted(standbys) == sorted(a for a, r in roles.items() if r == "stand-by")
            readiness = first["readiness"]["factors"]["standby"]
            assert sorted(readiness["online_standby"]) == sorted(standbys)
            assert readiness["points"] == 20
            # A voter that is not the leader (nor pi-01's) crashes; within two roles rounds (30 s
            # each) the leader promotes a stand-by, then demotes the dead voter to spare.
            leader = await five.leader()
            victim = next(a for a in five.addresses[1:3] if roles[a] == "voter" and a != leader)
            five.node(victim).kill()
            mark = len(w.messages)

            def promoted(p: dict[str, Any]) -> bool:
                current = voters(p)
                return (
                    victim not in current
                    and len(current) == 3
                    and any(a in standbys for a in current)
                    and p["verdict"] == "healthy"
                )

            _, after = await w.wait_for(of("pi-01", promoted), timeout_s=150, after=mark)
            # Now the dead member is a spare the live view still lists, the voters all answer
            # (margin 1): auto-remove may act, once, on pi-01 (the lowest-named voter).
            _, removed = await w.wait_for(
                of("pi-01", lambda p: "auto_remove_succeeded" in events(p)), timeout_s=30
            )
        live_roles = await five.roles()
        dead_name = names[five.addresses.index(victim)]
        assert events(removed)[0] == "auto_remove_refused"  # while the dead voter was a voter
        assert events(removed)[-2:] == ["auto_remove_started", "auto_remove_succeeded"]
        calls = [json.loads(line) for line in logs["pi-01"].read_text().splitlines()]
        assert [c for c in calls if c[1] == "remove-node"] == [
            ["microk8s", "remove-node", dead_name, "--force"]
        ]
        for member in after["members"]:
            if member["address"] != victim:
                wanted = live_roles[member["address"]].replace("stand-by", "standby")
                assert member["role"] == wanted
        assert after["quorum"] == {"size": 3, "reachable": 3, "needed": 2, "ok": True, "margin": 1}
        if CAPTURE:
            Path(f"{CAPTURE}.events").write_text(json.dumps(removed["events"]))
    finally:
        five.stop()
