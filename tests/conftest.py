"""Shared test fixtures: a real mosquitto per test, agents run in-process or as subprocesses.

Brokers are started on free loopback ports with the configuration each test needs and stopped
afterwards; nothing here depends on the machine's own broker on 1883.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.paths import FAKES, REPO

# Fixtures of the snap backend's fakes (snapd, cluster agent, Kubernetes API).
pytest_plugins = ["tests.fakes.fixtures"]

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(host: str, port: int, timeout_s: float = 5.0, *, up: bool = True) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=0.2):
                if up:
                    return
        except OSError:
            if not up:
                return
        time.sleep(0.02)
    raise TimeoutError(f"{host}:{port} did not come {'up' if up else 'down'}")


class Broker:
    """A private mosquitto; `extra` is appended to the listener configuration."""

    def __init__(self, workdir: Path, extra: str = "", port: int | None = None) -> None:
        self.host = "127.0.0.1"
        self.port = port or free_port()
        self.workdir = workdir
        self.extra = extra
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"mosquitto-{self.port}.log"

    def config_text(self) -> str:
        base = f"listener {self.port} {self.host}\n"
        if "allow_anonymous" not in self.extra:
            base += "allow_anonymous true\n"
        return base + "persistence false\nuser root\n" + self.extra

    def start(self) -> Broker:
        if not Path(MOSQUITTO).exists():
            pytest.fail(
                "mosquitto is not installed: run the README's test command (it installs it)"
            )
        conf = self.workdir / f"mosquitto-{self.port}.conf"
        conf.write_text(self.config_text())
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=log, stderr=log)
        wait_port(self.host, self.port)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=5)
        self.process = None
        wait_port(self.host, self.port, up=False)

    def kill(self) -> None:
        if self.process is not None:
            self.process.kill()
            self.process.wait(timeout=5)
        self.process = None


@pytest.fixture
def make_broker(tmp_path: Path) -> Iterator[Callable[..., Broker]]:
    started: list[Broker] = []

    def factory(extra: str = "", port: int | None = None) -> Broker:
        broker = Broker(tmp_path, extra, port).start()
        started.append(broker)
        return broker

    yield factory
    for broker in started:
        broker.kill()


@pytest.fixture
def broker(make_broker: Callable[..., Broker]) -> Broker:
    return make_broker()


def agent_config(
    tmp_path: Path, broker: Broker, *, http_port: int | None = None, **sections: dict[str, Any]
) -> Path:
    """Write a TOML config for a test agent: fast interval, private state dir, no MicroK8s."""
    values: dict[str, dict[str, Any]] = {
        "node": {"name": "test-node", "cluster": "lab"},
        "mqtt": {"host": broker.host, "port": broker.port, "keepalive_s": 5},
        # The detectors read this machine (a container's clock is never NTP-synchronised) and
        # start a certificate probe: tests of them turn them on (tests/test_detectors_agents.py).
        "health": {
            "interval_s": 0.5,
            "sysfs_root": str(tmp_path / "no-sysfs"),
            "detectors_enabled": False,
        },
        "http": {"port": http_port or free_port()},
        # Never the machine's own snapd: `auto` would pick it and hold its microk8s refreshes.
        "microk8s": {
            "backend": "auto",
            "cli": str(tmp_path / "no-microk8s"),
            "snapd_socket": str(tmp_path / "no-snapd.socket"),
        },
        "ha": {"enabled": False},
        "state": {"dir": str(tmp_path / "state")},
        "log": {"format": "json", "level": "debug"},
        # In-process agents would budget pytest's own RSS; tests/test_budget.py sets one.
        "agent": {"max_rss_mib": 0},
    }
    for name, overrides in sections.items():
        values.setdefault(name, {}).update(overrides)
    from agent.config import to_toml

    path = tmp_path / "agent.toml"
    path.write_text(to_toml(values))
    return path


class AgentProcess:
    """The agent as a real subprocess (`python -m agent run`)."""

    def __init__(self, config: Path, log_path: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log_path
        self.env = {**os.environ, "PATH": f"{FAKES}:{os.environ.get('PATH', '')}", **(env or {})}
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--config", str(self.config)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=REPO,
                env=self.env,
            )
        return self

    def signal(self, signum: int) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait(self, timeout_s: float = 15) -> int:
        assert self.process is not None
        return self.process.wait(timeout=timeout_s)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(timeout=5)

    def log_lines(self) -> list[dict[str, Any]]:
        lines = []
        for raw in self.log_path.read_text(errors="replace").splitlines():
            with contextlib.suppress(json.JSONDecodeError):
                lines.append(json.loads(raw))
        return lines


@pytest.fixture
def spawn_agent(tmp_path: Path) -> Iterator[Callable[..., AgentProcess]]:
    agents: list[AgentProcess] = []

    def factory(config: Path, env: dict[str, str] | None = None) -> AgentProcess:
        agent = AgentProcess(config, tmp_path / f"agent-{len(agents)}.log", env).start()
        agents.append(agent)
        return agent

    yield factory
    for agent in agents:
        agent.stop()


class Watcher:
    """Collects messages from a real broker; `wait_for` blocks until a predicate matches."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.messages: list[tuple[str, Any, bool]] = []
        self._changed = asyncio.Event()

    async def _pump(self) -> None:
        async for message in self.client.messages:
            payload: Any = message.payload
            raw = (
                bytes(payload) if isinstance(payload, bytes | bytearray) else str(payload).encode()
            )
            try:
                decoded: Any = json.loads(raw)
            except (ValueError, RecursionError):  # hostile payloads too (test_hostile_neighbour)
                decoded = raw
            self.messages.append((message.topic.value, decoded, bool(message.retain)))
            self._changed.set()

    async def wait_for(
        self, predicate: Callable[[str, Any], bool], timeout_s: float = 10.0, *, after: int = 0
    ) -> tuple[str, Any]:
        """The first message (from index `after`) for which predicate(topic, payload) holds."""
        deadline = time.monotonic() + timeout_s
        while True:
            for topic, payload, _ in self.messages[after:]:
                if predicate(topic, payload):
                    return topic, payload
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                seen = [(t, p) for t, p, _ in self.messages[after:]][-10:]
                raise TimeoutError(f"no matching message within {timeout_s} s; last seen: {seen}")
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), remaining)

    def payloads(self, suffix: str) -> list[Any]:
        return [p for t, p, _ in self.messages if t.endswith(suffix)]

    async def publish(self, topic: str, payload: bytes | str, **kwargs: Any) -> None:
        await self.client.publish(topic, payload, **kwargs)


@contextlib.asynccontextmanager
async def watch(broker: Broker, *topics: str, **client_kwargs: Any) -> AsyncIterator[Watcher]:
    client = aiomqtt.Client(broker.host, broker.port, **client_kwargs)
    async with client:
        for topic in topics or ("#",):
            await client.subscribe(topic, qos=1)
        watcher = Watcher(client)
        pump = asyncio.create_task(watcher._pump())
        try:
            yield watcher
        finally:
            pump.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
                await pump


@contextlib.asynccontextmanager
async def running_agent(path: Path) -> AsyncIterator[Any]:
    """The whole agent in-process (same event loop as the test), stopped cleanly on exit."""
    from agent import config as config_mod
    from agent.app import Agent

    agent = Agent(config_mod.load(path, {}))
    task = asyncio.create_task(agent.run())
    try:
        yield agent
    finally:
        agent.stop_requested.set()
        await asyncio.wait_for(task, 10)
