"""Stuck NotReady: the node stays NotReady although the network is back.

After a network outage MicroK8s nodes have been seen to stay NotReady until kubelite is
restarted. When the broker is connected and peers are heard from, the network is fine, so a
NotReady that lasts longer than `health.not_ready_warn_s` is that case: the reason says so, the
operator's cue to restart kubelite. Pure: the monitor passes in the facts and the clock.
"""

from __future__ import annotations

from typing import Any

from agent.health.verdict import DEGRADED, OK, Finding


class NotReadyWatch:
    def __init__(self, warn_s: float) -> None:
        self._warn_s = warn_s
        self._since: float | None = None

    def assess(
        self, node_ready: object, connected: bool, peers: int, now: float
    ) -> tuple[dict[str, Any] | None, list[Finding]]:
        """The `readiness` block; None while readiness is unknown (no Kubernetes API answer)."""
        if node_ready is not True and node_ready is not False:
            self._since = None
            return None, []
        if node_ready:
            self._since = None
            return {"status": OK, "not_ready_s": 0, "peers": peers}, []
        if self._since is None:
            self._since = now
        lasted = now - self._since
        findings: list[Finding] = []
        if lasted > self._warn_s and connected and peers > 0:
            findings.append(
                (
                    DEGRADED,
                    f"node NotReady for {lasted:.0f} s while the broker and {peers} peers are "
                    "reachable (restart kubelite)",
                )
            )
        block = {"status": findings[0][0] if findings else OK, "not_ready_s": round(lasted)}
        return {**block, "peers": peers}, findings
