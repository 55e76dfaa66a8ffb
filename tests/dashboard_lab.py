"""A lab fleet for the dashboard: one mosquitto, three agent processes, fake control planes.

Used by tests/test_dashboard_browser.py and by the screenshot in docs/dashboard.md:

    .venv/bin/python -m tests.dashboard_lab --screenshot docs/dashboard.png

Each agent (pi-01..pi-03, names of the recorded node list) runs the cli backend on the fakes
with its own fake state (FAKE_MICROK8S_STATE: pi-03 runs a newer MicroK8s, to show version skew),
its own Raspberry Pi sysfs tree (temperature, throttling word; a test writes new values there),
and HA checks against FakeMember listeners on its own loopback block (tests/cluster_fakes.py).
The dashboard runs as `python -m agent dashboard`, a real process on a free loopback port.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from tests.cluster_fakes import FakeMember, loopback_block, self_signed, write_backend_dir
from tests.conftest import AgentProcess, Broker, agent_config, free_port, wait_port
from tests.paths import FAKES, MICROK8S_CLI, REPO

NODES = ("pi-01", "pi-02", "pi-03")
TEMPERATURE_FILE = "sys/class/thermal/thermal_zone0/temp"
THROTTLED_FILE = "sys/devices/platform/soc/soc:firmware/get_throttled"
# Per node: SoC temperature (millidegrees), firmware throttling word, fake MicroK8s state.
BOARDS: dict[str, tuple[str, str, dict[str, str] | None]] = {
    "pi-01": ("48312", "0", None),
    "pi-02": ("61500", "50000", None),  # under-voltage has occurred since boot
    "pi-03": ("52800", "0", {"channel": "1.33/stable", "version": "v1.33.0"}),
}


@dataclasses.dataclass
class Node:
    name: str
    home: Path
    agent: AgentProcess

    def set_temperature(self, millidegrees: int) -> None:
        (self.home / "sysfs" / TEMPERATURE_FILE).write_text(f"{millidegrees}\n")

    def set_throttled(self, word: str) -> None:
        (self.home / "sysfs" / THROTTLED_FILE).write_text(f"{word}\n")


@dataclasses.dataclass
class Lab:
    workdir: Path
    broker: Broker
    nodes: dict[str, Node]
    dashboard: subprocess.Popen[bytes]
    port: int

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def fleet(self) -> dict[str, Any]:
        with urllib.request.urlopen(f"{self.url}api/fleet", timeout=5) as answer:  # noqa: S310
            return dict(json.loads(answer.read()))


def _sysfs(home: Path, temperature: str, throttled: str) -> Path:
    root = home / "sysfs"
    for relative, text in ((TEMPERATURE_FILE, temperature), (THROTTLED_FILE, throttled)):
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text + "\n")
    return root


def _start_agent(
    workdir: Path, broker: Broker, name: str, members: list[FakeMember], own: FakeMember
) -> Node:
    home = workdir / name
    temperature, throttled, refreshed = BOARDS[name]
    backend = write_backend_dir(
        home / "backend", [(m.address, 0) for m in members], (own.address, 0)
    )
    env = {
        "FAKE_MICROK8S_LOG": str(home / "argv.log"),
        "FAKE_MICROK8S_STATE": str(home / "refreshed.json"),
        "FAKE_FIXTURES": str(MICROK8S_CLI),
    }
    if refreshed:
        (home / "refreshed.json").write_text(json.dumps(refreshed))
    config = agent_config(
        home,
        broker,
        node={"name": name, "cluster": "lab"},
        health={"interval_s": 1, "sysfs_root": str(_sysfs(home, temperature, throttled))},
        ha={"enabled": True, "interval_s": 0.5, "probe_timeout_s": 0.5},
        commands={"allow_unsigned": True},
        microk8s={
            "backend": "cli",
            "cli": str(FAKES / "microk8s"),
            "snap_cli": str(FAKES / "snap"),
            "backend_dir": str(backend),
        },
        log={"format": "json", "level": "info"},
    )
    return Node(name, home, AgentProcess(config, home / "agent.log", env).start())


def start_dashboard(
    workdir: Path, broker: Broker, port: int, *extra: str
) -> subprocess.Popen[bytes]:
    """`edge-agent dashboard` as a process; no operator config file is read (XDG points here)."""
    env = {**os.environ, "XDG_CONFIG_HOME": str(workdir / "xdg")}
    env.pop("EDGE_AGENT_OPERATOR_CONFIG", None)
    argv = [sys.executable, "-m", "agent", "dashboard", "--broker", f"{broker.host}:{broker.port}"]
    with (workdir / f"dashboard-{port}.log").open("ab") as log:
        process = subprocess.Popen(
            [*argv, "--cluster", "lab", "--port", str(port), *extra],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
            env=env,
        )
    wait_port("127.0.0.1", port, timeout_s=30)
    return process


@contextlib.asynccontextmanager
async def lab(workdir: Path) -> AsyncIterator[Lab]:
    broker = Broker(workdir).start()
    tls = self_signed(workdir)
    block = loopback_block()
    members = [await FakeMember(f"{block}.{i + 2}", tls).start() for i in range(len(NODES))]
    nodes: dict[str, Node] = {}
    dashboard = None
    try:
        for name, member in zip(NODES, members, strict=True):
            nodes[name] = _start_agent(workdir, broker, name, members, member)
        port = free_port()
        dashboard = start_dashboard(workdir, broker, port)
        yield Lab(workdir, broker, nodes, dashboard, port)
    finally:
        if dashboard is not None and dashboard.poll() is None:
            dashboard.terminate()
            dashboard.wait(timeout=10)
        for node in nodes.values():
            node.agent.stop()
        for member in members:
            await member.stop()
        broker.kill()


async def wait_fleet(lab_: Lab, check: Any, timeout_s: float = 30.0) -> dict[str, Any]:
    """Poll /api/fleet until `check(snapshot)` holds."""
    deadline = time.monotonic() + timeout_s
    snapshot: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError, ValueError):
            snapshot = await asyncio.to_thread(lab_.fleet)
            if check(snapshot):
                return snapshot
        await asyncio.sleep(0.3)
    raise TimeoutError(f"the fleet never matched; last: {json.dumps(snapshot)[:2000]}")


def _all_reporting(snapshot: dict[str, Any]) -> bool:
    rows = snapshot.get("nodes", [])
    return (
        len(rows) == len(NODES)
        and all(r["health"] and r["role"] for r in rows)
        and snapshot["banner"]["verdict"] == "healthy"
    )


async def _screenshot(target: Path, width: int) -> None:
    from tests import cdp

    with tempfile.TemporaryDirectory(prefix="dashboard-lab-") as tmp:
        workdir = Path(tmp)
        async with lab(workdir) as fleet:
            await wait_fleet(fleet, _all_reporting, 60)
            # A lab day: pi-02 runs hot, pi-01 is pulled (kill -9: its will says lost), a status
            # command answered by pi-03.
            fleet.nodes["pi-02"].set_temperature(81200)
            fleet.nodes["pi-01"].agent.stop()
            await _send_status(fleet, "pi-03")
            await wait_fleet(
                fleet,
                lambda s: (
                    {r["name"]: r["presence"] for r in s["nodes"]}.get("pi-01") == "lost"
                    and any(r["command"] for r in s["nodes"])
                ),
                60,
            )
            async with cdp.browser(workdir) as new_page, new_page() as page:
                phone = width < 600
                await page.viewport(width, 700, 2 if phone else 1, mobile=phone)
                await page.navigate(fleet.url)
                await page.wait_for("document.body.dataset.mode === 'live'")
                await page.wait_for("document.querySelectorAll('#rows tr').length === 3")
                await asyncio.sleep(1.5)
                await page.screenshot(target)
    print(f"wrote {target}")


async def _send_status(fleet: Lab, node: str) -> None:
    """A `status` command (read-only; unsigned is allowed in this lab) so a row shows one."""
    import aiomqtt

    body = {
        "v": 1,
        "id": f"c-lab-{int(time.time())}",
        "verb": "status",
        "target": node,
        "args": {},
        "issued_at": int(time.time()),
    }
    async with aiomqtt.Client(fleet.broker.host, fleet.broker.port) as client:
        await client.publish(f"microk8s/lab/nodes/{node}/cmd", json.dumps(body), qos=1)


def main() -> None:
    parser = argparse.ArgumentParser(description="Run the dashboard lab and take a screenshot")
    parser.add_argument("--screenshot", type=Path, default=REPO / "docs" / "dashboard.png")
    parser.add_argument("--width", type=int, default=1360, help="CSS pixels; < 600 is a phone")
    args = parser.parse_args()
    asyncio.run(_screenshot(args.screenshot.resolve(), args.width))


if __name__ == "__main__":
    main()
