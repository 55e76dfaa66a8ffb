"""Real dqlite clusters for the HA tests: `dqlite-demo` processes (Debian's go-dqlite package).

Each node runs `dqlite-demo --db 127.0.0.1N:<free port>` with its own data dir and is stopped by
its PID (SIGKILL: a crash, so dqlite does not hand its role over as it does on SIGTERM). The
first node bootstraps, the others join it one at a time; go-dqlite's app then makes the first
three voters and the next three stand-bys (defaults Voters=3, StandBys=3). Used through
`start_cluster()`; `dqlite_cli()` runs the real `dqlite` shell as an independent witness.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest

from agent.ha import dqlite

HOSTS = tuple(f"127.0.0.{i}" for i in range(11, 16))
DEMO = "dqlite-demo"
SHELL = "dqlite"
JOIN_TIMEOUT_S = 60.0


def require_dqlite() -> None:
    """Fail (not skip: these tests are the proof) when go-dqlite is missing."""
    if shutil.which(DEMO) is None or shutil.which(SHELL) is None:
        pytest.fail("go-dqlite (dqlite-demo, dqlite) is not installed: run `.ci/bootstrap.sh test`")


def free_port(host: str) -> int:
    """A port free on `host` and on host's port + 1000 (dqlite-demo's HTTP API)."""
    while True:
        with socket.socket() as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port < 64000:
            with socket.socket() as api, contextlib.suppress(OSError):
                api.bind((host, port + 1000))
                return port


class DqliteNode:
    def __init__(self, host: str, data: Path) -> None:
        self.host = host
        self.port = free_port(host)
        self.data = data
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def start(self, join: str | None) -> None:
        self.data.mkdir(parents=True, exist_ok=True)
        argv = [DEMO, "--api", f"{self.host}:{self.port + 1000}", "--db", self.address]
        argv += ["--dir", str(self.data)] + (["--join", join] if join else [])
        with (self.data / "demo.log").open("ab") as log:
            self.process = subprocess.Popen(argv, stdout=log, stderr=log)

    def kill(self) -> None:
        """SIGKILL by PID: a crash (no leadership handover)."""
        if self.process is not None and self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None


class DqliteCluster:
    def __init__(self, nodes: list[DqliteNode]) -> None:
        self.nodes = nodes

    @property
    def addresses(self) -> list[str]:
        return [n.address for n in self.nodes]

    def node(self, address: str) -> DqliteNode:
        return next(n for n in self.nodes if n.address == address)

    def stop(self) -> None:
        for node in self.nodes:
            node.kill()

    async def roles(self) -> dict[str, str]:
        """Address -> role, as the leader states them (through the real `dqlite` shell)."""
        alive = [n.address for n in self.nodes if n.alive]
        out = await dqlite_cli(alive, ".cluster")
        return {line.split("|")[1]: line.split("|")[2] for line in out.splitlines() if "|" in line}

    async def leader(self) -> str:
        alive = [n.address for n in self.nodes if n.alive]
        return (await dqlite_cli(alive, ".leader")).strip()


async def dqlite_cli(servers: list[str], command: str, timeout_s: float = 10.0) -> str:
    """`dqlite -s a,b,c demo <command>`: go-dqlite's own shell, the reference client."""
    process = await asyncio.create_subprocess_exec(
        SHELL,
        "-s",
        ",".join(servers),
        "demo",
        command,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        async with asyncio.timeout(timeout_s):
            out, _ = await process.communicate()
    except TimeoutError:
        process.kill()
        await process.wait()
        raise
    return out.decode()


async def _members_seen(first: str, count: int) -> None:
    client = dqlite.DqliteClient(None, 2.0)
    deadline = time.monotonic() + JOIN_TIMEOUT_S
    while True:
        view = await client.view([first])
        if view.leader is not None and len(view.members) >= count:
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"dqlite cluster did not reach {count} members: {view}")
        await asyncio.sleep(0.2)


async def start_cluster(root: Path, size: int) -> DqliteCluster:
    """`size` dqlite-demo nodes on 127.0.0.11.. (free ports), joined one at a time."""
    require_dqlite()
    nodes = [DqliteNode(host, root / f"dqlite-{i}") for i, host in enumerate(HOSTS[:size])]
    cluster = DqliteCluster(nodes)
    try:
        for index, node in enumerate(nodes):
            node.start(join=nodes[0].address if index else None)
            await _members_seen(nodes[0].address, index + 1)
    except BaseException:
        cluster.stop()
        raise
    return cluster
