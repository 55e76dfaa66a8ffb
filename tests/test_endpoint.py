"""The HTTP endpoint's handlers over real TCP, driven by a hand-set AgentState."""

from __future__ import annotations

import asyncio
import contextlib
import os
import resource
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp

from agent import config
from agent.health import conn_guard, endpoint
from agent.health.metrics import Metrics
from agent.health.state import AgentState, LinkView
from tests.conftest import Broker, agent_config, free_port, wait_port
from tests.paths import REPO


@contextlib.asynccontextmanager
async def serving(state: AgentState) -> AsyncIterator[str]:
    port = free_port()
    settings = config.load(
        None, {"EDGE_AGENT_HTTP_PORT": str(port), "EDGE_AGENT_HEALTH_INTERVAL_S": "1"}
    )
    task = asyncio.create_task(endpoint.serve(settings, state, Metrics(state)))
    base = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{base}/healthz"):
                        break
                await asyncio.sleep(0.02)
        yield base
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_healthz_503_names_dead_tasks() -> None:
    state = AgentState()
    state.tasks_alive = lambda: ["health-monitor"]
    async with (
        serving(state) as base,
        aiohttp.ClientSession() as http,
        http.get(f"{base}/healthz") as response,
    ):
        assert response.status == 503
        assert (await response.json())["dead_tasks"] == ["health-monitor"]


async def test_readyz_503_then_200() -> None:
    state = AgentState()
    async with serving(state) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 503
            assert "no health sample yet" in (await response.json())["reasons"]
        state.link = lambda: LinkView(connected=True, session=3)
        state.record_health({"status": "ok", "system": {}, "microk8s": {}}, 0.01, time.monotonic())
        async with http.get(f"{base}/readyz") as response:
            assert response.status == 200


async def test_status_and_metrics_reflect_state() -> None:
    state = AgentState()
    state.link = lambda: LinkView(connected=True, session=4, published_total=12, reconnects_total=2)
    state.record_health(
        {
            "status": "degraded",
            "system": {
                "cpu_percent": 5.0,
                "temperature_c": 81.5,
                "disks": [{"mount": "/", "percent": 50.0}],
            },
            "microk8s": {"installed": True, "running": False},
            "agent": {"rss_bytes": 1000, "cpu_seconds": 1.5, "open_fds": 9},
        },
        0.02,
        time.monotonic(),
    )
    state.record_command({"id": "c-1", "status": "succeeded"})
    async with serving(state) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/status") as response:
            body = await response.json()
        assert body["connection"]["session"] == 4
        assert body["health"]["status"] == "degraded"
        assert body["recent_commands"] == [{"id": "c-1", "status": "succeeded"}]
        async with http.get(f"{base}/metrics") as response:
            text = await response.text()
    assert "edge_agent_mqtt_reconnects_total 2.0" in text
    assert "edge_agent_mqtt_messages_published_total 12.0" in text
    assert 'edge_agent_health_status{status="degraded"} 1.0' in text
    assert "edge_agent_temperature_celsius 81.5" in text
    assert 'edge_agent_disk_used_percent{mount="/"} 50.0' in text
    assert "edge_agent_microk8s_running 0.0" in text
    assert "edge_agent_open_fds 9.0" in text


async def test_idle_connections_cannot_exhaust_the_agents_fds(
    tmp_path: Path, broker: Broker
) -> None:
    # Issue 11, finding 3: 1,100 idle connections took every fd (EMFILE). Here the agent runs
    # with 256 fds and 400 idle or half-sent connections are held open; /healthz must answer.
    port = free_port()
    path = agent_config(tmp_path, broker, http_port=port)
    log = (tmp_path / "agent.log").open("wb")

    def low_fd_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, 256))

    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(path)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
        preexec_fn=low_fd_limit,  # noqa: PLW1509 - only setrlimit, before exec
    )
    held: list[socket.socket] = []
    try:
        wait_port("127.0.0.1", port, timeout_s=20)
        for i in range(400):
            sock = socket.create_connection(("127.0.0.1", port), timeout=5)
            if i % 2:
                sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")  # never finished
            held.append(sock)
        async with aiohttp.ClientSession() as http:
            for _ in range(3):
                async with http.get(f"http://127.0.0.1:{port}/healthz") as response:
                    assert response.status == 200
        assert agent.poll() is None
        open_fds = len(os.listdir(f"/proc/{agent.pid}/fd"))
        assert open_fds < 200, open_fds
    finally:
        for sock in held:
            sock.close()
        agent.kill()
        agent.wait(timeout=10)
        log.close()


async def test_a_quiet_connection_is_closed() -> None:
    guard_idle = conn_guard.IDLE_S
    conn_guard.IDLE_S = 0.3
    try:
        async with serving(AgentState()) as base:
            port = int(base.rpartition(":")[2])
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"GET /healthz HTTP/1.1\r\n")  # half a request, then nothing
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed by the agent
            writer.close()
    finally:
        conn_guard.IDLE_S = guard_idle
