"""Memory of the snap backend (not a test): the agent's steady PSS with the Kubernetes client kept
out, and the peak RSS of the drain helper (`python -m agent.microk8s.drain`) during an upgrade.

Runs a real agent (backend "snap") on a private Mosquitto against the snapd, cluster-agent and
Kubernetes API fakes of tests/fakes, sends `upgrade {"drain": true}` over MQTT, and samples
/proc of the agent and of its children every 10 ms. Then compares interpreters that import the
agent with and without kubernetes_asyncio.

    .venv/bin/python -m bench.upgrade_memory [--warmup 10]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt
import psutil

from agent.config import to_toml
from bench.footprint import REPO, free_port, pss_mib, rss_mib, start_broker
from tests.fakes.fixtures import SnapEnv, started_snap_env

NODE = "pi-01"
ROOT = f"microk8s/bench/nodes/{NODE}"
AGENT_IMPORTS = "import agent.app, agent.microk8s.backends.snap, agent.microk8s.backends.select"


def write_config(workdir: Path, port: int, env: SnapEnv) -> Path:
    values: dict[str, dict[str, Any]] = {
        "node": {"name": NODE, "cluster": "bench"},
        "mqtt": {"port": port},
        "health": {"interval_s": 1.0},
        "http": {"port": free_port()},
        "commands": {"allow_unsigned": True},
        "microk8s": env.section(status_interval_s=5.0),
        "ha": {"enabled": False},
        "state": {"dir": str(workdir / "state")},
        "log": {"format": "json", "level": "info"},
    }
    path = workdir / "agent.toml"
    path.write_text(to_toml(values))
    return path


class Sampler:
    """Polls /proc: the agent's PSS/RSS, and the peak RSS of any child (the drain helper)."""

    def __init__(self, pid: int) -> None:
        self.agent = psutil.Process(pid)
        self.child_peak_mib = 0.0
        self.child_pids: set[int] = set()

    def children(self) -> None:
        for child in self.agent.children(recursive=True):
            try:
                rss = child.memory_info().rss / 2**20
            except psutil.Error:
                continue
            self.child_pids.add(child.pid)
            self.child_peak_mib = max(self.child_peak_mib, rss)


async def wait_health(client: aiomqtt.Client, timeout_s: float) -> dict[str, Any]:
    async with asyncio.timeout(timeout_s):
        async for message in client.messages:
            if message.topic.matches(f"{ROOT}/health") and isinstance(message.payload, bytes):
                health: dict[str, Any] = json.loads(message.payload)
                if health["kube"].get("apiserver_ready") is not None:
                    return health
    raise TimeoutError("no health message with Kubernetes facts")


async def upgrade(client: aiomqtt.Client, sampler: Sampler) -> dict[str, Any]:
    body = {
        "v": 1,
        "id": f"bench-{int(time.time())}",
        "verb": "upgrade",
        "target": NODE,
        "args": {"channel": "1.33-strict/stable", "drain": True},
        "issued_at": int(time.time()),
    }
    await client.publish(f"{ROOT}/cmd", json.dumps(body), qos=1)
    messages = client.messages
    while True:
        sampler.children()
        try:
            message = await asyncio.wait_for(anext(messages), timeout=0.01)
        except TimeoutError:
            continue
        if message.topic.matches(f"{ROOT}/cmd/{body['id']}") and isinstance(message.payload, bytes):
            status: dict[str, Any] = json.loads(message.payload)
            if status["status"] not in ("accepted", "running"):
                return status


def steady(pid: int, seconds: float) -> tuple[float, float]:
    pss, rss = [], []
    for _ in range(int(seconds / 0.5)):
        pss.append(pss_mib(pid))
        rss.append(rss_mib(pid))
        time.sleep(0.5)
    return max(pss), max(rss)


async def run_agent(workdir: Path, warmup_s: float) -> dict[str, Any]:
    async with started_snap_env(workdir) as env:
        env.snapd.on_refreshed = lambda version: env.kube.set_kubelet(NODE, version)
        port = free_port()
        broker = start_broker(workdir, port)
        try:
            figures = await measure(workdir, port, env, warmup_s)
        finally:
            broker.terminate()
            broker.wait(5)
    reported = [
        line["max_rss_mib"]
        for line in map(_json, (workdir / "agent.log").read_text().splitlines())
        if line.get("event") == "kube_helper_finished"
    ]
    return {**figures, "helper_peak_reported_mib": reported}


async def measure(workdir: Path, port: int, env: SnapEnv, warmup_s: float) -> dict[str, Any]:
    argv = [sys.executable, "-m", "agent", "run", "--config", str(write_config(workdir, port, env))]
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(f"{ROOT}/#", qos=1)
        with (workdir / "agent.log").open("wb") as log:
            agent = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)
        try:
            await wait_health(client, 30)
            await asyncio.sleep(warmup_s)
            before = await asyncio.to_thread(steady, agent.pid, 3)
            sampler = Sampler(agent.pid)
            async with asyncio.timeout(120):
                status = await upgrade(client, sampler)
            after = await asyncio.to_thread(steady, agent.pid, 3)
        finally:
            agent.terminate()
            agent.wait(10)
    return {
        "status": status,
        "before": before,
        "after": after,
        "helper_peak_sampled_mib": sampler.child_peak_mib,
        "helper_runs": len(sampler.child_pids),
    }


def _json(line: str) -> dict[str, Any]:
    try:
        value = json.loads(line)
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def interpreter(imports: str) -> tuple[float, float]:
    """(PSS, RSS) MiB of a Python that ran `imports` and then sleeps."""
    code = f"{imports}\nimport sys, time\nprint('ready', flush=True)\ntime.sleep(60)"
    child = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None
        child.stdout.readline()
        time.sleep(0.5)
        return pss_mib(child.pid), rss_mib(child.pid)
    finally:
        child.kill()
        child.wait(5)


def pair(figures: tuple[float, float]) -> str:
    return f"{figures[0]:.1f} / {figures[1]:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        figures = asyncio.run(run_agent(Path(tmp), args.warmup))
    without = interpreter(AGENT_IMPORTS)
    with_client = interpreter(f"{AGENT_IMPORTS}\nimport kubernetes_asyncio.client")
    status = figures["status"]
    print(f"upgrade memory (snap backend, fakes), python {sys.version.split()[0]}")
    print(f"  upgrade result                           : {status['status']} {status.get('result')}")
    print(f"  agent steady PSS / RSS before upgrade    : {pair(figures['before'])}")
    print(f"  agent steady PSS / RSS after upgrade     : {pair(figures['after'])}")
    print(f"  helper runs (cordon, drain, uncordon)    : {figures['helper_runs']}")
    print(
        f"  helper peak RSS, sampled every 10 ms     : {figures['helper_peak_sampled_mib']:.1f} MiB"
    )
    print(f"  helper peak RSS, its own ru_maxrss       : {figures['helper_peak_reported_mib']} MiB")
    print(f"  python + agent modules, PSS / RSS        : {pair(without)}")
    print(f"  ... + kubernetes_asyncio.client          : {pair(with_client)}")
    print(
        f"  keeping the client resident would cost   : +{with_client[1] - without[1]:.1f} MiB RSS"
    )


if __name__ == "__main__":
    main()
