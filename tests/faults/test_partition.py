"""A network partition between agent and broker, made with a TCP proxy the test controls."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker, agent_config, watch
from tests.faults.netproxy import NetProxy

pytestmark = pytest.mark.broker

HEALTH = "microk8s/lab/nodes/test-node/health"
STATE = "microk8s/lab/nodes/test-node/state"


async def test_loss_then_blackhole(tmp_path: Path, broker: Broker, spawn_agent) -> None:
    proxy = await NetProxy(broker.host, broker.port).start()
    try:
        via_proxy = Broker(tmp_path, port=proxy.port)
        config = agent_config(
            tmp_path, via_proxy, health={"interval_s": 0.5}, mqtt={"keepalive_s": 5}
        )
        agent = spawn_agent(config)
        async with watch(broker, HEALTH, STATE) as w:
            _, first = await w.wait_for(lambda t, p: t == HEALTH)
            # 30 % loss for 6 s: slower, but health keeps flowing on the same session.
            proxy.lossy(0.3)
            mark = len(w.messages)
            await asyncio.sleep(6)
            during_loss = [p for t, p in _after(w, mark) if t == HEALTH]
            assert len(during_loss) >= 3, "health stopped under 30 % loss"
            assert {p["session"] for p in during_loss} == {first["session"]}
            assert proxy.held_chunks > 0
            proxy.heal()
            # A 10 s blackhole: nothing arrives, the agent notices (keepalive) and does not crash.
            proxy.blackhole()
            await asyncio.sleep(0.6)
            mark = len(w.messages)
            await asyncio.sleep(10)
            assert not [p for t, p in _after(w, mark) if t == HEALTH]
            healed_at = time.monotonic()
            proxy.heal()
            _, back = await w.wait_for(
                lambda t, p: t == HEALTH and p["session"] > first["session"],
                timeout_s=15,
                after=mark,
            )
            print(f"health back {time.monotonic() - healed_at:.2f} s after the partition healed")
        assert agent.process is not None and agent.process.poll() is None
        assert back["seq"] <= 1
        events = [line.get("event") for line in agent.log_lines()]
        assert "mqtt_disconnected" in events or "mqtt_connect_failed" in events
        assert "agent_crashed" not in events
    finally:
        await proxy.close()


def _after(w, mark: int) -> list[tuple[str, Any]]:
    return [(t, p) for t, p, _ in w.messages[mark:]]
