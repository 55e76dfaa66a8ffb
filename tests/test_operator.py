"""The operator CLI: pure formatting, and `edge-agent keygen/send/nodes` against a live agent."""

from __future__ import annotations

import argparse
import asyncio
import json
import stat
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from agent.cli import _extra_commands, build_parser
from agent.cli import main as cli_main
from agent.commands import wire
from agent.link.inbound import Invalid, parse_object
from agent.operator import exits, tools
from agent.operator.roster import Roster
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
    [("succeeded", 0), ("failed", 1), ("timed_out", 1), ("rejected", 4)],
)
def test_exit_codes(status: str, code: int) -> None:
    assert tools.exit_code(status) == code


def test_nodes_table_marks_offline_health_stale() -> None:
    now = 10000.0
    roster = Roster("microk8s", "lab")
    messages = {
        "pi-01/state": {"state": "online", "ts": 9990},
        "pi-01/health": {
            "ts": 9998,
            "status": "ok",
            "system": {"temperature_c": 48.31},
            "microk8s": {"version": "v1.32.3"},
        },
        "pi-01/ha": {"role": "voter", "verdict": "healthy"},
        "pi-02/state": {"state": "offline", "ts": 9100, "reason": "connection lost"},
        "pi-02/health": {"ts": 9000, "status": "ok", "system": None, "microk8s": None},
        "pi-03/health": {"ts": "bad", "status": "critical", "system": None, "microk8s": None},
    }
    for leaf, body in messages.items():
        roster.feed(f"microk8s/lab/nodes/{leaf}", json.dumps(body).encode())
    roster.feed("microk8s/lab/nodes/pi-04/state", b"not json")
    roster.feed("microk8s/lab/nodes/pi-05/cmd", b"{}")
    roster.feed("microk8s/shop/nodes/pi-09/state", b'{"state": "online"}')
    table = tools.format_table(tools.node_rows(roster, now)).splitlines()
    assert table[0].split() == [
        "NODE", "PRESENCE", "HEALTH", "ROLE", "VERSION", "TEMP", "LAST", "SEEN"
    ]  # fmt: skip
    assert table[1].split() == [
        "pi-01",
        "online",
        "ok",
        "voter",
        "v1.32.3",
        "48.3",
        "C",
        "2s",
        "ago",
    ]
    assert table[2].split() == [
        *("pi-02", "offline", "15m", "STALE", "ok", "(17m", "old)"), *("-", "-", "-", "15m", "ago")
    ]  # fmt: skip
    assert table[3].split() == [
        *("pi-03", "unknown", "STALE", "critical", "(?", "old)"), *("-", "-", "-", "-")
    ]  # fmt: skip
    assert len(table) == 4
    assert roster.other_clusters == {"shop"}
    assert tools.preflight(roster, "pi-07", now) == (
        "no node 'pi-07' in cluster 'lab' (known: pi-01, pi-02)"
    )
    assert tools.preflight(roster, "pi-02", now) == (
        "node 'pi-02' in cluster 'lab' is offline for 15m, connection lost"
    )
    assert tools.preflight(roster, "pi-01", now) is None
    empty = Roster("microk8s", "default")
    empty.feed("microk8s/lab/nodes/pi-01/state", b'{"state": "online"}')
    assert tools.preflight(empty, "pi-01", now) == (
        "no node 'pi-01' in cluster 'default' (it has no nodes; clusters seen: lab)"
    )


@pytest.mark.parametrize("target", ["pi-01/#", "Pi-01", "+", "pi_01", "-pi"])
def test_targets_that_are_not_node_names_are_usage_errors(target: str) -> None:
    with pytest.raises(SystemExit) as caught:
        cli_main(["send", target, "status"])
    assert caught.value.code == exits.USAGE


def test_bare_edge_agent_prints_help(capsys: pytest.CaptureFixture[str]) -> None:
    assert cli_main([]) == 2
    err = capsys.readouterr().err
    assert "usage: edge-agent" in err and "operator-config" in err


def test_options_anywhere_and_every_option_has_help() -> None:
    parser = build_parser(_extra_commands())
    ns = parser.parse_args(
        ["send", "pi-01", "upgrade", "1.33/stable", "--cluster", "lab", "--timeout", "5", "--json"]
    )
    assert (ns.cluster, ns.timeout, ns.json, ns.channel) == ("lab", 5.0, True, "1.33/stable")
    ns = parser.parse_args(["send", "--cluster", "shop", "pi-01", "status"])
    assert ns.cluster == "shop"
    ns = parser.parse_args(["nodes", "--wait", "1", "--broker", "h:2"])
    assert ns.broker == ("h", 2)
    unhelped = [
        f"{name} {action.option_strings or action.dest}"
        for name, sub in _all_parsers(parser)
        for action in sub._actions
        if not action.help and not isinstance(action, argparse._SubParsersAction)
    ]
    assert unhelped == []


def _all_parsers(
    parser: argparse.ArgumentParser, name: str = "edge-agent"
) -> list[tuple[str, argparse.ArgumentParser]]:
    found = [(name, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child_name, child in action.choices.items():
                found.extend(_all_parsers(child, f"{name} {child_name}"))
    return found


def test_nodes_table_survives_a_malformed_retained_health() -> None:
    # Issue 11: one node's retained health of the wrong shape crashed `edge-agent nodes`.
    hostile = [
        b'{"system": [1], "microk8s": "v1", "ts": 1' + b"0" * 400 + b"}",
        b'{"system": {"temperature_c": 1' + b"0" * 400 + b'}, "microk8s": {"version": {}}}',
        b'{"system": {"temperature_c": "hot"}, "status": {"x": 1}, "ts": null}',
        b'{"system": ' + b"[" * 2000 + b"]" * 2000 + b"}",
        b'{"status": "\\ud800"}',
    ]
    for health in hostile:
        roster = Roster("microk8s", "lab")
        roster.feed("microk8s/lab/nodes/pi-09/state", b'{"state": ["online"], "ts": 1e999}')
        roster.feed("microk8s/lab/nodes/pi-09/health", health)
        rows = tools.node_rows(roster, 1.0)
        assert rows[1][0] == "pi-09"
        assert rows[1][5] == "-"
    deep = b'{"system": ' + b"[" * 2000 + b"]" * 2000 + b"}"
    assert isinstance(parse_object(deep), Invalid)


# -- against a live agent -------------------------------------------------------------------


async def test_keygen(tmp_path: Path) -> None:
    code, out, _ = await cli("keygen", "ops-1", "--dir", str(tmp_path))
    assert code == 0
    assert "commands.trusted_keys" in out
    assert stat.S_IMODE((tmp_path / "ops-1.key").stat().st_mode) == 0o600
    assert (tmp_path / "ops-1.pub").read_bytes().startswith(b"-----BEGIN PUBLIC KEY-----")
    code, _, err = await cli("keygen", "ops-1", "--dir", str(tmp_path))
    assert code == exits.LOCAL
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
    signed = [*base, "--signing-key", str(tmp_path / "ops-1.key")]

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
    assert code == exits.REJECTED
    assert "rejected  missing signature" in out

    code, out, _ = await cli(*signed, "--json", NODE, "upgrade", "1.33-strict/stable", "--no-drain")
    assert code == 0
    final = json.loads(out.splitlines()[-1])
    assert final["status"] == "succeeded"
    assert final["result"]["new_version"] == "v1.33.0"

    code, _, err = await cli(*signed, "pi-09", "status")
    assert code == exits.NO_ANSWER
    assert f"no node 'pi-09' in cluster 'lab' (known: {NODE})" in err
    code, _, err = await cli(*signed[:-4], NODE, "status")  # the quick start's mistake
    assert code == exits.NO_ANSWER
    assert "in cluster 'default' (it has no nodes; clusters seen: lab)" in err
    code, _, err = await cli(*signed, NODE, "status", "--signing-key", str(tmp_path / "ops-1.pub"))
    assert code == exits.USAGE
    assert "is the public half; give the private key 'ops-1.key'" in err

    code, out, _ = await cli(
        "nodes", "--broker", f"{broker.host}:{broker.port}", "--cluster", "lab"
    )
    assert code == 0
    assert out.splitlines()[1].split()[:3] == [NODE, "online", "ok"]
    code, _, err = await cli("nodes", *signed[1:3], "--cluster", "nowhere")
    assert code == exits.NO_ANSWER
    assert "no nodes in cluster 'nowhere' (it has no nodes; clusters seen: lab)" in err

    assert mutating_calls(tmp_path) == [
        ["enable", "metallb", "10.0.0.200-10.0.0.220"],
        ["enable", "foo"],
        ["refresh", "microk8s", "--channel=1.33-strict/stable"],
    ]


async def test_send_without_a_broker_is_a_local_error(tmp_path: Path) -> None:
    from tests.conftest import free_port

    code, _, err = await cli("send", "--broker", f"127.0.0.1:{free_port()}", NODE, "status")
    assert code == exits.LOCAL
    assert "cannot connect" in err
