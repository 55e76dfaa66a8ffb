"""Soak in CI: ~1,000 fast health cycles with commands mixed in must not grow memory or fds.

The agent runs in-process so that tracemalloc sees every Python allocation it makes: traced memory
is compared after a warm-up and at the end, at quiet moments (no command in flight, after a full
collection), which is far steadier than RSS. The driver keeps O(1) state, so what grows is the
agent's. Commands' ids live in the journal for their replay window, so the window is made short
(commands.max_age_s = 2) to be in steady state after the warm-up, as a node is after minutes.
The full-length subprocess soak is bench/soak.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gc
import json
import os
import time
import tracemalloc
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from agent import config as config_mod
from agent.app import Agent
from agent.commands.journal import PRUNE_EVERY_S, Journal
from tests.commands_helpers import CMD, NODE, TERMINAL, Keys, envelope
from tests.conftest import Broker, agent_config, free_port
from tests.paths import FAKES, MICROK8S_CLI

pytestmark = pytest.mark.broker

WARMUP_CYCLES = 200
CYCLES = 800
GROWTH_LIMIT = 512 * 1024
HALF_LIMIT = GROWTH_LIMIT // 2
ADDON_EVERY = 10


@dataclasses.dataclass
class Driver:
    """Sends signed commands and waits for their terminal status; keeps no history."""

    client: aiomqtt.Client
    keys: Keys
    http: aiohttp.ClientSession
    base: str
    waiting: dict[str, asyncio.Future[str]] = dataclasses.field(default_factory=dict)
    sent: int = 0
    extra_terminals: int = 0

    async def pump(self) -> None:
        async for message in self.client.messages:
            body = json.loads(bytes(message.payload))
            if body.get("status") not in TERMINAL:
                continue
            future = self.waiting.pop(body["id"], None)
            if future is None:
                self.extra_terminals += 1  # a second terminal status: never allowed
            elif not future.done():
                future.set_result(body["status"])

    async def command(self, verb: str, args: dict[str, Any]) -> str:
        self.sent += 1
        body = self.keys.signer.sign(envelope(verb, args, id=f"soak-{self.sent}"))
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.waiting[body["id"]] = future
        await self.client.publish(CMD, json.dumps(body), qos=1)
        return await asyncio.wait_for(future, 20)

    async def poke_http(self) -> None:
        for path in ("/status", "/metrics"):
            async with self.http.get(self.base + path) as response:
                await response.read()
                assert response.status == 200, path


def soak_config(tmp_path: Path, broker: Broker, keys: Keys, http_port: int) -> Path:
    return agent_config(
        tmp_path,
        broker,
        http_port=http_port,
        node={"name": NODE, "cluster": "lab"},
        health={"interval_s": 0.05},
        commands={"trusted_keys": [str(keys.public)], "max_age_s": 2, "clock_skew_s": 1},
        microk8s={
            "backend": "cli",
            "cli": str(FAKES / "microk8s"),
            "snap_cli": str(FAKES / "snap"),
            "status_interval_s": 2,
        },
        log={"level": "warning", "format": "json"},
    )


@contextlib.asynccontextmanager
async def soaking(tmp_path: Path, broker: Broker) -> AsyncIterator[tuple[Agent, Driver]]:
    """An in-process agent on the fakes, and a driver connected to the same broker."""
    keys = Keys(tmp_path / "keys")
    http_port = free_port()
    agent = Agent(config_mod.load(soak_config(tmp_path, broker, keys, http_port), {}))
    task = asyncio.create_task(agent.run())
    async with (
        aiomqtt.Client(broker.host, broker.port) as client,
        aiohttp.ClientSession() as http,
    ):
        await client.subscribe(f"{CMD}/+", qos=1)
        driver = Driver(client, keys, http, f"http://127.0.0.1:{http_port}")
        pump = asyncio.create_task(driver.pump())
        try:
            await _until(lambda: agent.state.health_published_total > 0 and agent.link.connected)
            yield agent, driver
        finally:
            pump.cancel()
            agent.stop_requested.set()
            await asyncio.wait_for(task, 15)


async def _until(predicate: Callable[[], bool], timeout_s: float = 15) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "the agent did not come up"
        await asyncio.sleep(0.02)


async def run_cycles(agent: Agent, driver: Driver, cycles: int) -> None:
    """Commands back to back (each `status` also triggers a health cycle) until `cycles` passed."""
    target = agent.state.health_published_total + cycles
    step = 0
    while agent.state.health_published_total < target:
        step += 1
        if step % ADDON_EVERY == 0:
            assert await driver.command("addon", {"name": "dns", "action": "enable"}) == "succeeded"
            await driver.poke_http()
        else:
            assert await driver.command("status", {}) == "succeeded"


@dataclasses.dataclass
class Point:
    traced: int
    fds: int
    snapshot: tracemalloc.Snapshot


async def measure(samples: int = 5) -> Point:
    """At a quiet moment (the caller awaited its last command): the least of a few readings.

    The health loop keeps running: a reading may catch a sample's buffers in flight, never all
    of them, so the minimum is the memory the agent holds on to.
    """
    points = []
    for _ in range(samples):
        await asyncio.sleep(0.03)
        gc.collect()
        points.append((tracemalloc.get_traced_memory()[0], len(os.listdir("/proc/self/fd"))))
    traced, _ = min(points)
    return Point(traced, min(fds for _, fds in points), tracemalloc.take_snapshot())


def growth_report(points: list[Point]) -> str:
    start, middle, end = points
    halves = (
        f"{(middle.traced - start.traced) / 1024:.0f} and {(end.traced - middle.traced) / 1024:.0f}"
    )
    stats = end.snapshot.compare_to(start.snapshot, "lineno")[:8]
    lines = "\n".join(f"  {stat}" for stat in stats)
    return f"traced memory grew by {halves} KiB in the two halves; top:\n{lines}"


async def soak(
    tmp_path: Path, broker: Broker, warmup: int, half: int, leak: list[bytes] | None = None
) -> list[Point]:
    """Readings after the warm-up, after `half` more cycles, and after `half` more again."""
    tracemalloc.start()
    try:
        async with soaking(tmp_path, broker) as (agent, driver):
            if leak is not None:
                # A planted leak: 32 KiB kept per request the agent reads.
                agent.link.subscribe(CMD, 1, lambda _inbound: leak.append(bytes(32768)))
            await run_cycles(agent, driver, warmup)
            points = [await measure()]
            for _ in range(2):
                await run_cycles(agent, driver, half)
                points.append(await measure())
            assert driver.extra_terminals == 0
            assert not [name for name, task in agent.tasks.items() if task.done()]
    finally:
        tracemalloc.stop()
    return points


def leaking(points: list[Point]) -> bool:
    """Growth in both halves: a leak grows all along, a one-off (an interpreter table resized)
    or a buffer caught in flight does not."""
    start, middle, end = (point.traced for point in points)
    return min(middle - start, end - middle) >= HALF_LIMIT


async def test_no_growth_over_a_thousand_cycles(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_FIXTURES", str(MICROK8S_CLI))
    points = await soak(tmp_path, broker, WARMUP_CYCLES, CYCLES // 2)
    print(growth_report(points).split(";")[0], f"; open fds {[p.fds for p in points]}")
    assert not leaking(points), growth_report(points)
    assert points[-1].fds <= points[0].fds, f"open fds grew: {[p.fds for p in points]}"


async def test_the_soak_sees_a_planted_leak(
    tmp_path: Path, broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The measurement is sensitive enough: 32 KiB per request over 2 x 60 cycles is caught."""
    monkeypatch.setenv("FAKE_FIXTURES", str(MICROK8S_CLI))
    points = await soak(tmp_path, broker, 50, 60, leak=[])
    assert leaking(points), growth_report(points)


def test_the_journal_forgets_by_elapsed_time_not_by_the_wall_clock(tmp_path: Path) -> None:
    """Expired read-only ids leave memory within PRUNE_EVERY_S of their window really passing; a
    forward jump of the wall clock alone forgets nothing (a replay must still be a duplicate)."""
    wall, elapsed = [1000.0], [0.0]
    journal = Journal(tmp_path, 1 << 20, clock=lambda: wall[0], monotonic=lambda: elapsed[0])
    journal.remember("read-1", {"id": "read-1", "status": "succeeded"}, until=1030.0)
    journal.write("write-1", {"id": "write-1", "status": "succeeded"}, until=1030.0)
    wall[0] += 3600  # the clock jumps an hour; only 11 s pass
    elapsed[0] += PRUNE_EVERY_S + 1
    journal.remember("read-2", {"id": "read-2", "status": "succeeded"}, until=wall[0] + 100)
    assert journal.get("read-1") is not None and journal.get("write-1") is not None
    elapsed[0] += 2 * PRUNE_EVERY_S  # 31 s have passed: both 30 s windows are over
    journal.remember("read-3", {"id": "read-3", "status": "succeeded"}, until=wall[0] + 100)
    assert journal.get("read-1") is None
    # A durable (mutating) id is kept until the journal's size bound: see test_journal.py.
    assert journal.get("write-1") is not None
    assert journal.get("read-2") is not None
