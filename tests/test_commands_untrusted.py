"""Commands under forged and flooding input (issue 11, findings 7 and 9), end to end.

A real mosquitto, the agent as a subprocess on the fake microk8s. Each test fails on the code
before the fix: an unsigned `status` reserved its id and a later signed `addon` with the same id
was answered `duplicate` and never ran; every unsigned `status` made the agent take and publish a
new health sample; a lone surrogate in a request got no answer at all.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.logs import DropLog
from tests.commands_helpers import (
    CMD,
    ROOT,
    Keys,
    commands_config,
    envelope,
    fake_env,
    mutating_calls,
    ready,
    send,
    signed,
    terminal,
)
from tests.conftest import AgentProcess, Broker, watch

pytestmark = pytest.mark.broker

Spawn = Callable[..., AgentProcess]


async def test_an_unsigned_status_cannot_block_a_signed_command(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    spawn_agent(commands_config(tmp_path, broker, keys), env=fake_env(tmp_path))
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        forged = envelope("status", id="op-42")
        await send(w, forged)
        assert (await terminal(w, "op-42"))["status"] == "succeeded"
        # Its QoS 1 redelivery is still a duplicate of the unsigned request...
        mark = len(w.messages)
        await send(w, forged)
        _, again = await w.wait_for(lambda t, p: t == f"{CMD}/op-42", after=mark)
        assert again.get("duplicate") is True
        # ...but the operator's signed command with the same id runs.
        mark = len(w.messages)
        command = signed(keys, "addon", {"name": "dns", "action": "enable"}, id="op-42")
        await send(w, command)
        _, done = await w.wait_for(
            lambda t, p: (
                t == f"{CMD}/op-42"
                and p.get("verb") == "addon"
                and p["status"] in {"succeeded", "failed", "rejected"}
            ),
            after=mark,
        )
        assert done["status"] == "succeeded", done
        assert "duplicate" not in done
    assert ["enable", "dns"] in mutating_calls(tmp_path)


async def test_status_requests_answer_from_the_latest_sample(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    spawn_agent(commands_config(tmp_path, broker, None, health_s=30), env=fake_env(tmp_path))
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        await asyncio.sleep(0.5)
        health_before = len(w.payloads(f"{ROOT}/health"))
        ids = []
        for _ in range(20):
            request = envelope("status")
            ids.append(request["id"])
            await send(w, request)
        for command_id in ids:
            answer = await terminal(w, command_id)
            assert answer["status"] == "succeeded"
            assert answer["result"]["health"]["node"] == "pi-01"
        published = len(w.payloads(f"{ROOT}/health")) - health_before
        assert published <= 1, f"{published} health publishes for 20 status requests"


@pytest.mark.parametrize(
    "payload",
    [
        b'{"v": 1, "id": "s-1", "verb": "status", "target": "\\ud800", "args": {}}',
        b'{"v": 1, "id": "s-2", "verb": "status", "args": ' + b"[" * 990 + b"]" * 990 + b"}",
    ],
    ids=["lone-surrogate", "deep-nesting"],
)
async def test_every_unreadable_request_is_answered(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn, payload: bytes
) -> None:
    spawn_agent(commands_config(tmp_path, broker, None), env=fake_env(tmp_path))
    # Not the request's own topic: the watcher's json.loads would choke on it.
    async with watch(broker, f"{ROOT}/health", f"{CMD}/+") as w:
        await ready(w)
        await send(w, payload)
        _, answer = await w.wait_for(lambda t, p: t == f"{CMD}/_invalid")
        assert answer["status"] == "rejected"
        assert "surrogate" in answer["error"] or "levels deep" in answer["error"]
        json.dumps(answer)


def test_drops_are_logged_as_counts(capsys: pytest.CaptureFixture[str]) -> None:
    drops = DropLog("test_dropped", every_s=10.0)
    for i in range(50_000):
        drops.drop(now=i / 5000)  # 50k drops in 10 s
    drops.drop(now=10.5)
    lines = [line for line in capsys.readouterr().out.splitlines() if "test_dropped" in line]
    assert len(lines) == 2  # the first drop at once, then one line with the count
    assert "dropped=50000" in lines[1]
    assert drops.total == 50_001
