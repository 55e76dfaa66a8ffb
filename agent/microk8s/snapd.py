"""The snapd REST adapter: `/run/snapd.socket`, HTTP/1.1 over a unix socket (MICROK8S.md §4.4).

The only module that talks to snapd. Needs the super-privileged `snapd-control` plug and root for
anything that changes the system (POST/PUT); reads are open. aiohttp's exceptions stop here and
become SnapdError; snapd's own refusals become SnapdError too, with snapd's `kind`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

from agent.errors import BackendError
from agent.logs import get_logger
from agent.microk8s import snapd_model
from agent.microk8s.snapd_model import Change, Envelope, SnapInfo

log = get_logger(__name__)

SNAP = "microk8s"
DEFAULT_TIMEOUT_S = 10.0
"""Per request; snapd answers from its state in milliseconds, long work is a change to poll."""

ChangeWatcher = Callable[[Change], Awaitable[None]]


class SnapdError(BackendError):
    """snapd could not be reached, or refused; `kind` is snapd's error kind when it gave one."""

    def __init__(self, message: str, *, kind: str = "", status_code: int | None = None) -> None:
        super().__init__(message, kind=kind)
        self.status_code = status_code


class ChangeTimedOut(SnapdError):
    """A change was still not ready at the deadline (it may still finish: snapd owns it)."""

    def __init__(self, change: Change | None, change_id: str, limit_s: float) -> None:
        status = change.status if change is not None else "unknown"
        super().__init__(
            f"snapd change {change_id} still {status} after {limit_s:g} s", kind="timeout"
        )
        self.change = change


class SnapdClient:
    """A few snapd calls about one snap; a short-lived HTTP session per call."""

    def __init__(self, socket_path: str, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.socket_path = socket_path
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def snap(self, name: str = SNAP) -> SnapInfo:
        """`GET /v2/snaps/{name}`.

        Raises:
            SnapdError: unreachable, or refused (kind `snap-not-installed` when it is absent).
        """
        env = await self._call("GET", f"/v2/snaps/{name}")
        return snapd_model.parse_snap(env.result)

    async def act(self, instruction: dict[str, Any], name: str = SNAP) -> str:
        """`POST /v2/snaps/{name}` with a snap instruction; returns the change id.

        Raises:
            SnapdError: unreachable, or refused (e.g. snap-no-update-available).
        """
        env = await self._call("POST", f"/v2/snaps/{name}", instruction)
        return _change_id(env)

    async def set_conf(self, conf: dict[str, Any], name: str = SNAP) -> str:
        """`PUT /v2/snaps/{name}/conf`; returns the change that runs the snap's configure hook.

        Raises:
            SnapdError: unreachable or refused.
        """
        env = await self._call("PUT", f"/v2/snaps/{name}/conf", conf)
        return _change_id(env)

    async def change(self, change_id: str) -> Change:
        """`GET /v2/changes/{id}`.

        Raises:
            SnapdError: unreachable or refused.
        """
        env = await self._call("GET", f"/v2/changes/{change_id}")
        return snapd_model.parse_change(env.result)

    async def wait(
        self, change_id: str, *, poll_s: float, timeout_s: float, watch: ChangeWatcher
    ) -> Change:
        """Poll a change until it is ready; `watch` sees every poll.

        snapd may be briefly unreachable while it restarts itself (when snapd or core refresh
        in the same run), so failed polls are retried until the deadline.

        Raises:
            ChangeTimedOut: not ready at the deadline.
        """
        deadline = time.monotonic() + timeout_s
        last: Change | None = None
        while True:
            try:
                current = await self.change(change_id)
            except SnapdError as exc:
                log.debug("snapd_change_poll_failed", change=change_id, error=str(exc))
            else:
                last = current
                await watch(current)
                if current.ready:
                    return current
            if time.monotonic() + poll_s > deadline:
                raise ChangeTimedOut(last, change_id, timeout_s)
            await asyncio.sleep(poll_s)

    async def _call(self, method: str, path: str, body: dict[str, Any] | None = None) -> Envelope:
        """One request; raises SnapdError for transport failures and for error envelopes."""
        try:
            connector = aiohttp.UnixConnector(path=self.socket_path)
            async with (
                aiohttp.ClientSession(connector=connector, timeout=self._timeout) as session,
                session.request(method, f"http://localhost{path}", json=body) as response,
            ):
                data = await response.json(content_type=None)
                http_status = response.status
        except TimeoutError as exc:
            # snapd took the request (or part of it) and did not answer: it may have acted.
            raise SnapdError(
                f"snapd at {self.socket_path} did not answer: {_why(exc, self._timeout.total)}",
                kind="no-answer",
            ) from exc
        except (aiohttp.ClientError, ValueError, OSError) as exc:
            raise SnapdError(
                f"snapd at {self.socket_path} unreachable: {_why(exc, self._timeout.total)}",
                kind="unreachable",
            ) from exc
        env = snapd_model.envelope(data, http_status)
        if env.is_error:
            refusal = snapd_model.refusal(env)
            raise SnapdError(refusal.message, kind=refusal.kind, status_code=refusal.status_code)
        return env


def _change_id(env: Envelope) -> str:
    if env.change is None:
        raise SnapdError(f"snapd accepted but named no change (HTTP {env.status_code})")
    return env.change


def _why(exc: BaseException, limit_s: float | None = None) -> str:
    """A short reason; aiohttp's connector errors wrap the OSError that says what happened.

    A hung snapd says "timed out", as a hung `microk8s status` does in the cli backend's facts.
    """
    cause = getattr(exc, "os_error", None) or exc
    if isinstance(cause, OSError) and cause.strerror:
        return cause.strerror.lower()
    if isinstance(exc, TimeoutError):
        return f"timed out after {limit_s:g} s" if limit_s else "timed out"
    return str(exc) or type(exc).__name__
