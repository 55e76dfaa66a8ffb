"""The HA monitor inside a whole in-process agent: real broker, fake members on loopback, the
fake `microk8s`/`snap` CLI as backend, a fake API server (16443) for names and /readyz, and the
quorum gate seen end to end through `R/cmd`."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from agent.ha import quorum
from agent.ha.monitor import member_topics
from agent.link.topics import Topics
from agent.operator.tools import build_envelope
from tests.cluster_fakes import (
    FakeMember,
    kubeconfig,
    loopback_block,
    node_list,
    self_signed,
    write_backend_dir,
)
from tests.conftest import Broker, agent_config, free_port, running_agent, watch
from tests.paths import FAKES, MICROK8S_CLI

pytestmark = pytest.mark.broker

ROOT = "microk8s/lab/nodes/pi-01"
HA = f"{ROOT}/ha"
NAMES = ("pi-01", "pi-02", "pi-03")


@pytest.fixture(autouse=True)
def fake_cli_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("SCENARIO", "SLEEP", "EXIT", "SPAWN_CHILD", "LOG"):
        monkeypatch.delenv(f"FAKE_MICROK8S_{name}", raising=False)
    monkeypatch.delenv("FAKE_SNAP_CHANNEL", raising=False)
    monkeypatch.setenv("FAKE_FIXTURES", str(MICROK8S_CLI))


@pytest.fixture
async def members(tmp_path: Path) -> AsyncIterator[list[FakeMember]]:
    """Three members; the third is listed but not started (a dead voter) unless a test does."""
    tls = self_signed(tmp_path)
    block = loopback_block()
    listed = [FakeMember(f"{block}.{i + 2}", tls) for i in range(3)]
    ips = {name: m.host for name, m in zip(NAMES, listed, strict=True)}
    for member in listed[:2]:
        member.node_list = node_list(ips)
        await member.start()
    yield listed
    for member in listed:
        await member.stop()


def settings_for(
    tmp_path: Path, broker: Broker, listed: list[FakeMember], *, http_port: int | None = None
) -> Path:
    backend = write_backend_dir(
        tmp_path / "backend", [(m.address, 0) for m in listed], (listed[0].address, 0)
    )
    credentials = tmp_path / "credentials"
    kubeconfig(credentials, f"https://{listed[0].host}:16443")
    return agent_config(
        tmp_path,
        broker,
        node={"name": "pi-01"},
        http_port=http_port,
        ha={"enabled": True, "interval_s": 0.3, "probe_timeout_s": 2.0},
        microk8s={
            "backend": "cli",
            "cli": str(FAKES / "microk8s"),
            "snap_cli": str(FAKES / "snap"),
            "backend_dir": str(backend),
            "credentials_dir": str(credentials),
            "join_timeout_s": 2,
        },
        commands={"allow_unsigned": True},
    )


def on_ha(predicate: Callable[[Any], bool]) -> Callable[[str, Any], bool]:
    return lambda topic, payload: topic == HA and isinstance(payload, dict) and predicate(payload)


async def test_names_from_the_api_server_readyz_and_at_risk(
    tmp_path: Path, broker: Broker, members: list[FakeMember]
) -> None:
    port = free_port()
    async with (
        watch(broker, HA) as w,
        running_agent(settings_for(tmp_path, broker, members, http_port=port)) as agent,
    ):
        _, verdict = await w.wait_for(on_ha(lambda p: p["apiserver_ready"] is True))
        assert verdict["role"] == "voter"
        assert verdict["source"] == "cluster.yaml"
        assert [v["node"] for v in verdict["voters"]] == list(NAMES)
        assert [v["reachable"] for v in verdict["voters"]] == [True, True, False]
        assert verdict["verdict"] == "at_risk"
        assert verdict["members"][1]["cluster_agent"] is True
        assert verdict["members"][2]["apiserver"] is False
        # Alone, this agent cannot call pi-03 down: nobody else has witnessed it.
        statuses = [m["status"] for m in verdict["cluster"]["members"]]
        assert statuses == ["up", "up", "unreachable"]
        members[0].readyz_ok = False
        _, failing = await w.wait_for(on_ha(lambda p: p["apiserver_ready"] is False))
        assert "the local API server is not ready (/readyz failed)" in failing["reasons"]
        assert agent.state.last_ha is not None
        assert agent.state.last_ha["apiserver_ready"] is False
        # The HTTP endpoint serves the last verdict, and its figures as metrics.
        async with aiohttp.ClientSession(f"http://127.0.0.1:{port}") as http:
            async with http.get("/status") as response:
                status = await response.json()
            async with http.get("/metrics") as response:
                metrics = await response.text()
        assert status["ha"]["verdict"] == "at_risk"
        assert status["ha"]["quorum"]["reachable"] == 2
        assert "edge_agent_ha_quorum_margin 0.0" in metrics
        assert "edge_agent_ha_voters_reachable 2.0" in metrics


async def test_published_retained_on_change_and_as_heartbeat(
    tmp_path: Path, broker: Broker, members: list[FakeMember]
) -> None:
    await members[2].start()
    async with running_agent(settings_for(tmp_path, broker, members)):
        async with watch(broker, HA) as w:
            _, healthy = await w.wait_for(on_ha(lambda p: p["verdict"] == "healthy"))
            # The readiness block changes once more when this node's first health sample lands.
            if "pi-01" in healthy["readiness"]["factors"]["voter_risks"]["unknown"]:
                _, healthy = await w.wait_for(on_ha(known_health), after=len(w.messages))
            first = len(w.messages)
            # Nothing changes: the next message is the same verdict again, as the heartbeat
            # (6 intervals of 0.3 s after the previous one), not one message per round.
            _, beat = await w.wait_for(on_ha(lambda p: True), after=first, timeout_s=5)
            assert not quorum.changed(healthy, beat), [
                (k, healthy[k], beat[k]) for k in healthy if healthy[k] != beat[k]
            ]
            assert beat["ts"] - healthy["ts"] >= 6 * 0.3 - 0.1
            await members[1].stop_dqlite()
            _, changed = await w.wait_for(on_ha(lambda p: p["verdict"] == "at_risk"))
            assert changed["voters"][1]["reachable"] is False
        async with watch(broker, HA) as late:
            _, replay = await late.wait_for(on_ha(lambda p: True), timeout_s=3)
            assert late.messages[0][2] is True  # retained
            assert replay["verdict"] == "at_risk"


async def test_membership_falls_back_to_microk8s_status(
    tmp_path: Path, broker: Broker, members: list[FakeMember], monkeypatch: pytest.MonkeyPatch
) -> None:
    # The recorded `status --format yaml` (127.0.0.11-13 voters, .14 stand-by), moved onto this
    # test's loopback members; .14 becomes an address where nothing listens.
    fixtures = tmp_path / "microk8s-cli"
    shutil.copytree(MICROK8S_CLI, fixtures)
    moved = {f"127.0.0.{11 + i}:": f"{m.host}:" for i, m in enumerate(members)}
    moved["127.0.0.14:"] = f"{members[0].host.rpartition('.')[0]}.9:"
    status = (fixtures / "status-ha.yaml").read_text()
    for old, new in moved.items():
        status = status.replace(old, new)
    (fixtures / "status-ha.yaml").write_text(status)
    monkeypatch.setenv("FAKE_FIXTURES", str(fixtures))
    path = settings_for(tmp_path, broker, members)
    for name in ("cluster.yaml", "info.yaml"):
        (tmp_path / "backend" / name).unlink()
    async with watch(broker, HA) as w, running_agent(path):
        _, verdict = await w.wait_for(on_ha(lambda p: p["source"] == "microk8s status"))
    assert [m["address"] for m in verdict["members"]] == [f"{host}19001" for host in moved.values()]
    assert [m["role"] for m in verdict["members"]] == ["voter", "voter", "voter", "standby"]
    assert verdict["role"] is None  # info.yaml is gone and no member is on a local address
    assert verdict["verdict"] == "at_risk"  # the third member is not started
    assert any(
        r.startswith("membership from microk8s status: cannot read") for r in verdict["reasons"]
    )


def known_health(verdict: dict[str, Any]) -> bool:
    return "pi-01" not in verdict["readiness"]["factors"]["voter_risks"]["unknown"]


def upgrade(force: bool = False) -> dict[str, Any]:
    args = {"channel": "1.33-strict/stable", "drain": False, "force": force}
    return build_envelope("pi-01", "upgrade", args, time.time())


def final_status(command_id: str) -> Callable[[str, Any], bool]:
    terminal = {"rejected", "succeeded", "failed", "timed_out"}
    return lambda t, p: t == f"{ROOT}/cmd/{command_id}" and p.get("status") in terminal


def join(host: str, **extra: Any) -> dict[str, Any]:
    args = {"url": f"{host}:25000/{'a' * 32}", **extra}
    return build_envelope("pi-01", "join", args, time.time())


async def outcome(w: Any, request: dict[str, Any]) -> dict[str, Any]:
    """Send a command to pi-01 and return its terminal status."""
    await w.publish(f"{ROOT}/cmd", json.dumps(request), qos=1)
    _, status = await w.wait_for(final_status(request["id"]), timeout_s=15)
    return dict(status)


async def test_upgrade_and_join_with_no_margin_are_rejected_unless_forced(
    tmp_path: Path, broker: Broker, members: list[FakeMember]
) -> None:
    async with (
        watch(broker, f"{ROOT}/#") as w,
        running_agent(settings_for(tmp_path, broker, members)),
    ):
        await w.wait_for(on_ha(lambda p: p["verdict"] == "at_risk"))
        status = await outcome(w, upgrade())
        assert status["status"] == "rejected"
        assert status["error"].startswith("would_break_quorum: this node is a voter")
        assert (
            "2 of 3 voters are reachable (2 needed, margin 0, verdict at_risk)" in status["error"]
        )
        # A control-plane join into the cluster at a member's IP: the same rule (docs/ha.md).
        status = await outcome(w, join(members[1].host))
        assert status["status"] == "rejected"
        assert status["error"].startswith(
            f"would_break_quorum: the cluster at {members[1].host} cannot take a membership"
            " change now (voter(s) "
        )
        assert "margin 0" in status["error"]
        for extra in ({"force": True}, {"worker": True}):
            status = await outcome(w, join(members[1].host, **extra))
            assert "would_break_quorum" not in (status.get("error") or ""), status
        status = await outcome(w, upgrade(force=True))
        assert status["status"] != "rejected"
        assert "would_break_quorum" not in (status.get("error") or "")


async def test_a_refresh_puts_the_node_in_maintenance(
    tmp_path: Path, broker: Broker, members: list[FakeMember], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_SLEEP", "refresh=1")
    await members[2].start()
    async with (
        watch(broker, f"{ROOT}/#") as w,
        running_agent(settings_for(tmp_path, broker, members)),
    ):
        await w.wait_for(on_ha(lambda p: p["verdict"] == "healthy"))
        request = upgrade()
        await w.publish(f"{ROOT}/cmd", json.dumps(request), qos=1)
        _, during = await w.wait_for(on_ha(lambda p: p["maintenance"] is True))
        assert during["maintenance_reason"].startswith("upgrading to 1.33-strict/stable")
        assert any(r.startswith("in maintenance: upgrading") for r in during["reasons"])
        assert during["cluster"]["members"][0]["status"] == "maintenance"
        await w.wait_for(final_status(request["id"]), timeout_s=15)
        _, after = await w.wait_for(
            on_ha(lambda p: p["maintenance"] is False), after=len(w.messages)
        )
        assert after["maintenance_reason"] is None


async def test_known_members_followed_on_exact_topics(
    tmp_path: Path, make_broker: Callable[..., Broker], members: list[FakeMember]
) -> None:
    """Brokers that replay retained messages only to exact subscriptions (RabbitMQ 3.10)."""
    broker = make_broker("log_type subscribe\n")
    async with watch(broker, HA) as w, running_agent(settings_for(tmp_path, broker, members)):
        await w.wait_for(on_ha(lambda p: [v["node"] for v in p["voters"]] == list(NAMES)))
        # The names are known after a round; the subscriptions follow within the next one.
        await w.wait_for(on_ha(lambda p: True), after=len(w.messages))
    log = broker.log_path.read_text()
    # QoS 0, like the wildcards: peers' retained states (issue 11, docs/protocol.md).
    for peer in NAMES[1:]:
        for leaf in ("state", "ha"):
            assert f"edge-agent-lab-pi-01 0 microk8s/lab/nodes/{peer}/{leaf}\n" in log
    assert "edge-agent-lab-pi-01 0 microk8s/lab/nodes/pi-01/state\n" not in log


def test_member_topics_are_exact_and_safe() -> None:
    topics = Topics("microk8s", "lab", "pi-01")
    found = list(member_topics(topics, ["pi-02", "pi-01", "pi-02", "node.example", "Bad"]))
    assert found == [
        ("state", "microk8s/lab/nodes/pi-02/state"),
        ("ha", "microk8s/lab/nodes/pi-02/ha"),
    ]
