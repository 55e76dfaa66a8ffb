"""What the retained messages say about a cluster (pure): presence, health and HA per node.

Fed by `send`'s pre-flight, `nodes` and `fleet upgrade` with (topic, payload, receipt time).
Untrusted input: anything that is not a JSON object under a well-formed topic is ignored, and
every field is read defensively. Sparkplug's rule for staleness: once a node's presence says
offline, its last health is STALE, aged by the time it was produced.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agent.link import inbound

LEAVES = ("state", "health", "ha")


@dataclasses.dataclass
class NodeView:
    """The latest retained (or live) state, health and HA messages of one node."""

    name: str
    state: dict[str, Any] | None = None
    health: dict[str, Any] | None = None
    ha: dict[str, Any] | None = None

    @property
    def presence(self) -> str:
        value = (self.state or {}).get("state")
        return value if isinstance(value, str) and value in {"online", "offline"} else "unknown"

    @property
    def online(self) -> bool:
        return self.presence == "online"

    @property
    def health_status(self) -> str | None:
        value = (self.health or {}).get("status")
        return value if isinstance(value, str) else None

    def microk8s(self, key: str) -> Any:
        block = (self.health or {}).get("microk8s")
        return block.get(key) if isinstance(block, dict) else None

    @property
    def node_ready(self) -> bool | None:
        kube = (self.health or {}).get("kube")
        value = kube.get("node_ready") if isinstance(kube, dict) else None
        return value if isinstance(value, bool) else None

    @property
    def kubelet(self) -> str | None:
        kube = (self.health or {}).get("kube")
        value = kube.get("kubelet_version") if isinstance(kube, dict) else None
        return value if isinstance(value, str) else None

    @property
    def role(self) -> str | None:
        value = (self.ha or {}).get("role")
        return value if isinstance(value, str) else None

    @property
    def verdict(self) -> str | None:
        value = (self.ha or {}).get("verdict")
        return value if isinstance(value, str) else None

    @property
    def margin(self) -> int | None:
        quorum = (self.ha or {}).get("quorum")
        value = quorum.get("margin") if isinstance(quorum, dict) else None
        return value if isinstance(value, int) and not isinstance(value, bool) else None

    @property
    def maintenance(self) -> bool:
        return (self.ha or {}).get("maintenance") is True

    def stamp(self, leaf: str) -> float | None:
        body = getattr(self, leaf)
        value = (body or {}).get("ts")
        # Bounded: float(10**400) raises, and no real timestamp is that far out.
        if isinstance(value, int | float) and not isinstance(value, bool) and abs(value) < 1e15:
            return float(value)
        return None

    def offline_since(self) -> float | None:
        return self.stamp("state") if self.presence == "offline" else None


def split_topic(prefix: str, topic: str) -> tuple[str, str, str] | None:
    """`{prefix}/{cluster}/nodes/{node}/{leaf}` -> (cluster, node, leaf), else None."""
    if not topic.startswith(prefix + "/"):
        return None
    parts = topic[len(prefix) + 1 :].split("/")
    if len(parts) != 4 or parts[1] != "nodes" or parts[3] not in LEAVES:
        return None
    return parts[0], parts[2], parts[3]


def decode_object(payload: bytes) -> dict[str, Any] | None:
    # Bounded size and depth, no lone surrogates: the broker's bytes are anyone's (issue 11).
    body = inbound.parse_object(payload)
    return body if isinstance(body, dict) else None


@dataclasses.dataclass
class Roster:
    """Nodes of one cluster, and the names of the other clusters seen under the prefix."""

    prefix: str
    cluster: str
    nodes: dict[str, NodeView] = dataclasses.field(default_factory=dict)
    other_clusters: set[str] = dataclasses.field(default_factory=set)

    def filters(self) -> list[str]:
        """Subscriptions: every cluster's presence (to name them), this cluster's health/HA."""
        base = f"{self.prefix}/{self.cluster}/nodes"
        return [f"{self.prefix}/+/nodes/+/state", f"{base}/+/health", f"{base}/+/ha"]

    def feed(self, topic: str, payload: bytes) -> str | None:
        """Take one message; return the node it updated in this cluster, else None."""
        where = split_topic(self.prefix, topic)
        if where is None:
            return None
        cluster, node, leaf = where
        if cluster != self.cluster:
            if payload:
                self.other_clusters.add(cluster)
            return None
        body = decode_object(payload)
        if body is None:
            return None
        view = self.nodes.setdefault(node, NodeView(node))
        setattr(view, leaf, body)
        return node

    def known(self) -> list[str]:
        """Nodes with a retained presence (a birth or a will) in this cluster."""
        return sorted(name for name, view in self.nodes.items() if view.state is not None)

    def unknown_node_message(self, node: str) -> str:
        known = self.known()
        text = f"no node {node!r} in cluster {self.cluster!r}"
        if known:
            return f"{text} (known: {', '.join(known)})"
        return f"{text} ({self.no_nodes_hint()})"

    def no_nodes_hint(self) -> str:
        if self.other_clusters:
            return f"it has no nodes; clusters seen: {', '.join(sorted(self.other_clusters))}"
        return "no node of any cluster has a retained presence on this broker"


def age_text(seconds: float | None) -> str:
    """`42s`, `7m`, `3h`, `2d`: short, for tables and one-line errors."""
    if seconds is None:
        return "?"
    seconds = max(0.0, seconds)
    for limit, unit, size in ((120, "s", 1), (7200, "m", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / size:.0f}{unit}"
    return f"{seconds / 86400:.0f}d"


def offline_message(view: NodeView, cluster: str, now: float) -> str:
    since = view.offline_since()
    reason = (view.state or {}).get("reason")
    why = f", {reason}" if isinstance(reason, str) and reason else ""
    ago = f" for {age_text(now - since)}" if since is not None else ""
    return f"node {view.name!r} in cluster {cluster!r} is offline{ago}{why}"


def nodes_of(views: Mapping[str, NodeView]) -> list[NodeView]:
    return [views[name] for name in sorted(views)]
