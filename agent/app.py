"""Wiring: build the components, run them as named root tasks, shut down within a bound.

Contract of the root tasks (kopf's): they run forever; if one ends or crashes, the agent stops
with a non-zero exit so the service manager restarts it. SIGTERM/SIGINT set a flag; the
stop-watcher publishes a clean offline and ends the group. A second signal forces the exit.

A half-dead agent is worse than a dead one (MQTT and HTTP down, systemd sees it running): once a
stop or a root task's failure starts the shutdown, a timer on the event loop ends the process
with EXIT_LINGERED if the group has not finished within SHUTDOWN_DEADLINE_S, whatever task
refuses to die (issue 11: Python 3.11's `asyncio.wait_for` could swallow a cancellation).
"""

from __future__ import annotations

import asyncio
import errno
import importlib
import os
import signal
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

from agent import __version__
from agent.commands import dispatch
from agent.commands.executor import Executor
from agent.errors import ConfigError
from agent.health.metrics import Metrics
from agent.health.monitor import HealthMonitor
from agent.health.state import AgentState, LinkView
from agent.link.mqtt import Link
from agent.link.topics import Topics
from agent.logs import get_logger
from agent.microk8s.backends import select
from agent.microk8s.backends.base import Backend
from agent.platform import systemd_notify
from agent.settings import Settings

if TYPE_CHECKING:
    from agent.ha.monitor import HaMonitor

log = get_logger(__name__)

# The link gets this long to publish `offline` and disconnect after a stop request.
LINK_STOP_TIMEOUT_S = 5.0
# A running command gets this long to finish after a stop request before it is cancelled.
COMMAND_DRAIN_S = 3.0
EXIT_FORCED = 130
EXIT_LINGERED = 70
SHUTDOWN_DEADLINE_S = COMMAND_DRAIN_S + LINK_STOP_TIMEOUT_S + 7.0
"""From the start of a shutdown to a forced exit: the drain and the link's goodbye, with room."""


class GracefulExit(Exception):
    """Raised by the stop-watcher to end the task group after a clean shutdown."""


class TaskEnded(Exception):
    """An eternal root task returned: a bug, so the agent stops and is restarted."""


class Agent:
    """The assembled components, kept on one object so tests can drive them in-process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.topics = Topics(settings.mqtt.prefix, settings.node.cluster, settings.node.name)
        self.state = AgentState()
        self.metrics = Metrics(self.state)
        self.link = Link(
            settings.mqtt,
            self.topics,
            state_dir=Path(settings.state.dir),
            agent_version=__version__,
        )
        self.stop_requested = asyncio.Event()
        self.restart_reason: str | None = None
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self.dispatcher: dispatch.Dispatcher | None = None
        self.ha_monitor: HaMonitor | None = None
        self.state.link = self._link_view
        self.state.tasks_alive = self._dead_tasks
        self._deadline: asyncio.TimerHandle | None = None

    def _link_view(self) -> LinkView:
        link = self.link
        return LinkView(
            connected=link.connected,
            session=link.session,
            published_total=link.published_total,
            reconnects_total=link.reconnects_total,
            outbox_size=link.outbox_size,
            last_error=link.last_error,
            dropped_total=link.dropped_total,
        )

    def _dead_tasks(self) -> list[str]:
        return [name for name, task in self.tasks.items() if task.done()]

    async def run(self) -> None:
        """Run until `stop_requested` is set; raises on a task failure."""
        if self.settings.http.enabled:
            check_http_port(self.settings.http.bind, self.settings.http.port)
        backend = await select.choose(self.settings.microk8s, node=self.settings.node.name)
        log.info("backend_selected", backend=backend.name, node=self.settings.node.name)
        monitor = HealthMonitor(
            self.settings,
            backend=backend,
            link=self.link,
            state=self.state,
            metrics=self.metrics,
            on_budget_restart=self.request_restart,
        )
        self.link.on_connect(monitor.on_connect)
        monitor.attach()
        roots: dict[str, Callable[[], Coroutine[Any, Any, None]]] = {
            "mqtt-link": self.link.run,
            "health-monitor": monitor.run,
            "microk8s-facts": monitor.run_facts,
        }
        if monitor.detectors is not None:
            roots["health-detectors"] = monitor.run_detectors
        if self.settings.http.enabled:
            from agent.health import endpoint  # aiohttp.web: only with the endpoint on

            roots["http-endpoint"] = lambda: endpoint.serve(self.settings, self.state, self.metrics)
        self.dispatcher = dispatch.build(
            self.settings,
            topics=self.topics,
            link=self.link,
            backend=backend,
            state=self.state,
            request_publish=monitor.request_publish,
            facts=lambda: monitor.facts,
        )
        # Intake answers requests (rejections, duplicates, status); the worker runs mutating
        # commands one at a time.
        roots["command-intake"] = self.dispatcher.run_intake
        roots["command-worker"] = self.dispatcher.run_worker
        if self.settings.ha.enabled:
            roots["ha-monitor"] = self._ha_monitor(backend, monitor, self.dispatcher.executor).run
        notifier = systemd_notify.Notifier()
        if notifier.enabled:
            roots["systemd-notify"] = lambda: self._notify(notifier)
        try:
            async with asyncio.TaskGroup() as group:
                for name, factory in roots.items():
                    self.tasks[name] = group.create_task(_eternal(name, factory(), self), name=name)
                group.create_task(self._stop_watcher(), name="stop-watcher")
        except* GracefulExit:
            log.info("agent_stopped", node=self.settings.node.name)
        finally:
            if self._deadline is not None:
                self._deadline.cancel()
            await _close_kube_sessions()

    def arm_shutdown_deadline(self, why: str) -> None:
        """Exit the process with EXIT_LINGERED unless the shutdown ends within the deadline."""
        if self._deadline is not None:
            return
        self._deadline = asyncio.get_running_loop().call_later(
            SHUTDOWN_DEADLINE_S, _exit_lingered, why, list(self.tasks.values())
        )

    def _ha_monitor(
        self, backend: Backend, monitor: HealthMonitor, executor: Executor
    ) -> HaMonitor:
        """The HA loop, wired to the executor: its quorum gates, and maintenance during refresh.

        Imported here: a node with `ha.enabled = false` never loads the HA modules.
        """
        from agent.ha.monitor import HaMonitor, kube_sources

        node_names, readyz = kube_sources(self.settings)
        ha_monitor = HaMonitor(
            self.settings,
            backend=backend,
            link=self.link,
            state=self.state,
            facts=lambda: monitor.facts,
            node_names=node_names,
            readyz=readyz,
        )
        ha_monitor.attach()
        executor.upgrade_gate = ha_monitor.upgrade_gate
        executor.join_gate = lambda args: ha_monitor.join_gate(
            args.host, worker=args.worker, force=args.force
        )
        executor.on_maintenance = self._set_maintenance
        self.ha_monitor = ha_monitor
        return ha_monitor

    def _set_maintenance(self, reason: str | None) -> None:
        self.state.maintenance = reason
        if self.ha_monitor is not None:
            self.ha_monitor.wake()

    async def _notify(self, notifier: systemd_notify.Notifier) -> None:
        """systemd's READY/STATUS/WATCHDOG/STOPPING (Type=notify units; not in the snap)."""
        await notifier.run(
            alive=lambda: not self._dead_tasks(),
            status=lambda: systemd_notify.link_status(self.link.connected, self.link.session),
            stopping=self.stop_requested,
            changed=self.link.changed,
        )

    def request_restart(self, reason: str) -> None:
        """Stop cleanly, then let the caller re-execute the agent (see cli)."""
        self.restart_reason = reason
        self.stop_requested.set()

    async def _stop_watcher(self) -> None:
        await self.stop_requested.wait()
        self.arm_shutdown_deadline("stop requested")
        log.info("shutdown_requested", node=self.settings.node.name, restart=self.restart_reason)
        if self.dispatcher is not None:
            # Before the link stops, so the last statuses still reach the broker.
            await self.dispatcher.drain(COMMAND_DRAIN_S)
        self.link.stop(self.restart_reason or "shutdown")
        link_task = self.tasks.get("mqtt-link")
        if link_task is not None:
            done, _ = await asyncio.wait({link_task}, timeout=LINK_STOP_TIMEOUT_S)
            if not done:
                log.warning("link_stop_timed_out", timeout_s=LINK_STOP_TIMEOUT_S)
        raise GracefulExit


def check_http_port(bind: str, port: int) -> None:
    """Fail before anything starts when the endpoint's port is taken: one line, no traceback.

    Raises:
        ConfigError: naming `http.port` (the CLI prints it on one line and exits 2).
    """
    family = socket.AF_INET6 if ":" in bind else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        # As TCPSite(reuse_address=True): a port in TIME_WAIT is free, a listening one is not.
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((bind, port))
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return  # anything else is the endpoint's to report when it starts
            raise ConfigError(
                [f"http.port: {bind}:{port} is already in use; choose another http.port"]
            ) from exc


async def _eternal(name: str, coro: Awaitable[None], agent: Agent) -> None:
    try:
        await coro
    except Exception:
        # The group now cancels the others; they get a bound to do so.
        agent.arm_shutdown_deadline(f"root task {name!r} failed")
        raise
    if name == "mqtt-link" and agent.stop_requested.is_set():
        return
    agent.arm_shutdown_deadline(f"root task {name!r} ended")
    raise TaskEnded(f"root task {name!r} ended unexpectedly")


def _exit_lingered(why: str, tasks: list[asyncio.Task[Any]]) -> None:
    alive = sorted(t.get_name() for t in tasks if not t.done())
    log.error("shutdown_lingered", why=why, alive_tasks=alive, deadline_s=SHUTDOWN_DEADLINE_S)
    os._exit(EXIT_LINGERED)


def install_signal_handlers(agent: Agent) -> None:
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        if agent.stop_requested.is_set():
            log.warning("shutdown_forced", signal=signal.Signals(signum).name)
            os._exit(EXIT_FORCED)
        log.info("signal_received", signal=signal.Signals(signum).name)
        agent.stop_requested.set()

    # SIGHUP (a closed terminal, `systemctl kill -s HUP`) is a clean stop too: never a silent
    # death without the retained `offline`.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(signum, on_signal, signum)


def preload(settings: Settings) -> None:
    """Import now the HTTP-speaking parts this configuration runs (they import aiohttp).

    The CLI does this under cli._lean_imports (no CA bundle, no MIME table), so that aiohttp's
    import-time SSL contexts stay small; `run` would otherwise import them at first use.
    """
    names = []
    if settings.microk8s.backend in ("auto", "snap"):
        names.append("agent.microk8s.snapd")
    if settings.http.enabled:
        names.append("agent.health.endpoint")
    if settings.ha.enabled:
        names.append("agent.ha.probes")
    for name in names:
        importlib.import_module(name)


async def _close_kube_sessions() -> None:
    # The Kubernetes client is loaded only by the snap backend or the HA checks; a node that
    # never needed it must not import it (and aiohttp with it) just to close nothing.
    kubeapi = sys.modules.get("agent.microk8s.kubeapi")
    if kubeapi is not None:
        await kubeapi.close_shared()


async def main(settings: Settings) -> str | None:
    """Run the agent; returns why it must be restarted, or None after a normal stop."""
    agent = Agent(settings)
    install_signal_handlers(agent)
    await agent.run()
    return agent.restart_reason
