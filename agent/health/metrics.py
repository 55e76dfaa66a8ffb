"""Prometheus metrics: the only prometheus_client importer, and only at the first scrape.

Gauges are computed at scrape time from `AgentState` by a custom collector, so the health loop
pays nothing for metrics between scrapes; only the collection-duration histogram is observed
live, into plain bucket counts. prometheus_client (~1-3 MiB resident) is imported when /metrics
is first asked for: a node nobody scrapes never loads it.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any, cast

from agent.health.state import AgentState
from agent.health.verdict import DETECTOR_BLOCKS

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

STATUS_VALUES = ("ok", "degraded", "critical")


COLLECTION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)


class _StateCollector:
    """Duck-typed prometheus_client Collector (subclassing it would import the library)."""

    def __init__(self, state: AgentState, metrics: Metrics) -> None:
        self._state = state
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        yield self._metrics.collection_histogram()
        yield from _link_metrics(self._state)
        health = self._state.last_health
        if health is not None:
            yield from _health_metrics(health)
            yield from _agent_metrics(health.get("agent"))
            yield from _detector_metrics(health)
        ha = self._state.last_ha
        if ha is not None:
            yield from _ha_metrics(ha)


def _gauge(name: str, doc: str, value: float | None) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily  # scrape time

    if value is not None:
        yield GaugeMetricFamily(name, doc, value=float(value))


def _link_metrics(state: AgentState) -> Iterator[Metric]:
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    link = state.link()
    yield GaugeMetricFamily(
        "edge_agent_mqtt_connected", "1 while connected to the broker", value=int(link.connected)
    )
    yield GaugeMetricFamily(
        "edge_agent_mqtt_session", "Presence session number", value=link.session
    )
    yield CounterMetricFamily(
        "edge_agent_mqtt_messages_published", "Messages published", value=link.published_total
    )
    yield CounterMetricFamily(
        "edge_agent_mqtt_reconnects", "Reconnections after the first", value=link.reconnects_total
    )
    yield CounterMetricFamily(
        "edge_agent_mqtt_messages_dropped",
        "Messages dropped as poison: refused by the broker, or lost with the connection",
        value=link.dropped_total,
    )
    yield GaugeMetricFamily(
        "edge_agent_mqtt_outbox_messages", "Statuses waiting for the broker", value=link.outbox_size
    )
    yield CounterMetricFamily(
        "edge_agent_health_messages", "Health samples taken", value=state.health_published_total
    )


def _health_metrics(health: dict[str, Any]) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily  # scrape time

    status = GaugeMetricFamily(
        "edge_agent_health_status", "1 for the current status", labels=["status"]
    )
    for value in STATUS_VALUES:
        status.add_metric([value], int(health.get("status") == value))
    yield status
    system = health.get("system") or {}
    memory = system.get("memory") or {}
    yield from _gauge("edge_agent_cpu_percent", "CPU use of the node", system.get("cpu_percent"))
    yield from _gauge("edge_agent_memory_percent", "Memory in use", memory.get("percent"))
    yield from _gauge(
        "edge_agent_temperature_celsius", "SoC temperature", system.get("temperature_c")
    )
    load = system.get("load") or [None]
    yield from _gauge("edge_agent_load1", "1-minute load average", load[0])
    disks = GaugeMetricFamily("edge_agent_disk_used_percent", "Disk use", labels=["mount"])
    for disk in system.get("disks") or []:
        disks.add_metric([str(disk.get("mount"))], float(disk.get("percent", 0)))
    yield disks
    throttled = system.get("throttled")
    if throttled is not None:
        yield from _gauge(
            "edge_agent_under_voltage",
            "1 while under-voltage",
            int(bool(throttled.get("under_voltage"))),
        )
    microk8s = health.get("microk8s") or {}
    yield from _gauge(
        "edge_agent_microk8s_installed", "MicroK8s installed", int(bool(microk8s.get("installed")))
    )
    running = microk8s.get("running")
    yield from _gauge(
        "edge_agent_microk8s_running", "MicroK8s running", None if running is None else int(running)
    )


def _agent_metrics(agent: dict[str, Any] | None) -> Iterator[Metric]:
    if not agent:
        return
    yield from _gauge(
        "edge_agent_rss_bytes", "Resident memory of the agent", agent.get("rss_bytes")
    )
    yield from _gauge(
        "edge_agent_cpu_seconds", "CPU time used by the agent", agent.get("cpu_seconds")
    )
    yield from _gauge(
        "edge_agent_open_fds", "Open file descriptors of the agent", agent.get("open_fds")
    )


# (metric, help, detector block, keys inside it): one figure per detector.
_DETECTOR_GAUGES = (
    ("edge_agent_cert_expiry_days", "Days until the earliest certificate expires", "certs",
     ("days",)),
    ("edge_agent_clock_peer_offset_seconds", "This node's clock minus its peers' (median)",
     "clock", ("peer_offset_s",)),
    ("edge_agent_fsync_p99_ms", "fsync latency p99 on dqlite's filesystem", "storage",
     ("fsync_p99_ms",)),
    ("edge_agent_nodefs_free_percent", "Free space of the kubelet's filesystem", "eviction",
     ("nodefs", "free_pct")),
    ("edge_agent_not_ready_seconds", "How long the node has been NotReady", "readiness",
     ("not_ready_s",)),
)  # fmt: skip


def _detector_metrics(health: dict[str, Any]) -> Iterator[Metric]:
    """One figure per detector, plus each detector's status (absent while it is unknown)."""
    from prometheus_client.core import GaugeMetricFamily  # scrape time

    status = GaugeMetricFamily(
        "edge_agent_detector_status",
        "Detector status: 0 ok, 1 degraded, 2 critical",
        labels=["detector"],
    )
    for name in DETECTOR_BLOCKS:
        rank = (health.get(name) or {}).get("status")
        if rank in STATUS_VALUES:
            status.add_metric([name], STATUS_VALUES.index(rank))
    yield status
    for name, doc, block, path in _DETECTOR_GAUGES:
        value: Any = health.get(block)
        for key in path:
            value = value.get(key) if isinstance(value, dict) else None
        yield from _gauge(name, doc, value)
    synced = (health.get("clock") or {}).get("synced")
    yield from _gauge(
        "edge_agent_clock_synced",
        "1 while the kernel clock is synchronised",
        None if synced is None else int(synced),
    )
    yield from _process_metrics(health.get("microk8s_processes") or {})


def _process_metrics(block: dict[str, Any]) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily  # scrape time

    restarts = GaugeMetricFamily(
        "edge_agent_microk8s_process_restarts",
        "Restarts of a MicroK8s process within the restart window",
        labels=["process"],
    )
    rss = GaugeMetricFamily(
        "edge_agent_microk8s_process_rss_bytes", "Resident memory of a MicroK8s process",
        labels=["process"],
    )  # fmt: skip
    for name, entry in block.items():
        if isinstance(entry, dict):
            restarts.add_metric([name], float(entry.get("restarts") or 0))
            rss.add_metric([name], float(entry.get("rss_bytes") or 0))
    yield restarts
    yield rss


def _ha_metrics(ha: dict[str, Any]) -> Iterator[Metric]:
    quorum = ha.get("quorum") or {}
    yield from _gauge(
        "edge_agent_ha_quorum_margin", "Voters that may still fail", quorum.get("margin")
    )
    yield from _gauge("edge_agent_ha_voters_reachable", "Reachable voters", quorum.get("reachable"))


class Metrics:
    """A private registry (no default process collectors: the agent reports its own figures).

    `observe` keeps the collection-duration histogram as plain counts; the registry is built at
    the first `exposition`, and every scrape after that reads the same counts.
    """

    def __init__(self, state: AgentState) -> None:
        self._state = state
        self._registry: CollectorRegistry | None = None
        self._bucket_counts = [0] * (len(COLLECTION_BUCKETS) + 1)
        self._sum = 0.0

    def observe_collection(self, seconds: float) -> None:
        """One health sample took `seconds` (the `edge_agent_health_collection_seconds` data)."""
        self._bucket_counts[bisect.bisect_left(COLLECTION_BUCKETS, seconds)] += 1
        self._sum += seconds

    def collection_histogram(self) -> Metric:
        from prometheus_client.core import HistogramMetricFamily  # scrape time

        cumulative, buckets = 0, []
        for bound, count in zip(
            (*COLLECTION_BUCKETS, float("inf")), self._bucket_counts, strict=True
        ):
            cumulative += count
            buckets.append((str(bound) if bound != float("inf") else "+Inf", float(cumulative)))
        return HistogramMetricFamily(
            "edge_agent_health_collection_seconds",
            "Time to take one health sample",
            buckets=buckets,
            sum_value=self._sum,
        )

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            from prometheus_client import CollectorRegistry  # first scrape

            self._registry = CollectorRegistry()
            self._registry.register(cast("Collector", _StateCollector(self._state, self)))
        return self._registry

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The scrape body in the format `accept` asks for (text or OpenMetrics) and its type."""
        from prometheus_client.exposition import choose_encoder  # first scrape

        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type
