"""configs/lab.toml: the README's "Try commands against a fake MicroK8s", followed end to end.

The agent runs the lab file as shipped (cwd = the checkout, so its relative paths hold); only the
broker port, the HTTP port and the state directory are moved by environment overrides so that
tests can run side by side. The operator's commands are the README's, as a newcomer types them.
"""

from __future__ import annotations

import ipaddress
import re
import subprocess
import sys
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest

from agent import config
from tests.conftest import AgentProcess, Broker, free_port, watch
from tests.paths import REPO

LAB = REPO / "configs" / "lab.toml"
ADDRESS = re.compile(r"\b\d{1,3}(?:\.\d{1,3}){3}\b")

pytestmark = pytest.mark.broker


def test_the_lab_loads_and_dials_only_loopback() -> None:
    settings = config.load(LAB, environ={})
    assert settings.microk8s.backend == "cli"
    assert settings.ha.enabled
    texts = [LAB.read_text(), *(p.read_text() for p in (REPO / "configs" / "lab").rglob("*.yaml"))]
    found = {a for text in texts for a in ADDRESS.findall(text)}
    assert found, "the lab names no address at all"
    assert all(ipaddress.ip_address(a).is_loopback for a in found), found
    assert tomllib.loads(LAB.read_text())["mqtt"]["host"] == "127.0.0.1"


def edge_agent(broker: Broker, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agent", *argv, "--broker", f"{broker.host}:{broker.port}"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def test_the_readme_walk_through(
    tmp_path: Path, broker: Broker, spawn_agent: Callable[..., AgentProcess]
) -> None:
    env = {
        "EDGE_AGENT_MQTT_PORT": str(broker.port),
        "EDGE_AGENT_HTTP_PORT": str(free_port()),
        "EDGE_AGENT_STATE_DIR": str(tmp_path / "state"),
        "FAKE_MICROK8S_STATE": str(tmp_path / "lab-microk8s.json"),
    }
    async with watch(broker, "microk8s/lab/nodes/pi-01/state") as w:
        spawn_agent(LAB, env)
        await w.wait_for(lambda _t, p: p.get("state") == "online", timeout_s=30)
    listed = edge_agent(broker, "nodes", "--cluster", "lab")
    assert listed.returncode == 0, listed.stderr
    assert re.search(r"^pi-01\s+online", listed.stdout, re.M), listed.stdout
    status = edge_agent(broker, "send", "--cluster", "lab", "pi-01", "status")
    assert status.returncode == 0, status.stderr
    assert "succeeded" in status.stdout
    addon = edge_agent(broker, "send", "--cluster", "lab", "pi-01", "addon", "enable", "dns")
    assert addon.returncode == 0, addon.stdout + addon.stderr
    assert "microk8s enable dns" in addon.stdout
    refused = edge_agent(
        broker, "send", "--cluster", "lab", "pi-01", "upgrade", "1.33-strict/stable"
    )
    assert refused.returncode != 0
    assert "would_break_quorum" in refused.stdout + refused.stderr
