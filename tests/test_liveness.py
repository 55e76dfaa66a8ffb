"""No half-dead agent (issue 11, finding 8).

On Python 3.11, `asyncio.wait_for(event.wait(), t)` returns instead of raising when the task is
cancelled in the same loop iteration as the event is set: the HA and health loops then kept
running after their TaskGroup had cancelled them, with MQTT and HTTP already down. The race is
reproduced deterministically here (set + cancel in one step). And whatever task still refuses to
die, the agent exits non-zero within a deadline instead of lingering.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from agent.ha.monitor import HaMonitor
from agent.health.state import AgentState
from agent.link.mqtt import Link
from agent.link.topics import Topics
from agent.settings import MqttSettings, Settings, StateSettings
from tests.conftest import free_port
from tests.paths import REPO


def settings(tmp_path: Path) -> Settings:
    # A port where nothing listens: the link's backoff probes fail at once.
    mqtt = MqttSettings(host="127.0.0.1", port=free_port())
    return dataclasses.replace(Settings(), mqtt=mqtt, state=StateSettings(dir=str(tmp_path)))


def link_for(s: Settings) -> Link:
    topics = Topics(s.mqtt.prefix, s.node.cluster, s.node.name)
    return Link(s.mqtt, topics, state_dir=Path(s.state.dir), agent_version="test")


async def assert_cancelled(task: asyncio.Task[Any]) -> None:
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, 5)


async def test_ha_wait_is_cancelled_even_when_woken_at_the_same_time(tmp_path: Path) -> None:
    s = settings(tmp_path)
    backend: Any = None
    monitor = HaMonitor(
        s, backend=backend, link=link_for(s), state=AgentState(), facts=lambda: None
    )
    task = asyncio.create_task(monitor._wait_until(time.monotonic() + 60))
    await asyncio.sleep(0.05)
    monitor._wake.set()
    task.cancel()
    await assert_cancelled(task)


async def test_link_backoff_is_cancelled_even_when_stopped_at_the_same_time(
    tmp_path: Path,
) -> None:
    link = link_for(settings(tmp_path))
    task = asyncio.create_task(link._backoff(60))
    await asyncio.sleep(0.2)  # past the first (refused) probe, waiting on the stop event
    link.stop()
    task.cancel()
    await assert_cancelled(task)


SCRIPT = """
import asyncio, sys
from agent import app, logs
from agent.settings import Settings

async def main():
    agent = app.Agent(Settings())

    async def stubborn():
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                pass  # what the 3.11 wait_for race amounts to

    agent.tasks["stubborn"] = asyncio.create_task(stubborn(), name="stubborn")
    agent.arm_shutdown_deadline("test")
    await asyncio.sleep(0.05)
    agent.tasks["stubborn"].cancel()
    await agent.tasks["stubborn"]

logs.configure("info", "json")
app.SHUTDOWN_DEADLINE_S = 0.5
asyncio.run(main())
"""


def test_a_task_that_refuses_to_die_does_not_keep_the_process_alive(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(SCRIPT)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 70, result.stderr
    assert '"shutdown_lingered"' in result.stdout
    assert '"alive_tasks": ["stubborn"]' in result.stdout
