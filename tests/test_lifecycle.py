"""Lifecycle: a crashed task stops the agent with exit 1; a second signal forces the exit."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
from pathlib import Path

import pytest

from tests.conftest import Broker, agent_config, free_port, watch

pytestmark = pytest.mark.broker

STATE = "microk8s/lab/nodes/test-node/state"


async def test_crashed_task_exits_nonzero_with_reason(
    tmp_path: Path, broker: Broker, spawn_agent
) -> None:
    # The endpoint cannot bind an address this host does not have (TEST-NET-1; nothing is
    # dialled), so its task dies at start: a real crash of a root task.
    config = agent_config(tmp_path, broker, http={"bind": "192.0.2.1", "port": free_port()})
    async with watch(broker, STATE) as w:
        agent = spawn_agent(config)
        code = await asyncio.to_thread(agent.wait, 40)
        assert code == 1
        crashed = [line for line in agent.log_lines() if line.get("event") == "agent_crashed"]
        assert crashed, agent.log_path.read_text()
        assert "cannot assign requested address" in crashed[0]["error"].lower()
        # Whatever the broker last saw for this node, it is not a stale "online".
        await asyncio.sleep(0.5)
        states = [p for t, p, _ in w.messages if t == STATE]
        assert not states or states[-1]["state"] == "offline"


async def test_busy_http_port_is_one_line_and_exit_2(
    tmp_path: Path, broker: Broker, spawn_agent
) -> None:
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    try:
        agent = spawn_agent(agent_config(tmp_path, broker, http_port=port))
        assert await asyncio.to_thread(agent.wait, 40) == 2
        output = agent.log_path.read_text().strip().splitlines()
        assert output == [
            f"edge-agent: http.port: 127.0.0.1:{port} is already in use; choose another http.port"
        ]
    finally:
        blocker.close()


async def test_sighup_is_a_clean_stop(tmp_path: Path, broker: Broker, spawn_agent) -> None:
    config = agent_config(tmp_path, broker)
    async with watch(broker, STATE) as w:
        agent = spawn_agent(config)
        await w.wait_for(lambda t, p: t == STATE and p["state"] == "online", timeout_s=30)
        agent.signal(signal.SIGHUP)
        assert await asyncio.to_thread(agent.wait, 30) == 0
        await w.wait_for(
            lambda t, p: t == STATE and p["state"] == "offline" and p["reason"] == "shutdown",
            timeout_s=10,
        )


async def test_second_signal_forces_exit(tmp_path: Path, spawn_agent) -> None:
    # A "broker" that accepts TCP and never answers CONNACK keeps the link busy connecting, so a
    # graceful stop would wait for the link's bound; the second signal must cut that short.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    fake = Broker(tmp_path, port=silent.getsockname()[1])
    try:
        config = agent_config(tmp_path, fake, http_port=free_port())
        agent = spawn_agent(config)
        # The handlers are installed before the backend is chosen; a loaded machine can take
        # longer than any fixed sleep to get there.
        for _ in range(300):
            if any(line.get("event") == "backend_selected" for line in agent.log_lines()):
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(0.5)
        agent.signal(signal.SIGTERM)
        await asyncio.sleep(0.3)
        started = time.monotonic()
        agent.signal(signal.SIGTERM)
        code = await asyncio.to_thread(agent.wait, 10)
        assert code == 130
        assert time.monotonic() - started < 3
        events = [line.get("event") for line in agent.log_lines()]
        assert "shutdown_forced" in events
    finally:
        silent.close()
