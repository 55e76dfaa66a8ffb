"""The seam between the agent and MicroK8s: one interface, several ways to reach it.

A strictly confined agent cannot exec `microk8s` (MICROK8S.md §4.2), so the verbs go through
interchangeable backends: `cli` (exec `microk8s`/`snap` on classic hosts), `snap` (snapd REST,
cluster agent, Kubernetes API) and `none` (nothing reachable; reads say so, writes refuse).
Executors and the health monitor depend only on this module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Protocol, runtime_checkable

from agent.errors import BackendUnavailable
from agent.microk8s.status import MicroK8sFacts

Progress = Callable[[str], Awaitable[None]]
"""Publishes a `running` status update whose `detail` is the given text."""


@dataclasses.dataclass(frozen=True, slots=True)
class Outcome:
    """How a mutating backend call ended; failures are values, ready for the wire."""

    ok: bool
    exit_code: int | None
    """The process exit code, or None when no process ran (API backends, spawn failures)."""
    output: str
    """Tail of the output, at most 4 KiB, secrets already masked."""
    error: str | None
    """Why it failed, for a person; None when ok."""
    timed_out: bool = False
    result: dict[str, Any] | None = dataclasses.field(default=None, hash=False)
    """Verb-specific structured result (e.g. the new version after a refresh)."""


class Backend(Protocol):
    """What the agent can ask of MicroK8s on this node.

    Mutating calls return an Outcome rather than raising for anything MicroK8s itself reports
    (non-zero exit, timeout); BackendError is for "this backend cannot do that at all".
    """

    name: str
    """"cli", "snap" or "none"."""

    async def facts(self) -> MicroK8sFacts:
        """Current facts; never raises: unknowns are None and `error` says why."""
        ...

    async def version(self) -> tuple[str | None, str | None]:
        """(version, revision) of the installed snap. Raises BackendError."""
        ...

    async def join(self, url: str, *, worker: bool, progress: Progress) -> Outcome: ...

    async def addon(
        self, name: str, action: str, args: Sequence[str], *, progress: Progress
    ) -> Outcome:
        """Enable or disable (`action`) an addon; `args` go to the addon's script."""
        ...

    async def refresh(self, channel: str, *, progress: Progress) -> Outcome: ...

    async def cordon(self, node: str, *, progress: Progress) -> Outcome: ...

    async def drain(self, node: str, *, progress: Progress) -> Outcome: ...

    async def uncordon(self, node: str, *, progress: Progress) -> Outcome: ...

    async def node_ready(self, node: str) -> tuple[bool | None, str | None]:
        """(Ready condition, kubelet version) of a Kubernetes node; (None, None) when unknown.

        Unknown is normal while the API server restarts during an upgrade, so callers poll.
        Raises BackendError only when the backend cannot ask at all.
        """
        ...

    async def remove_node(self, name: str) -> Outcome:
        """`microk8s remove-node <name> --force`: drop a dead member from dqlite and Kubernetes.

        `name` is a node name or its IP, validated by the caller. Raises BackendError when the
        backend cannot remove nodes at all (the error says what the operator must run instead).
        """
        ...


@runtime_checkable
class ReportsKube(Protocol):
    """Optional for a backend: it can fill the health message's `kube` section."""

    async def kube_facts(self) -> dict[str, Any] | None:
        """Node Ready/conditions/kubelet version and API server readiness; never raises."""
        ...


class NoBackend:
    """Stands in when no backend can reach MicroK8s: health reports why, commands are refused."""

    name: str = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    async def facts(self) -> MicroK8sFacts:
        return MicroK8sFacts(installed=False, running=None, error=self.reason)

    async def version(self) -> tuple[str | None, str | None]:
        raise self._unavailable()

    async def join(self, url: str, *, worker: bool, progress: Progress) -> Outcome:
        raise self._unavailable()

    async def addon(
        self, name: str, action: str, args: Sequence[str], *, progress: Progress
    ) -> Outcome:
        raise self._unavailable()

    async def refresh(self, channel: str, *, progress: Progress) -> Outcome:
        raise self._unavailable()

    async def cordon(self, node: str, *, progress: Progress) -> Outcome:
        raise self._unavailable()

    async def drain(self, node: str, *, progress: Progress) -> Outcome:
        raise self._unavailable()

    async def uncordon(self, node: str, *, progress: Progress) -> Outcome:
        raise self._unavailable()

    async def node_ready(self, node: str) -> tuple[bool | None, str | None]:
        raise self._unavailable()

    async def remove_node(self, name: str) -> Outcome:
        raise self._unavailable()

    def _unavailable(self) -> BackendUnavailable:
        return BackendUnavailable(
            f"no MicroK8s backend available: {self.reason}", kind="unavailable"
        )
