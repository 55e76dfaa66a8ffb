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
import dataclasses
from collections.abc import Callable, Sequence

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


def _connect_properties(max_packet_bytes: int) -> Properties:
    props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    props.MaximumPacketSize = max_packet_bytes
    return props


async def watch(
    settings: MqttSettings,
    identifier: str,
    filters: Sequence[str],
    on_message: MessageHandler,
    on_status: StatusHandler,
    *,
    max_packet_bytes: int = DEFAULT_MAX_PACKET_BYTES,
) -> None:
    """Subscribe to `filters` and deliver messages until cancelled; never returns otherwise.

    Credential or TLS files that cannot be read are reported through `on_status` and retried
    like a refused connection, so the page says why it shows nothing.
    """
    attempt = 0
    while True:
        try:
            # MQTT 3.1.1 has no packet size to ask for (the view still checks sizes itself).
            client = await operator_client.new_client(
                settings, identifier, _connect_properties(max_packet_bytes)
            )
            async with client:
                for topic_filter in filters:
                    await client.subscribe(topic_filter, qos=1)
                attempt = 0
                on_status(LinkStatus(connected=True))
                log.info("watcher_connected", host=settings.host, port=settings.port)
                async for message in client.messages:
                    on_message(to_inbound(message))
        except (aiomqtt.MqttError, TransportError, OSError, ValueError) as exc:
            reason = f"{type(exc).__name__}: {exc}"
            on_status(LinkStatus(connected=False, error=reason))
            log.warning("watcher_disconnected", error=reason)
        else:  # pragma: no cover - the message stream only ends by raising
            on_status(LinkStatus(connected=False, error="stream ended"))
        delay = backoff_delay(attempt)
        attempt += 1
        await asyncio.sleep(delay)
