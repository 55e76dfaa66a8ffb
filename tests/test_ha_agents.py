"""Three subprocess agents, one real mosquitto, fake control-plane listeners on 127.a.b.x.

Each agent has its own backend dir whose cluster.yaml lists the three members at loopback
addresses where this test opens the dqlite/API server/cluster agent listeners. Closing one
member's dqlite listener is a node failure every agent can witness.
"""

from __future__ import annotations

import json
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_fakes import FakeMember, loopback_block, self_signed, write_backend_dir
from tests.conftest import AgentProcess, Broker, agent_config, watch

pytestmark = pytest.mark.broker

NODES = ("pi-01", "pi-02", "pi-03")  # names known to the fake microk8s (kube/nodes.json)
HA = "microk8s/lab/nodes/+/ha"
HA_SETTINGS = {"enabled": True, "interval_s": 0.3, "probe_timeout_s": 0.5}
CAPTURE = os.environ.get("HA_CAPTURE")  # write the agreed verdicts here (for docs/ha.md)


@pytest.fixture
async def members(tmp_path: Path) -> AsyncIterator[list[FakeMember]]:
    tls = self_signed(tmp_path)
    block = loopback_block()
    started = [await FakeMember(f"{block}.{i + 2}", tls).start() for i in range(len(NODES))]
    yield started
    for member in started:
        await member.stop()


def start_agent(
    spawn_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    broker: Broker,
    node: str,
    *,
    listed: list[str],
    own: str,
    ha: dict[str, Any] | None = None,
    microk8s: dict[str, Any] | None = None,
    env: dict[str, str] | None = None,
) -> AgentProcess:
    """An agent named `node` whose cluster.yaml lists `listed` (all voters) and who is `own`."""
    home = tmp_path / node
    backend = write_backend_dir(home / "backend", [(a, 0) for a in listed], (own, 0))
    sections: dict[str, Any] = {
        "node": {"name": node},
        "health": {"interval_s": 5},
        "ha": {**HA_SETTINGS, **(ha or {})},
        "microk8s": {"backend_dir": str(backend), **(microk8s or {})},
    }
    return spawn_agent(agent_config(home, broker, **sections), env=env)


def status_of(payload: Any, node: str) -> str | None:
    for member in payload.get("cluster", {}).get("members", []):
        if member["node"] == node:
            return str(member["status"])
    return None


def by(node: str, predicate: Callable[[Any], bool]) -> Callable[[str, Any], bool]:
    return lambda topic, payload: (
        topic.endswith(f"/{node}/ha") and isinstance(payload, dict) and predicate(payload)
    )


def all_up(payload: Any) -> bool:
    cluster = payload.get("cluster", {})
    return cluster.get("reporters") == list(NODES) and all(
        status_of(payload, n) == "up" for n in NODES
    )


def witnessed_by_all(payload: Any) -> bool:
    """pi-03 is down and every agent (pi-03's own included) says it cannot reach it."""
    members = payload.get("cluster", {}).get("members", [])
    return status_of(payload, "pi-03") == "down" and members[2]["unreachable_by"] == list(NODES)


def start_all(
    spawn_agent: Callable[..., AgentProcess],
    tmp_path: Path,
    broker: Broker,
    addresses: list[str],
    **options: Any,
) -> dict[str, AgentProcess]:
    """One agent per member, each listing all three; `options` go to start_agent per node."""
    return {
        node: start_agent(
            spawn_agent, tmp_path, broker, node, listed=addresses, own=own, **options.get(node, {})
        )
        for node, own in zip(NODES, addresses, strict=True)
    }


def assert_witnessed(verdict: dict[str, Any], addresses: list[str]) -> None:
    assert verdict["verdict"] == "at_risk"
    assert verdict["quorum"] == {"size": 3, "reachable": 2, "needed": 2, "ok": True, "margin": 0}
    assert verdict["voters"][2] == {"address": addresses[2], "node": "pi-03", "reachable": False}
    cluster = verdict["cluster"]
    assert cluster["verdict"] == "at_risk"
    assert cluster["members"][2]["unreachable_by"] == list(NODES)
    assert status_of(verdict, "pi-01") == status_of(verdict, "pi-02") == "up"


async def test_three_agents_agree_on_a_witnessed_failure(
    tmp_path: Path,
    broker: Broker,
    spawn_agent: Callable[..., AgentProcess],
    members: list[FakeMember],
) -> None:
    addresses = [m.address for m in members]
    async with watch(broker, HA) as w:
        start_all(spawn_agent, tmp_path, broker, addresses)
        for node in NODES:
            _, healthy = await w.wait_for(by(node, all_up))
            assert healthy["verdict"] == "healthy"
            assert healthy["source"] == "cluster.yaml"
            assert healthy["role"] == "voter"
            assert [v["node"] for v in healthy["voters"]] == list(NODES)
        mark = len(w.messages)
        await members[2].stop_dqlite()
        agreed = {}
        for node in NODES:
            _, agreed[node] = await w.wait_for(by(node, witnessed_by_all), after=mark)
    for node, verdict in agreed.items():
        assert verdict["node"] == node
        assert_witnessed(verdict, addresses)
    if CAPTURE:
        Path(CAPTURE).write_text(json.dumps(agreed, indent=1) + "\n")


async def test_one_agent_losing_a_member_is_not_a_failure(
    tmp_path: Path,
    broker: Broker,
    spawn_agent: Callable[..., AgentProcess],
    members: list[FakeMember],
) -> None:
    addresses = [m.address for m in members]
    # pi-01's cluster.yaml lists pi-03 on a port where nothing listens: to pi-01 the member is
    # unreachable, exactly as if the link between pi-01 and pi-03 were cut, while pi-02 and
    # pi-03 (and the member itself) are fine. One agent's loss must not become "down".
    host = members[2].host
    cut_view = [*addresses[:2], f"{host}:19002"]
    async with watch(broker, HA) as w:
        start_agent(spawn_agent, tmp_path, broker, "pi-02", listed=addresses, own=addresses[1])
        start_agent(spawn_agent, tmp_path, broker, "pi-03", listed=addresses, own=addresses[2])
        start_agent(spawn_agent, tmp_path, broker, "pi-01", listed=cut_view, own=addresses[0])
        _, partitioned = await w.wait_for(
            by("pi-01", lambda p: status_of(p, "pi-03") == "partitioned"), timeout_s=15
        )
        for node in ("pi-02", "pi-03"):
            await w.wait_for(by(node, all_up))
        # Several more rounds: nobody turns the lone observation into a failure.
        mark = len(w.messages)
        for node in NODES:
            await w.wait_for(
                by(node, lambda p: p["cluster"]["reporters"] == list(NODES)), after=mark
            )
    assert partitioned["verdict"] == "at_risk"  # its own, local view
    assert partitioned["cluster"]["verdict"] == "healthy"  # the witnessed view
    assert partitioned["cluster"]["quorum"]["reachable"] == 3
    statuses = [
        status_of(p, "pi-03") for t, p, _ in w.messages if t.endswith("/ha") and isinstance(p, dict)
    ]
    assert "down" not in statuses
    assert "partitioned" in statuses


async def test_no_auto_remove_without_the_live_dqlite_view(
    tmp_path: Path,
    broker: Broker,
    spawn_agent: Callable[..., AgentProcess],
    members: list[FakeMember],
) -> None:
    """These fake members speak no dqlite: a member list from files is never acted upon.

    (Removal itself, by the lowest-named voter and once, is proved against real dqlite in
    test_ha_dqlite.py.)
    """
    logs = {node: tmp_path / f"{node}-microk8s.log" for node in NODES}
    options = {
        node: {
            "ha": {"auto_remove_after_s": 0.6},
            "microk8s": {"backend": "cli", "cli": "microk8s"},
            "env": {"FAKE_MICROK8S_LOG": str(logs[node])},
        }
        for node in NODES
    }
    addresses = [m.address for m in members]
    async with watch(broker, HA) as w:
        agents = start_all(spawn_agent, tmp_path, broker, addresses, **options)
        for node in NODES:
            await w.wait_for(by(node, all_up))
        # pi-03 dies: its agent and its listeners are gone.
        agents["pi-03"].signal(signal.SIGKILL)
        await members[2].stop()
        _, refused = await w.wait_for(
            by("pi-01", lambda p: any(e["event"] == "auto_remove_refused" for e in p["events"])),
            timeout_s=20,
        )
        # Well after another auto_remove_after_s: still refused, said once.
        await w.wait_for(by("pi-01", lambda p: p["ts"] > refused["ts"] + 2.0))
    event = refused["events"][0]
    assert (event["event"], event["address"], event["node"]) == (
        "auto_remove_refused",
        addresses[2],
        "pi-03",
    )
    assert "the live dqlite view is unavailable" in event["reason"]
    last = [p for t, p, _ in w.messages if t.endswith("/pi-01/ha") and isinstance(p, dict)][-1]
    assert [e["event"] for e in last["events"]] == ["auto_remove_refused"]
    for node in NODES:
        assert "remove-node" not in (logs[node].read_text() if logs[node].exists() else "")
