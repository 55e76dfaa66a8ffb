"""The MQTT link: the only module that imports aiomqtt/paho.

It owns presence (PROTOCOL.md "Presence"): a retained `offline` last will carrying the session
number, a retained `online` birth after every (re)connect, and a clean `offline` on shutdown. It
reconnects forever with full-jitter exponential backoff, re-subscribes after each connect, and
keeps an in-memory outbox so command statuses published while the broker is away are delivered
after the reconnect. aiomqtt/paho exceptions never leave this module.

Birth means ready (Sparkplug B's rule): after each connect the link first subscribes to every
topic it consumes and waits for the SUBACKs, then publishes the birth, then the outbox and the
connect hooks (health, HA). A controller that sends a command the moment it sees `online` is
therefore always heard. A message that the broker refuses, or that costs the connection (NATS
closes it for a topic it cannot map), is retried on at most POISON_ATTEMPTS connections, then
dropped and counted, so it never blocks the messages behind it.

Every byte read is untrusted (issue 11): CONNECT announces a Maximum Packet Size so the broker
never sends a flood of 16 MB messages our way, properties paho cannot parse cost a message its
properties (agent.link.paho_props), and no handler can end the reader: a handler's exception is
counted, logged as a count and the message dropped.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import random
import socket
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import aiomqtt
from paho.mqtt.client import MQTT_ERR_SUCCESS
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from agent import durable
from agent.errors import StateError, TransportError
from agent.link import credentials, paho_props, tls_alerts
from agent.link.presence import backoff_delay, presence_payload
from agent.link.topics import Topics
from agent.logs import DropLog, get_logger
from agent.settings import MqttSettings

log = get_logger(__name__)
_T = TypeVar("_T")

OUTBOX_LIMIT = 1000
MISC_TICKS_PER_KEEPALIVE = 4
"""paho's keepalive bookkeeping runs this many times per keepalive (aiomqtt: every second)."""
PROBE_INTERVAL_S = 1.0
PROBE_TIMEOUT_S = 0.5
RECONNECT_JITTER_S = 0.5
# A publish that takes longer than this is treated as lost (the link is probably half-open).
PUBLISH_TIMEOUT_S = 10.0
# paho leaves Nagle's algorithm on: a status published right after the PUBACK of the command then
# waits for the broker's delayed ACK (40 ms on Linux) on every request/response hop.
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)
# A queued message is tried on at most this many connections before it is dropped as poison.
POISON_ATTEMPTS = 3
PROTOCOL_HINT = (
    "the broker may not speak MQTT 5 (RabbitMQ 3.10 and NATS 2.9 do not): set mqtt.protocol = 3"
)
UNSUPPORTED_PROTOCOL = ("unsupported protocol version", "unacceptable protocol version")
MAX_PACKET_BYTES = 128 * 1024
"""MQTT 5 Maximum Packet Size sent in CONNECT: the broker drops larger messages instead of
sending them. Commands are capped at 64 KiB (wire.MAX_PAYLOAD_BYTES) and peers' documents are a
few KiB; without it paho reads a 16 MB message whole before any check can run."""
STABLE_CONNECTION_S = 10.0
"""A connection that lasted this long worked: the next reconnect starts the backoff afresh."""


@dataclasses.dataclass(frozen=True, slots=True)
class Inbound:
    """A received message, free of aiomqtt/paho types."""

    topic: str
    payload: bytes
    qos: int
    retain: bool
    response_topic: str | None = None
    correlation_data: bytes | None = None


Handler = Callable[[Inbound], None]
ConnectHook = Callable[[], Awaitable[None]]


@dataclasses.dataclass(slots=True)
class _Outgoing:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    correlation_data: bytes | None
    attempts: int = 0
    """Connections on which this message was in flight when the publish failed."""


class Client(aiomqtt.Client):
    """aiomqtt's client, told what it ignores: a close during CONNECT or later, a refused PUBACK.

    aiomqtt 2.5 waits its whole connect timeout when the broker closes the socket before CONNACK
    (RabbitMQ 3.10 does that to an MQTT 5 CONNECT within milliseconds), lets a publish in flight
    when the connection drops wait its whole timeout, and treats a PUBACK with a failure reason
    code (MQTT 5) as success. The hooks override aiomqtt callbacks; the version range is pinned
    in pyproject.toml and tests/test_link_session.py covers each.
    """

    def __init__(
        self, *args: Any, on_refused: Callable[[str, str], None] | None = None, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._on_refused = on_refused
        self.lost = asyncio.Event()
        """Set when the connection ends: aiomqtt leaves a pending publish waiting its timeout."""

    def _on_disconnect(self, client: Any, userdata: Any, *rest: Any) -> None:
        if not self._connected.done():
            self._connected.set_exception(
                aiomqtt.MqttError("the broker closed the connection during CONNECT")
            )
            return
        self.lost.set()
        super()._on_disconnect(client, userdata, *rest)

    async def _misc_loop(self) -> None:
        """paho's `loop_misc` (PINGREQ when due, the connection closed when PINGRESP is overdue)
        every keepalive / MISC_TICKS_PER_KEEPALIVE instead of aiomqtt's every second.

        An idle agent's event loop otherwise wakes once a second for this alone (130 wake-ups
        in a 130 s footprint window instead of 17 at the default 30 s keepalive). A PINGREQ
        leaves at most a quarter keepalive late, well inside the broker's 1.5 x keepalive,
        and a dead connection is noticed at most that much later.
        """
        tick = max(1.0, self._client.keepalive / MISC_TICKS_PER_KEEPALIVE)
        while self._client.loop_misc() == MQTT_ERR_SUCCESS:  # noqa: ASYNC110 (as aiomqtt)
            await asyncio.sleep(tick)

    def _on_publish(
        self, client: Any, userdata: Any, mid: int, reason_code: Any, *rest: Any
    ) -> None:
        if self._on_refused is not None and getattr(reason_code, "is_failure", False):
            pending = getattr(client, "_out_messages", {}).get(mid)
            self._on_refused(str(getattr(pending, "topic", "?")), str(reason_code))
        super()._on_publish(client, userdata, mid, reason_code, *rest)


class Link:
    """One MQTT connection at a time, re-established forever until `stop()`."""

    def __init__(
        self,
        settings: MqttSettings,
        topics: Topics,
        *,
        state_dir: Path,
        agent_version: str,
    ) -> None:
        self._settings = settings
        self._topics = topics
        self._state_dir = state_dir
        self._version = agent_version
        self._client: aiomqtt.Client | None = None
        self._subscriptions: list[tuple[str, int, Handler]] = []
        self._no_local: set[str] = set()
        self._connect_hooks: list[ConnectHook] = []
        self._outbox: collections.deque[_Outgoing] = collections.deque(maxlen=OUTBOX_LIMIT)
        self._stop = asyncio.Event()
        self._stop_reason = "shutdown"
        self._last_session = self._load_session()
        self.session = 0
        self.connected = False
        self.changed = asyncio.Event()
        """Set whenever `connected` or `session` changes; its one reader (the systemd STATUS=
        line) clears it."""
        self.ever_connected = False
        self.published_total = 0
        self.publish_failures_total = 0
        self.dropped_total = 0
        self.reconnects_total = 0
        self.last_error: str | None = None
        # The last retained payload per topic (health, ha), re-sent by `rebirth()`.
        self._retained: dict[str, bytes] = {}
        self._connected_at: float | None = None
        self.handler_errors = DropLog("mqtt_handler_failed")
        self._mqtt_logger, self._tls_alerts = tls_alerts.logger_for(
            f"{topics.cluster}.{topics.node}"
        )

    # -- registration -------------------------------------------------------------------

    def subscribe(
        self, topic_filter: str, qos: int, handler: Handler, *, no_local: bool = False
    ) -> None:
        """Register a subscription; it is (re)issued, before the birth, on every connect.

        `no_local` (MQTT 5 only) asks the broker not to send back our own messages, for filters
        that match them but whose handler only wants the peers'; with 3.1.1 they still arrive.
        """
        self._subscriptions.append((topic_filter, qos, handler))
        if no_local:
            self._no_local.add(topic_filter)

    async def follow(self, topic_filter: str, qos: int, handler: Handler) -> None:
        """Register a subscription at run time and, when connected, issue it now.

        Idempotent per filter. A failure now is not raised: the next connect issues it again.
        """
        if any(known == topic_filter for known, _, _ in self._subscriptions):
            return
        self._subscriptions.append((topic_filter, qos, handler))
        client = self._client
        # Also while the connect's own subscriptions are under way (they may have started
        # without this one); a filter subscribed twice is harmless.
        if client is not None:
            try:
                await self._subscribe(client, topic_filter, qos)
            except TransportError as exc:
                log.warning("mqtt_subscribe_failed", topic=topic_filter, error=str(exc))

    def on_connect(self, hook: ConnectHook) -> None:
        """Run `hook` after the birth message on every connect (e.g. publish health now)."""
        self._connect_hooks.append(hook)

    async def rebirth(self) -> None:
        """Re-publish the birth and the last retained health and HA under the same session.

        For the `rebirth` command: a consumer that saw a `seq` gap or joined late gets the
        retained view now instead of after an interval.

        Raises:
            TransportError: not connected, or a publish failed.
        """
        client = self._client
        if client is None or not self.connected:
            raise TransportError("not connected to the broker")
        await self._send(client, self._birth())
        for topic, payload in list(self._retained.items()):
            await self._send(client, _Outgoing(topic, payload, 1, True, None))
        log.info("mqtt_rebirth", session=self.session, retained=len(self._retained) + 1)

    # -- publishing ---------------------------------------------------------------------

    async def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        correlation_data: bytes | None = None,
        queue_if_offline: bool = False,
    ) -> bool:
        """Publish now; returns False when offline and the message was queued for later.

        Raises:
            TransportError: offline (and not queued) or the publish failed.
        """
        message = _Outgoing(topic, payload, qos, retain, correlation_data)
        client = self._client
        if client is None or not self.connected:
            if queue_if_offline:
                self._outbox.append(message)
                return False
            raise TransportError("not connected to the broker")
        try:
            await self._send(client, message)
        except TransportError as exc:
            if queue_if_offline:
                message.attempts += 1
                if not self._poisoned(message, str(exc)):
                    self._outbox.append(message)
                return False
            raise
        return True

    async def _send(self, client: aiomqtt.Client, message: _Outgoing) -> None:
        properties = None
        if message.correlation_data is not None and self._settings.protocol == 5:
            properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
            properties.CorrelationData = message.correlation_data
        publish = client.publish(
            message.topic,
            message.payload,
            qos=message.qos,
            retain=message.retain,
            properties=properties,
            timeout=PUBLISH_TIMEOUT_S,
        )
        try:
            await _unless_lost(client, publish)
        except aiomqtt.MqttError as exc:
            self.publish_failures_total += 1
            raise TransportError(f"publish to {message.topic} failed: {exc}") from exc
        self.published_total += 1
        if message.retain and message.topic != self._topics.state:
            self._retained[message.topic] = message.payload

    async def _flush_outbox(self, client: aiomqtt.Client) -> None:
        while self._outbox:
            message = self._outbox[0]
            try:
                await self._send(client, message)
            except TransportError as exc:
                message.attempts += 1
                if (
                    self._poisoned(message, str(exc))
                    and self._outbox
                    and self._outbox[0] is message
                ):
                    self._outbox.popleft()
                raise
            if self._outbox and self._outbox[0] is message:
                self._outbox.popleft()

    def _poisoned(self, message: _Outgoing, error: str) -> bool:
        """True (logged and counted) once `message` failed on POISON_ATTEMPTS connections."""
        if message.attempts < POISON_ATTEMPTS:
            return False
        self._drop(message.topic, f"failed on {message.attempts} connections: {error}")
        return True

    def _drop(self, topic: str, reason: str) -> None:
        self.dropped_total += 1
        log.error("mqtt_message_dropped", topic=topic, reason=reason, dropped=self.dropped_total)

    def _refused(self, topic: str, reason: str) -> None:
        """The broker answered a publish with a failure reason code: the message is gone."""
        self._drop(topic, f"refused by the broker: {reason}")

    @property
    def outbox_size(self) -> int:
        return len(self._outbox)

    # -- lifecycle ----------------------------------------------------------------------

    def stop(self, reason: str = "shutdown") -> None:
        """Ask `run()` to publish a clean offline (with `reason`), disconnect and return."""
        self._stop_reason = reason
        self._stop.set()

    async def run(self) -> None:
        """Connect, serve, reconnect with backoff; returns only after `stop()`."""
        attempt = 0
        while not self._stop.is_set():
            session = self._last_session + 1
            try:
                await self._serve(session)
                attempt = 0
            except aiomqtt.MqttError as exc:
                self._note_failure(self._tls_alerts.explain(str(exc)))
            except TransportError as exc:
                self._note_failure(str(exc))
            finally:
                self._client = None
                self.connected = False
                self.changed.set()
            if self._stop.is_set():
                break
            if self._lasted(time.monotonic()):
                attempt = 0
            delay = backoff_delay(attempt)
            attempt += 1
            log.info(
                "mqtt_reconnect_scheduled",
                host=self._settings.host,
                port=self._settings.port,
                delay_s=round(delay, 2),
                attempt=attempt,
            )
            await self._backoff(delay)

    async def _backoff(self, delay: float) -> None:
        """Sleep `delay`, but end early (with a little jitter) when an unreachable broker returns.

        Full-jitter backoff alone can leave a node offline for up to a minute after the broker
        is back. A TCP probe every second is cheap (refused at once while the broker is down),
        and the extra 0-0.5 s of jitter still spreads a fleet's reconnects.
        """
        deadline = asyncio.get_running_loop().time() + delay
        if await self._broker_reachable():
            # Reachable but the MQTT connection failed (auth, TLS, ...): plain backoff.
            await self._wait_stop(delay)
            return
        while not self._stop.is_set():
            remaining = deadline - asyncio.get_running_loop().time()
            if remaining <= 0:
                return
            await self._wait_stop(min(PROBE_INTERVAL_S, remaining))
            if await self._broker_reachable():
                log.info("mqtt_broker_back", host=self._settings.host, port=self._settings.port)
                await self._wait_stop(random.uniform(0, RECONNECT_JITTER_S))
                return

    async def _wait_stop(self, timeout_s: float) -> None:
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # races with the timeout, and this loop would then outlive the agent (issue 11).
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self._stop.wait()

    async def _broker_reachable(self) -> bool:
        try:
            async with asyncio.timeout(PROBE_TIMEOUT_S):
                _, writer = await asyncio.open_connection(self._settings.host, self._settings.port)
        except (OSError, TimeoutError):
            return False
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True

    def _lasted(self, now: float) -> bool:
        """True once after a connection that stayed up STABLE_CONNECTION_S (it worked)."""
        connected_at, self._connected_at = self._connected_at, None
        return connected_at is not None and now - connected_at >= STABLE_CONNECTION_S

    def _note_failure(self, error: str) -> None:
        where = {"host": self._settings.host, "port": self._settings.port}
        if self._client is not None:
            log.warning("mqtt_disconnected", error=error, session=self.session, **where)
        elif self._settings.protocol == 5 and protocol_refused(error):
            log.error("mqtt_connect_failed", error=error, hint=PROTOCOL_HINT, **where)
        else:
            log.warning("mqtt_connect_failed", error=error, **where)
        self.last_error = error

    async def _serve(self, session: int) -> None:
        client = await self._make_client(session)
        async with client:
            self._mark_connected(client, session)
            await self._after_connect(client)
            reader = asyncio.create_task(self._read(client), name="mqtt-reader")
            stopper = asyncio.create_task(self._stop.wait(), name="mqtt-stop")
            try:
                done, _ = await asyncio.wait({reader, stopper}, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                # Cancelled without stop(): another task crashed. aiomqtt will disconnect
                # cleanly (so no will), hence say offline ourselves, within a bound.
                reader.cancel()
                stopper.cancel()
                await self._say_goodbye(client, "agent failure", timeout_s=1.0)
                raise
            reader.cancel()
            stopper.cancel()
            if stopper in done:
                await self._say_goodbye(client, self._stop_reason)
            else:
                # The reader ended: the connection is gone; re-raise what ended it.
                await asyncio.gather(reader, return_exceptions=False)

    def _mark_connected(self, client: aiomqtt.Client, session: int) -> None:
        """CONNACK received: the session is this one (`connected` waits for the birth)."""
        self._client = client
        self.session = session
        self._last_session = session
        if self.ever_connected:
            self.reconnects_total += 1
        self.ever_connected = True
        self._connected_at = time.monotonic()
        self.last_error = None
        # Retained copies of an earlier session are not re-sent by a rebirth of this one.
        self._retained.clear()
        self._persist_session(session)
        log.info(
            "mqtt_connected", host=self._settings.host, port=self._settings.port, session=session
        )

    def _birth(self) -> _Outgoing:
        birth = presence_payload("online", self.session, self._version)
        return _Outgoing(self._topics.state, birth, 1, True, None)

    async def _after_connect(self, client: aiomqtt.Client) -> None:
        """Subscriptions (SUBACKs awaited), birth, outbox, hooks: in that order, see above."""
        for topic_filter, qos, _ in list(self._subscriptions):
            await self._subscribe(client, topic_filter, qos)
        await self._send(client, self._birth())
        self.connected = True
        self.changed.set()
        await self._flush_outbox(client)
        for hook in self._connect_hooks:
            await hook()

    async def _subscribe(self, client: aiomqtt.Client, topic_filter: str, qos: int) -> None:
        """SUBSCRIBE and wait for the SUBACK; a refused filter is logged, not fatal."""
        try:
            if self._settings.protocol == 5:
                no_local = topic_filter in self._no_local
                options = SubscribeOptions(qos=qos, noLocal=no_local, retainAsPublished=True)
                subscribe = client.subscribe(
                    topic_filter, options=options, timeout=PUBLISH_TIMEOUT_S
                )
            else:
                subscribe = client.subscribe(topic_filter, qos=qos, timeout=PUBLISH_TIMEOUT_S)
            granted = await _unless_lost(client, subscribe)
        except aiomqtt.MqttError as exc:
            raise TransportError(f"subscribe to {topic_filter} failed: {exc}") from exc
        refused = [str(code) for code in granted or () if _is_failure(code)]
        if refused:
            log.error(
                "mqtt_subscription_refused",
                topic=topic_filter,
                reason=", ".join(refused),
                host=self._settings.host,
                port=self._settings.port,
            )

    async def _read(self, client: aiomqtt.Client) -> None:
        async for message in client.messages:
            inbound = to_inbound(message)
            # Overlapping filters (a wildcard and an exact topic) call each handler once.
            called: list[Handler] = []
            for topic_filter, _, handler in self._subscriptions:
                if handler not in called and message.topic.matches(topic_filter):
                    called.append(handler)
                    self._deliver(handler, inbound)
        raise TransportError("message stream ended")  # pragma: no cover - aiomqtt raises first

    def _deliver(self, handler: Handler, inbound: Inbound) -> None:
        """Run one handler; its failure costs this message, never the reader (the link)."""
        try:
            handler(inbound)
        except Exception as exc:
            self.handler_errors.drop(
                time.monotonic(),
                topic=inbound.topic[:200],
                error=f"{type(exc).__name__}: {exc}"[:200],
            )

    async def _say_goodbye(
        self, client: aiomqtt.Client, reason: str, timeout_s: float = PUBLISH_TIMEOUT_S
    ) -> None:
        payload = presence_payload("offline", self.session, self._version, reason)
        message = _Outgoing(self._topics.state, payload, 1, True, None)
        try:
            await asyncio.wait_for(self._send(client, message), timeout_s)
            log.info("mqtt_offline_published", session=self.session, reason=reason)
        except (TransportError, TimeoutError) as exc:
            log.warning("mqtt_offline_not_published", error=str(exc) or type(exc).__name__)

    # -- connection parameters ----------------------------------------------------------

    def _load_session(self) -> int:
        try:
            return durable.read_session(self._state_dir)
        except StateError as exc:
            # Fall back to wall-clock seconds: still larger than any small persisted counter.
            log.error("session_unreadable", error=str(exc))
            return int(time.time())

    def _persist_session(self, session: int) -> None:
        try:
            durable.write_session(self._state_dir, session)
        except StateError as exc:
            log.error("session_not_persisted", error=str(exc), session=session)

    async def _make_client(self, session: int) -> aiomqtt.Client:
        s = self._settings
        will = aiomqtt.Will(
            self._topics.state,
            presence_payload("offline", session, self._version, "connection lost"),
            qos=1,
            retain=True,
        )
        protocol = aiomqtt.ProtocolVersion.V5 if s.protocol == 5 else aiomqtt.ProtocolVersion.V311
        paho_props.install()
        tls_context = await asyncio.to_thread(credentials.tls_context, s) if s.tls else None
        return Client(
            s.host,
            s.port,
            on_refused=self._refused,
            identifier=f"edge-agent-{self._topics.cluster}-{self._topics.node}",
            username=s.username or None,
            password=await asyncio.to_thread(credentials.read_password, s),
            protocol=protocol,
            will=will,
            keepalive=s.keepalive_s,
            timeout=10,
            tls_context=tls_context,
            max_queued_incoming_messages=1000,
            clean_session=True if s.protocol != 5 else None,
            socket_options=NO_DELAY,
            properties=connect_properties() if s.protocol == 5 else None,
            logger=self._mqtt_logger,
        )


async def _unless_lost(client: aiomqtt.Client, operation: Awaitable[_T]) -> _T:
    """Await `operation`, but fail as soon as the connection is lost.

    Raises:
        aiomqtt.MqttError: from the operation, or for the lost connection.
    """
    if not isinstance(client, Client):
        return await operation
    task = asyncio.ensure_future(operation)
    lost = asyncio.ensure_future(client.lost.wait())
    try:
        await asyncio.wait({task, lost}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        lost.cancel()
        if not task.done():
            task.cancel()  # still pending here: the connection went first
    if not task.done():
        raise aiomqtt.MqttError("the connection was lost before the broker acknowledged")
    return task.result()


def _is_failure(code: object) -> bool:
    """A SUBACK entry that refuses: a failure ReasonCode (MQTT 5) or 0x80 (3.1.1)."""
    if isinstance(code, int):
        return code >= 0x80
    return bool(getattr(code, "is_failure", False))


def protocol_refused(error: str) -> bool:
    """The broker refused or dropped an MQTT 5 CONNECT: the symptoms of a 3.1.1-only broker."""
    text = error.lower()
    return "during connect" in text or any(words in text for words in UNSUPPORTED_PROTOCOL)


def connect_properties() -> Properties:
    """CONNECT properties: the largest packet this client accepts."""
    properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
    properties.MaximumPacketSize = MAX_PACKET_BYTES
    return properties


def to_inbound(message: aiomqtt.Message) -> Inbound:
    # paho hands the raw bytes through; aiomqtt's type also admits str/int/float/None.
    payload: Any = message.payload
    data = bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload or "").encode()
    response_topic = correlation = None
    props = message.properties
    if props is not None:
        response_topic = getattr(props, "ResponseTopic", None)
        correlation = getattr(props, "CorrelationData", None)
    return Inbound(
        topic=message.topic.value,
        payload=data,
        qos=message.qos,
        retain=bool(message.retain),
        response_topic=response_topic,
        correlation_data=correlation,
    )


def response_target(inbound: Inbound) -> tuple[str, bytes | None] | None:
    """Where MQTT 5 request/response wants status copies, if anywhere."""
    if inbound.response_topic:
        return inbound.response_topic, inbound.correlation_data
    return None
