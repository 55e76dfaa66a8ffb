"""The world of the footprint bench's `pi` profile: what a MicroK8s HA node's agent lives with.

A real three-voter dqlite cluster (Debian's `dqlite-demo`, go-dqlite) on 127.0.0.11-13 at free
ports, named in a `cluster.yaml`/`info.yaml` backend directory the agent reads as on a node; the
snapd, cluster-agent and Kubernetes API fakes of tests/fakes (snap backend); the HA loop's live
dqlite view speaks to those voters in plain TCP (`ha.dqlite_tls = false`: dqlite-demo has no
TLS); a Pi sysfs tree from tests/fixtures/pi so every health detector has a source; an operator
key pair from `agent.commands.signing.generate` with the public half trusted. `signed_status` is
the one signed command the profile runs before it is measured.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt

from agent.commands import signing
from agent.settings import HaSettings, MicroK8sSettings
from tests.fakes.fixtures import started_snap_env

REPO = Path(__file__).resolve().parents[1]
NODE = "pi-01"
CLUSTER = "pi"
ROOT = f"microk8s/{CLUSTER}/nodes/{NODE}"
HOSTS = ("127.0.0.11", "127.0.0.12", "127.0.0.13")
PI_FIXTURES = REPO / "tests" / "fixtures" / "pi"
PI_FILES = {
    "thermal_zone0_temp": "sys/class/thermal/thermal_zone0/temp",
    "get_throttled": "sys/devices/platform/soc/soc:firmware/get_throttled",
    "device-tree-model": "proc/device-tree/model",
}


def free_port_on(host: str) -> int:
    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def _wait_tcp(host: str, port: int, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"dqlite-demo on {host}:{port} did not start")


@contextlib.contextmanager
def dqlite_cluster(workdir: Path) -> Any:
    """Three dqlite-demo voters; yields their raft addresses (`host:port`), first = leader."""
    binary = shutil.which("dqlite-demo")
    if binary is None:
        raise RuntimeError("dqlite-demo not found (Debian package go-dqlite)")
    processes: list[subprocess.Popen[bytes]] = []
    addresses: list[str] = []
    try:
        for index, host in enumerate(HOSTS):
            db, api = free_port_on(host), free_port_on(host)
            argv = [binary, "--api", f"{host}:{api}", "--db", f"{host}:{db}"]
            argv += ["--dir", str(workdir / f"dqlite-{index}")]
            if addresses:
                argv += ["--join", addresses[0]]
            log = (workdir / f"dqlite-{index}.log").open("wb")
            processes.append(subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT))
            _wait_tcp(host, db, 15)
            addresses.append(f"{host}:{db}")
        yield addresses
    finally:
        for process in reversed(processes):
            process.terminate()
        for process in processes:
            try:
                process.wait(5)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(5)


def write_backend_dir(directory: Path, addresses: list[str]) -> None:
    """cluster.yaml (three voters) and info.yaml (this node is the first) as dqlite writes them."""
    directory.mkdir(parents=True)
    members = "".join(
        f"- ID: {index + 1}\n  Address: {address}\n  Role: 0\n"
        for index, address in enumerate(addresses)
    )
    (directory / "cluster.yaml").write_text(members)
    (directory / "info.yaml").write_text(f"ID: 1\nAddress: {addresses[0]}\nRole: 0\n")


def write_sysfs(root: Path) -> None:
    for fixture, relative in PI_FILES.items():
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(PI_FIXTURES / fixture, target)


@contextlib.asynccontextmanager
async def pi_world(
    workdir: Path, broker_port: int, http_port: int
) -> AsyncIterator[dict[str, Any]]:
    """Start the cluster and fakes; yield the agent's config values (TOML sections)."""
    with dqlite_cluster(workdir) as addresses:
        async with started_snap_env(workdir / "snap") as env:
            backend_dir = workdir / "backend"
            write_backend_dir(backend_dir, addresses)
            write_sysfs(workdir / "sysfs")
            _, public = signing.generate("ops-1", workdir)
            from bench.footprint import fake_microk8s  # bench.footprint imports this module

            node_files = fake_microk8s(workdir, backend_dir=backend_dir)
            defaults = MicroK8sSettings()
            microk8s = env.section(
                status_interval_s=defaults.status_interval_s,
                status_timeout_s=defaults.status_timeout_s,
                command_timeout_s=defaults.command_timeout_s,
            )
            yield {
                "node": {"name": NODE, "cluster": CLUSTER},
                "mqtt": {"port": broker_port},
                "health": {
                    "interval_s": 10.0,
                    "sysfs_root": str(workdir / "sysfs"),
                    "detectors_enabled": True,
                },
                "http": {"port": http_port},
                "commands": {"trusted_keys": [str(public)]},
                "microk8s": {**microk8s, **node_files},
                # dqlite-demo speaks plain TCP; a node's dqlite speaks TLS (ha.dqlite_tls).
                "ha": {"enabled": True, "interval_s": HaSettings().interval_s, "dqlite_tls": False},
                "state": {"dir": str(workdir / "state")},
                "log": {"format": "json", "level": "warning"},
            }


def signed_status(workdir: Path) -> tuple[str, bytes, str]:
    """One `status` command signed with the trusted key: (command topic, payload, status topic)."""
    signer = signing.Signer.from_file(workdir / "ops-1.key")
    now = int(time.time())
    envelope = {"v": 1, "id": f"bench-{now}", "verb": "status", "target": NODE, "args": {}}
    body = signer.sign({**envelope, "issued_at": now})
    return f"{ROOT}/cmd", json.dumps(body).encode(), f"{ROOT}/cmd/{body['id']}"


TERMINAL = frozenset({"succeeded", "failed", "rejected", "timed_out"})


async def terminal_status(client: aiomqtt.Client, topic: str, timeout_s: float) -> str:
    """Wait (on a client already subscribed to `topic`) for a command's terminal status."""
    async with asyncio.timeout(timeout_s):
        async for message in client.messages:
            if message.topic.matches(topic) and isinstance(message.payload, bytes):
                status = str(json.loads(message.payload).get("status"))
                if status in TERMINAL:
                    return status
    return "no answer"
