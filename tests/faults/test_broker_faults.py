"""Faults of the broker: killed and restarted; the agent survives and health resumes at once."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from tests.conftest import Broker, agent_config, watch

pytestmark = pytest.mark.broker

STATE = "microk8s/lab/nodes/test-node/state"
HEALTH = "microk8s/lab/nodes/test-node/health"


async def test_broker_killed_and_restarted(tmp_path: Path, broker: Broker, spawn_agent) -> None:
    config = agent_config(tmp_path, broker, health={"interval_s": 0.5})
    agent = spawn_agent(config)
    async with watch(broker, HEALTH) as w:
        _, before = await w.wait_for(lambda t, p: t == HEALTH and p["seq"] >= 2)
    broker.kill()
    # Down long enough for the backoff to grow past the probe interval.
    await asyncio.sleep(8)
    assert agent.process is not None and agent.process.poll() is None, "agent died with the broker"
    broker.start()
    returned = time.monotonic()
    async with watch(broker, HEALTH, STATE) as w:
        _, after = await w.wait_for(
            lambda t, p: t == HEALTH and p["session"] > before["session"], timeout_s=3.0
        )
        resumed_s = time.monotonic() - returned
    # A new session, seq restarted: the consumer sees the gap (session+1, ts jump of the outage).
    assert after["session"] == before["session"] + 1
    assert after["seq"] <= 1
    assert after["ts"] - before["ts"] >= 8
    print(f"health resumed {resumed_s:.2f} s after the broker returned")
    events = [line.get("event") for line in agent.log_lines()]
    assert "mqtt_broker_back" in events
    assert "agent_crashed" not in events
