"""Command intake and worker: every request on `R/cmd` gets statuses, exactly once per id.

The intake task checks each request in order (readable id → known id → signature → envelope →
arguments → availability and policy → journal → queue) and answers the cheap cases itself:
rejections, duplicates and the read-only `status` and `rebirth`. Mutating commands are journaled
(fsync'd) and acknowledged `accepted`, then wait in a bounded queue for the single worker, which
runs them one at a time. Statuses go to `R/cmd/{id}` and to an allowed MQTT 5 Response Topic,
through the link's outbox so that results published during a broker outage are delivered after
the reconnect.

A rejection after a valid signature is recorded like any terminal status, so a replay of a signed
request can never run later. A rejection before it is not: a forged message must not be able to
reserve a legitimate id. Likewise an unsigned read-only request (a `status` without signature,
allowed by PROTOCOL.md) is remembered apart from signed ones (its key is `UNSIGNED_KEY + id`): it
dedupes its own redeliveries but cannot make a later signed command with the same id a
`duplicate` (issue 11). A flood costs counts in the log, not one line per message.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import structlog

from agent.commands import verbs, wire
from agent.commands.executor import Executor, failed
from agent.commands.journal import Journal
from agent.commands.signing import Verifier
from agent.commands.statuses import Reply, StatusSink
from agent.commands.wire import Decoded, Rejected, Status
from agent.errors import StateError, TransportError
from agent.health.state import AgentState
from agent.link.mqtt import Inbound, Link
from agent.link.topics import Topics
from agent.logs import DropLog, get_logger
from agent.microk8s.backends.base import Backend, Outcome
from agent.microk8s.redact import mask_join_urls, mask_secrets
from agent.microk8s.status import MicroK8sFacts
from agent.settings import CommandSettings, Settings

log = get_logger(__name__)

INBOX_LIMIT = 1024
"""Requests waiting for the intake; beyond this (a flood) they are dropped and counted."""
UNSIGNED_KEY = "~"
"""Journal key prefix of unsigned requests; no valid id starts with it (wire.ID_RE)."""
NOT_STARTED = "not started: the agent shut down before the command's turn; send it again"
SHUTTING_DOWN = "the agent is shutting down; send the command again after it restarts"
REBIRTH_INTERVAL_S = 5.0
"""At most one `rebirth` per this many seconds: each one re-publishes three retained messages."""


@dataclasses.dataclass(frozen=True, slots=True)
class Job:
    command: verbs.Command
    reply: Reply | None
    until: float


class Dispatcher:
    """Owns the command pipeline; `app` runs `run_intake` and `run_worker` as root tasks.

    Register `offer` as the link's handler for `R/cmd` (see `build`).
    """

    def __init__(
        self,
        settings: CommandSettings,
        *,
        topics: Topics,
        sink: StatusSink,
        verifier: Verifier,
        executor: Executor,
        state: AgentState,
        request_publish: Callable[[], None],
        facts: Callable[[], MicroK8sFacts | None],
        rebirth: Callable[[], Awaitable[None]],
        clock: Callable[[], float] = time.time,
        health_interval_s: float = 10.0,
    ) -> None:
        self._settings = settings
        self._health_interval_s = health_interval_s
        self._topics = topics
        self._sink = sink
        self._journal = sink.journal
        self._verifier = verifier
        self.executor = executor
        self._state = state
        self._request_publish = request_publish
        self._facts = facts
        self._rebirth = rebirth
        self._last_rebirth: float | None = None
        self._clock = clock
        self._limits = wire.Limits(topics.node, settings.max_age_s, settings.clock_skew_s)
        self._inbox: asyncio.Queue[Inbound] = asyncio.Queue(maxsize=INBOX_LIMIT)
        self._work: asyncio.Queue[Job] = asyncio.Queue(maxsize=settings.queue_size)
        self._current: asyncio.Task[None] | None = None
        self._closing = False
        self._inbox_drops = DropLog("command_dropped_inbox_full")

    # -- intake ---------------------------------------------------------------------------

    def offer(self, inbound: Inbound) -> None:
        """Link handler: queue the request for the intake task (never blocks the reader)."""
        try:
            self._inbox.put_nowait(inbound)
        except asyncio.QueueFull:
            self._inbox_drops.drop(time.monotonic(), limit=INBOX_LIMIT, topic=inbound.topic[:200])

    async def run_intake(self) -> None:
        """Report interrupted commands, then admit requests forever."""
        await self._report_interrupted()
        while True:
            inbound = await self._inbox.get()
            try:
                await self._admit(inbound)
            except Exception:  # a bug must cost one request, not the agent
                log.exception("command_intake_error", topic=inbound.topic)

    async def _report_interrupted(self) -> None:
        for record in await asyncio.to_thread(self._journal.load):
            status = wire.status_payload(
                record.id,
                record.status.get("verb"),
                self._topics.node,
                Status.FAILED,
                self._clock(),
                error="interrupted",
            )
            log.warning("command_interrupted", command_id=record.id)
            await self._sink.emit(status, None, record.until, durable=True)

    async def _admit(self, inbound: Inbound) -> None:
        reply = self._sink.reply_for(inbound)
        if not inbound.payload:
            # Clearing a retained command. MQTT 3.1.1 delivers that clear to a live subscriber
            # without the retain flag, so an empty payload is ignored whatever the flag says.
            log.debug("command_empty_ignored", topic=inbound.topic, retain=inbound.retain)
            return
        try:
            decoded = wire.decode(inbound.payload)
        except Rejected as exc:
            await self._reject_invalid(exc.reason, reply)
            return
        if await self._answer_duplicate(decoded.command_id, reply):
            return
        mutating = decoded.verb_text not in wire.READ_ONLY
        reason = self._verifier.authenticate(
            decoded.body, mutating=mutating, allow_unsigned=self._settings.allow_unsigned
        )
        if reason is not None:
            await self._reject(decoded, reason, reply, record=False)
            return
        # Signed, or every request is trusted by configuration: it owns its id.
        signed = "sig" in decoded.body or self._settings.allow_unsigned
        key = decoded.command_id if signed else UNSIGNED_KEY + decoded.command_id
        if not signed and await self._answer_duplicate(key, reply):
            return
        try:
            command = self._validate(decoded, retained=inbound.retain)
        except Rejected as exc:
            await self._reject(decoded, exc.reason, reply, record=True, key=key)
            return
        if command.verb is wire.Verb.STATUS:
            await self._answer_status(command, reply, key)
        elif command.verb is wire.Verb.REBIRTH:
            await self._answer_rebirth(command, reply, key)
        else:
            await self._enqueue(command, reply)

    async def _answer_duplicate(self, key: str, reply: Reply | None) -> bool:
        known = self._journal.get(key)
        if known is None:
            return False
        log.info("command_duplicate", command_id=known.get("id"))
        await self._sink.publish({**known, "duplicate": True}, reply)
        return True

    def _validate(self, decoded: Decoded, *, retained: bool) -> verbs.Command:
        """Every check that needs no I/O; raises Rejected."""
        now = self._clock()
        command = verbs.read_request(decoded, self._limits, now, retained=retained)
        if command.verb is wire.Verb.REBIRTH:
            wait = rebirth_wait(self._last_rebirth, now)
            if wait > 0:
                raise Rejected(
                    f"rebirth: at most one per {REBIRTH_INTERVAL_S:g} s; send it again in"
                    f" {wait:.1f} s"
                )
            self._last_rebirth = now
        if command.verb.mutating:
            reason = self.executor.unavailable()
            if reason is None and isinstance(command.args, verbs.UpgradeArgs):
                reason = self.executor.upgrade_refusal(command.args, self._facts())
            if reason is None and isinstance(command.args, verbs.JoinArgs):
                reason = self.executor.join_gate(command.args)
            if reason is not None:
                raise Rejected(reason)
        return command

    async def _answer_status(self, command: verbs.Command, reply: Reply | None, key: str) -> None:
        until = wire.replay_horizon(command.envelope.expires_at, self._limits)
        accepted = self._status(command, Status.ACCEPTED)
        await self._sink.emit(accepted, reply, until, durable=False, key=key)
        # The latest sample answers; a new one is taken only when it is older than the health
        # interval, so a flood of `status` requests is not a flood of health publishes.
        age = self._state.health_age_s(time.monotonic())
        if age is None or age > self._health_interval_s:
            self._request_publish()
        result = {"health": self._state.last_health, "ha": self._state.last_ha}
        done = self._status(command, Status.SUCCEEDED, result=result)
        await self._sink.emit(done, reply, until, durable=False, key=key)

    async def _answer_rebirth(self, command: verbs.Command, reply: Reply | None, key: str) -> None:
        """Re-publish birth, health and HA (same session), then answer."""
        until = wire.replay_horizon(command.envelope.expires_at, self._limits)
        accepted = self._status(command, Status.ACCEPTED)
        await self._sink.emit(accepted, reply, until, durable=False, key=key)
        try:
            await self._rebirth()
        except TransportError as exc:
            final = self._status(command, Status.FAILED, error=f"rebirth not published: {exc}")
        else:
            final = self._status(command, Status.SUCCEEDED)
        # A fresh sample follows the re-sent one, so the consumer also gets current figures.
        self._request_publish()
        await self._sink.emit(final, reply, until, durable=False, key=key)

    async def _enqueue(self, command: verbs.Command, reply: Reply | None) -> None:
        decoded = Decoded(command.id, {"verb": command.verb.value})
        refusal = self._queue_refusal()
        if refusal is not None:
            await self._reject(decoded, refusal, reply, record=True)
            return
        until = wire.replay_horizon(command.envelope.expires_at, self._limits)
        accepted = self._status(command, Status.ACCEPTED)
        try:
            await self._sink.record(accepted, until, durable=True, strict=True)
        except StateError as exc:
            # An operator must see this in the logs too, not only on the command's topic.
            log.error("journal_write_failed", command_id=command.id, error=str(exc))
            reason = (
                f"cannot record the command in the journal ({exc}); commands that change the"
                " node are refused until state.dir is writable and has room"
            )
            await self._reject(decoded, reason, reply, record=False)
            return
        log.info("command_accepted", command_id=command.id, verb=command.verb.value)
        await self._sink.publish(accepted, reply)
        self._work.put_nowait(Job(command, reply, until))

    def _queue_refusal(self) -> str | None:
        if self._closing:
            return SHUTTING_DOWN
        if self._work.full():
            return (
                f"busy: {self._work.qsize()} commands are already waiting"
                f" (commands.queue_size = {self._settings.queue_size}); send it again later"
            )
        return None

    async def _reject(
        self,
        decoded: Decoded,
        reason: str,
        reply: Reply | None,
        *,
        record: bool,
        key: str | None = None,
    ) -> None:
        now = self._clock()
        status = wire.status_payload(
            decoded.command_id,
            decoded.verb_text,
            self._topics.node,
            Status.REJECTED,
            now,
            error=reason,
        )
        log.info("command_rejected", command_id=decoded.command_id, reason=reason)
        if record:
            # The request's own window may be unreadable; this bound covers every valid one.
            until = now + self._limits.max_age_s + 2 * self._limits.clock_skew_s
            durable = decoded.verb_text not in wire.READ_ONLY
            await self._sink.record(status, until, durable=durable, key=key)
        await self._sink.publish(status, reply)

    async def _reject_invalid(self, reason: str, reply: Reply | None) -> None:
        status = wire.status_payload(
            None, None, self._topics.node, Status.REJECTED, self._clock(), error=reason
        )
        log.info("command_invalid", reason=reason)
        await self._sink.publish_invalid(status, reply)

    # -- worker ---------------------------------------------------------------------------

    async def run_worker(self) -> None:
        """Run queued mutating commands one at a time, forever."""
        while True:
            job = await self._work.get()
            if self._closing:
                await self._finish(job, failed(NOT_STARTED), duration_s=0.0)
                continue
            current = asyncio.create_task(self._execute(job), name=f"command-{job.command.id}")
            self._current = current
            await asyncio.wait({current})
            self._current = None
            if not current.cancelled() and current.exception() is not None:
                # A bug, not a command failure (those are Outcomes): keep serving the queue.
                log.error("command_worker_error", exc_info=current.exception())

    async def _execute(self, job: Job) -> None:
        command = job.command
        started = time.monotonic()
        with structlog.contextvars.bound_contextvars(command_id=command.id):
            running = self._status(command, Status.RUNNING)
            await self._sink.emit(running, job.reply, job.until, durable=False)

            async def progress(detail: str) -> None:
                update = self._status(command, Status.RUNNING, detail=self._mask(command, detail))
                await self._sink.emit(update, job.reply, job.until, durable=False)

            try:
                outcome = await self.executor.run(command, progress)
            except Exception as exc:
                log.exception("command_crashed", verb=command.verb.value)
                outcome = failed(f"internal error: {type(exc).__name__}: {exc}")
            await self._finish(job, outcome, duration_s=time.monotonic() - started)

    async def _finish(self, job: Job, outcome: Outcome, *, duration_s: float) -> None:
        command = job.command
        status = Status.SUCCEEDED if outcome.ok else Status.FAILED
        if outcome.timed_out:
            status = Status.TIMED_OUT
        final = self._status(
            command,
            status,
            error=None if outcome.error is None else self._mask(command, outcome.error),
            exit_code=outcome.exit_code,
            output=self._mask(command, outcome.output) or None,
            result=outcome.result,
        )
        await self._sink.emit(final, job.reply, job.until, durable=True)
        log.info(
            "command_finished",
            command_id=command.id,
            verb=command.verb.value,
            status=status.value,
            exit_code=outcome.exit_code,
            duration_s=round(duration_s, 3),
        )

    async def drain(self, timeout_s: float) -> None:
        """Stop taking commands; give the running one `timeout_s`, then cancel it.

        A cancelled command's process group is killed (process.run) and its journal record stays
        non-terminal, so it is reported `interrupted` at the next start. Queued ones are failed.
        """
        self._closing = True
        # Queued ones first: once the running one ends, the worker must find nothing to start.
        while not self._work.empty():
            await self._finish(self._work.get_nowait(), failed(NOT_STARTED), duration_s=0.0)
        current = self._current
        if current is not None and not current.done():
            _, pending = await asyncio.wait({current}, timeout=timeout_s)
            if pending:
                log.warning("command_cancelled_at_shutdown", timeout_s=timeout_s)
                current.cancel()
                await asyncio.wait({current})

    # -- statuses -------------------------------------------------------------------------

    def _status(self, command: verbs.Command, status: Status, **extra: Any) -> dict[str, Any]:
        return wire.status_payload(
            command.id, command.verb.value, self._topics.node, status, self._clock(), **extra
        )

    @staticmethod
    def _mask(command: verbs.Command, text: str) -> str:
        secrets = command.args.secrets() if isinstance(command.args, verbs.JoinArgs) else ()
        return mask_join_urls(mask_secrets(text, secrets))


def rebirth_wait(last: float | None, now: float) -> float:
    """Seconds until the next `rebirth` is allowed (0 when it is allowed now).

    Never more than the interval, so a wall clock stepped back cannot block rebirths for long.
    """
    if last is None:
        return 0.0
    return min(REBIRTH_INTERVAL_S, max(0.0, last + REBIRTH_INTERVAL_S - now))


def build(
    settings: Settings,
    *,
    topics: Topics,
    link: Link,
    backend: Backend,
    state: AgentState,
    request_publish: Callable[[], None],
    facts: Callable[[], MicroK8sFacts | None],
) -> Dispatcher:
    """Assemble the pipeline for `app` and subscribe it to `R/cmd` (QoS 1).

    Raises:
        SigningError: a trusted key file is unreadable or not an Ed25519 public key.
    """
    executor = Executor(backend, settings.microk8s, node=settings.node.name)
    journal = Journal(Path(settings.state.dir), settings.commands.journal_max_bytes)
    dispatcher = Dispatcher(
        settings.commands,
        topics=topics,
        sink=StatusSink(topics, link, journal, state),
        verifier=Verifier.from_files(settings.commands.trusted_keys),
        executor=executor,
        state=state,
        request_publish=request_publish,
        facts=facts,
        rebirth=link.rebirth,
        health_interval_s=settings.health.interval_s,
    )
    link.subscribe(topics.cmd, 1, dispatcher.offer)
    return dispatcher
