"""systemd's notify protocol with the standard library: READY=1, WATCHDOG=1, STATUS=, STOPPING=1.

One datagram per message to $NOTIFY_SOCKET (a path, or `@name` for the abstract namespace). No
libsystemd binding (a C build on the Pi) and no `sdnotify` (Latin-1 only, swallows every error).
A failed send (AppArmor denies the socket in a snap without daemon-notify, a full queue) is logged
once and ignored: notifying is a courtesy to the service manager, never a reason to stop.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from collections.abc import Callable, Mapping

from agent.logs import get_logger

log = get_logger(__name__)

STATUS_POLL_S = 1.0
"""How often the link state is looked at for a STATUS= update."""


def socket_address(value: str) -> str | None:
    """The sendto() address for $NOTIFY_SOCKET; None when unset or of a kind we do not speak."""
    if value.startswith("@"):
        return "\0" + value[1:]
    if value.startswith("/"):
        return value
    return None


def watchdog_interval_s(environ: Mapping[str, str], pid: int) -> float | None:
    """Half of $WATCHDOG_USEC (systemd's advice), or None when the watchdog is not for us."""
    usec = environ.get("WATCHDOG_USEC", "")
    if not usec.isdigit() or int(usec) == 0:
        return None
    owner = environ.get("WATCHDOG_PID", "")
    if owner and owner != str(pid):
        return None
    return int(usec) / 2 / 1_000_000


def link_status(connected: bool, session: int) -> str:
    """The STATUS= line `systemctl status` shows."""
    return f"{'connected' if connected else 'disconnected'}, session {session}"


class Notifier:
    """Sends notifications to the service manager, when there is one."""

    def __init__(self, environ: Mapping[str, str] | None = None, pid: int | None = None) -> None:
        env = os.environ if environ is None else environ
        self.address = socket_address(env.get("NOTIFY_SOCKET", ""))
        self.watchdog_s = watchdog_interval_s(env, os.getpid() if pid is None else pid)
        self._warned = False

    @property
    def enabled(self) -> bool:
        return self.address is not None

    def send(self, *fields: str) -> bool:
        """One datagram of newline-separated KEY=VALUE fields; False when not delivered."""
        if self.address is None:
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
                # Never block the event loop on a busy service manager.
                sock.setblocking(False)
                sock.sendto("\n".join(fields).encode(), self.address)
        except OSError as exc:
            if not self._warned:
                self._warned = True
                log.warning("sd_notify_failed", error=str(exc), fields=fields[0])
            return False
        return True

    async def run(
        self,
        *,
        alive: Callable[[], bool],
        status: Callable[[], str],
        stopping: asyncio.Event,
        changed: asyncio.Event | None = None,
    ) -> None:
        """Root task: READY=1 at once, STATUS= on change, WATCHDOG=1 while `alive()`,
        STOPPING=1 when `stopping` is set; then it waits to be cancelled with its siblings.

        With `changed` (set by whoever changes what `status()` says; cleared here), the task
        sleeps until a change, a stop or the next watchdog ping: every 15 s under the unit's
        WatchdogSec=30s instead of every second. Without it, `status()` is polled every
        STATUS_POLL_S. READY=1 does not wait for the broker: a broker outage at boot must not
        fail the unit.
        """
        last = status()
        self.send("READY=1", f"STATUS={last}")
        log.info("sd_notify_ready", watchdog_s=self.watchdog_s)
        last_ping = time.monotonic()
        if changed is None:
            tick: float | None = min(STATUS_POLL_S, self.watchdog_s or STATUS_POLL_S)
        else:
            tick = self.watchdog_s
        while not stopping.is_set():
            await _first_of(stopping, changed, tick)
            if changed is not None:
                changed.clear()
            now_status = status()
            if now_status != last:
                last = now_status
                self.send(f"STATUS={last}")
            due = self.watchdog_s is not None and time.monotonic() - last_ping >= self.watchdog_s
            if due and alive() and not stopping.is_set():
                self.send("WATCHDOG=1")
                last_ping = time.monotonic()
        self.send("STOPPING=1", "STATUS=stopping")
        await asyncio.Event().wait()


async def _first_of(
    stopping: asyncio.Event, changed: asyncio.Event | None, tick: float | None
) -> None:
    """Until either event is set or `tick` seconds pass (None: no time limit)."""
    waiters = [asyncio.ensure_future(stopping.wait())]
    if changed is not None:
        waiters.append(asyncio.ensure_future(changed.wait()))
    try:
        # asyncio.wait, not wait_for: it never swallows a cancellation (see HealthMonitor.run).
        await asyncio.wait(waiters, timeout=tick, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
