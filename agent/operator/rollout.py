"""Rolling upgrade, the I/O: one MQTT session, a message pump, and the node-by-node runner.

Every decision (order, gates, soak, abort) is agent.operator.rollout_plan's; this module only
waits for the facts those decisions need, publishes the signed `upgrade` commands and writes
the state file after every step, so a crashed operator resumes where it stopped. It also keeps a
retained progress report on `{prefix}/{cluster}/rollout`, which the dashboard draws as a banner.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

from agent.commands import signing, wire
from agent.errors import AgentError
from agent.link import operator_client
from agent.link.topics import Topics
from agent.operator import rollout_plan
from agent.operator.rollout_plan import Options, RolloutState
from agent.operator.roster import Roster, decode_object
from agent.operator.tools import TERMINAL, build_envelope, describe

TICK_S = 0.2


class FleetFeed:
    """The single reader of the client's messages: keeps the roster current, routes statuses."""

    def __init__(self, client: operator_client.OperatorClient, roster: Roster) -> None:
        self.client = client
        self.roster = roster
        self.health_received: dict[str, float] = {}
        self._statuses: dict[str, asyncio.Queue[dict[str, Any]]] = {}

    async def subscribe(self) -> None:
        for topic_filter in self.roster.filters():
            await self.client.subscribe(topic_filter)
        base = f"{self.roster.prefix}/{self.roster.cluster}/nodes"
        await self.client.subscribe(f"{base}/+/cmd/+")

    def statuses(self, command_id: str) -> asyncio.Queue[dict[str, Any]]:
        return self._statuses.setdefault(command_id, asyncio.Queue())

    async def pump(self) -> None:
        async for inbound in self.client.messages():
            node = self.roster.feed(inbound.topic, inbound.payload)
            if node is not None and inbound.topic.endswith("/health"):
                self.health_received[node] = time.monotonic()
                continue
            command_id = inbound.topic.rpartition("/cmd/")[2]
            if "/cmd/" in inbound.topic and command_id in self._statuses:
                body = decode_object(inbound.payload)
                if body is not None and body.get("id") == command_id:
                    self._statuses[command_id].put_nowait(body)


class Runner:
    """Runs a RolloutState to its end (or abort), saving it after every step."""

    def __init__(
        self,
        feed: FleetFeed,
        state: RolloutState,
        options: Options,
        *,
        signer: signing.Signer | None,
        save: Callable[[RolloutState], None],
        progress: Callable[[str], None],
    ) -> None:
        self.feed = feed
        self.state = state
        self.options = options
        self.signer = signer
        self.save = save
        self.progress = progress
        self._soaks: dict[str, rollout_plan.Soak] = {}

    async def run(self) -> RolloutState:
        while not self.state.finished:
            reason = self.state.abort_reason(self.options)
            if reason is not None:
                await self._abort(reason)
                break
            batch = self.state.next_batch()
            if batch is None:
                break
            await asyncio.gather(*(self._node(name) for name in batch))
        self.save(self.state)
        await self._report(None, "finished")
        return self.state

    async def _abort(self, reason: str) -> None:
        self.state.abort(reason)
        self.save(self.state)
        self.progress(f"aborted: {reason}; nodes not started are left untouched")
        await self._report(None, "aborted")

    async def _report(self, node: str | None, step: str) -> None:
        """The retained rollout report the dashboard draws; never a reason to stop the rollout."""
        body = self.state.report(node, step, self.options, time.time())
        topic = f"{self.feed.roster.prefix}/{self.feed.roster.cluster}/rollout"
        try:
            await self.feed.client.publish(topic, json.dumps(body).encode(), retain=True)
        except AgentError as exc:
            self.progress(f"rollout report not published: {exc}")

    async def _node(self, name: str) -> None:
        record = self.state.records[name]
        if record.result == "pending":
            await self._report(name, "gate")
            refused = await self._wait_gate(name)
            if self.state.aborted:
                return
            if refused is not None:
                record.error = f"refused: {refused}"
                waited = f"{self.options.gate_timeout_s:g} s"
                await self._abort(f"{name} refused after {waited}: {refused}")
                return
            view = self.feed.roster.nodes.get(name)
            record.result, record.started = "running", time.time()
            record.old_version = (view.microk8s("version") if view else None) or record.old_version
            record.command_id = rollout_plan.command_id(self.state.rollout, name)
            self.save(self.state)
            self.progress(f"{name} ({record.role}): upgrading to {self.state.channel}")
            await self._report(name, "upgrade")
        else:
            self.progress(f"{name} ({record.role}): resuming command {record.command_id}")
        command_id = record.command_id or rollout_plan.command_id(self.state.rollout, name)
        error = await self._upgrade(name, command_id)
        record.result = "failed" if error else "succeeded"
        record.error, record.finished = error, time.time()
        self.save(self.state)
        self.progress(f"{name} ({record.role}): {record.result}" + (f": {error}" if error else ""))
        await self._report(name, record.result)

    async def _wait_gate(self, name: str) -> str | None:
        deadline = time.monotonic() + self.options.gate_timeout_s
        shown = None
        while True:
            why = rollout_plan.gate(self.feed.roster.nodes, name)
            if why is None or time.monotonic() >= deadline or self.state.aborted:
                return why
            if why != shown:
                self.progress(f"{name}: waiting: {why}")
                shown = why
            await asyncio.sleep(TICK_S)

    async def _upgrade(self, name: str, command_id: str) -> str | None:
        """Send (or re-send) the upgrade, follow it, then soak; the error, or None."""
        record = self.state.records[name]
        try:
            async with asyncio.timeout(self.options.per_node_timeout_s):
                status = await self._send_and_follow(name, command_id)
                if status.get("status") != "succeeded":
                    return _status_error(status)
                result = status.get("result")
                new = result.get("new_version") if isinstance(result, dict) else None
                record.new_version = new if isinstance(new, str) else record.new_version
                self.progress(f"{name}: upgraded; proving health for {self.options.soak_s:g} s")
                await self._report(name, "soak")
                await self._soak(name, record.new_version, time.monotonic())
                return None
        except TimeoutError:
            return self._timeout_error(name)

    async def _send_and_follow(self, name: str, command_id: str) -> dict[str, Any]:
        queue = self.feed.statuses(command_id)
        args = {"channel": self.state.channel, "drain": self.options.drain}
        if self.options.force:
            args["force"] = True
        envelope = build_envelope(name, "upgrade", args, time.time())
        envelope["id"] = command_id
        if self.signer is not None:
            envelope = self.signer.sign(envelope)
        topics = Topics(self.feed.roster.prefix, self.feed.roster.cluster, name)
        await self.feed.client.publish(topics.cmd, wire.encode(envelope))
        while True:
            status = await queue.get()
            if status.get("status") in TERMINAL:
                return status
            self.progress(describe(status))

    async def _soak(self, name: str, new_version: str | None, since: float) -> None:
        """Returns once a health report newer than `since` has proven the node for the soak."""
        soak = self._soaks[name] = rollout_plan.Soak(self.options.soak_s)
        while True:
            if self.feed.health_received.get(name, 0.0) > since:
                view = self.feed.roster.nodes.get(name)
                if soak.observe(time.monotonic(), rollout_plan.health_proof(view, new_version)):
                    return
            await asyncio.sleep(TICK_S)

    def _timeout_error(self, name: str) -> str:
        soak = self._soaks.get(name)
        limit = f"{self.options.per_node_timeout_s:g} s"
        if soak is not None:
            return f"not proven healthy within {limit}: {soak.last_reason}"
        return f"no terminal status within {limit}"


def _status_error(status: dict[str, Any]) -> str:
    what = str(status.get("status"))
    detail = status.get("error") or status.get("detail") or ""
    return f"{what}: {detail}" if detail else what
