"""Memory budget (`agent.max_rss_mib`): shed optional collectors, then restart cleanly.

Pure policy. A Pi that runs MicroK8s has little memory to spare, so an agent that grows (a leak,
a burst of peers) first drops what it can live without, and if that is not enough it restarts
itself with a clean `offline` rather than wait for the OOM killer. Memory that grows while the
broker is away (the outbox of undelivered statuses) is expected, so the budget never restarts the
agent while it is disconnected.
"""

from __future__ import annotations

import dataclasses
import enum

MIB = 1024 * 1024
# Optional collectors, dropped in this order (cheapest loss of information first).
OPTIONAL_COLLECTORS = ("kube-facts", "ha-peers", "extra-disks")
# Consecutive over-budget samples after shedding before a restart.
RESTART_AFTER_SAMPLES = 3


class Action(enum.Enum):
    NONE = "none"
    SHED = "shed"
    RESTART = "restart"


@dataclasses.dataclass(slots=True)
class Budget:
    max_rss_mib: float
    shed: list[str] = dataclasses.field(default_factory=list)
    over_count: int = 0

    @property
    def enabled(self) -> bool:
        return self.max_rss_mib > 0

    def check(self, rss_bytes: int, *, connected: bool) -> Action:
        """Decide what to do after a sample whose agent RSS is `rss_bytes`."""
        if not self.enabled or rss_bytes <= self.max_rss_mib * MIB:
            self.over_count = 0
            return Action.NONE
        if len(self.shed) < len(OPTIONAL_COLLECTORS):
            self.shed.append(OPTIONAL_COLLECTORS[len(self.shed)])
            return Action.SHED
        self.over_count += 1
        if self.over_count >= RESTART_AFTER_SAMPLES and connected:
            return Action.RESTART
        return Action.NONE

    def reason(self, rss_bytes: int) -> str:
        return f"rss {rss_bytes / MIB:.1f} MiB over budget {self.max_rss_mib:g} MiB"
