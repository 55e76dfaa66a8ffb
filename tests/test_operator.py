"""The operator CLI: pure formatting, and `edge-agent keygen/send/nodes` against a live agent."""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from agent.commands import wire
from agent.operator import tools
from tests.commands_helpers import NODE, commands_config, fake_env, mutating_calls, ready
from tests.conftest import AgentProcess, Broker, watch
from tests.paths import REPO

Spawn = Callable[..., AgentProcess]


async def cli(*args: str, timeout_s: float = 30) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "agent",
        *args,
        cwd=REPO,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


# -- pure -----------------------------------------------------------------------------------


def test_envelope_ids_are_valid_and_times_are_integers() -> None:
    body = tools.build_envelope("pi-01", "status", {}, 1764160000.7)
    assert wire.ID_RE.fullmatch(body["id"])
    assert body["id"].startswith("c-20251126T122640Z-")
    assert body["issued_at"] == 1764160000
    assert body["id"] != tools.build_envelope("pi-01", "status", {}, 1764160000.7)["id"]


def test_describe_one_line_per_status() -> None:
    line = tools.describe(
        {"id": "c-1", "node": "pi-01", "status": "running", "ts": 0, "detail": "draining"}
    )
    assert line.split("  ")[1:] == ["pi-01", "c-1", "running", "draining"]
    done = tools.describe(
        {
            "id": "c-1",
            "node": "pi-01",
            "status": "succeeded",
            "ts": 0,
            "duplicate": True,
            "result": {"old_version": "v1.32.3", "new_version": "v1.33.0", "nested": {}},
        }
    )
    assert done.endswith("succeeded  (duplicate)  old_version=v1.32.3 new_version=v1.33.0")
    health = tools.describe(
        {
            "id": "c-2",
            "node": "pi-01",
            "status": "succeeded",
            "ts": 0,
            "result": {"health": {"status": "degraded", "reasons": ["hot"]}, "ha": None},
        }
    )
    assert health.endswith("health=degraded ha=unknown (hot)")
    assert "\n" not in health


@pytest.mark.parametrize(
    ("status", "code"),
    [("succeeded", 0), ("failed", 1), ("timed_out", 1), ("rejected", 2)],
)
def test_exit_codes(status: str, code: int) -> None:
    assert tools.exit_code(status) == code


def test_nodes_table() -> None:
    now = 1000.0
    states = {"pi-01": {"state": "online", "ts": 990}, "pi-02": {"state": "offline", "ts": 100}}
    healths: dict[str, dict[str, Any]] = {
        "pi-01": {
            "ts": 998,
            "status": "ok",
            "system": {"temperature_c": 48.31},
            "microk8s": {"version": "v1.32.3"},
        },
        "pi-03": {"ts": "bad", "status": "critical", "system": None, "microk8s": None},
    }
    table = tools.format_table(tools.node_rows(states, healths, now)).splitlines()
    assert table[0].split() == ["NODE", "STATE", "STATUS", "VERSION", "TEMP", "LAST", "SEEN"]
    assert table[1].split() == ["pi-01", "online", "ok", "v1.32.3", "48.3", "C", "2s", "ago"]
    assert table[2].split() == ["pi-02", "offline", "-", "-", "-", "15m", "ago"]
    assert table[3].split() == ["pi-03", "unknown", "critical", "-", "-", "-"]


# -- against a live agent -------------------------------------------------------------------


async def test_keygen(tmp_path: Path) -> None:
    code, out, _ = await cli("keygen", "ops-1", "--dir", str(tmp_path))
    assert code == 0
    assert "commands.trusted_keys" in out
    assert stat.S_IMODE((tmp_path / "ops-1.key").stat().st_mode) == 0o600
    assert (tmp_path / "ops-1.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    code, _, err = await cli("keygen", "ops-1", "--dir", str(tmp_path))
    assert code == 1
    assert "already exists" in err


@pytest.mark.broker
async def test_send_and_nodes_against_a_live_agent(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    assert (await cli("keygen", "ops-1", "--dir", str(tmp_path)))[0] == 0

    class Keys:
        public = tmp_path / "ops-1.pub"

    config = commands_config(tmp_path, broker, Keys)  # type: ignore[arg-type]
    spawn_agent(config, env=fake_env(tmp_path))
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
    base = ["send", "--broker", f"{broker.host}:{broker.port}", "--cluster", "lab"]
    signed = [*base, "--key", str(tmp_path / "ops-1.key")]

    code, out, _ = await cli(*signed, NODE, "status")
    lines = out.splitlines()
    assert code == 0
    assert [line.split("  ")[3] for line in lines] == ["accepted", "succeeded"]
    assert "health=" in lines[-1]

    code, out, _ = await cli(*signed, NODE, "addon", "enable", "metallb", "10.0.0.200-10.0.0.220")
    assert code == 0
    states = [line.split("  ")[3] for line in out.splitlines()]
    assert states[0] == "accepted"
    assert states[-1] == "succeeded"
    assert "running" in states

    code, out, _ = await cli(*signed, NODE, "addon", "enable", "foo")
    assert code == 1
    assert "Addon foo was not found in any repository" in out.splitlines()[-1]

    code, out, _ = await cli(*base, NODE, "upgrade", "1.33-strict/stable")  # unsigned
    assert code == 2
    assert "rejected  missing signature" in out

    code, out, _ = await cli(*signed, "--json", NODE, "upgrade", "1.33-strict/stable", "--no-drain")
    assert code == 0
    final = json.loads(out.splitlines()[-1])
    assert final["status"] == "succeeded"
    assert final["result"]["new_version"] == "v1.33.0"

    code, _, err = await cli(*signed, "--timeout", "1", "pi-09", "status")
    assert code == 3
    assert "no answer within 1 s" in err

    code, out, _ = await cli(
        "nodes", "--broker", f"{broker.host}:{broker.port}", "--cluster", "lab"
    )
    assert code == 0
    assert out.splitlines()[1].split()[:3] == [NODE, "online", "ok"]

    assert mutating_calls(tmp_path) == [
        ["enable", "metallb", "10.0.0.200-10.0.0.220"],
        ["enable", "foo"],
        ["refresh", "microk8s", "--channel=1.33-strict/stable"],
    ]


async def test_send_without_a_broker_exits_3(tmp_path: Path) -> None:
    from tests.conftest import free_port

    code, _, err = await cli("send", "--broker", f"127.0.0.1:{free_port()}", NODE, "status")
    assert code == 3
    assert "cannot connect" in err
