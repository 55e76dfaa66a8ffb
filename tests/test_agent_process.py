"""The agent as a real subprocess against a real mosquitto: presence, health, lifecycle."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Broker, agent_config, free_port, watch
from tests.paths import REPO

pytestmark = pytest.mark.broker

HEALTH_KEYS = {
    "schema",
    "node",
    "cluster",
    "ts",
    "session",
    "seq",
    "status",
    "reasons",
    "system",
    "microk8s",
    "kube",
}
SYSTEM_KEYS = {
    "cpu_percent",
    "load",
    "memory",
    "disks",
    "temperature_c",
    "throttled",
    "uptime_s",
    "net",
}
STATE = "microk8s/lab/nodes/test-node/state"
HEALTH = "microk8s/lab/nodes/test-node/health"


def is_state(value: str):
    return lambda topic, payload: (
        topic == STATE and isinstance(payload, dict) and payload["state"] == value
    )


async def test_birth_health_and_clean_offline(tmp_path: Path, broker: Broker, spawn_agent) -> None:
    config = agent_config(tmp_path, broker)
    async with watch(broker, "microk8s/#") as w:
        agent = spawn_agent(config)
        _, birth = await w.wait_for(is_state("online"))
        assert birth["session"] == 1
        assert birth["agent_version"]
        _, first = await w.wait_for(lambda t, p: t == HEALTH)
        _, second = await w.wait_for(lambda t, p: t == HEALTH and p["seq"] == first["seq"] + 1)
        assert set(first) >= HEALTH_KEYS
        assert set(first["system"]) >= SYSTEM_KEYS
        assert first["session"] == birth["session"]
        assert first["seq"] == 0
        assert first["microk8s"]["installed"] is False
        assert first["status"] in {"ok", "degraded", "critical"}
        assert second["ts"] > first["ts"]
        # Birth comes before any health message.
        topics = [t for t, _, _ in w.messages]
        assert topics.index(STATE) < topics.index(HEALTH)
        agent.signal(signal.SIGTERM)
        assert agent.wait() == 0
        _, offline = await w.wait_for(is_state("offline"))
        assert offline["reason"] == "shutdown"
        assert offline["session"] == birth["session"]
    # Retained: a new subscriber sees the last state and health at once.
    async with watch(broker, STATE, HEALTH) as late:
        _, state = await late.wait_for(lambda t, p: t == STATE, timeout_s=3)
        assert state["state"] == "offline"
        await late.wait_for(lambda t, p: t == HEALTH, timeout_s=3)
        assert all(retained for _, _, retained in late.messages)


async def test_last_will_on_kill_and_session_increases(
    tmp_path: Path, broker: Broker, spawn_agent
) -> None:
    config = agent_config(tmp_path, broker)
    async with watch(broker, STATE) as w:
        agent = spawn_agent(config)
        _, birth = await w.wait_for(is_state("online"))
        agent.signal(signal.SIGKILL)
        agent.wait()
        _, will = await w.wait_for(is_state("offline"))
        assert will["reason"] == "connection lost"
        assert will["session"] == birth["session"]
        mark = len(w.messages)
        spawn_agent(config)
        _, rebirth = await w.wait_for(is_state("online"), after=mark)
        assert rebirth["session"] == birth["session"] + 1
    assert (tmp_path / "state" / "session").read_text().strip() == str(rebirth["session"])


async def test_broker_restart_survived_and_readyz_follows(
    tmp_path: Path, broker: Broker, spawn_agent
) -> None:
    http_port = free_port()
    config = agent_config(tmp_path, broker, http_port=http_port)
    agent = spawn_agent(config)
    url = f"http://127.0.0.1:{http_port}"
    async with aiohttp.ClientSession() as http:
        await _wait_status(http, f"{url}/readyz", 200)
        broker.stop()
        await _wait_status(http, f"{url}/readyz", 503)
        async with http.get(f"{url}/readyz") as response:
            body = await response.json()
        assert "not connected to the MQTT broker" in body["reasons"]
        async with http.get(f"{url}/healthz") as response:
            assert response.status == 200
        broker.start()
        async with watch(broker, STATE) as w:
            _, birth = await w.wait_for(is_state("online"), timeout_s=20)
            assert birth["session"] >= 2
        await _wait_status(http, f"{url}/readyz", 200, timeout_s=20)
    assert agent.process is not None and agent.process.poll() is None


async def _wait_status(
    http: aiohttp.ClientSession, url: str, status: int, timeout_s: float = 10
) -> None:
    deadline = time.monotonic() + timeout_s
    last: object = None
    while time.monotonic() < deadline:
        try:
            async with http.get(url) as response:
                last = response.status
                if last == status:
                    return
        except aiohttp.ClientError as exc:
            last = exc
        await _sleep(0.1)
    raise AssertionError(f"{url} did not answer {status} within {timeout_s} s (last: {last})")


async def _sleep(seconds: float) -> None:
    import asyncio

    await asyncio.sleep(seconds)


def test_bad_configuration_exits_2_naming_every_problem(tmp_path: Path) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(
        '[mqtt]\nport = 70000\nprotocol = 4\nbogus = 1\n[health]\ninterval_s = "often"\n'
        '[node]\nname = "Not_Valid"\n[nonsense]\nx = 1\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        check=False,
    )
    assert result.returncode == 2
    for needle in (
        "mqtt.port",
        "mqtt.protocol",
        "mqtt.bogus",
        "health.interval_s",
        "node.name",
        "[nonsense]",
    ):
        assert needle in result.stderr, needle


def test_check_config_prints_effective_config_with_secrets_masked(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("hunter2")
    config = tmp_path / "ok.toml"
    config.write_text(
        f'[mqtt]\nusername = "pi"\npassword_file = "{secret}"\n[node]\nname = "pi-01"\n'
    )
    result = subprocess.run(
        [sys.executable, "-m", "agent", "check-config", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=30,
        env={"EDGE_AGENT_MQTT_PORT": "1884", "PATH": "/usr/bin:/bin"},
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert 'name = "pi-01"' in result.stdout
    assert "port = 1884" in result.stdout
    assert 'password_file = "***"' in result.stdout
    assert str(secret) not in result.stdout
