"""Where command statuses go: the journal first, then `R/cmd/{id}` and the request's reply topic.

Statuses are published through the link's outbox (`queue_if_offline`), so a result produced while
the broker is away is delivered after the reconnect. The Response Topic of an MQTT 5 request is
not covered by the command's signature and the agent must never publish outside `R/` (broker ACLs
confine it there), so a reply topic is honoured only under `R/` and off the agent's own topics.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

from agent.commands import wire
from agent.commands.journal import Journal
from agent.errors import StateError
from agent.health.state import AgentState
from agent.link.mqtt import Inbound, Link
from agent.link.topics import Topics
from agent.logs import get_logger

log = get_logger(__name__)

OWN_LEAVES = frozenset({"state", "health", "ha", "cmd"})
MAX_TOPIC_BYTES = 65535


@dataclasses.dataclass(frozen=True, slots=True)
class Reply:
    """An MQTT 5 Response Topic (already checked to be allowed) and its Correlation Data."""

    topic: str
    correlation: bytes | None


def response_topic_allowed(topic: str, root: str) -> bool:
    """True for a topic under `root/` that is not one of the agent's own topics."""
    if not topic.startswith(root + "/") or any(c in topic for c in "+#\x00"):
        return False
    first = topic[len(root) + 1 :].split("/", 1)[0]
    return bool(first) and first not in OWN_LEAVES and len(topic.encode()) <= MAX_TOPIC_BYTES


class StatusSink:
    """Journals and publishes status updates; the only writer of the journal at run time."""

    def __init__(self, topics: Topics, link: Link, journal: Journal, state: AgentState) -> None:
        self._topics = topics
        self._link = link
        self.journal = journal
        self._state = state
        self._lock = asyncio.Lock()

    def reply_for(self, inbound: Inbound) -> Reply | None:
        """The request's Response Topic if it may be used; otherwise None (and a log line)."""
        topic = inbound.response_topic
        if not topic:
            return None
        if not response_topic_allowed(topic, self._topics.root):
            log.warning(
                "response_topic_ignored",
                response_topic=topic[:200],
                allowed_under=self._topics.root + "/",
            )
            return None
        return Reply(topic, inbound.correlation_data)

    async def emit(
        self,
        status: dict[str, Any],
        reply: Reply | None,
        until: float,
        *,
        durable: bool,
        strict: bool = False,
        key: str | None = None,
    ) -> None:
        """Record, then publish. With `strict`, a failed durable write raises and nothing is sent.

        Raises:
            StateError: only with `strict`.
        """
        await self.record(status, until, durable=durable, strict=strict, key=key)
        await self.publish(status, reply)

    async def record(
        self,
        status: dict[str, Any],
        until: float,
        *,
        durable: bool,
        strict: bool = False,
        key: str | None = None,
    ) -> None:
        """Journal `status` under `key` (default: its id; see dispatch.UNSIGNED_KEY)."""
        command_id = key or str(status["id"])
        if not durable:
            self.journal.remember(command_id, status, until)
            return
        async with self._lock:
            try:
                # fsync can take tens of milliseconds on an SD card: not on the event loop.
                await asyncio.to_thread(self.journal.write, command_id, status, until)
            except StateError as exc:
                if strict:
                    raise
                log.error("journal_write_failed", command_id=command_id, error=str(exc))
                self.journal.remember(command_id, status, until)

    async def publish(self, status: dict[str, Any], reply: Reply | None) -> None:
        self._state.record_command(status)
        await self._send(self._topics.cmd_status(str(status["id"])), status, reply)

    async def publish_invalid(self, status: dict[str, Any], reply: Reply | None) -> None:
        """A rejection of a request without a readable id, on `R/cmd/_invalid`."""
        await self._send(self._topics.invalid, status, reply)

    async def _send(self, topic: str, status: dict[str, Any], reply: Reply | None) -> None:
        payload = wire.encode(status)
        await self._link.publish(topic, payload, qos=1, retain=False, queue_if_offline=True)
        if reply is not None:
            await self._link.publish(
                reply.topic,
                payload,
                qos=1,
                retain=False,
                correlation_data=reply.correlation,
                queue_if_offline=True,
            )
