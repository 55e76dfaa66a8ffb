"""`edge-agent fleet upgrade` end to end: real agent processes (cli backend on the fakes, each
node with its own fake state) on one real mosquitto, the operator as a real subprocess.

The voters' HA verdicts come from fake control-plane listeners (tests.cluster_fakes), so closing
one voter's dqlite port is a failure every agent witnesses and the gate must refuse.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.cluster_fakes import FakeMember, write_backend_dir
from tests.commands_helpers import Keys, fake_env, mutating_calls
from tests.conftest import AgentProcess, Broker, agent_config, watch
from tests.paths import FAKES, FIXTURES, REPO
from tests.test_ha_agents import members  # noqa: F401 - the fake voters' fixture
from tests.test_operator import cli

pytestmark = pytest.mark.broker

VOTERS = ("pi-01", "pi-02", "pi-03")
WORKERS = ("pi-04", "pi-05")
REFRESH = ["refresh", "microk8s", "--channel=1.33-strict/stable"]
Spawn = Callable[..., AgentProcess]
CAPTURE = os.environ.get("FLEET_CAPTURE")  # a directory: keep the summaries (docs, closing note)


def capture(name: str, summary: str) -> None:
    if CAPTURE:
        (Path(CAPTURE) / f"fleet-{name}.json").write_text(summary)


def fixtures_with_ready_nodes(tmp_path: Path) -> Path:
    """The recorded fixtures, with every node (pi-05 added, a copy of pi-04) Ready."""
    root = tmp_path / "fixtures"
    shutil.copytree(FIXTURES / "microk8s-cli", root / "microk8s-cli")
    doc = json.loads((FIXTURES / "kube" / "nodes.json").read_text())
    extra = json.loads(json.dumps(doc["items"][3]))
    extra["metadata"]["name"] = "pi-05"
    doc["items"].append(extra)
    for item in doc["items"]:
        for condition in item["status"]["conditions"]:
            if condition["type"] == "Ready":
                condition["status"] = "True"
    (root / "kube").mkdir()
    (root / "kube" / "nodes.json").write_text(json.dumps(doc))
    return root / "microk8s-cli"


def start_node(
    spawn: Spawn,
    tmp_path: Path,
    broker: Broker,
    keys: Keys,
    node: str,
    *,
    ha: bool,
    backend_dir: Path | None = None,
    env: dict[str, str] | None = None,
) -> AgentProcess:
    home = tmp_path / node
    home.mkdir(exist_ok=True)
    sections: dict[str, Any] = {
        "node": {"name": node, "cluster": "lab"},
        "health": {"interval_s": 1},
        "commands": {"trusted_keys": [str(keys.public)]},
        "microk8s": {
            "backend": "cli",
            "cli": str(FAKES / "microk8s"),
            "snap_cli": str(FAKES / "snap"),
            "command_timeout_s": 20,
            "status_interval_s": 1,
            "backend_dir": str(backend_dir or home / "no-backend"),
        },
        "ha": {"enabled": ha, "interval_s": 0.5, "probe_timeout_s": 0.5},
    }
    return spawn(agent_config(home, broker, **sections), env=fake_env(home, **(env or {})))


async def fleet(*args: str, timeout_s: float = 300) -> tuple[int, str, str]:
    return await cli("fleet", "upgrade", *args, timeout_s=timeout_s)


def operator_args(broker: Broker, keys: Keys, state: Path) -> list[str]:
    return [
        *("--broker", f"{broker.host}:{broker.port}", "--cluster", "lab"),
        *("--signing-key", str(keys.private), "--state", str(state)),
        *("--channel", "1.33-strict/stable", "--json", "--wait", "1.5"),
    ]


def _published(leaf: str, node: str, verdict: str | None = None) -> Callable[[str, Any], bool]:
    def matches(topic: str, payload: Any) -> bool:
        if topic != f"microk8s/lab/nodes/{node}/{leaf}":
            return False
        return verdict is None or payload.get("verdict") == verdict

    return matches


async def all_ready(broker: Broker, nodes: tuple[str, ...], *, ha: bool) -> None:
    """Every node has published health (and, with HA, each voter a healthy verdict)."""
    async with watch(broker, "microk8s/lab/nodes/+/+") as w:
        for node in nodes:
            await w.wait_for(_published("health", node), timeout_s=60)
            if ha and node in VOTERS:
                await w.wait_for(_published("ha", node, "healthy"), timeout_s=60)


def summary_of(out: str) -> dict[str, Any]:
    body = json.loads(out)
    assert isinstance(body, dict)
    return body


def by_node(summary: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["node"]: entry for entry in summary["nodes"]}


async def test_five_node_rollout_voters_one_by_one_then_a_voter_down_is_refused(
    tmp_path: Path,
    broker: Broker,
    spawn_agent: Spawn,
    members: list[FakeMember],  # noqa: F811 - the fixture imported above
) -> None:
    keys = Keys(tmp_path / "keys")
    fixtures = fixtures_with_ready_nodes(tmp_path)
    addresses = [m.address for m in members]
    for node, own in zip(VOTERS, addresses, strict=True):
        backend = write_backend_dir(
            tmp_path / node / "backend", [(a, 0) for a in addresses], (own, 0)
        )
        start_node(spawn_agent, tmp_path, broker, keys, node, ha=True, backend_dir=backend,
                   env={"FAKE_FIXTURES": str(fixtures)})  # fmt: skip
    for node in WORKERS:
        worker = {"FAKE_FIXTURES": str(fixtures), "FAKE_MICROK8S_SCENARIO": "worker"}
        start_node(spawn_agent, tmp_path, broker, keys, node, ha=True, env=worker)
    await all_ready(broker, VOTERS + WORKERS, ha=True)
    state = tmp_path / "rollout.json"
    args = operator_args(broker, keys, state)

    code, out, err = await fleet(*args, "--all", "--dry-run", "--soak", "1")
    assert code == 0, err
    plan = summary_of(out)["plan"]
    assert plan == [["pi-04"], ["pi-05"], ["pi-01"], ["pi-02"], ["pi-03"]]
    assert not state.exists()

    async with watch(broker, "microk8s/lab/nodes/+/cmd/+", "microk8s/lab/rollout") as w:
        code, out, err = await fleet(*args, "--all", "--soak", "1", "--per-node-timeout", "60")
        assert code == 0, out + err
        statuses = [
            (t.split("/")[3], p["status"], p["ts"]) for t, p, _ in w.messages if "/cmd/" in t
        ]
        reports = w.payloads("/rollout")
    summary = summary_of(out)
    capture("clean", out)
    nodes = by_node(summary)
    assert summary["aborted"] is False and summary["channel"] == "1.33-strict/stable"
    assert [n["node"] for n in summary["nodes"]] == ["pi-04", "pi-05", "pi-01", "pi-02", "pi-03"]
    assert {n: e["role"] for n, e in nodes.items()} == {
        "pi-01": "voter", "pi-02": "voter", "pi-03": "voter",
        "pi-04": "worker", "pi-05": "worker",
    }  # fmt: skip
    for entry in summary["nodes"]:
        assert entry["result"] == "succeeded", entry
        assert (entry["old_version"], entry["new_version"]) == ("v1.32.3", "v1.33.0")
        assert entry["error"] is None
    # Strictly one after the other: each node's upgrade started after the previous succeeded
    # (its proof of health included), as the agents' own status timestamps show.
    order = ["pi-04", "pi-05", "pi-01", "pi-02", "pi-03"]
    accepted = {n: min(ts for m, s, ts in statuses if m == n and s == "accepted") for n in order}
    done = {n: max(ts for m, s, ts in statuses if m == n and s == "succeeded") for n in order}
    for before, after in itertools.pairwise(order):
        assert done[before] < accepted[after], (before, after)
    for node in VOTERS + WORKERS:
        assert mutating_calls(tmp_path / node).count(REFRESH) == 1, node
    # The retained progress report (the dashboard's banner) followed every step to the end.
    assert [(r["node"], r["step"]) for r in reports if r["node"] == "pi-01"] == [
        ("pi-01", "gate"), ("pi-01", "upgrade"), ("pi-01", "soak"), ("pi-01", "succeeded"),
    ]  # fmt: skip
    assert {k: reports[-1][k] for k in ("state", "done", "total", "failures", "aborted")} == {
        "state": "done", "done": 5, "total": 5, "failures": 0, "aborted": False,
    }  # fmt: skip
    assert reports[-1]["rollout"] == summary["rollout"]

    # A voter's dqlite goes down: the others report margin 0, and the next voter is refused.
    await members[2].stop_dqlite()
    async with watch(broker, "microk8s/lab/nodes/pi-01/ha") as w:
        await w.wait_for(lambda t, p: p.get("verdict") == "at_risk", timeout_s=60)
    again = [a if a != "1.33-strict/stable" else "1.34-strict/stable" for a in args]
    code, out, err = await fleet(*again, "--nodes", "pi-01,pi-02", "--gate-timeout", "2")
    assert code == 1, out + err
    refused = summary_of(out)
    assert refused["aborted"] is True
    first, second = refused["nodes"]
    assert first["node"] == "pi-01" and first["result"] == "not_started"
    assert first["error"].startswith("refused: voter pi-0")
    assert "at_risk" in first["error"] or "offline" in first["error"]
    assert second["result"] == "not_started" and second["error"].startswith("aborted:")
    refresh_34 = ["refresh", "microk8s", "--channel=1.34-strict/stable"]
    assert all(refresh_34 not in mutating_calls(tmp_path / n) for n in VOTERS)


async def test_abort_after_the_first_failure_leaves_the_rest_untouched(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    fixtures = fixtures_with_ready_nodes(tmp_path)
    nodes = ("pi-01", "pi-02", "pi-04")
    for node in nodes:
        env = {"FAKE_FIXTURES": str(fixtures)}
        if node == "pi-04":
            env |= {"FAKE_MICROK8S_SCENARIO": "worker", "FAKE_MICROK8S_EXIT": "refresh=1"}
        start_node(spawn_agent, tmp_path, broker, keys, node, ha=True, env=env)
    await all_ready(broker, nodes, ha=False)
    args = operator_args(broker, keys, tmp_path / "rollout.json")
    code, out, err = await fleet(*args, "--all", "--soak", "1", "--per-node-timeout", "60")
    assert code == 1, out + err
    capture("aborted", out)
    summary = summary_of(out)
    assert summary["aborted"] is True
    results = {n["node"]: (n["role"], n["result"]) for n in summary["nodes"]}
    # No R/ha role but pi-04's: the others count as voters, so the worker goes first.
    assert results == {
        "pi-04": ("worker", "failed"),
        "pi-01": ("unknown", "not_started"),
        "pi-02": ("unknown", "not_started"),
    }
    failed = by_node(summary)["pi-04"]
    assert failed["error"].startswith("failed")
    assert failed["started"] and failed["finished"]
    assert mutating_calls(tmp_path / "pi-04").count(REFRESH) == 1
    for node in ("pi-01", "pi-02"):
        assert mutating_calls(tmp_path / node) == []


async def test_operator_crash_then_resume_never_resends_a_finished_node(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    fixtures = fixtures_with_ready_nodes(tmp_path)
    nodes = ("pi-01", "pi-02")
    for node in nodes:
        start_node(spawn_agent, tmp_path, broker, keys, node, ha=False,
                   env={"FAKE_FIXTURES": str(fixtures)})  # fmt: skip
    await all_ready(broker, nodes, ha=False)
    state = tmp_path / "rollout.json"
    args = [*operator_args(broker, keys, state), "--all", "--per-node-timeout", "60"]
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "agent", "fleet", "upgrade", *args, "--soak", "3",
        cwd=REPO, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL,
    )  # fmt: skip
    try:
        # Crash the operator once pi-01 is done and pi-02 has been sent.
        async with asyncio.timeout(90):
            while not _records(state).get("pi-02", {}).get("command_id"):
                await asyncio.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    saved = _records(state)
    assert saved["pi-01"]["result"] == "succeeded"
    assert saved["pi-02"]["result"] == "running"

    code, out, err = await fleet(*args, "--soak", "1")
    assert code == 0, out + err
    summary = summary_of(out)
    assert summary["rollout"] == json.loads(state.read_text())["rollout"]
    assert [(n["node"], n["result"]) for n in summary["nodes"]] == [
        ("pi-01", "succeeded"),
        ("pi-02", "succeeded"),
    ]
    # pi-01 was never sent again; pi-02's re-sent id was answered from the journal, not re-run.
    for node in nodes:
        assert mutating_calls(tmp_path / node).count(REFRESH) == 1, node
    # Finished: the same command now starts a new rollout, and finds both nodes there already.
    code, out, _ = await fleet(*args, "--soak", "1")
    assert code == 0
    again = summary_of(out)
    assert again["rollout"] != summary["rollout"]
    assert [n["result"] for n in again["nodes"]] == ["already", "already"]


def _records(state: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads(state.read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {record["node"]: record for record in data["records"]}


async def test_usage_and_lookup_errors_before_any_command(tmp_path: Path, broker: Broker) -> None:
    keys = Keys(tmp_path / "keys")
    births = {
        "pi-01": {"state": "online", "session": 1, "ts": 1.0},
        "pi-02": {"state": "online", "session": 1, "ts": 1.0},
    }
    ha = {"pi-01": {"role": "voter", "verdict": "healthy", "quorum": {"margin": 1}}}
    async with watch(broker, "microk8s/lab/nodes/+/cmd") as w:
        for node, body in births.items():
            await w.publish(f"microk8s/lab/nodes/{node}/state", json.dumps(body), retain=True)
        for node, verdict in ha.items():
            await w.publish(f"microk8s/lab/nodes/{node}/ha", json.dumps(verdict), retain=True)
        state = tmp_path / "rollout.json"
        args = operator_args(broker, keys, state)

        code, _, err = await fleet(*args, "--nodes", "pi-01,pi-09")
        assert (code, err.strip()) == (
            3,
            "edge-agent fleet upgrade: no node 'pi-09' in cluster 'lab' (known: pi-01, pi-02)",
        )
        code, _, err = await fleet(*[a if a != "lab" else "shop" for a in args], "--all")
        assert code == 3
        assert "no nodes in cluster 'shop' (it has no nodes; clusters seen: lab)" in err
        code, _, err = await fleet(*args, "--nodes", "pi-01/#")
        assert code == 2 and "is not a node name" in err

        plain = [a for a in args if a != "--json"]
        code, out, err = await fleet(*plain, "--all", "--dry-run")
        assert code == 0, err
        # pi-02 has no R/ha: an unknown role, a voter, after pi-01 (no worker here)
        assert out.splitlines() == ["step 1: pi-01 (voter)", "step 2: pi-02 (unknown)"]
        assert not state.exists()

        state.write_text("{not json")
        code, _, err = await fleet(*args, "--all")
        assert code == 2 and "unreadable" in err and "remove it to start over" in err
        unfinished = {
            "schema": 1, "rollout": "r-1", "cluster": "lab", "channel": "1.34/stable",
            "batches": [["pi-01"]], "aborted": False,
            "records": [{"node": "pi-01", "role": "voter", "result": "pending"}],
        }  # fmt: skip
        state.write_text(json.dumps(unfinished))
        code, _, err = await fleet(*args, "--all")
        assert code == 2
        assert "holds an unfinished rollout of cluster 'lab' to 1.34/stable" in err
        await asyncio.sleep(0.2)
        assert w.messages == []  # no command was ever published
