"""Bounds on the HTTP endpoint's connections, in front of aiohttp's protocol.

aiohttp closes a keep-alive connection after its idle timeout, but not one that never finishes
its request: 1,100 idle or half-sent TCP connections held 1,100 file descriptors and the agent
died with EMFILE (issue 11). This wraps the server's protocol factory: at `limit` open
connections the one that has been quiet the longest is closed to make room (so a client that
hoards connections cannot lock out a probe that just arrived), a connection that sends nothing
for `idle_s` is closed, and none lives longer than `lifetime_s` (a slow trickle of header bytes
cannot hold one forever). The endpoint's handlers answer from memory in microseconds, so none
of this costs a real client more than a reconnect.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from agent.logs import DropLog

MAX_CONNECTIONS = 64
IDLE_S = 10.0
LIFETIME_S = 60.0


class ConnectionGuard:
    """A protocol factory for `loop.create_server` that bounds `inner`'s connections."""

    def __init__(
        self,
        inner: Callable[[], asyncio.Protocol],
        *,
        limit: int | None = None,
        idle_s: float | None = None,
        lifetime_s: float | None = None,
    ) -> None:
        """Args default to the module's MAX_CONNECTIONS, IDLE_S and LIFETIME_S."""
        self._inner = inner
        self.limit = MAX_CONNECTIONS if limit is None else limit
        self.idle_s = IDLE_S if idle_s is None else idle_s
        self.lifetime_s = LIFETIME_S if lifetime_s is None else lifetime_s
        self.open: set[_Guarded] = set()
        self.evicted = DropLog("http_connection_evicted")
        self.expired = DropLog("http_connection_closed_idle")

    @property
    def active(self) -> int:
        return len(self.open)

    def __call__(self) -> asyncio.Protocol:
        if len(self.open) >= self.limit:
            quietest = min(self.open, key=lambda c: c.last)
            self.evicted.drop(time.monotonic(), limit=self.limit)
            quietest.close()
        return _Guarded(self._inner(), self)


class _Guarded(asyncio.Protocol):
    """Forwards everything to aiohttp's handler; closes on idleness or old age."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.BaseTransport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._opened = self.last = time.monotonic()
        # Counted from creation: the factory is called just before connection_made.
        guard.open.add(self)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        self._arm()
        self._inner.connection_made(transport)

    def close(self) -> None:
        self._guard.open.discard(self)
        if self._transport is not None:
            _abort(self._transport)

    def _arm(self) -> None:
        now = time.monotonic()
        due = min(self.last + self._guard.idle_s, self._opened + self._guard.lifetime_s)
        self._timer = asyncio.get_running_loop().call_later(max(0.0, due - now), self._check)

    def _check(self) -> None:
        now = time.monotonic()
        idle = now - self.last >= self._guard.idle_s
        if idle or now - self._opened >= self._guard.lifetime_s:
            self._guard.expired.drop(now, reason="idle" if idle else "lifetime")
            self.close()
            return
        self._arm()

    def data_received(self, data: bytes) -> None:
        self.last = time.monotonic()
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received()

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._guard.open.discard(self)
        if self._timer is not None:
            self._timer.cancel()
        self._transport = None
        self._inner.connection_lost(exc)

    def __getattr__(self, name: str) -> Any:
        # Anything else aiohttp may ask of its protocol (none known) goes to the real one.
        return getattr(self._inner, name)


def _abort(transport: asyncio.BaseTransport) -> None:
    """Close now, without flushing (a TCP server's transports are `asyncio.Transport`)."""
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()
