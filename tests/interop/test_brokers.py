"""The agent against Mosquitto, RabbitMQ 3.10 (MQTT plugin) and NATS 2.9 (MQTT listener).

Each broker and protocol pair runs the same checks (docs/brokers.md has the matrix): birth means
ready, retained birth and health for a late subscriber, rebirth, signed addon and its duplicate,
status, an id no broker can carry, a retained command refused at subscribe time and its clear
ignored, last will on kill -9, reconnect after a broker restart (a higher session), and the
operator CLI. MQTT 5 runs where the broker has it; elsewhere the agent must say at once that the
broker refused it and how to fix that.

Observers use exact topics for retained messages: RabbitMQ replays them to exact subscriptions
only. Every test has its own node name, so retained messages of one test never meet another.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import pytest

from agent.link.mqtt import Inbound, Link
from agent.link.topics import Topics
from agent.operator import exits
from agent.settings import MqttSettings
from tests.commands_helpers import Keys, commands_config, fake_env, kill_fakes
from tests.conftest import AgentProcess, Broker, Watcher, watch
from tests.interop.brokers import PROTOCOLS, InteropBroker
from tests.interop.conftest import BrokerFor
from tests.paths import REPO

# RabbitMQ boots in the first test that needs it: up to RABBITMQ_BOOT_S on a loaded machine.
pytestmark = [pytest.mark.broker, pytest.mark.interop, pytest.mark.timeout(300)]

PAIRS = [(kind, protocol) for kind, versions in PROTOCOLS.items() for protocol in versions]
NO_MQTT5 = [kind for kind, versions in PROTOCOLS.items() if 5 not in versions]
PAIR_IDS = [f"{kind}-mqtt{protocol}" for kind, protocol in PAIRS]
TERMINAL = {"succeeded", "failed", "timed_out", "rejected"}
_names = itertools.count(1)


class Node:
    """One agent under test: its name, topics and process, on one broker and protocol."""

    def __init__(
        self, tmp_path: Path, broker: InteropBroker, protocol: int, spawn: Callable[..., Any]
    ) -> None:
        self.name = f"{broker.name[:4]}{protocol}-{next(_names)}"
        self.root = f"microk8s/lab/nodes/{self.name}"
        self.broker = broker
        self.protocol = protocol
        self.tmp_path = tmp_path
        self.keys = Keys(tmp_path / "keys")
        self.config = commands_config(
            tmp_path,
            _as_broker(broker),
            self.keys,
            health_s=30,
            node=self.name,
            mqtt={"protocol": protocol, "keepalive_s": 5},
        )
        self._spawn = spawn
        self.process: AgentProcess | None = None

    def start(self) -> AgentProcess:
        self.process = self._spawn(self.config, fake_env(self.tmp_path))
        return self.process

    def envelope(self, verb: str, args: dict[str, Any] | None = None, **extra: Any) -> bytes:
        body: dict[str, Any] = {
            "v": 1,
            "id": f"c-{time.time_ns()}",
            "verb": verb,
            "target": self.name,
            "args": args or {},
            "issued_at": int(time.time()),
            **extra,
        }
        if verb not in ("status", "rebirth"):
            body = self.keys.signer.sign(body)
        return json.dumps(body).encode()

    @contextlib.asynccontextmanager
    async def observe(self, *leaves: str) -> AsyncIterator[Watcher]:
        """A client of the node's topics: exact ones (retained replay) and `cmd/+` (statuses)."""
        topics = [f"{self.root}/{leaf}" for leaf in leaves] + [f"{self.root}/cmd/+"]
        async with watch(
            _as_broker(self.broker),
            *topics,
            protocol=_version(self.protocol),
            identifier=f"observer-{self.name}-{time.monotonic_ns()}",
        ) as watcher:
            yield watcher

    async def command(self, w: Watcher, payload: bytes, **kwargs: Any) -> dict[str, Any]:
        command_id = json.loads(payload)["id"]
        after = len(w.messages)
        await w.publish(f"{self.root}/cmd", payload, qos=1, **kwargs)
        status: dict[str, Any] = await terminal(w, f"{self.root}/cmd/{command_id}", after=after)
        return status


def _as_broker(broker: InteropBroker) -> Broker:
    """The conftest helpers read only `host` and `port`, which every interop broker has."""
    return cast(Broker, broker)


def _version(protocol: int) -> Any:
    import aiomqtt

    return aiomqtt.ProtocolVersion.V5 if protocol == 5 else aiomqtt.ProtocolVersion.V311


async def terminal(w: Watcher, topic: str, *, after: int = 0, timeout_s: float = 20) -> Any:
    _, payload = await w.wait_for(
        lambda t, p: t == topic and isinstance(p, dict) and p.get("status") in TERMINAL,
        timeout_s,
        after=after,
    )
    return payload


def presence(root: str, state: str) -> Callable[[str, Any], bool]:
    return lambda t, p: t == f"{root}/state" and isinstance(p, dict) and p.get("state") == state


@pytest.fixture(params=PAIRS, ids=PAIR_IDS)
def node(
    request: pytest.FixtureRequest,
    broker_for: BrokerFor,
    tmp_path: Path,
    spawn_agent: Callable[..., Any],
) -> Any:
    kind, protocol = request.param
    made = Node(tmp_path, broker_for(kind), protocol, spawn_agent)
    yield made
    kill_fakes(tmp_path / "argv.log")


async def test_session(node: Node) -> None:
    """Retained command refused, birth means ready, late subscriber, commands, last will."""
    root = node.root
    async with node.observe("state", "health") as w:
        # A retained command is there before the agent subscribes: replayed, then refused.
        stale = node.envelope("status")
        await w.publish(f"{root}/cmd", stale, qos=1, retain=True)
        agent = node.start()
        # Birth means ready: a command sent the instant `online` is seen is answered.
        await w.wait_for(presence(root, "online"), 30)
        answered = await node.command(w, node.envelope("status"))
        assert answered["status"] == "succeeded"
        stale_status = await terminal(w, f"{root}/cmd/{json.loads(stale)['id']}")
        assert stale_status["status"] == "rejected"
        assert "retained command" in stale_status["error"]
        # Clearing it is ignored under both protocols (3.1.1 delivers the clear unflagged):
        # the next command's answer comes with no rejection before it (the intake keeps order).
        await w.publish(f"{root}/cmd", b"", qos=1, retain=True)
        assert (await node.command(w, node.envelope("status")))["status"] == "succeeded"
        assert w.payloads("/cmd/_invalid") == []
        await w.wait_for(lambda t, p: t == f"{root}/health", 15)

    # A late subscriber gets the retained birth and health.
    async with node.observe("state", "health") as late:
        _, birth = await late.wait_for(presence(root, "online"), 10)
        await late.wait_for(lambda t, p: t == f"{root}/health", 10)
        first: dict[str, bool] = {}
        for topic, _, retain in late.messages:
            first.setdefault(topic, retain)
        assert first[f"{root}/state"] and first[f"{root}/health"], late.messages
        session = birth["session"]

        # rebirth: birth and health again under the same session; a second one is refused.
        after = len(late.messages)
        rebirths = [
            node.envelope("rebirth", id="c-rebirth-1"),
            node.envelope("rebirth", id="c-rebirth-2"),
        ]
        for payload in rebirths:  # back to back: the second is well within the 5 s
            await late.publish(f"{root}/cmd", payload, qos=1)
        reborn = await terminal(late, f"{root}/cmd/c-rebirth-1", after=after)
        assert reborn["status"] == "succeeded", reborn
        _, again = await late.wait_for(presence(root, "online"), 10, after=after)
        assert again["session"] == session
        await late.wait_for(lambda t, p: t == f"{root}/health", 10, after=after)
        too_soon = await terminal(late, f"{root}/cmd/c-rebirth-2", after=after)
        assert too_soon["status"] == "rejected" and "at most one per 5 s" in too_soon["error"]

        # A signed addon, then the same request again: answered as a duplicate, not re-run.
        addon = node.envelope("addon", {"name": "dns", "action": "enable"})
        done = await node.command(late, addon)
        assert done["status"] == "succeeded", done
        duplicate = await node.command(late, addon)
        assert duplicate.get("duplicate") is True and duplicate["status"] == "succeeded"

        # An id NATS cannot carry in a topic is refused on _invalid; the link stays up.
        after = len(late.messages)
        await late.publish(f"{root}/cmd", node.envelope("status", id="c.1"), qos=1)
        _, invalid = await late.wait_for(lambda t, p: t == f"{root}/cmd/_invalid", 15, after=after)
        assert "A-Z a-z 0-9 _ -" in invalid["error"]
        assert (await node.command(late, node.envelope("status")))["status"] == "succeeded"

        # Last will on kill -9: a retained offline of the same session.
        after = len(late.messages)
        agent.signal(signal.SIGKILL)
        agent.wait()
        _, will = await late.wait_for(presence(root, "offline"), 30, after=after)
        assert will["session"] == session and will["reason"] == "connection lost"

    async with node.observe("state") as later:
        _, gone = await later.wait_for(presence(root, "offline"), 10)
        assert gone["session"] == session
    assert not [m for m in agent.log_lines() if m.get("event") == "mqtt_message_dropped"]


CONNECT_EVENTS = {
    "mqtt_connected",
    "mqtt_disconnected",
    "mqtt_connect_failed",
    "mqtt_reconnect_scheduled",
    "mqtt_broker_back",
}


async def test_reconnect_after_broker_restart(node: Node) -> None:
    """A restarted broker gets the agent back with a higher session, and commands work."""
    root = node.root
    async with node.observe("state") as w:
        agent = node.start()
        _, first = await w.wait_for(presence(root, "online"), 30)
    await asyncio.to_thread(node.broker.stop)
    await asyncio.to_thread(node.broker.start)
    async with node.observe("state") as w:
        _, back = await w.wait_for(
            lambda t, p: presence(root, "online")(t, p) and p["session"] > first["session"], 90
        )
        assert back["session"] == first["session"] + 1
        assert (await node.command(w, node.envelope("status")))["status"] == "succeeded"
    # Every connect log line names the broker.
    lines = [line for line in agent.log_lines() if line.get("event") in CONNECT_EVENTS]
    assert {"mqtt_connected", "mqtt_disconnected"} <= {line["event"] for line in lines}
    assert {(line["host"], line["port"]) for line in lines} == {
        (node.broker.host, node.broker.port)
    }


def operator(node: Node, command: str, *args: str) -> subprocess.CompletedProcess[str]:
    """`edge-agent COMMAND` with this node's broker and protocol, then `args`."""
    broker = f"{node.broker.host}:{node.broker.port}"
    argv = [sys.executable, "-m", "agent", command, "--broker", broker, "--cluster", "lab"]
    argv += ["--protocol", str(node.protocol), *args]
    return subprocess.run(argv, check=False, capture_output=True, text=True, timeout=60, cwd=REPO)


async def test_operator_cli(node: Node) -> None:
    """`edge-agent send` (signed addon, status) and `nodes`, in the pair's protocol."""
    async with node.observe("state") as w:
        node.start()
        await w.wait_for(presence(node.root, "online"), 30)
    key = str(node.keys.private)
    argv = ("send", "--signing-key", key, "--timeout", "30", node.name, "addon", "enable", "dns")
    ran = await asyncio.to_thread(operator, node, *argv)
    assert ran.returncode == 0, ran.stderr
    assert "succeeded" in ran.stdout
    status = await asyncio.to_thread(operator, node, "send", "--timeout", "30", node.name, "status")
    assert status.returncode == 0 and "health=" in status.stdout, status.stderr
    reborn = await asyncio.to_thread(operator, node, "send", node.name, "rebirth")
    assert reborn.returncode == 0 and "succeeded" in reborn.stdout, reborn.stderr
    listed = await asyncio.to_thread(operator, node, "nodes", "--json", "--wait", "2")
    if node.broker.name == "rabbitmq":
        # RabbitMQ 3.10 replays retained messages to exact subscriptions only (docs/brokers.md).
        assert listed.returncode == exits.NO_ANSWER and "no nodes" in listed.stderr
    else:
        assert listed.returncode == exits.OK, listed.stderr
        assert json.loads(listed.stdout)[node.name]["state"]["state"] == "online"


@pytest.mark.parametrize("kind", NO_MQTT5)
async def test_mqtt5_refused_with_hint(
    kind: str, broker_for: BrokerFor, tmp_path: Path, spawn_agent: Callable[..., Any]
) -> None:
    """MQTT 5 on a 3.1.1-only broker: the agent and the CLI say so, with host:port and the fix."""
    broker = broker_for(kind)
    node = Node(tmp_path, broker, 5, spawn_agent)
    agent = node.start()
    deadline = time.monotonic() + 30
    while not (failures := _events(agent, "mqtt_connect_failed")):
        assert time.monotonic() < deadline, agent.log_path.read_text()[-2000:]
        await asyncio.sleep(0.1)
    first = failures[0]
    assert (first["host"], first["port"]) == (broker.host, broker.port)
    assert "mqtt.protocol = 3" in first["hint"]
    assert "timed out" not in first["error"].lower()
    cli = await asyncio.to_thread(operator, node, "send", "--timeout", "5", node.name, "status")
    assert cli.returncode == exits.LOCAL
    assert f"{broker.host}:{broker.port}" in cli.stderr and "--protocol 3" in cli.stderr


def _events(agent: AgentProcess, event: str) -> list[dict[str, Any]]:
    return [line for line in agent.log_lines() if line.get("event") == event]


@pytest.mark.parametrize(("kind", "protocol"), PAIRS, ids=PAIR_IDS)
async def test_retained_replay_to_exact_and_wildcard_filters(
    kind: str, protocol: int, broker_for: BrokerFor, tmp_path: Path
) -> None:
    """What the HA peer view's exact subscriptions are for: RabbitMQ skips wildcards on replay."""
    broker = broker_for(kind)
    topics = Topics("microk8s", f"replay{protocol}", "pi-01")
    peer = topics.peer("pi-02", "state")
    async with watch(
        _as_broker(broker), protocol=_version(protocol), identifier=f"pub-{kind}"
    ) as w:
        await w.publish(peer, b'{"state":"online"}', qos=1, retain=True)
    settings = MqttSettings(host=broker.host, port=broker.port, protocol=protocol)
    link = Link(settings, topics, state_dir=tmp_path, agent_version="test")
    by_wildcard: list[Inbound] = []
    by_exact: list[Inbound] = []
    link.subscribe(topics.peers("state"), 1, by_wildcard.append)
    task = asyncio.create_task(link.run())
    try:
        async with asyncio.timeout(20):
            while not link.connected:
                await asyncio.sleep(0.02)
            await link.follow(peer, 1, by_exact.append)
            while not by_exact:
                await asyncio.sleep(0.02)
        assert by_exact[0].retain and by_exact[0].payload == b'{"state":"online"}'
        # The exact replay also matches the wildcard's handler; a replay to the wildcard
        # subscription itself came earlier (with its SUBACK, before the birth's PUBACK).
        wildcard_replays = len([m for m in by_wildcard if m.topic == peer]) - len(by_exact)
        assert wildcard_replays == (0 if kind == "rabbitmq" else 1)
    finally:
        link.stop()
        await asyncio.wait_for(task, 15)
