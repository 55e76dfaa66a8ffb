"""The HTTP endpoint's handlers over real TCP, driven by a hand-set AgentState."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

import aiohttp

from agent import config
from agent.health import endpoint
from agent.health.metrics import Metrics
from agent.health.state import AgentState, LinkView
from tests.conftest import free_port


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
