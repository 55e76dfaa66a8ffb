"""A hostile neighbour (issue 11): a node publishes every payload of the black-box attack on its own
topics while three HA-enabled agents run and take commands.

What the attack did before the fix: a retained `[[[…]]]` on `…/ha` or `…/state` made every
HA-enabled agent exit with RecursionError (crash loop); `{"node": …, "members": 5}` killed the HA
task; a U+FEFF User Property broke every subscriber's read path (0 of 20 commands answered); a
large retained message was read whole. Here the three agents must answer every command, keep
their first session (no reconnect, no restart) and keep publishing health and HA verdicts.
"""

from __future__ import annotations

import asyncio
import functools
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.commands_helpers import TERMINAL, Keys, fake_env, signed
from tests.conftest import AgentProcess, Broker, Watcher, agent_config, watch
from tests.paths import FAKES

pytestmark = pytest.mark.broker

Spawn = Callable[..., AgentProcess]
NODES = ("pi-01", "pi-02", "pi-03")
BASE = "microk8s/lab/nodes"
HOSTILE_ROOT = f"{BASE}/pi-09"
PAYLOADS = [
    b"[" * 1000 + b"]" * 1000,
    b'{"node": "pi-09", "members": 5}',
    b'{"node": "pi-09", "state": "online", "session": "x", "members": [{"address": 7}, 3]}',
    b'{"node": "pi-09", "address": "\\ud800", "voters": {"x": 1}, "session": 1e999}',
    b"\xff\xfe\x00",
    b"NaN",
    b'{"node": "pi-09", "members": [' + b'{"address": "127.0.0.9:1"},' * 3000 + b"1]}",
    b"x" * (1 << 20),  # beyond the agents' Maximum Packet Size: the broker never sends it
]
COMMANDS_PER_AGENT = 6
OVERSIZED_QOS1 = 25
"""More than Mosquitto's 20 in-flight QoS 1 messages per client: undeliverable ones must not
stall the agents' commands (peers' topics are subscribed at QoS 0)."""


def feff() -> Properties:
    props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
    props.UserProperty = ("\ufeff", "\ufeffvalue")
    return props


def config(tmp_path: Path, broker: Broker, keys: Keys, node: str) -> Path:
    home = tmp_path / node
    home.mkdir()
    return agent_config(
        home,
        broker,
        node={"name": node, "cluster": "lab"},
        health={"interval_s": 1.0},
        ha={"enabled": True, "interval_s": 0.5, "probe_timeout_s": 0.2},
        commands={"trusted_keys": [str(keys.public)]},
        microk8s={
            "backend": "cli",
            "cli": str(FAKES / "microk8s"),
            "snap_cli": str(FAKES / "snap"),
            "backend_dir": str(home / "no-backend"),
        },
    )


async def attack(client: aiomqtt.Client, *, retain: bool) -> None:
    for payload in PAYLOADS:
        for leaf in ("state", "ha", "health"):
            await client.publish(
                f"{HOSTILE_ROOT}/{leaf}", payload, qos=1, retain=retain, properties=feff()
            )


async def test_a_hostile_neighbour_cannot_silence_its_cluster(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    hostile = aiomqtt.Client(broker.host, broker.port, protocol=aiomqtt.ProtocolVersion.V5)
    async with hostile:
        await attack(hostile, retain=True)  # waiting for every agent that starts
    agents = [
        spawn_agent(config(tmp_path, broker, keys, node), env=fake_env(tmp_path / node))
        for node in NODES
    ]
    # The test's own watcher speaks MQTT 3.1.1: no properties, so paho cannot choke on them.
    async with watch(broker, f"{BASE}/+/state", f"{BASE}/+/ha", f"{BASE}/+/cmd/+") as w:
        for topic in [f"{BASE}/{node}/ha" for node in NODES]:
            await w.wait_for(functools.partial(on_topic, topic), timeout_s=30)
        async with hostile:
            for _ in range(OVERSIZED_QOS1):
                await hostile.publish(f"{HOSTILE_ROOT}/state", b"y" * 200_000, qos=1)
            ids: dict[str, str] = {}
            for round_ in range(COMMANDS_PER_AGENT):
                await attack(hostile, retain=round_ % 2 == 0)  # live ones too
                for node in NODES:
                    verb, args = ("status", {}) if round_ else ("addon", _dns())
                    body = signed(keys, verb, args, target=node, id=f"h-{node}-{round_}")
                    ids[body["id"]] = node
                    await operator_send(w, node, body)
            answered = await answers(w, ids)
        await asyncio.sleep(1.5)  # a few more HA rounds under the retained payloads
        total = len(ids)
        print(f"hostile neighbour: {len(answered)}/{total} commands answered")
        assert len(answered) == total, sorted(set(ids) - set(answered))
        assert all(answered[i] == "succeeded" for i in answered), answered
        for node in NODES:
            sessions = {p["session"] for t, p, _ in w.messages if t == f"{BASE}/{node}/state" and p}
            assert sessions == {1}, (node, sessions)  # never reconnected, never restarted
    for agent in agents:
        assert agent.process is not None and agent.process.poll() is None
        failures = [
            line
            for line in agent.log_lines()
            if line.get("event") in {"mqtt_disconnected", "agent_crashed", "mqtt_handler_failed"}
        ]
        assert not failures, failures


def on_topic(topic: str, t: str, _: object) -> bool:
    return t == topic


def _dns() -> dict[str, str]:
    return {"name": "dns", "action": "enable"}


async def operator_send(w: Watcher, node: str, body: dict[str, Any]) -> None:
    await w.publish(f"{BASE}/{node}/cmd", json.dumps(body).encode(), qos=1)


async def answers(w: Watcher, ids: dict[str, str], timeout_s: float = 30) -> dict[str, str]:
    """Terminal status per command id, waiting until all arrived or the timeout."""
    messages = w.messages
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        found = {
            p["id"]: p["status"]
            for t, p, _ in messages
            if "/cmd/h-" in t and isinstance(p, dict) and p.get("status") in TERMINAL
        }
        if len(found) == len(ids) or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.1)
