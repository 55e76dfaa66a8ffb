"""Pure reading of snapd's REST answers: the envelope, snap info, changes and error bodies.

snapd wraps every answer in one envelope (`daemon/response.go`):
`{"type": "sync"|"async"|"error", "status-code": N, "status": "...", "result": ..., "change"?}`.
Errors carry `result.message` and `result.kind` (`snap-no-update-available`, ...). Nothing here
does I/O, so every shape recorded in tests/fixtures/snapd is testable without a socket.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

from agent.microk8s.status import MicroK8sFacts

READY_OK = "Done"
"""The one change status that means success; Error, Undone, Hold, Abort all mean failure."""

KUBELITE = "daemon-kubelite"
"""The service that runs every Kubernetes component of a MicroK8s node (control plane or worker)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """One snapd answer, already split into its parts."""

    type: str
    status_code: int
    result: Any
    change: str | None

    @property
    def is_error(self) -> bool:
        return self.type == "error" or self.status_code >= 400


@dataclasses.dataclass(frozen=True, slots=True)
class Refusal:
    """snapd's `{"message", "kind"}` error result, as a value."""

    message: str
    kind: str
    status_code: int


@dataclasses.dataclass(frozen=True, slots=True)
class SnapInfo:
    """The parts of `GET /v2/snaps/{name}` the agent reports."""

    name: str
    version: str | None
    revision: str | None
    channel: str | None
    """The tracking channel (what a refresh without channel would follow)."""
    confinement: str | None
    health: str | None
    """snapctl set-health status: okay, waiting, blocked or error (None: never set)."""
    health_message: str | None
    services: dict[str, bool]
    """Daemon app name -> active."""
    enabled: frozenset[str]
    """Daemon apps that are enabled (a disabled one being inactive is normal)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One snapd change (`GET /v2/changes/{id}`)."""

    id: str
    kind: str
    summary: str
    status: str
    ready: bool
    err: str | None
    done: int
    """Sum of the tasks' progress.done."""
    total: int
    """Sum of the tasks' progress.total."""

    @property
    def ok(self) -> bool:
        return self.ready and self.status == READY_OK

    @property
    def percent(self) -> int | None:
        """How far the change is, from its tasks' progress; None when it has no tasks yet."""
        if self.total <= 0:
            return None
        return min(100, int(100 * self.done / self.total))


def envelope(body: object, http_status: int) -> Envelope:
    """Split an answer; anything that is not a snapd envelope becomes an error envelope."""
    if not isinstance(body, Mapping) or "type" not in body:
        message = f"not a snapd answer (HTTP {http_status})"
        return Envelope("error", max(http_status, 500), {"message": message, "kind": ""}, None)
    code = body.get("status-code")
    status = code if isinstance(code, int) else http_status
    change = body.get("change")
    return Envelope(str(body["type"]), status, body.get("result"), _text(change))


def refusal(env: Envelope) -> Refusal:
    """The message and kind of an error envelope (kind "" when snapd gave none)."""
    result = env.result if isinstance(env.result, Mapping) else {}
    message = _text(result.get("message")) or f"snapd answered HTTP {env.status_code}"
    return Refusal(message, _text(result.get("kind")) or "", env.status_code)


def parse_snap(result: object) -> SnapInfo:
    """Read the `result` of `GET /v2/snaps/{name}`; missing fields are None, never guessed."""
    info = result if isinstance(result, Mapping) else {}
    raw_health = info.get("health")
    health: Mapping[str, Any] = raw_health if isinstance(raw_health, Mapping) else {}
    services: dict[str, bool] = {}
    enabled: set[str] = set()
    for app in info.get("apps") or ():
        if not isinstance(app, Mapping) or not app.get("daemon") or not app.get("name"):
            continue
        name = str(app["name"])
        services[name] = app.get("active") is True
        if app.get("enabled") is True:
            enabled.add(name)
    return SnapInfo(
        name=_text(info.get("name")) or "",
        version=_text(info.get("version")),
        revision=_text(info.get("revision")),
        channel=_text(info.get("tracking-channel")) or _text(info.get("channel")),
        confinement=_text(info.get("confinement")),
        health=_text(health.get("status")),
        health_message=_text(health.get("message")),
        services=services,
        enabled=frozenset(enabled),
    )


def parse_change(result: object) -> Change:
    """Read the `result` of `GET /v2/changes/{id}`, summing the tasks' progress."""
    change = result if isinstance(result, Mapping) else {}
    done = total = 0
    for task in change.get("tasks") or ():
        progress = task.get("progress") if isinstance(task, Mapping) else None
        if isinstance(progress, Mapping):
            done += _count(progress.get("done"))
            total += _count(progress.get("total"))
    return Change(
        id=_text(change.get("id")) or "",
        kind=_text(change.get("kind")) or "",
        summary=_text(change.get("summary")) or "",
        status=_text(change.get("status")) or "Unknown",
        ready=change.get("ready") is True,
        err=_text(change.get("err")),
        done=done,
        total=total,
    )


def running(info: SnapInfo) -> bool | None:
    """MicroK8s runs when kubelite and every other enabled daemon are active; None: no daemons."""
    if not info.services:
        return None
    if not info.services.get(KUBELITE, False):
        return False
    return all(info.services.get(name, False) for name in info.enabled)


def to_facts(info: SnapInfo) -> MicroK8sFacts:
    """The MicroK8s facts snapd can tell (HA and addons are not among them)."""
    error = None
    if info.health not in (None, "okay"):
        error = f"snap health {info.health}: {info.health_message or 'no message'}"
    is_running = running(info)
    if is_running is False:
        stopped = sorted(n for n in info.enabled | {KUBELITE} if not info.services.get(n))
        stopped_text = f"inactive services: {', '.join(stopped)}"
        error = stopped_text if error is None else f"{error}; {stopped_text}"
    return MicroK8sFacts(
        installed=True,
        running=is_running,
        version=info.version,
        revision=info.revision,
        channel=info.channel,
        confinement=info.confinement,
        services=dict(info.services),
        error=error,
    )


def _text(value: object) -> str | None:
    if isinstance(value, str) and value:
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return None


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0
