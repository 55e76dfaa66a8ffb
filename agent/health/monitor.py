"""The health loop: collect, evaluate, publish retained on `R/health`, update `AgentState`.

Two loops share this module. `run_facts` refreshes MicroK8s facts at their own (slower) pace,
because `microk8s status` can take seconds or hang; `run` never waits for it and always uses the
last known facts, so a stuck MicroK8s never delays health or the HTTP endpoint.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agent.errors import TransportError
from agent.health import sysinfo, verdict
from agent.health.budget import Action, Budget
from agent.health.detectors import Detectors
from agent.health.metrics import Metrics
from agent.health.state import AgentState
from agent.link.mqtt import Inbound, Link
from agent.link.topics import Topics
from agent.logs import get_logger
from agent.microk8s.backends.base import Backend, ReportsKube
from agent.microk8s.status import MicroK8sFacts
from agent.settings import Settings

log = get_logger(__name__)

Collect = Callable[[Sequence[str], Path], dict[str, Any]]
# How long the first health message may wait for the first MicroK8s facts.
FIRST_FACTS_WAIT_S = 0.6
FIRST_SAMPLE_DELAY_S = 0.25


class HealthMonitor:
    def __init__(
        self,
        settings: Settings,
        *,
        backend: Backend,
        link: Link,
        state: AgentState,
        metrics: Metrics,
        collect: Collect = sysinfo.collect,
        on_budget_restart: Callable[[str], None] | None = None,
    ) -> None:
        self._settings = settings
        self._backend = backend
        self._link = link
        self._state = state
        self._metrics = metrics
        self._collect = collect
        self._thresholds = verdict.Thresholds.from_settings(settings.health)
        self._topics = Topics(settings.mqtt.prefix, settings.node.cluster, settings.node.name)
        self._health_topic = self._topics.health
        self._facts: MicroK8sFacts | None = None
        self._facts_ready = asyncio.Event()
        self._wake = asyncio.Event()
        self._seq = 0
        self._seq_session = -1
        self.kube: dict[str, Any] = {"node_ready": None}
        self._budget = Budget(settings.agent.max_rss_mib)
        self._on_budget_restart = on_budget_restart
        self.detectors = Detectors(settings) if settings.health.detectors_enabled else None
        self._first_published = asyncio.Event()

    def attach(self) -> None:
        """Hear the peers' health: their `ts` on arrival is the clock detector's peer offset."""
        if self.detectors is None:
            return
        # no_local: our own health would come back every cycle, only to be dropped.
        self._link.subscribe(self._topics.peers("health"), 0, self._on_peer_health, no_local=True)

    def _on_peer_health(self, inbound: Inbound) -> None:
        node = self._topics.node_of(inbound.topic)
        if self.detectors is not None and node is not None:
            own = self._settings.node.name
            self.detectors.on_peer_health(node, inbound, own, self._link.session)

    async def run_detectors(self) -> None:
        if self.detectors is not None:
            await self.detectors.run(self._first_published)

    def request_publish(self) -> None:
        """Take and publish a sample now (after a reconnect, or for a `status` command)."""
        self._wake.set()

    async def on_connect(self) -> None:
        self.request_publish()

    async def run_facts(self) -> None:
        interval = self._settings.microk8s.status_interval_s
        while True:
            started = time.monotonic()
            self._facts = await self._backend.facts()
            if isinstance(self._backend, ReportsKube):
                self.kube = await self._backend.kube_facts() or self.kube
            self._facts_ready.set()
            log.debug("microk8s_facts", duration_s=round(time.monotonic() - started, 3))
            await asyncio.sleep(interval)

    async def run(self) -> None:
        sysinfo.prime()
        # The first CPU figure covers the time since prime(): give it a meaningful window, and
        # give the first MicroK8s facts a chance to arrive, within the 1.5 s start-up budget.
        await asyncio.sleep(FIRST_SAMPLE_DELAY_S)
        # asyncio.timeout, not wait_for: on Python 3.11 wait_for can swallow a cancellation that
        # races with the wait ending, and the task then outlives its TaskGroup (issue 11).
        try:
            async with asyncio.timeout(FIRST_FACTS_WAIT_S):
                await self._facts_ready.wait()
        except TimeoutError:
            log.info("microk8s_facts_pending", waited_s=FIRST_FACTS_WAIT_S)
        interval = self._settings.health.interval_s
        next_tick = time.monotonic()
        frozen = False
        while True:
            await self.sample_and_publish()
            if not frozen:
                # Start-up is over (modules imported, tasks built): collect its garbage, then
                # move what lives on out of the cyclic collector's sight, so that its full
                # passes no longer walk it.
                gc.collect()
                gc.freeze()
                frozen = True
            next_tick = max(next_tick + interval, time.monotonic())
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(next_tick - time.monotonic()):
                    await self._wake.wait()

    async def sample_and_publish(self) -> dict[str, Any]:
        started = time.monotonic()
        snapshot = await self._sample()
        duration = time.monotonic() - started
        self._metrics.observe_collection(duration)
        self._state.record_health(snapshot, duration, time.monotonic())
        self._state.health_published_total += 1
        await self._publish(snapshot)
        self._enforce_budget(snapshot)
        return snapshot

    def _enforce_budget(self, snapshot: dict[str, Any]) -> None:
        rss = int((snapshot.get("agent") or {}).get("rss_bytes") or 0)
        action = self._budget.check(rss, connected=self._link.connected)
        if action is Action.SHED:
            gc.collect()
            self._state.shed_collectors = list(self._budget.shed)
            log.warning(
                "budget_shed", collector=self._budget.shed[-1], why=self._budget.reason(rss)
            )
        elif action is Action.RESTART and self._on_budget_restart is not None:
            log.error("budget_restart", why=self._budget.reason(rss))
            self._on_budget_restart(f"restarting: {self._budget.reason(rss)}")

    async def _sample(self) -> dict[str, Any]:
        h = self._settings.health
        disks = h.disk_paths[:1] if "extra-disks" in self._state.shed_collectors else h.disk_paths
        # Inline, not in a worker thread: a few /proc and sysfs reads take well under a
        # millisecond, less than handing them to a thread and back.
        system = self._collect(disks, Path(h.sysfs_root))
        # The link's poison count rides in the agent block: a dropped status is worth a look.
        agent_figures = {**sysinfo.process_figures(), "mqtt_dropped": self._link.dropped_total}
        facts = self._facts.to_health() if self._facts else _unknown_microk8s()
        link = self._link
        if link.session != self._seq_session:
            self._seq_session, self._seq = link.session, 0
        return verdict.build_snapshot(
            node=self._settings.node.name,
            cluster=self._settings.node.cluster,
            ts=time.time(),
            session=link.session,
            seq=self._seq,
            system=system,
            microk8s=facts,
            kube=self.kube,
            agent=agent_figures,
            thresholds=self._thresholds,
            detectors=self._detector_report(system.get("memory"), link.connected),
        )

    def _detector_report(
        self, memory: Any, connected: bool
    ) -> tuple[dict[str, Any], list[verdict.Finding]]:
        if self.detectors is None:
            return dict.fromkeys(verdict.DETECTOR_BLOCKS), []
        self.detectors.memory = memory if isinstance(memory, dict) else None
        return self.detectors.report(node_ready=self.kube.get("node_ready"), connected=connected)

    async def _publish(self, snapshot: dict[str, Any]) -> None:
        if not self._link.connected:
            return
        try:
            await self._link.publish(
                self._health_topic,
                verdict.encode(snapshot),
                qos=self._settings.health.qos,
                retain=True,
            )
            self._seq += 1
            self._first_published.set()
        except TransportError as exc:
            log.warning("health_not_published", error=str(exc))

    @property
    def facts(self) -> MicroK8sFacts | None:
        return self._facts


def _unknown_microk8s() -> dict[str, Any]:
    return {
        "installed": None,
        "running": None,
        "version": None,
        "channel": None,
        "ha": None,
        "addons": None,
    }
