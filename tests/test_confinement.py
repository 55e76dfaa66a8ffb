"""Confinement discipline: with the snap's environment the agent writes to $SNAP_DATA and
$SNAP_COMMON only, and still does its job.

The agent runs as root in a private mount namespace where every other mount is read-only
(tests/fakes/readonly-root), configured the snap's way (`snap set` → configure hook →
$SNAP_DATA/agent.toml, `edge-agent run` without --config). It must publish health on a private
broker, answer a `status` command from the operator CLI, and after a restart come back with the
next session number, which it can only know from a file it wrote to $SNAP_COMMON.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Broker, free_port, watch
from tests.paths import FAKES, REPO
from tests.snapenv import FakeSnap

pytestmark = [
    pytest.mark.broker,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to build a private mount namespace"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare"),
]

R = "microk8s/lab/nodes/pi-ro"


class ConfinedAgent:
    def __init__(self, snap: FakeSnap, log_path: Path) -> None:
        self.snap = snap
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ConfinedAgent:
        argv = [str(FAKES / "readonly-root"), str(self.snap.data), str(self.snap.common), "--"]
        env = self.snap.env(PYTHONDONTWRITEBYTECODE="1", HOME=str(self.snap.snap))
        env.pop("EDGE_AGENT_CONFIG", None)
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*argv, str(self.snap.snap / "bin" / "edge-agent"), "run"],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd="/",
            )
        return self

    def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=20)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.log_text().splitlines():
            if line.startswith("{"):
                found.append(json.loads(line))
        return found


@pytest.fixture
def snap(tmp_path: Path, broker: Broker) -> FakeSnap:
    snap = FakeSnap(tmp_path / "root")
    result = snap.snap_set(
        "mqtt.host=127.0.0.1",
        f"mqtt.port={broker.port}",
        "node.name=pi-ro",
        "node.cluster=lab",
        "health.interval-s=0.5",
        # The detectors' readings (adjtimex, /proc, statvfs, the fsync probe) must work here too.
        "health.detectors-enabled=true",
        "health.detectors-interval-s=1",
        f"http.port={free_port()}",
        f"microk8s.snapd-socket={tmp_path / 'no-snapd.socket'}",
        f"microk8s.cli={tmp_path / 'no-microk8s'}",
        "log.format=json",
        "log.level=debug",
    )
    assert result.returncode == 0, result.stderr
    return snap


@pytest.fixture
def confined(snap: FakeSnap, tmp_path: Path) -> Iterator[list[ConfinedAgent]]:
    agents: list[ConfinedAgent] = []
    yield agents
    for agent in agents:
        agent.kill()


def operator_status(broker: Broker) -> subprocess.CompletedProcess[str]:
    where = ["--broker", f"{broker.host}:{broker.port}", "--cluster", "lab"]
    return subprocess.run(
        [sys.executable, "-m", "agent", "send", *where, "--timeout", "30", "pi-ro", "status"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
        check=False,
    )


def online(session: int) -> Callable[[str, Any], bool]:
    return lambda topic, payload: (
        topic == f"{R}/state" and payload["state"] == "online" and payload["session"] == session
    )


async def test_the_agent_writes_only_to_its_snap_dirs(
    tmp_path: Path, broker: Broker, snap: FakeSnap, confined: list[ConfinedAgent]
) -> None:
    async with watch(broker, "microk8s/#") as w:
        first = ConfinedAgent(snap, tmp_path / "agent-1.log").start()
        confined.append(first)
        await w.wait_for(online(1), timeout_s=30)
        _, health = await w.wait_for(
            lambda t, p: t == f"{R}/health" and p["session"] == 1 and p["clock"] is not None,
            timeout_s=30,
        )
        # The clock's sync state is read (adjtimex, or timesyncd's flag under seccomp).
        assert health["clock"]["synced"] in {True, False}
        sent = operator_status(broker)
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "succeeded" in sent.stdout
        assert first.stop() == 0

        second = ConfinedAgent(snap, tmp_path / "agent-2.log").start()
        confined.append(second)
        await w.wait_for(online(2), timeout_s=30)
        await w.wait_for(lambda t, p: t == f"{R}/health" and p["session"] == 2, timeout_s=30)
        assert second.stop() == 0

    for agent in (first, second):
        text = agent.log_text()
        assert "readonly-root: read-only except:" in text
        assert "Read-only file system" not in text
        assert [e for e in agent.events() if e.get("level") in {"error", "critical"}] == []
    written = {p.relative_to(snap.common).as_posix() for p in snap.common.rglob("*")}
    assert "session" in written
    assert (snap.common / "session").read_text().strip() == "2"
