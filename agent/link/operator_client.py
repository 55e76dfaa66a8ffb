"""A short-lived MQTT client for the operator CLI (`edge-agent send`, `edge-agent nodes`).

No presence, no reconnect: it connects, exchanges a few messages and leaves. It speaks
`settings.protocol` (5, or 3 for MQTT 3.1.1 brokers such as RabbitMQ 3.10 and NATS 2.9); under
3.1.1 the request/response properties are not sent and statuses are followed on `R/cmd/{id}`
only. aiomqtt errors become TransportError here, as in agent.link.mqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import TransportError
from agent.link import credentials, paho_props
from agent.link.mqtt import (
    MAX_PACKET_BYTES,
    NO_DELAY,
    PUBLISH_TIMEOUT_S,
    Client,
    Inbound,
    protocol_refused,
    to_inbound,
)
from agent.settings import MqttSettings

PROTOCOL_HINT = (
    "the broker may not speak MQTT 5 (RabbitMQ 3.10 and NATS 2.9 do not): use --protocol 3"
    " here, and mqtt.protocol = 3 on the agents"
)


class OperatorClient:
    """Subscribe, publish (with Response Topic / Correlation Data) and read `Inbound`s."""

    def __init__(self, client: aiomqtt.Client, protocol: int) -> None:
        self._client = client
        self.protocol = protocol

    async def subscribe(self, topic_filter: str, qos: int = 1) -> None:
        try:
            await self._client.subscribe(topic_filter, qos=qos, timeout=PUBLISH_TIMEOUT_S)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe to {topic_filter} failed: {exc}") from exc

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        response_topic: str | None = None,
        correlation_data: bytes | None = None,
    ) -> None:
        properties = None
        if self.protocol == 5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            if response_topic is not None:
                properties.ResponseTopic = response_topic
            if correlation_data is not None:
                properties.CorrelationData = correlation_data
        try:
            await self._client.publish(
                topic,
                payload,
                qos=qos,
                retain=retain,
                properties=properties,
                timeout=PUBLISH_TIMEOUT_S,
            )
        except aiomqtt.MqttError as exc:
            raise TransportError(f"publish to {topic} failed: {exc}") from exc

    async def messages(self) -> AsyncIterator[Inbound]:
        try:
            async for message in self._client.messages:
                yield to_inbound(message)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"connection to the broker lost: {exc}") from exc


async def new_client(
    settings: MqttSettings, identifier: str, properties: Properties | None = None
) -> aiomqtt.Client:
    """An unconnected operator-side client speaking `settings.protocol` (5 or 3.1.1), with
    credentials and TLS read from their files now (so rotation just works).

    Raises:
        TransportError: a password or TLS file cannot be read.
    """
    password = await asyncio.to_thread(credentials.read_password, settings)
    tls_context = (
        await asyncio.to_thread(credentials.tls_context, settings) if settings.tls else None
    )
    v5 = settings.protocol == 5
    # Untrusted input (issue 11): properties paho cannot parse cost a message its properties,
    # and the broker sends nothing larger than the Maximum Packet Size.
    paho_props.install()
    if v5:
        properties = properties or Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
        if not hasattr(properties, "MaximumPacketSize"):  # a caller's own limit stands
            properties.MaximumPacketSize = MAX_PACKET_BYTES
    return Client(
        settings.host,
        settings.port,
        identifier=identifier,
        username=settings.username or None,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5 if v5 else aiomqtt.ProtocolVersion.V311,
        keepalive=settings.keepalive_s,
        timeout=10,
        tls_context=tls_context,
        socket_options=NO_DELAY,
        properties=properties if v5 else None,
    )


@contextlib.asynccontextmanager
async def operator_client(settings: MqttSettings, identifier: str) -> AsyncIterator[OperatorClient]:
    """Connect with `settings.protocol` (host, port, credentials and TLS from `settings`).

    Raises:
        TransportError: the broker cannot be reached or refuses the connection.
    """
    client = await new_client(settings, identifier)
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        refused = settings.protocol == 5 and protocol_refused(str(exc))
        hint = f" ({PROTOCOL_HINT})" if refused else ""
        raise TransportError(
            f"cannot connect to {settings.host}:{settings.port}: {exc}{hint}"
        ) from exc
    try:
        yield OperatorClient(client, settings.protocol)
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)
