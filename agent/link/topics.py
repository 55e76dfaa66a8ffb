"""Per-node topic builders (pure). `R` = `{prefix}/{cluster}/nodes/{node}`."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True, slots=True)
class Topics:
    prefix: str
    cluster: str
    node: str

    @property
    def root(self) -> str:
        return f"{self.prefix}/{self.cluster}/nodes/{self.node}"

    @property
    def state(self) -> str:
        return f"{self.root}/state"

    @property
    def health(self) -> str:
        return f"{self.root}/health"

    @property
    def ha(self) -> str:
        return f"{self.root}/ha"

    @property
    def cmd(self) -> str:
        return f"{self.root}/cmd"

    @property
    def invalid(self) -> str:
        return f"{self.root}/cmd/_invalid"

    def cmd_status(self, command_id: str) -> str:
        return f"{self.root}/cmd/{command_id}"

    def peer(self, node: str, leaf: str) -> str:
        """One leaf of one node of this cluster (an exact topic, no wildcard)."""
        return f"{self.prefix}/{self.cluster}/nodes/{node}/{leaf}"

    def peers(self, leaf: str) -> str:
        """Filter for one leaf (`state`, `health`, `ha`) of every node of this cluster."""
        return f"{self.prefix}/{self.cluster}/nodes/+/{leaf}"

    def node_of(self, topic: str) -> str | None:
        """The node name in a topic of this cluster's tree, or None."""
        head = f"{self.prefix}/{self.cluster}/nodes/"
        if not topic.startswith(head):
            return None
        node, _, _ = topic[len(head) :].partition("/")
        return node or None
