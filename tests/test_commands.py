"""Commands end to end: a real mosquitto, the agent as a subprocess, the fake microk8s and snap.

Every verb through the cli backend, rejections on the wire, MQTT 5 request/response, duplicates
and the busy queue. Durability across restarts and crashes is in test_commands_durability.py.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.commands_helpers import (
    CMD,
    JOIN_URL,
    NODE,
    ROOT,
    TOKEN,
    Keys,
    commands_config,
    envelope,
    fake_env,
    mutating_calls,
    ready,
    send,
    signed,
    status_of,
    terminal,
    updates,
)
from tests.conftest import AgentProcess, Broker, watch

pytestmark = pytest.mark.broker

V5 = {"protocol": aiomqtt.ProtocolVersion.V5}
Spawn = Callable[..., AgentProcess]


def invalid_with(topic: str, reason: str) -> Callable[[str, Any], bool]:
    return lambda t, p: t == topic and reason in p["error"]


def reply_properties(topic: str, correlation: bytes) -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.ResponseTopic = topic
    props.CorrelationData = correlation
    return props


async def test_every_verb_end_to_end(tmp_path: Path, broker: Broker, spawn_agent: Spawn) -> None:
    keys = Keys(tmp_path / "keys")
    agent = spawn_agent(commands_config(tmp_path, broker, keys), env=fake_env(tmp_path))
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        # status: read-only, unsigned is fine, result carries the health report.
        status = envelope("status")
        await send(w, status)
        done = await terminal(w, status["id"])
        assert done["status"] == "succeeded"
        assert done["result"]["health"]["node"] == NODE
        assert "ha" in done["result"]
        assert [u["status"] for u in updates(w, status["id"])] == ["accepted", "succeeded"]

        addon = signed(
            keys,
            "addon",
            {"name": "metallb", "action": "enable", "args": ["10.0.0.200-10.0.0.220"]},
        )
        await send(w, addon)
        done = await terminal(w, addon["id"])
        assert (done["status"], done["exit_code"], done["verb"]) == ("succeeded", 0, "addon")
        assert [u["status"] for u in updates(w, addon["id"])][:2] == ["accepted", "running"]

        disable = signed(keys, "addon", {"name": "core/dns", "action": "disable"})
        await send(w, disable)
        assert (await terminal(w, disable["id"]))[
            "output"
        ].strip() == "Addon core/dns is already disabled"

        join = signed(keys, "join", {"url": JOIN_URL, "worker": True})
        await send(w, join)
        done = await terminal(w, join["id"])
        assert done["status"] == "succeeded"
        assert "Successfully joined the cluster." in done["output"]

        upgrade = signed(keys, "upgrade", {"channel": "1.33-strict/stable"})
        await send(w, upgrade)
        done = await terminal(w, upgrade["id"])
        assert done["status"] == "succeeded", done
        assert done["result"] == {
            "old_version": "v1.32.3",
            "new_version": "v1.33.0",
            "old_channel": "1.32-strict/stable",
            "channel": "1.33-strict/stable",
        }
        details = [u.get("detail") for u in updates(w, upgrade["id"])]
        for step in ("draining", "refreshing", "waiting for node Ready"):
            assert step in details
        # No join token on the wire from the agent (the progress line names the command, masked).
        from_agent = [p for t, p, _ in w.messages if t != CMD]
        assert all(TOKEN not in json.dumps(p) for p in from_agent)
        assert any("join 127.0.0.11:25000/****/2c0cb3284b05" in str(p) for p in from_agent)
    assert mutating_calls(tmp_path) == [
        ["enable", "metallb", "10.0.0.200-10.0.0.220"],
        ["disable", "core/dns"],
        ["join", JOIN_URL, "--worker"],
        ["kubectl", "cordon", NODE],
        ["kubectl", "drain", NODE, "--ignore-daemonsets", "--delete-emptydir-data", "--timeout=5s"],
        ["refresh", "microk8s", "--channel=1.33-strict/stable"],
        ["kubectl", "uncordon", NODE],
    ]
    agent.stop()


async def test_failures_timeouts_and_masking(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    config = commands_config(tmp_path, broker, keys, microk8s={"command_timeout_s": 1.5})
    env = fake_env(
        tmp_path,
        FAKE_MICROK8S_EXIT="join=6",
        FAKE_MICROK8S_SLEEP="disable=30",
        FAKE_MICROK8S_SPAWN_CHILD="disable=1",
    )
    spawn_agent(config, env=env)
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        join = signed(keys, "join", {"url": JOIN_URL})
        await send(w, join)
        failed = await terminal(w, join["id"])
        assert failed["status"] == "failed"
        assert failed["exit_code"] == 6
        assert failed["error"] == "exit code 6: Connection failed. Invalid token (500)."

        unknown = signed(keys, "addon", {"name": "foo", "action": "enable"})
        await send(w, unknown)
        failed = await terminal(w, unknown["id"])
        assert (failed["status"], failed["exit_code"]) == ("failed", 1)
        assert "Addon foo was not found in any repository" in failed["error"]

        slow = signed(keys, "addon", {"name": "dns", "action": "disable"})
        await send(w, slow)
        timed_out = await terminal(w, slow["id"])
        assert timed_out["status"] == "timed_out"
        assert timed_out["error"] == "timed out after 1.5 s"
        assert "exit_code" not in timed_out
        grandchild = int(timed_out["output"].split("child pid ")[1].split()[0])
    # The fake's own child (a grandchild of the agent) died with the process group.
    import psutil

    assert not psutil.pid_exists(grandchild) or psutil.Process(grandchild).status() == "zombie"


async def test_rejections_on_the_wire(tmp_path: Path, broker: Broker, spawn_agent: Spawn) -> None:
    keys = Keys(tmp_path / "keys")
    stranger = Keys(tmp_path / "stranger", name="ops-1")  # same key id, other key
    spawn_agent(commands_config(tmp_path, broker, keys), env=fake_env(tmp_path))
    cases: list[tuple[dict[str, Any], str]] = [
        (envelope("addon", {"name": "dns", "action": "enable"}), "missing signature"),
        (
            stranger.signer.sign(envelope("addon", {"name": "dns", "action": "enable"})),
            "bad signature",
        ),
        (
            {
                **signed(keys, "addon", {"name": "dns", "action": "enable"}),
                "target": NODE,
                "args": {"name": "helm", "action": "enable"},
            },
            "bad signature",
        ),
        ({**signed(keys, "status"), "key_id": "nobody"}, "unknown key_id 'nobody'"),
        (
            signed(keys, "addon", {"name": "dns", "action": "enable"}, target="pi-02"),
            "wrong target 'pi-02'",
        ),
        (
            signed(keys, "addon", {"name": "dns", "action": "enable"}, issued_at=1_000_000),
            "expired",
        ),
        (
            signed(keys, "addon", {"name": "dns", "action": "enable"}, issued_at=4_000_000_000),
            "in the future",
        ),
        (signed(keys, "reboot"), "unknown verb 'reboot'"),
        (signed(keys, "addon", {"name": "DNS", "action": "enable"}), "name must be"),
        (signed(keys, "join", {"url": f"pi-02:25000/{TOKEN}"}), "url must be"),
        (signed(keys, "upgrade", {"channel": "1.31-strict/stable"}), "would downgrade"),
        (
            signed(keys, "upgrade", {"channel": "1.33/stable", "force": True}),
            "must stay on a -strict track",
        ),
    ]
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        # The upgrade policy at intake needs the first MicroK8s facts.
        await w.wait_for(lambda t, p: t == f"{ROOT}/health" and p["microk8s"]["channel"])
        for body, _ in cases:
            await send(w, body)
        for body, reason in cases:
            rejected = await terminal(w, body["id"])
            assert rejected["status"] == "rejected", (reason, rejected)
            assert reason in rejected["error"]
            assert TOKEN not in rejected["error"]
    assert mutating_calls(tmp_path) == []


async def test_unreadable_retained_and_oversized(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    spawn_agent(commands_config(tmp_path, broker, keys), env=fake_env(tmp_path))
    invalid = f"{CMD}/_invalid"
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        for payload in (b"\xff\xfe not utf-8", b"{nope", b"[1]", b'{"id": "-bad"}', b"x" * 70_000):
            await send(w, payload)
        reasons = [
            "not valid UTF-8",
            "not valid JSON",
            "must be a JSON object",
            "missing or invalid id",
            "the limit is 65536",
        ]
        for reason in reasons:
            _, body = await w.wait_for(invalid_with(invalid, reason))
            assert (body["status"], body["id"], body["node"]) == ("rejected", None, NODE)

        retained = signed(keys, "addon", {"name": "dns", "action": "enable"})
        await send(w, retained, retain=True)
        assert "retained command" in (await terminal(w, retained["id"]))["error"]
        # Clearing the retained message (empty payload) is not a command and gets no answer.
        mark = len(w.messages)
        await send(w, b"", retain=True)
        status = envelope("status")
        await send(w, status)
        await terminal(w, status["id"])
        assert not [p for t, p, _ in w.messages[mark:] if t == invalid]
    assert mutating_calls(tmp_path) == []


async def test_response_topic_duplicates_and_busy(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    config = commands_config(tmp_path, broker, keys, commands={"queue_size": 1})
    spawn_agent(config, env=fake_env(tmp_path, FAKE_MICROK8S_SLEEP="enable=1.5"))
    reply = f"{ROOT}/reply/op-7"
    async with watch(broker, "microk8s/#", **V5) as w:
        await ready(w)
        first = signed(keys, "addon", {"name": "dns", "action": "enable"})
        await send(w, first, properties=reply_properties(reply, b"\x00corr-1"))
        await status_of(w, first["id"], "running")
        queued = signed(keys, "addon", {"name": "helm", "action": "enable"})
        await send(w, queued)
        await status_of(w, queued["id"], "accepted")
        busy = signed(keys, "addon", {"name": "helm3", "action": "enable"})
        await send(w, busy)
        refused = await terminal(w, busy["id"])
        assert refused["status"] == "rejected"
        assert refused["error"].startswith("busy: 1 commands are already waiting")
        done = await terminal(w, first["id"])
        assert (await terminal(w, queued["id"]))["status"] == "succeeded"

        # Every status of the first command was mirrored to the Response Topic, in order.
        mirrored = [p for t, p, _ in w.messages if t == reply]
        assert [p["status"] for p in mirrored] == [p["status"] for p in updates(w, first["id"])]
        assert mirrored[-1] == done

        # A QoS 1 redelivery (same payload again) is answered, not executed.
        mark = len(w.messages)
        await send(w, first, properties=reply_properties(reply, b"corr-2"))
        _, again = await w.wait_for(lambda t, p: t == f"{CMD}/{first['id']}", after=mark)
        assert again == {**done, "duplicate": True}

        # A Response Topic outside R/ (or on the agent's own topics) is ignored.
        for outside in ("elsewhere/reply", f"{ROOT}/cmd", "microk8s/lab/nodes/pi-02/reply/x"):
            status = envelope("status")
            await send(w, status, properties=reply_properties(outside, b"c"))
            await terminal(w, status["id"])
            copies = [p for t, p, _ in w.messages if t == outside and "status" in p]
            assert not [p for p in copies if p["id"] == status["id"]]
    enables = [argv for argv in mutating_calls(tmp_path) if argv[0] == "enable"]
    assert enables == [["enable", "dns"], ["enable", "helm"]]


async def test_correlation_data_is_echoed(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    spawn_agent(commands_config(tmp_path, broker, None), env=fake_env(tmp_path))
    reply = f"{ROOT}/reply/abc"
    seen: list[tuple[str, bytes | None]] = []
    async with aiomqtt.Client(
        broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5
    ) as client:
        await client.subscribe(f"{ROOT}/health")
        await client.subscribe(reply)
        status = envelope("status")
        async for message in client.messages:
            if message.topic.value.endswith("/health") and not seen:
                seen.append(("ready", None))
                await client.publish(
                    CMD, json.dumps(status), qos=1, properties=reply_properties(reply, b"\x01\x02")
                )
            elif message.topic.value == reply:
                body = json.loads(message.payload)
                seen.append((body["status"], getattr(message.properties, "CorrelationData", None)))
                if body["status"] == "succeeded":
                    break
    assert seen[1:] == [("accepted", b"\x01\x02"), ("succeeded", b"\x01\x02")]


async def test_no_keys_no_backend(tmp_path: Path, broker: Broker, spawn_agent: Spawn) -> None:
    keys = Keys(tmp_path / "keys")
    # No trusted keys: mutating commands are disabled, status still answers.
    locked = agent_no_backend(tmp_path, broker, {"trusted_keys": []})
    spawn_agent(locked, env=fake_env(tmp_path))
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        addon = signed(keys, "addon", {"name": "dns", "action": "enable"})
        await send(w, addon)
        assert (await terminal(w, addon["id"]))["error"].startswith(
            "commands are disabled: no trusted keys"
        )
        status = envelope("status")
        await send(w, status)
        assert (await terminal(w, status["id"]))["status"] == "succeeded"


async def test_lab_mode_without_backend(tmp_path: Path, broker: Broker, spawn_agent: Spawn) -> None:
    spawn_agent(
        agent_no_backend(tmp_path, broker, {"allow_unsigned": True}), env=fake_env(tmp_path)
    )
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        addon = envelope("addon", {"name": "dns", "action": "enable"})
        await send(w, addon)
        rejected = await terminal(w, addon["id"])
        assert rejected["error"].startswith("no MicroK8s backend available: ")
        assert "no-microk8s' executable on PATH" in rejected["error"]


def agent_no_backend(tmp_path: Path, broker: Broker, commands: dict[str, Any]) -> Path:
    from tests.conftest import agent_config

    return agent_config(
        tmp_path,
        broker,
        node={"name": NODE, "cluster": "lab"},
        commands=commands,
        health={"interval_s": 5},
        microk8s={"backend": "auto", "cli": str(tmp_path / "no-microk8s")},
    )


async def test_rebirth_ids_and_empty_requests(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    """rebirth (unsigned, same session, one per 5 s), the topic-safe id rule, empty payloads."""
    spawn_agent(commands_config(tmp_path, broker, Keys(tmp_path / "keys")), env=fake_env(tmp_path))
    invalid = f"{CMD}/_invalid"
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        _, birth = await w.wait_for(lambda t, p: t == f"{ROOT}/state")
        mark = len(w.messages)
        rebirth = envelope("rebirth")
        refused = [
            (envelope("rebirth"), "at most one per 5 s; send it again in"),
            (envelope("rebirth", {"now": True}), 'rebirth takes no args (send "args": {})'),
        ]
        for body in [rebirth, *(body for body, _ in refused)]:
            await send(w, body)  # back to back: the second is well within the 5 s
        assert (await terminal(w, rebirth["id"]))["status"] == "succeeded"
        _, again = await w.wait_for(lambda t, p: t == f"{ROOT}/state", after=mark)
        assert (again["state"], again["session"]) == ("online", birth["session"])
        await w.wait_for(lambda t, p: t == f"{ROOT}/health", after=mark)
        for body, reason in refused:
            rejected = await terminal(w, body["id"])
            assert rejected["status"] == "rejected" and reason in rejected["error"], rejected

        # Ids that a broker cannot carry in a topic level (NATS: `.`; `:`) are unreadable.
        for bad in ("c.1", "c:1"):
            await send(w, envelope("status", id=bad))
        await send(w, b"")  # empty, not retained: what 3.1.1 delivers for a retained clear
        status = envelope("status")
        await send(w, status)
        await terminal(w, status["id"])
        rules = [p["error"] for t, p, _ in w.messages[mark:] if t == invalid]
        assert len(rules) == 2
        assert all("1-64 characters of A-Z a-z 0-9 _ -" in rule for rule in rules)
