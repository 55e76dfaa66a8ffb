"""Executor sequencing (join, addon, upgrade) against the real cli backend and the fake binaries."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agent.commands import verbs, wire
from agent.commands.executor import Executor
from agent.microk8s.backends.base import NoBackend
from agent.microk8s.backends.cli import CliBackend
from agent.microk8s.status import MicroK8sFacts
from agent.settings import MicroK8sSettings
from tests.paths import FAKES, MICROK8S_CLI

MICROK8S = str(FAKES / "microk8s")
SNAP = str(FAKES / "snap")
TOKEN = "92b2db237428470dc4fcfc4ebbd9dc81"


@pytest.fixture
def argv_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("SCENARIO", "SLEEP", "EXIT", "SPAWN_CHILD"):
        monkeypatch.delenv(f"FAKE_MICROK8S_{name}", raising=False)
    monkeypatch.delenv("FAKE_SNAP_CHANNEL", raising=False)
    monkeypatch.setenv("FAKE_FIXTURES", str(MICROK8S_CLI))
    monkeypatch.setenv("FAKE_MICROK8S_STATE", str(tmp_path / "refreshed.json"))
    log = tmp_path / "argv.log"
    monkeypatch.setenv("FAKE_MICROK8S_LOG", str(log))
    return log


def calls(log: Path) -> list[list[str]]:
    if not log.exists():
        return []
    return [json.loads(line) for line in log.read_text().splitlines()]


def mutations(log: Path) -> list[str]:
    """The calls that change something, as short strings ("kubectl cordon", "refresh", …)."""
    queries = {("status",), ("version",), ("list",), ("kubectl", "get")}
    out = []
    for argv in calls(log):
        args = argv[1:]
        if tuple(args[:1]) in queries or tuple(args[:2]) in queries:
            continue
        out.append(" ".join(args[:2]))
    return out


def executor(node: str = "pi-01", **settings: Any) -> Executor:
    mk = MicroK8sSettings(
        backend="cli",
        cli=MICROK8S,
        snap_cli=SNAP,
        command_timeout_s=settings.pop("command_timeout_s", 20.0),
        join_timeout_s=settings.pop("join_timeout_s", 5.0),
    )
    backend = CliBackend(MICROK8S, SNAP, timeout_s=mk.command_timeout_s, status_timeout_s=10)
    return Executor(backend, mk, node=node, ready_poll_s=0.05, **settings)


def command(verb: str, **args: Any) -> verbs.Command:
    envelope = wire.Envelope(
        id="c-1",
        verb=wire.Verb(verb),
        target="pi-01",
        args=args,
        issued_at=0,
        expires_at=300,
        key_id=None,
        sig=None,
    )
    return verbs.parse(envelope)


class Progress:
    def __init__(self) -> None:
        self.details: list[str] = []

    async def __call__(self, detail: str) -> None:
        self.details.append(detail)


async def test_upgrade_drains_refreshes_waits_and_uncordons(argv_log: Path) -> None:
    progress = Progress()
    outcome = await executor().run(command("upgrade", channel="1.33-strict/stable"), progress)
    assert outcome.ok, outcome
    assert outcome.result == {
        "old_version": "v1.32.3",
        "new_version": "v1.33.0",
        "old_channel": "1.32-strict/stable",
        "channel": "1.33-strict/stable",
    }
    assert mutations(argv_log) == [
        "kubectl cordon",
        "kubectl drain",
        "refresh microk8s",
        "kubectl uncordon",
    ]
    steps = [d for d in progress.details if not d.startswith("running ")]
    assert steps == ["draining", "refreshing", "waiting for node Ready"]
    # Ready was checked on the refreshed node, before the uncordon.
    kinds = [" ".join(a[1:3]) for a in calls(argv_log)]
    assert kinds.index("kubectl get") < kinds.index("kubectl uncordon")


async def test_upgrade_without_drain_touches_no_scheduling(argv_log: Path) -> None:
    upgrade = command("upgrade", channel="1.33-strict/stable", drain=False)
    outcome = await executor().run(upgrade, Progress())
    assert outcome.ok
    assert mutations(argv_log) == ["refresh microk8s"]


async def test_failed_drain_uncordons_and_does_not_refresh(
    argv_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_EXIT", "kubectl-drain=1")
    outcome = await executor().run(command("upgrade", channel="1.33-strict/stable"), Progress())
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("drain failed: exit code 1")
    assert mutations(argv_log) == ["kubectl cordon", "kubectl drain", "kubectl uncordon"]


async def test_failed_refresh_gives_the_node_back(
    argv_log: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_EXIT", "refresh=1")
    outcome = await executor().run(command("upgrade", channel="1.33-strict/stable"), Progress())
    assert not outcome.ok
    assert outcome.exit_code == 1
    assert (outcome.error or "").startswith("refresh failed: exit code 1")
    assert mutations(argv_log)[-1] == "kubectl uncordon"


async def test_node_that_never_gets_ready_stays_cordoned(argv_log: Path) -> None:
    # pi-03 is NotReady in kube/nodes.json.
    outcome = await executor(node="pi-03", join_timeout_s=0.3).run(
        command("upgrade", channel="1.33-strict/stable"), Progress()
    )
    assert not outcome.ok
    assert outcome.error == (
        "node pi-03 did not become Ready on v1.33.0 within 0.3 s; it stays cordoned"
    )
    assert "kubectl uncordon" not in mutations(argv_log)


async def test_gate_and_policy_refuse_before_touching_the_node(argv_log: Path) -> None:
    gated = executor(upgrade_gate=lambda force: None if force else "would_break_quorum")
    outcome = await gated.run(command("upgrade", channel="1.33-strict/stable"), Progress())
    assert outcome.error == "would_break_quorum"
    forced = command("upgrade", channel="1.33-strict/stable", force=True)
    assert (await gated.run(forced, Progress())).ok
    # Strict stays strict, even with force; checked against fresh facts at execution time.
    before = len(mutations(argv_log))
    classic = command("upgrade", channel="1.33/stable", force=True)
    refused = await executor().run(classic, Progress())
    assert "must stay on a -strict track" in (refused.error or "")
    assert len(mutations(argv_log)) == before


def test_intake_verdicts_from_cached_facts() -> None:
    gate_calls: list[bool] = []

    def gate(force: bool) -> str | None:
        gate_calls.append(force)
        return None

    ex = executor(upgrade_gate=gate)
    args = command("upgrade", channel="1.34-strict/stable").args
    assert isinstance(args, verbs.UpgradeArgs)
    facts = MicroK8sFacts(
        installed=True, version="v1.32.3", channel="1.32-strict/stable", confinement="strict"
    )
    assert "one minor version at a time" in (ex.upgrade_refusal(args, facts) or "")
    assert gate_calls == []  # the policy answered first
    # Facts not known yet: only the gate can speak at intake; the policy runs at execution.
    assert ex.upgrade_refusal(args, None) is None
    assert gate_calls == [False]
    assert ex.unavailable() is None
    none = Executor(NoBackend("no 'microk8s' executable on PATH"), MicroK8sSettings(), node="x")
    assert none.unavailable() == ("no MicroK8s backend available: no 'microk8s' executable on PATH")


async def test_join_and_addon_argv(argv_log: Path) -> None:
    url = f"127.0.0.11:25000/{TOKEN}/2c0cb3284b05"
    progress = Progress()
    joined = await executor().run(command("join", url=url, worker=True), progress)
    assert joined.ok
    assert TOKEN not in " ".join(progress.details)
    enabled = await executor().run(
        command("addon", name="metallb", action="enable", args=["10.0.0.200-10.0.0.220"]),
        Progress(),
    )
    assert enabled.ok
    assert [argv[1:] for argv in calls(argv_log)] == [
        ["join", url, "--worker"],
        ["enable", "metallb", "10.0.0.200-10.0.0.220"],
    ]


async def test_backend_that_cannot_act_is_a_failed_outcome() -> None:
    ex = Executor(NoBackend("nothing here"), MicroK8sSettings(), node="pi-01")
    outcome = await ex.run(command("addon", name="dns", action="enable"), Progress())
    assert not outcome.ok
    assert outcome.error == "no MicroK8s backend available: nothing here"
