"""The dashboard's watcher on every broker of the interop matrix.

RabbitMQ replays retained messages to exact subscriptions only (docs/brokers.md): a node heard
from live must still show its retained presence, fetched through the watcher's exact replay.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from agent.operator.dashboard import server
from agent.settings import MqttSettings
from tests.conftest import free_port, wait_port, watch
from tests.interop.conftest import BrokerFor
from tests.interop.test_brokers import PAIR_IDS, PAIRS, _as_broker, _version

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@contextlib.asynccontextmanager
async def dashboard(mqtt: MqttSettings, cluster: str) -> AsyncIterator[str]:
    options = server.DashboardOptions(port=free_port())
    task = asyncio.create_task(server.serve(mqtt, cluster, options, f"dash-{cluster}"))
    try:
        await asyncio.to_thread(wait_port, "127.0.0.1", options.port, 10)
        yield f"http://127.0.0.1:{options.port}/api/fleet"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def fleet_when(url: str, check: Any, timeout_s: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as session:
        while True:
            async with session.get(url) as answer:
                body: dict[str, Any] = await answer.json()
            if check(body) or time.monotonic() > deadline:
                return body
            await asyncio.sleep(0.2)


@pytest.mark.parametrize(("kind", "protocol"), PAIRS, ids=PAIR_IDS)
async def test_retained_presence_of_a_node_heard_live(
    kind: str, protocol: int, broker_for: BrokerFor
) -> None:
    broker = broker_for(kind)
    cluster = f"dash{protocol}"
    base = f"microk8s/{cluster}/nodes/pi-02"
    birth = {"state": "online", "session": 4, "ts": time.time(), "agent_version": "9.9.9"}
    async with watch(_as_broker(broker), protocol=_version(protocol), identifier="pub") as w:
        await w.publish(f"{base}/state", json.dumps(birth), qos=1, retain=True)
        mqtt = MqttSettings(host=broker.host, port=broker.port, protocol=protocol)
        async with dashboard(mqtt, cluster) as url:
            # Connected means subscribed (the watcher reports it after the SUBACKs).
            await fleet_when(url, lambda body: body["broker"]["connected"])
            health = {"status": "ok", "ts": time.time(), "reasons": []}
            await w.publish(f"{base}/health", json.dumps(health), qos=1)
            body = await fleet_when(
                url, lambda b: bool(b["nodes"]) and b["nodes"][0]["presence"] == "online"
            )
    rows = body["nodes"]
    assert [(r["name"], r["presence"], r["agent_version"]) for r in rows] == [
        ("pi-02", "online", "9.9.9")
    ]
