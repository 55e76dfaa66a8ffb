"""Shared helpers for the command tests: signed envelopes, agent configs, the fakes' argv log."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from pathlib import Path
from typing import Any

import psutil

from agent.commands import signing
from agent.commands.signing import Signer
from tests.conftest import Broker, Watcher, agent_config
from tests.paths import FAKES, MICROK8S_CLI

NODE = "pi-01"
ROOT = f"microk8s/lab/nodes/{NODE}"
CMD = f"{ROOT}/cmd"
TOKEN = "92b2db237428470dc4fcfc4ebbd9dc81"
JOIN_URL = f"127.0.0.11:25000/{TOKEN}/2c0cb3284b05"
TERMINAL = {"succeeded", "failed", "timed_out", "rejected"}


class Keys:
    """An operator key pair made with the same code as `edge-agent keygen`."""

    def __init__(self, directory: Path, name: str = "ops-1") -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.private, self.public = signing.generate(name, directory)
        self.signer = Signer.from_file(self.private)


def envelope(verb: str, args: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "id": f"c-{time.time_ns()}",
        "verb": verb,
        "target": NODE,
        "args": args or {},
        "issued_at": int(time.time()),
    }
    body.update(changes)
    return body


def signed(
    keys: Keys, verb: str, args: dict[str, Any] | None = None, **changes: Any
) -> dict[str, Any]:
    return keys.signer.sign(envelope(verb, args, **changes))


def fake_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    """Environment for an agent whose microk8s/snap are the fakes, logging argv per test."""
    return {
        "FAKE_MICROK8S_LOG": str(tmp_path / "argv.log"),
        "FAKE_MICROK8S_STATE": str(tmp_path / "refreshed.json"),
        "FAKE_FIXTURES": str(MICROK8S_CLI),
        **extra,
    }


def commands_config(
    tmp_path: Path,
    broker: Broker,
    keys: Keys | None,
    *,
    health_s: float = 5,
    commands: dict[str, Any] | None = None,
    microk8s: dict[str, Any] | None = None,
    node: str = NODE,
    **sections: Any,
) -> Path:
    """An agent named pi-01 (a node of kube/nodes.json) using the cli backend on the fakes."""
    return agent_config(
        tmp_path,
        broker,
        node={"name": node, "cluster": "lab"},
        health={"interval_s": health_s},
        commands={"trusted_keys": [str(keys.public)] if keys else [], **(commands or {})},
        microk8s={
            "backend": "cli",
            "cli": str(FAKES / "microk8s"),
            "snap_cli": str(FAKES / "snap"),
            "command_timeout_s": 20,
            "join_timeout_s": 5,
            **(microk8s or {}),
        },
        **sections,
    )


def argv_calls(tmp_path: Path) -> list[list[str]]:
    path = tmp_path / "argv.log"
    if not path.exists():
        return []
    return [json.loads(line)[1:] for line in path.read_text().splitlines()]


def mutating_calls(tmp_path: Path) -> list[list[str]]:
    """The fakes' calls minus the health queries (status, version, snap list, get node)."""
    reads = (["status"], ["version"], ["list"])
    return [
        argv
        for argv in argv_calls(tmp_path)
        if argv[:1] not in reads and argv[:2] != ["kubectl", "get"]
    ]


async def ready(w: Watcher, timeout_s: float = 15) -> None:
    """The agent has connected and subscribed: a live (not retained) health message arrived.

    The first health follows the subscriptions; a retained one may be from an earlier run.
    """
    deadline = time.monotonic() + timeout_s
    while not any(t == f"{ROOT}/health" and not retained for t, _, retained in w.messages):
        if time.monotonic() > deadline:
            raise TimeoutError("the agent published no live health message")
        await asyncio.sleep(0.02)


async def send(w: Watcher, body: dict[str, Any] | bytes, **kwargs: Any) -> None:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    await w.publish(CMD, payload, qos=1, **kwargs)


def updates(w: Watcher, command_id: str) -> list[dict[str, Any]]:
    return [p for t, p, _ in w.messages if t == f"{CMD}/{command_id}"]


async def terminal(w: Watcher, command_id: str, timeout_s: float = 15) -> dict[str, Any]:
    _, payload = await w.wait_for(
        lambda t, p: t == f"{CMD}/{command_id}" and p["status"] in TERMINAL, timeout_s
    )
    return payload  # type: ignore[no-any-return]


async def status_of(
    w: Watcher, command_id: str, status: str, timeout_s: float = 15
) -> dict[str, Any]:
    _, payload = await w.wait_for(
        lambda t, p: t == f"{CMD}/{command_id}" and p["status"] == status, timeout_s
    )
    return payload  # type: ignore[no-any-return]


def _is_fake(proc: psutil.Process, log: Path) -> bool:
    """A fake microk8s/snap (or a grandchild it forked) of this test: never the agent itself."""
    cmdline = proc.cmdline()
    fake = any(part.startswith(str(FAKES)) for part in cmdline[:2]) or cmdline[:1] == ["sleep"]
    alive = proc.status() != psutil.STATUS_ZOMBIE
    return fake and alive and proc.environ().get("FAKE_MICROK8S_LOG") == str(log)


def fakes_alive(log: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter():
        with contextlib.suppress(psutil.Error):
            if _is_fake(proc, log):
                found.append(proc)
    return found


def kill_fakes(log: Path) -> None:
    """Kill this test's leftover fakes by pid.

    A kill -9 of the agent leaves its running child behind (it has its own session), exactly as
    on a real node; the test cleans up after itself, never by process name.
    """
    for proc in fakes_alive(log):
        with contextlib.suppress(psutil.Error):
            proc.kill()
