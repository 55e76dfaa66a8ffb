"""The HA loop: membership, probes and peers' reports in; a verdict on `R/ha` (retained) out.

Every `ha.interval_s` it reads the member list, asks the running dqlite cluster for its leader,
members, roles and failure domains (`agent.ha.dqlite`; the files are the fallback), probes every
member concurrently, and builds this node's verdict (`agent.ha.quorum`) with its failover
readiness (`agent.ha.readiness`, fed by the nodes' retained health messages); the peers'
verdicts, kept by `agent.ha.peers`, add the `cluster` view.
It publishes on change and at least every HEARTBEAT_INTERVALS intervals, and re-derives the
cluster view as soon as a peer's report arrives so that a witnessed failure spreads within one
round. It also runs the opt-in auto-remove (`agent.ha.failover`) as one child task at a time.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

from agent.config_rules import NAME_RE
from agent.errors import AgentError, TransportError
from agent.ha import dqlite, failover, membership, peers, probes, quorum, readiness, reconcile
from agent.ha.dqlite_wire import LiveView
from agent.health.state import AgentState
from agent.link import inbound as inbound_decode
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
RECOMPUTE_S = 10.0
"""Between rounds the verdict is re-derived on every event (a peer's report, a maintenance
change, an auto-remove step) and at least this often, so that peers' reports age out."""
EVENTS_KEPT = 10

NodeNames = Callable[[], Awaitable[list[reconcile.KubeNode]]]
"""The Kubernetes nodes (names, InternalIPs, control plane or not); may raise AgentError."""
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
        self._refused: failover.Refusal | None = None
        self._events: collections.deque[dict[str, Any]] = collections.deque(maxlen=EVENTS_KEPT)
        self._obs: quorum.Observation | None = None
        self._kube_names: dict[str, str] = {}
        self._names_error: str | None = None
        backend_dir = Path(settings.microk8s.backend_dir)
        self._tls = dqlite.TlsFiles(backend_dir) if settings.ha.dqlite_tls else None
        self._live_members: tuple[str, ...] = ()
        self._live_note: str | None = None
        self._leader: str | None = None
        self._flags: dict[str, list[str] | None] = {}
        self._wake = asyncio.Event()
        self._published_session: int | None = None
        self._last_published_at = 0.0
        self._published: dict[str, Any] | None = None

    def attach(self) -> None:
        """Subscribe to the peers' verdicts and presence; republish after every reconnect."""
        # QoS 0: these are retained states (the latest wins, a reconnect brings them again), and
        # a QoS 1 message the broker cannot deliver (beyond our Maximum Packet Size) would hold
        # one of our in-flight slots: a neighbour's 21 oversized messages would then stall our
        # commands on a broker without max_packet_size (bench/flood.py --target peer).
        self._link.subscribe(self._topics.peers("ha"), 0, self._on_peer_ha)
        self._link.subscribe(self._topics.peers("state"), 0, self._on_peer_state)
        self._link.subscribe(self._topics.peers("health"), 0, self._on_peer_health)
        self._link.on_connect(self._on_connect)

    def upgrade_gate(self, force: bool) -> str | None:
        """The dispatcher's hook: why an upgrade of this node must wait, or None."""
        return quorum.upgrade_gate(self._state.last_ha, force)

    def join_gate(self, host: str, *, worker: bool, force: bool) -> str | None:
        """The dispatcher's hook: why joining the cluster at `host` must wait, or None."""
        reports = list(self.peers.fresh(time.monotonic()).values())
        if self._state.last_ha is not None:
            reports.append(self._state.last_ha)
        return quorum.join_gate(reports, host, force=force, worker=worker)

    async def _on_connect(self) -> None:
        # A new session always gets the verdict (the broker may have lost the retained copy).
        self._wake.set()

    def wake(self) -> None:
        """Re-derive the verdict now (maintenance began or ended)."""
        self._wake.set()

    def _on_peer_ha(self, inbound: Inbound) -> None:
        node = self._topics.node_of(inbound.topic)
        if node is not None:
            verdict = inbound_decode.decode_peer_verdict(inbound.payload, node)
            self.peers.record_verdict(node, verdict, time.monotonic())
            self._wake.set()

    def _on_peer_health(self, inbound: Inbound) -> None:
        # Only the risk flags are kept (a few words per node), never the whole message.
        node = self._topics.node_of(inbound.topic)
        if node is not None and node != self._settings.node.name:
            health = inbound_decode.parse_object(inbound.payload) if inbound.payload else None
            self._flags[node] = self._risk_flags(health if isinstance(health, dict) else None)

    def _risk_flags(self, health: Any) -> list[str] | None:
        limits = self._settings.health
        return readiness.risk_flags(health, limits.temperature_warn_c, limits.disk_warn_percent)

    def _on_peer_state(self, inbound: Inbound) -> None:
        node = self._topics.node_of(inbound.topic)
        if node is not None and node != self._settings.node.name:
            self.peers.record_presence(node, inbound_decode.decode_presence(inbound.payload))
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
        """Between rounds: refresh the verdict on events and every RECOMPUTE_S."""
        while (remaining := deadline - time.monotonic()) > 0:
            # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation
            # that races with the wake-up, leaving this task alive after its group (issue 11).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(min(remaining, RECOMPUTE_S)):
                    await self._wake.wait()
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
        # Only dqlite members' names: peers' claims alone must not grow the subscriptions.
        member_names = (obs.names.get(member.host) for member in obs.membership.members)
        await self._follow_members(name for name in member_names if name)
        verdict = await self._conclude(obs)
        log.debug(
            "ha_round",
            node=obs.node,
            verdict=verdict["verdict"],
            duration_s=round(time.monotonic() - started, 3),
        )
        return verdict

    async def _follow_members(self, names: Iterable[str]) -> None:
        """Subscribe to each known member's exact topics (see `member_topics`)."""
        handlers = {"state": self._on_peer_state, "ha": self._on_peer_ha}
        for leaf, topic in member_topics(self._topics, names):
            await self._link.follow(topic, 0, handlers[leaf])  # QoS 0: see attach()

    async def _observe(self) -> quorum.Observation:
        facts = self._facts()
        hosts = await asyncio.to_thread(probes.local_hosts)
        files = await asyncio.to_thread(
            membership.load,
            Path(self._settings.microk8s.backend_dir),
            facts.ha_nodes if facts else None,
            hosts,
        )
        live = await self._live_view(files)
        members = reconcile.live_membership(files, live) if live and live.answered else files
        timeout = self._ha.probe_timeout_s
        answered = live.metadata if live is not None and live.answered else None
        found, ready, kube = await asyncio.gather(
            probes.probe_all(members.members, timeout, answered),
            self._ask_readyz(),
            self._ask_kube(),
        )
        names = self._names(members)
        self._flags[self._settings.node.name] = self._risk_flags(self._state.last_health)
        return quorum.Observation(
            node=self._settings.node.name,
            ts=time.time(),
            membership=members,
            role=membership.node_role(members, facts.role if facts else None),
            probes=found,
            names=names,
            apiserver_ready=ready,
            maintenance=self._state.maintenance,
            leader=live.leader if live else None,
            no_leader=live.error if live and not live.unusable else None,
            notes=tuple(self._live_notes(files, members, live, kube, names)),
            flags=dict(self._flags),
        )

    async def _live_view(self, files: membership.Membership) -> LiveView | None:
        """Ask the running dqlite (local member first); None when this node knows no member."""
        own = [files.self_member.address] if files.self_member else []
        candidates = [*own, *(m.address for m in files.members), *self._live_members]
        if not candidates:
            return None
        try:
            context = await asyncio.to_thread(self._tls.context) if self._tls else None
        except dqlite.DqliteError as exc:
            view = LiveView(unusable=str(exc))
        else:
            client = dqlite.DqliteClient(context, self._ha.probe_timeout_s)
            view = await client.view(candidates)
        self._log_live(view)
        if view.answered:
            self._live_members = tuple(m.address for m in view.members)
        return view

    def _log_live(self, view: LiveView) -> None:
        """One log event per change: the live view lost or back, a new leader."""
        note = view.unusable or view.error
        if note != self._live_note:
            if view.unusable:
                log.warning("ha_dqlite_unavailable", error=note)
            elif note:
                log.warning("ha_dqlite_no_leader", error=note)
            else:
                log.info("ha_dqlite_answered", members=len(view.members))
        self._live_note = note
        leader = view.leader.address if view.leader else None
        if leader != self._leader and leader is not None:
            log.info("ha_dqlite_leader", leader=leader, previous=self._leader)
        self._leader = leader

    @staticmethod
    def _live_notes(
        files: membership.Membership,
        members: membership.Membership,
        live: LiveView | None,
        kube: list[reconcile.KubeNode] | None,
        names: Mapping[str, str],
    ) -> list[str]:
        if live is None:
            return []
        if live.unusable:
            where = files.source or "nowhere"
            return [f"live dqlite view unavailable: {live.unusable}; members from {where}"]
        if not live.answered:
            return []
        return [
            *reconcile.differences(files, members.members, names),
            *reconcile.orphans(members.members, kube),
        ]

    def _names(self, members: membership.Membership) -> dict[str, str]:
        """Node names by host: this node's own, then the Kubernetes API, then peers' claims."""
        names = {**self.peers.names(), **self._kube_names}
        if members.self_member is not None:
            names[members.self_member.host] = self._settings.node.name
        return names

    async def _ask_kube(self) -> list[reconcile.KubeNode] | None:
        """The Kubernetes nodes now, or None (the names of the last good answer stay known)."""
        if self._node_names is None:
            return None
        try:
            nodes = await self._node_names()
        except AgentError as exc:
            # Said once per distinct cause: without a kubeconfig this fails every round.
            if str(exc) != self._names_error:
                log.info("ha_node_names_unavailable", error=str(exc))
            self._names_error = str(exc)
            return None
        self._kube_names = reconcile.names_of(nodes)
        self._names_error = None
        return nodes

    async def _ask_readyz(self) -> bool | None:
        if self._readyz is None:
            return None
        try:
            async with asyncio.timeout(self._ha.probe_timeout_s):
                return await self._readyz()
        except (AgentError, TimeoutError):
            return False

    async def _conclude(self, obs: quorum.Observation) -> dict[str, Any]:
        own = quorum.build_verdict(obs)
        now = time.monotonic()
        cluster = self.peers.view(own, now)
        self._plan_removal(cluster, now, live=own.get("source") == membership.SOURCE_DQLITE)
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

    def _plan_removal(self, cluster: Mapping[str, Any], now: float, *, live: bool) -> None:
        self._remover.observe(cluster, now)
        if self._removal is not None and not self._removal.done():
            return
        removal = self._remover.decide(self._settings.node.name, cluster, now, live=live)
        if isinstance(removal, failover.Refusal):
            # Once per cause: the refusal holds round after round while the cause lasts.
            if removal != self._refused:
                self._event(
                    "auto_remove_refused",
                    address=removal.address,
                    node=removal.node,
                    reason=removal.reason,
                )
            self._refused = removal
        elif removal is not None:
            self._refused = None
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

    async def node_names() -> list[reconcile.KubeNode]:
        nodes = kube_model.parse_node_list(await watch.get().nodes())
        return [reconcile.KubeNode(n.name, n.addresses, not n.worker) for n in nodes]

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


def member_topics(topics: Topics, names: Iterable[str]) -> Iterator[tuple[str, str]]:
    """(leaf, exact topic) of `state` and `ha` for every named member but this node.

    The wildcard subscriptions see every peer's live messages, but RabbitMQ 3.10 replays retained
    messages only to exact-topic subscriptions: these give a restarted agent its peers' retained
    presence and verdicts there too. Only names a node may have (config_rules.NAME_RE) become
    topic levels; a Kubernetes name with a `.` would cost the connection on NATS.
    """
    for node in sorted(set(names)):
        if node != topics.node and NAME_RE.fullmatch(node):
            for leaf in ("state", "ha"):
                yield leaf, topics.peer(node, leaf)
