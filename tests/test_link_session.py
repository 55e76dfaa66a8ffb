"""The link's session rules against a real mosquitto and two scripted brokers.

Birth means ready (SUBSCRIBE acknowledged before the birth), poison messages dropped after
POISON_ATTEMPTS connections, refusals counted, a close during CONNECT reported at once, rebirth
and run-time exact subscriptions. Other brokers: tests/interop.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from agent.link import mqtt
from agent.link.mqtt import POISON_ATTEMPTS, Inbound, Link
from agent.link.topics import Topics
from agent.settings import MqttSettings
from tests.conftest import Broker, watch

pytestmark = pytest.mark.broker

TOPICS = Topics("microk8s", "lab", "n1")


def make_link(tmp_path: Path, host: str, port: int, protocol: int = 5) -> Link:
    settings = MqttSettings(host=host, port=port, keepalive_s=5, protocol=protocol)
    return Link(settings, TOPICS, state_dir=tmp_path / "state", agent_version="test")


@contextlib.asynccontextmanager
async def running(link: Link) -> AsyncIterator[Link]:
    task = asyncio.create_task(link.run())
    try:
        yield link
    finally:
        link.stop()
        await asyncio.wait_for(task, 15)


async def until(predicate: Callable[[], bool], timeout_s: float = 15) -> None:
    async with asyncio.timeout(timeout_s):
        while not predicate():
            await asyncio.sleep(0.02)


async def test_subscribed_before_birth(tmp_path: Path, make_broker: Callable[..., Broker]) -> None:
    """The broker sees SUBSCRIBE before the birth PUBLISH; a command sent at `online` arrives."""
    broker = make_broker("log_type all\n")
    link = make_link(tmp_path, broker.host, broker.port)
    heard: list[Inbound] = []
    link.subscribe(TOPICS.cmd, 1, heard.append)
    async with running(link):
        async with watch(broker, TOPICS.state) as w:
            await w.wait_for(lambda t, p: p.get("state") == "online")
            await w.publish(TOPICS.cmd, b"hello", qos=1)
            await until(lambda: len(heard) == 1)
        broker.stop()
        broker.start()
        await until(lambda: link.session == 2 and link.connected)
    log = broker.log_path.read_text()
    client = f"edge-agent-{TOPICS.cluster}-{TOPICS.node}"
    events = re.findall(
        rf"Received (SUBSCRIBE|PUBLISH) from {client}(?: \(d0, q1, r1, m\d+, '([^']+)')?", log
    )
    # Retained publishes on R/state: two births, then the clean offline at stop.
    births = [i for i, (_, topic) in enumerate(events) if topic == TOPICS.state]
    subscribes = [i for i, (kind, _) in enumerate(events) if kind == "SUBSCRIBE"]
    assert len(births) == 3 and len(subscribes) == 2
    assert subscribes[0] < births[0] < subscribes[1] < births[1]
    assert [m.payload for m in heard] == [b"hello"]


async def test_idle_link_keeps_alive(tmp_path: Path, make_broker: Callable[..., Broker]) -> None:
    """An idle link pings within its keepalive (paho's bookkeeping now runs every keepalive/4,
    not every second) and the broker, which drops a client silent for 1.5 x keepalive, keeps it.
    """
    broker = make_broker("log_type all\n")
    link = make_link(tmp_path, broker.host, broker.port)  # keepalive 5 s
    client = f"edge-agent-{TOPICS.cluster}-{TOPICS.node}"
    async with running(link):
        await until(lambda: link.connected)
        await until(lambda: f"Received PINGREQ from {client}" in broker.log_path.read_text())
        await asyncio.sleep(1.5 * 5 + 0.5 - 5)  # past the broker's limit since the birth
        assert link.connected and link.session == 1
    assert "disconnected, keepalive" not in broker.log_path.read_text().lower()


async def test_poison_message_dropped_after_bounded_retries(
    tmp_path: Path, make_broker: Callable[..., Broker]
) -> None:
    """A message that costs the connection every time is dropped; the one behind it goes out."""
    # mosquitto disconnects an MQTT 3.1.1 client that sends a packet over max_packet_size.
    broker = make_broker("max_packet_size 2000\n")
    link = make_link(tmp_path, broker.host, broker.port, protocol=3)
    status = f"{TOPICS.root}/cmd/c-1"
    async with watch(broker, f"{TOPICS.root}/cmd/+") as w, running(link):
        await until(lambda: link.connected)
        await link.publish(status, b"x" * 4000, queue_if_offline=True)
        await link.publish(status, b"small", queue_if_offline=True)
        await w.wait_for(lambda t, p: p == b"small", 30)
        assert link.dropped_total == 1
        assert link.outbox_size == 0
        assert link.session == POISON_ATTEMPTS + 1
    assert [p for _, p, _ in w.messages] == [b"small"]


async def test_refused_publish_is_counted(
    tmp_path: Path, make_broker: Callable[..., Broker]
) -> None:
    """MQTT 5: a PUBACK with a failure reason code is a dropped message, not a success."""
    acl = tmp_path / "acl"
    acl.write_text("topic readwrite microk8s/#\n")
    broker = make_broker(f"acl_file {acl}\n")
    link = make_link(tmp_path, broker.host, broker.port)
    async with running(link):
        await until(lambda: link.connected)
        await link.publish("elsewhere/x", b"1", queue_if_offline=True)
        await until(lambda: link.dropped_total == 1)
        assert await link.publish(f"{TOPICS.root}/cmd/c-2", b"2", queue_if_offline=True)
        assert link.connected and link.dropped_total == 1


async def test_rebirth_and_follow(tmp_path: Path, broker: Broker) -> None:
    """rebirth re-sends birth and retained health in the same session; follow() subscribes now."""
    link = make_link(tmp_path, broker.host, broker.port)
    peer_state = TOPICS.peer("n2", "state")
    heard: list[Inbound] = []
    async with watch(broker, TOPICS.state, TOPICS.health) as w, running(link):
        await w.publish(peer_state, b'{"state":"online"}', qos=1, retain=True)
        await until(lambda: link.connected)
        await link.publish(TOPICS.health, b'{"seq":0}', retain=True)
        await link.follow(peer_state, 1, heard.append)
        await link.follow(peer_state, 1, heard.append)  # idempotent
        await until(lambda: len(heard) == 1)
        assert heard[0].retain and heard[0].payload == b'{"state":"online"}'
        after = len(w.messages)
        await link.rebirth()
        await w.wait_for(lambda t, p: t == TOPICS.health, after=after)
        _, birth = await w.wait_for(lambda t, p: t == TOPICS.state, after=after)
        assert birth["state"] == "online" and birth["session"] == link.session == 1
    assert w.payloads("/health") == [{"seq": 0}, {"seq": 0}]


async def serve_once(reply: bytes) -> tuple[asyncio.Server, int]:
    """A TCP server that reads a CONNECT, writes `reply` (maybe nothing) and closes."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        writer.write(reply)
        with contextlib.suppress(OSError):
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"", "the broker closed the connection during CONNECT"),
        # An MQTT 5 CONNACK with reason 0x84, as NATS 2.9 answers an MQTT 5 CONNECT.
        (bytes([0x20, 0x03, 0x00, 0x84, 0x00]), "Unsupported protocol version"),
    ],
)
async def test_connect_refusal_reported_at_once(tmp_path: Path, reply: bytes, error: str) -> None:
    """The refusal itself is the link's error, not aiomqtt's CONNACK timeout."""
    server, port = await serve_once(reply)
    link = make_link(tmp_path, "127.0.0.1", port)
    async with server, running(link):
        await until(lambda: link.last_error is not None, 30)
    assert link.last_error is not None and error in link.last_error
    assert mqtt.protocol_refused(link.last_error)
    assert not link.ever_connected


def test_protocol_refusals_recognised() -> None:
    assert mqtt.protocol_refused("[code:132] Unsupported protocol version")
    assert mqtt.protocol_refused("Connection Refused: unacceptable protocol version.")
    assert not mqtt.protocol_refused("Operation timed out")
    assert not mqtt.protocol_refused("[Errno 111] Connection refused")


def test_subscription_failure_codes() -> None:
    assert mqtt._is_failure(0x80) and not mqtt._is_failure(1)
