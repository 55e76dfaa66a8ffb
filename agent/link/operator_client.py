"""A short-lived MQTT 5 client for the operator CLI (`edge-agent send`, `edge-agent nodes`).

No presence, no reconnect: it connects, exchanges a few messages and leaves. Request/response
properties are exposed; aiomqtt errors become TransportError here, as in agent.link.mqtt.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiomqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from agent.errors import TransportError
from agent.link import credentials
from agent.link.mqtt import NO_DELAY, PUBLISH_TIMEOUT_S, Inbound, to_inbound
from agent.settings import MqttSettings


class OperatorClient:
    """Subscribe, publish (with Response Topic / Correlation Data) and read `Inbound`s."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self._client = client

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


@contextlib.asynccontextmanager
async def operator_client(settings: MqttSettings, identifier: str) -> AsyncIterator[OperatorClient]:
    """Connect with MQTT 5 (host, port, credentials and TLS from `settings`).

    Raises:
        TransportError: the broker cannot be reached or refuses the connection.
    """
    password = await asyncio.to_thread(credentials.read_password, settings)
    tls_context = (
        await asyncio.to_thread(credentials.tls_context, settings) if settings.tls else None
    )
    client = aiomqtt.Client(
        settings.host,
        settings.port,
        identifier=identifier,
        username=settings.username or None,
        password=password,
        protocol=aiomqtt.ProtocolVersion.V5,
        keepalive=settings.keepalive_s,
        timeout=10,
        tls_context=tls_context,
        socket_options=NO_DELAY,
    )
    try:
        await client.__aenter__()
    except aiomqtt.MqttError as exc:
        raise TransportError(f"cannot connect to {settings.host}:{settings.port}: {exc}") from exc
    try:
        yield OperatorClient(client)
    finally:
        with contextlib.suppress(aiomqtt.MqttError):
            await client.__aexit__(None, None, None)
