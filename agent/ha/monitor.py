"""The HA loop: membership, probes and peers' reports in; a verdict on `R/ha` (retained) out.

Every `ha.interval_s` it reads the member list, probes every member concurrently, and builds this
node's verdict (`agent.ha.quorum`); the peers' verdicts, kept by `agent.ha.peers`, add the
`cluster` view.
It publishes on change and at least every HEARTBEAT_INTERVALS intervals, and re-derives the
cluster view as soon as a peer's report arrives so that a witnessed failure spreads within one
round. It also runs the opt-in auto-remove (`agent.ha.failover`) as one child task at a time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import json
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

from agent.errors import AgentError, TransportError
from agent.ha import failover, membership, peers, probes, quorum
from agent.health.state import AgentState
from agent.link.mqtt import Inbound, Link
from agent.link.topics import Topics
from agent.logs import get_logger
from agent.microk8s import kube_model
from agent.microk8s.backends.base import Backend
from agent.microk8s.kubeapi import KubeApiError, KubeconfigWatch
from agent.microk8s.status import MicroK8sFacts
from agent.settings import Settings

log = get_logger(__name__)

HEARTBEAT_INTERVALS = 6
"""Publish at least every this many intervals even when nothing changed."""
REPORT_WINDOW_HEARTBEATS = 3
"""A peer's report counts for this many of its heartbeats (it may be quiet that long)."""
POLL_S = 1.0
"""How often the wait between rounds looks at `AgentState.maintenance`."""
EVENTS_KEPT = 10

NodeNames = Callable[[], Awaitable[Mapping[str, str]]]
"""InternalIP → Kubernetes node name (from the Kubernetes API); may raise AgentError."""
Readyz = Callable[[], Awaitable[bool | None]]
"""The local API server's /readyz verdict; None when it cannot be asked."""


class HaMonitor:
    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend,
        link: Link,
        state: AgentState,
        facts: Callable[[], MicroK8sFacts | None],
        node_names: NodeNames | None = None,
        readyz: Readyz | None = None,
    ) -> None:
        self._settings = settings
        self._ha = settings.ha
        self._backend = backend
        self._link = link
        self._state = state
        self._facts = facts
        self._node_names = node_names
        self._readyz = readyz
        self._topics = Topics(settings.mqtt.prefix, settings.node.cluster, settings.node.name)
        window = settings.ha.interval_s * HEARTBEAT_INTERVALS * REPORT_WINDOW_HEARTBEATS
        self.peers = peers.PeerBook(settings.node.name, window)
        self._remover = failover.AutoRemover(settings.ha.auto_remove_after_s)
        self._removal: asyncio.Task[None] | None = None
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self._obs: quorum.Observation | None = None
        self._kube_names: dict[str, str] = {}
        self._names_error: str | None = None
        self._wake = asyncio.Event()
        self._published_session: int | None = None
        self._last_published_at = 0.0
        self._published: dict[str, Any] | None = None

    def attach(self) -> None:
        """Subscribe to the peers' verdicts and presence; republish after every reconnect."""
        self._link.subscribe(self._topics.peers("ha"), 1, self._on_peer_ha)
        self._link.subscribe(self._topics.peers("state"), 1, self._on_peer_state)
        self._link.on_connect(self._on_connect)

    def upgrade_gate(self, force: bool) -> str | None:
        """The dispatcher's hook: why an upgrade of this node must wait, or None."""
        return quorum.upgrade_gate(self._state.last_ha, force)

    async def _on_connect(self) -> None:
        # A new session always gets the verdict (the broker may have lost the retained copy).
        self._wake.set()

    def _on_peer_ha(self, inbound: Inbound) -> None:
        node = self._topics.node_of(inbound.topic)
        if node is not None:
            self.peers.record_verdict(node, _decode(inbound.payload), time.monotonic())
            self._wake.set()

    def _on_peer_state(self, inbound: Inbound) -> None:
        node = self._topics.node_of(inbound.topic)
        if node is not None and node != self._settings.node.name:
            self.peers.record_presence(node, _decode(inbound.payload))
            self._wake.set()

    # --- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        interval = self._ha.interval_s
        next_tick = time.monotonic()
        try:
            while True:
                await self.round()
                next_tick = max(next_tick + interval, time.monotonic())
                await self._wait_until(next_tick)
        finally:
            # The removal task is ours, not the root group's: stop it with us (process.run then
            # kills remove-node's process group).
            if self._removal is not None:
                self._removal.cancel()

    async def _wait_until(self, deadline: float) -> None:
        """Between rounds: refresh the verdict when a peer reports or maintenance changes."""
        while (remaining := deadline - time.monotonic()) > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), min(remaining, POLL_S))
            # Cleared before concluding, so a report that arrives meanwhile wakes us again.
            self._wake.clear()
            obs = self._obs
            if obs is not None and obs.maintenance != self._state.maintenance:
                self._obs = dataclasses.replace(obs, maintenance=self._state.maintenance)
            if self._obs is not None:
                await self._conclude(self._obs)

    async def round(self) -> dict[str, Any]:
        """Gather, judge, publish; returns the verdict (also stored in AgentState.last_ha)."""
        started = time.monotonic()
        obs = await self._observe()
        self._obs = obs
        verdict = await self._conclude(obs)
        log.debug(
            "ha_round",
            node=obs.node,
            verdict=verdict["verdict"],
            duration_s=round(time.monotonic() - started, 3),
        )
        return verdict

    async def _observe(self) -> quorum.Observation:
        facts = self._facts()
        hosts = await asyncio.to_thread(probes.local_hosts)
        members = await asyncio.to_thread(
            membership.load,
            Path(self._settings.microk8s.backend_dir),
            facts.ha_nodes if facts else None,
            hosts,
        )
        timeout = self._ha.probe_timeout_s
        found, ready, kube_names = await asyncio.gather(
            probes.probe_all(members.members, timeout), self._ask_readyz(), self._ask_names()
        )
        return quorum.Observation(
            node=self._settings.node.name,
            ts=time.time(),
            membership=members,
            role=membership.node_role(members, facts.role if facts else None),
            probes=found,
            names=self._names(members, kube_names),
            apiserver_ready=ready,
            maintenance=self._state.maintenance,
        )

    def _names(self, members: membership.Membership, kube: Mapping[str, str]) -> dict[str, str]:
        """Node names by host: this node's own, then the Kubernetes API, then peers' claims."""
        names = {**self.peers.names(), **kube}
        if members.self_member is not None:
            names[members.self_member.host] = self._settings.node.name
        return names

    async def _ask_names(self) -> Mapping[str, str]:
        if self._node_names is None:
            return {}
        try:
            self._kube_names = dict(await self._node_names())
            self._names_error = None
        except AgentError as exc:
            # Said once per distinct cause: without a kubeconfig this fails every round.
            if str(exc) != self._names_error:
                log.info("ha_node_names_unavailable", error=str(exc))
            self._names_error = str(exc)
        return self._kube_names

    async def _ask_readyz(self) -> bool | None:
        if self._readyz is None:
            return None
        try:
            return await asyncio.wait_for(self._readyz(), self._ha.probe_timeout_s)
        except (AgentError, TimeoutError):
            return False

    async def _conclude(self, obs: quorum.Observation) -> dict[str, Any]:
        own = quorum.build_verdict(obs)
        now = time.monotonic()
        cluster = self.peers.view(own, now)
        self._plan_removal(cluster, now)
        verdict = {**own, "ts": round(time.time(), 3), "cluster": cluster}
        verdict["events"] = list(self._events)
        self._state.last_ha = verdict
        await self._maybe_publish(verdict)
        return verdict

    async def _maybe_publish(self, verdict: dict[str, Any]) -> None:
        now = time.monotonic()
        session = self._link.session
        heartbeat = self._ha.interval_s * HEARTBEAT_INTERVALS
        due = self._published_session != session or now - self._last_published_at >= heartbeat
        if not (due or quorum.changed(self._published, verdict)) or not self._link.connected:
            return
        try:
            await self._link.publish(self._topics.ha, quorum.encode(verdict), qos=1, retain=True)
        except TransportError as exc:
            log.warning("ha_not_published", error=str(exc))
            return
        if quorum.changed(self._published, verdict) and self._published is not None:
            log.info("ha_verdict_changed", node=verdict["node"], verdict=verdict["verdict"])
        self._published = verdict
        self._last_published_at = now
        self._published_session = session

    # --- auto-remove ---------------------------------------------------------------------

    def _plan_removal(self, cluster: Mapping[str, Any], now: float) -> None:
        self._remover.observe(cluster, now)
        if self._removal is not None and not self._removal.done():
            return
        removal = self._remover.decide(self._settings.node.name, cluster, now)
        if removal is not None:
            self._removal = asyncio.create_task(self._remove(removal), name="ha-auto-remove")

    async def _remove(self, removal: failover.Removal) -> None:
        fields = {"address": removal.address, "node": removal.node, "target": removal.target}
        self._event("auto_remove_started", down_for_s=removal.down_for_s, **fields)
        try:
            outcome = await self._backend.remove_node(removal.target)
            ok, error = outcome.ok, outcome.error
        except (AgentError, ValueError) as exc:
            ok, error = False, str(exc)
        self._remover.record(removal.address, ok=ok, now=time.monotonic())
        if ok:
            self._event("auto_remove_succeeded", **fields)
        else:
            self._event("auto_remove_failed", error=error, **fields)
        self._wake.set()

    def _event(self, name: str, **fields: Any) -> None:
        """Record one auto-remove step; it rides on the next verdict (published at once)."""
        self._events.append({"ts": round(time.time(), 3), "event": name, **fields})
        log.warning(name, **{k: v for k, v in fields.items() if v is not None})
        self._wake.set()


def kube_sources(settings: Settings) -> tuple[NodeNames, Readyz]:
    """Node names and /readyz from the local API server, with the admin kubeconfig.

    Without a usable kubeconfig (no content interface, not clustered yet) names come from peers
    only and `apiserver_ready` is null; with one, an unreachable API server is `false`.
    """
    watch = KubeconfigWatch(
        Path(settings.microk8s.credentials_dir) / "client.config",
        timeout_s=settings.ha.probe_timeout_s,
    )

    async def node_names() -> dict[str, str]:
        nodes = kube_model.parse_node_list(await watch.get().nodes())
        return {address: node.name for node in nodes for address in node.addresses}

    async def readyz() -> bool | None:
        try:
            api = watch.get()
        except KubeApiError:
            return None
        try:
            status, text = await api.readyz()
        except KubeApiError as exc:
            return None if exc.kind == "kubeconfig" else False
        return kube_model.parse_readyz(text, status).ready

    return node_names, readyz


def _decode(payload: bytes) -> Any:
    """A JSON document, None for an empty (cleared) retained message or unreadable bytes."""
    if not payload:
        return None
    try:
        return json.loads(payload)
    except (ValueError, UnicodeDecodeError):
        return None
