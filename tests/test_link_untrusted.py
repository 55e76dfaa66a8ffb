"""The MQTT read path under hostile input, against a real Mosquitto (issue 11, findings 1, 2, 5, 6).

Each test fails on the code before the fix: a handler's exception ended the reader; a retained
U+FEFF User Property killed the connection at every reconnect; a 1 MB message was read whole and
delivered; the backoff counter never reset after a connection that worked.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.link import mqtt as link_mqtt
from agent.link import paho_props
from agent.link.mqtt import Inbound, Link
from agent.link.topics import Topics
from agent.settings import MqttSettings
from tests.conftest import Broker

pytestmark = pytest.mark.broker

TOPICS = Topics("microk8s", "lab", "pi-01")


@contextlib.asynccontextmanager
async def running_link(
    broker: Broker, tmp_path: Path, subscriptions: dict[str, Callable[[Inbound], None]]
) -> AsyncIterator[Link]:
    settings = MqttSettings(host=broker.host, port=broker.port, keepalive_s=5)
    link = Link(settings, TOPICS, state_dir=tmp_path / "state", agent_version="test")
    for topic_filter, handler in subscriptions.items():
        link.subscribe(topic_filter, 1, handler)
    connected = asyncio.Event()

    async def on_connect() -> None:
        connected.set()

    link.on_connect(on_connect)
    task = asyncio.create_task(link.run())
    try:
        await asyncio.wait_for(connected.wait(), 10)
        yield link
    finally:
        link.stop()
        await asyncio.wait_for(task, 10)


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> None:
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached in time"
        await asyncio.sleep(0.02)


def raw_client(broker: Broker) -> aiomqtt.Client:
    return aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5)


async def test_a_failing_handler_costs_its_message_not_the_link(
    broker: Broker, tmp_path: Path
) -> None:
    seen: list[bytes] = []

    def handler(inbound: Inbound) -> None:
        if inbound.payload == b"boom":
            raise RecursionError("maximum recursion depth exceeded")
        seen.append(inbound.payload)

    async with running_link(broker, tmp_path, {"lab/in": handler}) as link, raw_client(broker) as c:
        for payload in (b"boom", b"boom", b"after"):
            await c.publish("lab/in", payload, qos=1)
        await until(lambda: seen == [b"after"])
        assert link.handler_errors.total == 2
        assert link.connected and link.reconnects_total == 0


def feff_properties() -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = ("\ufeffkey", "value\ufeff")
    props.ResponseTopic = "microk8s/lab/replies/\ufeff"
    return props


async def test_u_feff_properties_on_every_subscribed_topic(broker: Broker, tmp_path: Path) -> None:
    # Retained first, so they arrive with the SUBACK; then live ones on every filter.
    topics = [TOPICS.cmd, TOPICS.peers("ha").replace("+", "pi-09"), "microk8s/lab/x/state"]
    got: dict[str, list[Inbound]] = {t: [] for t in topics}
    async with raw_client(broker) as c:
        for topic in topics:
            await c.publish(topic, b"retained", qos=1, retain=True, properties=feff_properties())
    subscriptions = {t: got[t].append for t in topics}
    async with running_link(broker, tmp_path, subscriptions) as link, raw_client(broker) as c:
        await until(lambda: all(len(v) == 1 for v in got.values()))
        for topic in topics:
            await c.publish(topic, b"live", qos=1, properties=feff_properties())
        await until(lambda: all(len(v) == 2 for v in got.values()))
        assert link.connected and link.reconnects_total == 0
    for messages in got.values():
        assert [m.payload for m in messages] == [b"retained", b"live"]
        assert messages[1].response_topic == "microk8s/lab/replies/\ufeff"


def test_an_unparseable_property_block_is_skipped_whole() -> None:
    # A NUL inside a User Property (MQTT-1.5.4-2): the message keeps its payload, not the block.
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = ("k", "v\x00")
    block = props.pack()  # type: ignore[no-untyped-call]
    before = paho_props.skipped_total()
    tolerant = paho_props.TolerantProperties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    parsed, used = tolerant.unpack(block + b"payload")
    assert used == len(block)
    assert not hasattr(parsed, "UserProperty")
    assert paho_props.skipped_total() == before + 1


async def test_maximum_packet_size_keeps_big_messages_off_the_wire(
    broker: Broker, tmp_path: Path
) -> None:
    seen: list[int] = []
    handler: Callable[[Inbound], None] = lambda inbound: seen.append(len(inbound.payload))  # noqa: E731
    async with running_link(broker, tmp_path, {"lab/in": handler}), raw_client(broker) as c:
        await c.publish("lab/in", b"x" * (4 * 1024 * 1024), qos=1)
        await c.publish("lab/in", b"small", qos=1)
        await until(lambda: 5 in seen)
    assert seen == [5]


def reconnected(link: Link, session: int) -> bool:
    return link.connected and link.session > session


async def test_backoff_restarts_after_a_connection_that_lasted(
    broker: Broker, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    attempts: list[int] = []

    def delay(attempt: int) -> float:
        attempts.append(attempt)
        return 0.05

    monkeypatch.setattr(link_mqtt, "backoff_delay", delay)
    monkeypatch.setattr(link_mqtt, "STABLE_CONNECTION_S", 0.3)
    async with running_link(broker, tmp_path, {}) as link:
        for round_ in range(3):
            await asyncio.sleep(0.5)  # the connection lasts: it worked
            session = link.session
            # Another client with our client id takes the session over: the broker drops us.
            async with aiomqtt.Client(broker.host, broker.port, identifier="edge-agent-lab-pi-01"):
                pass
            await until(functools.partial(reconnected, link, session))
            assert len(attempts) >= round_ + 1
    assert attempts and set(attempts) == {0}, attempts
