"""What the agent knows right now, shared by the loops (writers) and the endpoint (reader).

One writer per field and a single event loop, so no locks. Pure: no I/O.
"""

from __future__ import annotations

import collections
import dataclasses
import time
from collections.abc import Callable
from typing import Any

RECENT_COMMANDS = 20


@dataclasses.dataclass(slots=True)
class LinkView:
    """The MQTT link's figures, copied by the link owner so readers need not import transport."""

    connected: bool = False
    session: int = 0
    published_total: int = 0
    reconnects_total: int = 0
    outbox_size: int = 0
    last_error: str | None = None
    dropped_total: int = 0
    """Messages given up as poison (refused, or lost with the connection POISON_ATTEMPTS times)."""


@dataclasses.dataclass(slots=True)
class AgentState:
    started_at: float = dataclasses.field(default_factory=time.time)
    last_health: dict[str, Any] | None = None
    last_health_monotonic: float | None = None
    health_published_total: int = 0
    collection_seconds_last: float | None = None
    last_ha: dict[str, Any] | None = None
    # Set (to a reason) by the executor while a refresh restarts this node's MicroK8s, so the HA
    # verdict says "maintenance" and peers do not count the restart as a failure.
    maintenance: str | None = None
    link: Callable[[], LinkView] = LinkView
    tasks_alive: Callable[[], list[str]] = list
    recent_commands: collections.deque[dict[str, Any]] = dataclasses.field(
        default_factory=lambda: collections.deque(maxlen=RECENT_COMMANDS)
    )
    shed_collectors: list[str] = dataclasses.field(default_factory=list)

    def record_health(self, snapshot: dict[str, Any], duration_s: float, now: float) -> None:
        self.last_health = snapshot
        self.last_health_monotonic = now
        self.collection_seconds_last = duration_s

    def health_age_s(self, now: float) -> float | None:
        if self.last_health_monotonic is None:
            return None
        return now - self.last_health_monotonic

    def record_command(self, status: dict[str, Any]) -> None:
        """Keep the latest status per command id, newest last."""
        for index, known in enumerate(self.recent_commands):
            if known.get("id") == status.get("id"):
                del self.recent_commands[index]
                break
        self.recent_commands.append(status)


def readiness(state: AgentState, *, interval_s: float, now: float) -> list[str]:
    """Reasons the agent is not ready; empty when ready.

    Fresh means the last sample is younger than two intervals plus 5 s of slack, so one slow
    collection does not flap readiness.
    """
    reasons: list[str] = []
    if not state.link().connected:
        reasons.append("not connected to the MQTT broker")
    age = state.health_age_s(now)
    limit = 2 * interval_s + 5
    if age is None:
        reasons.append("no health sample yet")
    elif age > limit:
        reasons.append(f"last health sample is {age:.1f} s old (limit {limit:.1f} s)")
    return reasons
