"""A long-lived, read-only MQTT subscriber for operator views (`edge-agent dashboard`).

It connects, subscribes to the given filters, hands every message to a callback as an `Inbound`,
and reconnects forever with the agent's full-jitter backoff; each reconnect re-reads the retained
messages, so the caller's picture heals after an outage. It never publishes. The broker is asked
(MQTT 5 Maximum Packet Size) not to send anything larger than `max_packet_bytes`, so a neighbour's
oversized retained message is dropped at the broker instead of being read into memory here.
aiomqtt/paho errors never leave this module.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Callable, Sequence

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import TransportError
from agent.link import operator_client
from agent.link.mqtt import Inbound, to_inbound
from agent.link.presence import backoff_delay
from agent.logs import get_logger
from agent.settings import MqttSettings

log = get_logger(__name__)

DEFAULT_MAX_PACKET_BYTES = 128 * 1024


@dataclasses.dataclass(frozen=True, slots=True)
class LinkStatus:
    """What the watcher's connection is doing, for the page's "broker" indicator."""

    connected: bool
    error: str | None = None


MessageHandler = Callable[[Inbound], None]
StatusHandler = Callable[[LinkStatus], None]
# For a received message, the exact topics whose retained copies to fetch once (see `watch`).
Replay = Callable[[Inbound], Sequence[str]]


def _no_replay(_inbound: Inbound) -> Sequence[str]:
    return ()


def _connect_properties(max_packet_bytes: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.MaximumPacketSize = max_packet_bytes
    return props


async def _fetch_retained(client: aiomqtt.Client, topic: str) -> None:
    """SUBSCRIBE then UNSUBSCRIBE one exact topic: the broker sends its retained copy between."""
    await client.subscribe(topic, qos=1)
    _raise_if_cancelled()
    await client.unsubscribe(topic)
    _raise_if_cancelled()


def _raise_if_cancelled() -> None:
    """Re-raise a cancellation that Python 3.11 lost.

    aiomqtt waits for a SUBACK with asyncio.wait_for, which on 3.11 swallows a cancel that lands
    as the SUBACK arrives (CPython gh-86296, fixed in 3.12): the dashboard then never stopped.
    """
    task = asyncio.current_task()
    if task is not None and task.cancelling():
        raise asyncio.CancelledError


@contextlib.asynccontextmanager
async def _connected(client: aiomqtt.Client) -> AsyncIterator[aiomqtt.Client]:
    """`async with client`, except that a cancellation during the connect waits for it to end,
    and a failed disconnect never hides the exception that made us leave.

    aiomqtt cancelled between the socket opening and the CONNACK leaves its network task running
    on a half-open session (it is then garbage-collected with the loop closed); the connect is
    bounded by the client's timeout, so waiting for it and leaving cleanly costs little.
    """
    entering = asyncio.ensure_future(client.__aenter__())
    try:
        await asyncio.shield(entering)
    except asyncio.CancelledError:
        with contextlib.suppress(aiomqtt.MqttError):
            await entering
            await client.__aexit__(None, None, None)
        raise
    try:
        yield client
    finally:
        # A DISCONNECT that fails changes nothing for us; letting its MqttError out would replace
        # the exception in flight, and a cancellation would then be taken for a lost link and
        # retried forever (seen in tests: the broker answers a late DISCONNECT with code 128).
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)


async def watch(
    settings: MqttSettings,
    identifier: str,
    filters: Sequence[str],
    on_message: MessageHandler,
    on_status: StatusHandler,
    *,
    replay: Replay = _no_replay,
    max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
) -> None:
    """Subscribe to `filters` and deliver messages until cancelled; never returns otherwise.

    Some brokers (RabbitMQ 3.10, docs/brokers.md) replay retained messages to exact
    subscriptions only, never to wildcards: for each topic `replay` names after a message (the
    other leaves of a node just heard from), the watcher subscribes to it once per connection
    and unsubscribes right after the SUBACK, which fetches the retained copy without a second,
    overlapping subscription that would deliver every later message twice. Credential or TLS
    files that cannot be read are reported through `on_status` and retried like a refused
    connection, so the page says why it shows nothing.
    """
    attempt = 0
    while True:
        try:
            # MQTT 3.1.1 has no packet size to ask for (the view still checks sizes itself).
            client = await operator_client.new_client(
                settings, identifier, _connect_properties(max_packet_bytes)
            )
            async with _connected(client):
                for topic_filter in filters:
                    await client.subscribe(topic_filter, qos=1)
                    _raise_if_cancelled()
                attempt = 0
                on_status(LinkStatus(connected=True))
                log.info("watcher_connected", host=settings.host, port=settings.port)
                replayed: set[str] = set()
                async for message in client.messages:
                    inbound = to_inbound(message)
                    on_message(inbound)
                    fresh = [t for t in replay(inbound) if t not in replayed]
                    replayed.update(fresh)
                    for topic in fresh:
                        await _fetch_retained(client, topic)
        except (aiomqtt.MqttError, TransportError, OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            on_status(LinkStatus(connected=False, error=reason))
            log.warning("watcher_disconnected", error=reason)
        else:  # pragma: no cover - the message stream only ends by raising
            on_status(LinkStatus(connected=False, error="stream ended"))
        delay = backoff_delay(attempt)
        attempt += 1
        await asyncio.sleep(delay)
