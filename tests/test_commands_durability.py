"""Exactly once across restarts, kill -9, shutdown and broker outages; a journal that cannot work.

The agent runs as a subprocess against a real mosquitto; the fake microk8s logs every argv it is
run with, which is how "never executed twice" is checked.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from pathlib import Path

import aiomqtt
import pytest

from tests.commands_helpers import (
    CMD,
    ROOT,
    Keys,
    commands_config,
    envelope,
    fake_env,
    fakes_alive,
    kill_fakes,
    mutating_calls,
    ready,
    send,
    signed,
    status_of,
    terminal,
)
from tests.conftest import AgentProcess, Broker, watch

pytestmark = pytest.mark.broker

Spawn = Callable[..., AgentProcess]
DNS = {"name": "dns", "action": "enable"}


async def test_a_repeated_id_is_answered_not_run_even_after_a_restart(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    config = commands_config(tmp_path, broker, keys)
    first = spawn_agent(config, env=fake_env(tmp_path))
    command = signed(keys, "addon", DNS)
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        await send(w, command)
        done = await terminal(w, command["id"])
        assert done["status"] == "succeeded"
        first.signal(signal.SIGTERM)
        assert first.wait() == 0
    spawn_agent(config, env=fake_env(tmp_path))
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        await send(w, command)
        _, again = await w.wait_for(lambda t, p: t == f"{CMD}/{command['id']}")
        assert again == {**done, "duplicate": True}
    assert mutating_calls(tmp_path) == [["enable", "dns"]]


async def test_kill_9_mid_command_is_reported_interrupted_and_never_rerun(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    config = commands_config(tmp_path, broker, keys)
    crashed = spawn_agent(config, env=fake_env(tmp_path, FAKE_MICROK8S_SLEEP="enable=30"))
    command = signed(keys, "addon", DNS)
    try:
        async with watch(broker, "microk8s/#") as w:
            await ready(w)
            await send(w, command)
            await w.wait_for(
                lambda t, p: t == f"{CMD}/{command['id']}" and "enable dns" in p.get("detail", "")
            )
            while ["enable", "dns"] not in mutating_calls(tmp_path):
                await asyncio.sleep(0.05)
            crashed.stop()  # SIGKILL: no chance to write anything
        async with watch(broker, "microk8s/#") as w:
            spawn_agent(config, env=fake_env(tmp_path))
            interrupted = await terminal(w, command["id"])
            assert (interrupted["status"], interrupted["error"]) == ("failed", "interrupted")
            assert interrupted["verb"] == "addon"
            # The broker redelivers, an operator retries: still not run again.
            await send(w, command)
            again = await w.wait_for(
                lambda t, p: t == f"{CMD}/{command['id']}" and p.get("duplicate") is True
            )
            assert again[1]["error"] == "interrupted"
    finally:
        kill_fakes(tmp_path / "argv.log")
    assert mutating_calls(tmp_path) == [["enable", "dns"]]


async def test_shutdown_cancels_the_running_command_and_kills_its_group(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    config = commands_config(tmp_path, broker, keys)
    env = fake_env(tmp_path, FAKE_MICROK8S_SLEEP="enable=30", FAKE_MICROK8S_SPAWN_CHILD="enable=1")
    agent = spawn_agent(config, env=env)
    command = signed(keys, "addon", DNS)
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        await send(w, command)
        await status_of(w, command["id"], "running")
        while len(fakes_alive(tmp_path / "argv.log")) < 2:  # the fake and its grandchild
            await asyncio.sleep(0.05)
        queued = signed(keys, "addon", {"name": "helm", "action": "enable"})
        await send(w, queued)
        await status_of(w, queued["id"], "accepted")
        agent.signal(signal.SIGTERM)
        assert agent.wait(timeout_s=20) == 0
        await w.wait_for(lambda t, p: t == f"{ROOT}/state" and p["state"] == "offline")
        assert fakes_alive(tmp_path / "argv.log") == []
        # The queued one never started and says so at once.
        not_started = await terminal(w, queued["id"])
        assert not_started["status"] == "failed"
        assert not_started["error"].startswith("not started: the agent shut down")
        # Next start: reported interrupted.
        spawn_agent(config, env=fake_env(tmp_path))
        interrupted = await terminal(w, command["id"])
        assert interrupted["error"] == "interrupted"
    assert mutating_calls(tmp_path) == [["enable", "dns"]]


def observer(broker: Broker) -> aiomqtt.Client:
    """A client with a persistent session: the broker queues for it while it is away."""
    return aiomqtt.Client(broker.host, broker.port, identifier="observer", clean_session=False)


async def test_results_published_during_a_broker_outage_arrive_after_it(
    tmp_path: Path, make_broker: Callable[..., Broker], spawn_agent: Spawn
) -> None:
    persistent = f"persistence true\npersistence_location {tmp_path}/\n"
    broker = make_broker(persistent)
    keys = Keys(tmp_path / "keys")
    config = commands_config(tmp_path, broker, keys)
    spawn_agent(config, env=fake_env(tmp_path, FAKE_MICROK8S_SLEEP="enable=1.5"))
    command = signed(keys, "addon", DNS)
    topic = f"{CMD}/{command['id']}"
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        async with observer(broker) as client:
            await client.subscribe(topic, qos=1)
        await send(w, command)
        await status_of(w, command["id"], "running")
    port = broker.port
    broker.stop()
    await asyncio.sleep(2.5)  # the command ends while the broker is away
    broker = make_broker(persistent, port=port)
    statuses: list[str] = []
    async with observer(broker) as client, asyncio.timeout(30):
        async for message in client.messages:
            statuses.append(json.loads(message.payload)["status"])
            if statuses[-1] == "succeeded":
                break
    assert "succeeded" in statuses


async def test_unusable_journal_refuses_mutations_but_not_health(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    (tmp_path / "state" / "commands.journal").mkdir(parents=True)  # unreadable as a file
    spawn_agent(commands_config(tmp_path, broker, keys), env=fake_env(tmp_path))
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        command = signed(keys, "addon", DNS)
        await send(w, command)
        rejected = await terminal(w, command["id"])
        assert rejected["status"] == "rejected"
        assert rejected["error"].startswith("cannot record the command in the journal (cannot read")
        status = envelope("status")
        await send(w, status)
        assert (await terminal(w, status["id"]))["status"] == "succeeded"
        mark = len(w.messages)
        await w.wait_for(lambda t, p: t == f"{ROOT}/health", after=mark)
    assert mutating_calls(tmp_path) == []
