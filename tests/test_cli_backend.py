"""CliBackend against the fake `microk8s` and `snap` in tests/fakes (built from fixtures)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from agent.errors import BackendError, BackendUnavailable
from agent.microk8s.backends.base import Backend, NoBackend, Outcome
from agent.microk8s.backends.cli import CliBackend, probe_cli
from agent.microk8s.redact import join_url_secrets, mask_join_urls, mask_secrets
from agent.microk8s.status import WORKER, MicroK8sFacts
from tests.paths import FAKES, FIXTURES, MICROK8S_CLI

MICROK8S = str(FAKES / "microk8s")
SNAP = str(FAKES / "snap")
TOKEN = "92b2db237428470dc4fcfc4ebbd9dc81"
JOIN_URL = f"127.0.0.11:25000/{TOKEN}/2c0cb3284b05"
NOT_RUNNING = "microk8s is not running. Use microk8s inspect for a deeper inspection."
SNAP_FACTS = {
    "installed": True,
    "version": "v1.32.3",
    "revision": "7964",
    "channel": "1.32-strict/stable",
    "confinement": "strict",
}


class Calls:
    """The argv lines the fakes appended to FAKE_MICROK8S_LOG."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self) -> list[list[str]]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines()]


class Progress:
    def __init__(self) -> None:
        self.details: list[str] = []

    async def __call__(self, detail: str) -> None:
        self.details.append(detail)


@pytest.fixture
def calls(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Calls:
    for name in ("SCENARIO", "SLEEP", "EXIT", "SPAWN_CHILD"):
        monkeypatch.delenv(f"FAKE_MICROK8S_{name}", raising=False)
    monkeypatch.delenv("FAKE_SNAP_CHANNEL", raising=False)
    monkeypatch.setenv("FAKE_FIXTURES", str(MICROK8S_CLI))
    monkeypatch.setenv("FAKE_MICROK8S_LOG", str(tmp_path / "calls.jsonl"))
    return Calls(tmp_path / "calls.jsonl")


@pytest.fixture
def fixtures(calls: Calls, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A writable copy of the fixtures the fakes print, for tests that change one of them."""
    copy = tmp_path / "fixtures"
    for folder in ("microk8s-cli", "kube"):  # the fakes read kube/ next to microk8s-cli/
        (copy / folder).mkdir(parents=True)
        for source in (FIXTURES / folder).iterdir():
            shutil.copyfile(source, copy / folder / source.name)  # not the read-only mode
    monkeypatch.setenv("FAKE_FIXTURES", str(copy / "microk8s-cli"))
    return copy / "microk8s-cli"


@pytest.fixture
def progress() -> Progress:
    return Progress()


def backend(*, timeout_s: float = 20.0, status_timeout_s: float = 10.0) -> CliBackend:
    return CliBackend(MICROK8S, SNAP, timeout_s=timeout_s, status_timeout_s=status_timeout_s)


def test_cli_backend_satisfies_the_protocol() -> None:
    implementations: list[Backend] = [backend(), NoBackend("test")]
    assert [b.name for b in implementations] == ["cli", "none"]


# --- facts ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scenario", "expected"),
    [
        (
            "ha",
            {"running": True, "ha": True, "addons": ("dns", "ha-cluster"), "error": None},
        ),
        (
            "single",
            {"running": True, "ha": False, "addons": ("dns", "ha-cluster", "helm", "helm3")},
        ),
        ("not-running", {"running": False, "ha": True, "addons": None, "error": NOT_RUNNING}),
        ("worker", {"running": None, "role": "worker", "addons": None, "error": WORKER.error}),
        ("stopped", {"running": False, "addons": None}),
    ],
)
async def test_facts_per_scenario(
    calls: Calls, monkeypatch: pytest.MonkeyPatch, scenario: str, expected: dict[str, object]
) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_SCENARIO", scenario)
    facts = await backend().facts()
    for field, value in {**SNAP_FACTS, **expected}.items():
        assert getattr(facts, field) == value, field
    assert sorted(calls()) == [
        ["microk8s", "status", "--format", "yaml"],
        ["microk8s", "version"],
        ["snap", "list", "microk8s"],
    ]


async def test_version_and_channel_are_asked_again_only_when_the_revision_moves(
    calls: Calls, tmp_path: Path, progress: Progress
) -> None:
    current = tmp_path / "current"
    current.symlink_to("7964")
    mk = CliBackend(MICROK8S, SNAP, timeout_s=20, status_timeout_s=10, snap_current=current)
    status = ["microk8s", "status", "--format", "yaml"]
    everything = sorted([status, ["microk8s", "version"], ["snap", "list", "microk8s"]])
    first = await mk.facts()
    assert sorted(calls()) == everything
    second = await mk.facts()  # same revision: only `microk8s status` runs
    assert calls()[3:] == [status]
    assert second == first
    current.unlink()
    current.symlink_to("7990")  # refreshed behind our back
    await mk.facts()
    assert sorted(calls()[4:]) == everything
    await mk.addon("dns", "enable", [], progress=progress)  # a command may change them too
    await mk.facts()
    assert sorted(calls()[8:]) == everything


async def test_facts_classic_channel(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_SNAP_CHANNEL", "1.32/stable")
    facts = await backend().facts()
    assert (facts.channel, facts.confinement) == ("1.32/stable", "classic")


async def test_facts_without_microk8s_or_snap(calls: Calls) -> None:
    facts = await CliBackend(
        "/nonexistent/microk8s", "/nonexistent/snap", timeout_s=5, status_timeout_s=5
    ).facts()
    assert (facts.installed, facts.running, facts.version, facts.channel) == (
        False,
        False,
        None,
        None,
    )
    assert facts.error == "cannot run '/nonexistent/microk8s': executable not found"
    assert facts.to_health()["installed"] is False


async def test_facts_when_only_snapd_knows_microk8s(calls: Calls) -> None:
    facts = await CliBackend("/nonexistent/microk8s", SNAP, timeout_s=5, status_timeout_s=5).facts()
    assert (facts.installed, facts.running) == (True, None)
    assert (facts.version, facts.channel) == ("v1.32.3", "1.32-strict/stable")
    assert facts.error is not None and "executable not found" in facts.error


async def test_facts_without_snap_command(calls: Calls) -> None:
    facts = await CliBackend(MICROK8S, "/nonexistent/snap", timeout_s=5, status_timeout_s=5).facts()
    assert (facts.running, facts.version, facts.revision) == (True, "v1.32.3", "7964")
    assert (facts.channel, facts.confinement) == (None, None)
    assert facts.error == (
        "channel unknown: snap list microk8s: cannot run '/nonexistent/snap': executable not found"
    )


async def test_slow_status_times_out_quickly(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_SLEEP", "status=30")
    facts = await backend(status_timeout_s=0.5).facts()
    assert (facts.installed, facts.running, facts.addons) == (True, None, None)
    assert facts.error == "microk8s status timed out after 0.5 s"
    assert (facts.version, facts.channel) == ("v1.32.3", "1.32-strict/stable")


async def test_garbage_status_is_unknown(calls: Calls, fixtures: Path) -> None:
    (fixtures / "status-ha.yaml").write_text("microk8s:\n  running: [garbage\n")
    facts = await backend().facts()
    assert (facts.installed, facts.running, facts.version) == (True, None, "v1.32.3")
    assert facts.error is not None and facts.error.startswith("unrecognised microk8s status")


# --- version and node_ready ----------------------------------------------------------------


async def test_version(calls: Calls) -> None:
    assert await backend().version() == ("v1.32.3", "7964")
    assert calls() == [["microk8s", "version"]]


async def test_version_failures(calls: Calls, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_EXIT", "version=3")
    with pytest.raises(BackendError, match="microk8s version: exit code 3: MicroK8s") as caught:
        await backend().version()
    assert caught.value.kind == "exit"
    missing = CliBackend("/nonexistent/mk", SNAP, timeout_s=5, status_timeout_s=5)
    with pytest.raises(BackendError, match="executable not found") as caught:
        await missing.version()
    assert caught.value.kind == "process"
    monkeypatch.setenv("FAKE_MICROK8S_EXIT", "")
    monkeypatch.setenv("FAKE_MICROK8S_SLEEP", "version=30")
    with pytest.raises(BackendError, match=r"timed out after 0\.3 s") as caught:
        await backend(status_timeout_s=0.3).version()
    assert caught.value.kind == "timeout"


@pytest.mark.parametrize(
    ("node", "expected"),
    [("pi-01", (True, "v1.32.3")), ("pi-03", (False, "v1.32.3")), ("ghost", (None, None))],
)
async def test_node_ready(
    calls: Calls, node: str, expected: tuple[bool | None, str | None]
) -> None:
    assert await backend().node_ready(node) == expected
    assert calls() == [["microk8s", "kubectl", "get", "node", node, "-o", "json"]]


async def test_node_ready_unknown_on_timeout(calls: Calls, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_SLEEP", "kubectl=30")
    assert await backend(status_timeout_s=0.3).node_ready("pi-01") == (None, None)


async def test_node_ready_without_microk8s(calls: Calls) -> None:
    missing = CliBackend("/nonexistent/mk", SNAP, timeout_s=5, status_timeout_s=5)
    with pytest.raises(BackendError, match="executable not found"):
        await missing.node_ready("pi-01")


# --- mutating verbs ------------------------------------------------------------------------

Verb = Callable[[CliBackend, Progress], Awaitable[Outcome]]


@dataclasses.dataclass(frozen=True)
class VerbCase:
    label: str
    call: Verb
    argv: list[str]
    last_line: str


VERBS = [
    VerbCase(
        "join",
        lambda b, p: b.join(JOIN_URL, worker=False, progress=p),
        ["microk8s", "join", JOIN_URL],
        "Successfully joined the cluster.",
    ),
    VerbCase(
        "join-worker",
        lambda b, p: b.join(JOIN_URL, worker=True, progress=p),
        ["microk8s", "join", JOIN_URL, "--worker"],
        "Successfully joined the cluster.",
    ),
    VerbCase(
        "enable",
        lambda b, p: b.addon("dns", "enable", [], progress=p),
        ["microk8s", "enable", "dns"],
        "DNS is enabled",
    ),
    VerbCase(
        "enable-args",
        lambda b, p: b.addon("core/metallb", "enable", ["10.0.0.200-10.0.0.220"], progress=p),
        ["microk8s", "enable", "core/metallb", "10.0.0.200-10.0.0.220"],
        "Addon core/metallb is already enabled",
    ),
    VerbCase(
        "disable",
        lambda b, p: b.addon("dns", "disable", [], progress=p),
        ["microk8s", "disable", "dns"],
        "Addon core/dns is already disabled",
    ),
    VerbCase(
        "refresh",
        lambda b, p: b.refresh("1.33-strict/stable", progress=p),
        ["snap", "refresh", "microk8s", "--channel=1.33-strict/stable"],
        "microk8s (1.33-strict/stable) v1.33.0 from Canonical✓ refreshed",
    ),
    VerbCase(
        "cordon",
        lambda b, p: b.cordon("pi-01", progress=p),
        ["microk8s", "kubectl", "cordon", "pi-01"],
        "node/pi-01 cordoned",
    ),
    VerbCase(
        "drain",
        lambda b, p: b.drain("pi-01", progress=p),
        [
            "microk8s",
            "kubectl",
            "drain",
            "pi-01",
            "--ignore-daemonsets",
            "--delete-emptydir-data",
            "--timeout=45s",
        ],
        "node/pi-01 drained",
    ),
    VerbCase(
        "uncordon",
        lambda b, p: b.uncordon("pi-01", progress=p),
        ["microk8s", "kubectl", "uncordon", "pi-01"],
        "node/pi-01 uncordoned",
    ),
]


@pytest.mark.parametrize("case", VERBS, ids=lambda case: case.label)
async def test_verb_runs_exact_argv(calls: Calls, progress: Progress, case: VerbCase) -> None:
    outcome = await case.call(backend(timeout_s=60), progress)
    assert calls() == [case.argv]
    assert (outcome.ok, outcome.exit_code, outcome.error, outcome.timed_out) == (
        True,
        0,
        None,
        False,
    )
    assert outcome.output.splitlines()[-1] == case.last_line
    assert len(progress.details) == 1 and progress.details[0].startswith("running ")


@pytest.mark.parametrize("case", VERBS, ids=lambda case: case.label)
async def test_verb_maps_exit_code(
    calls: Calls, progress: Progress, monkeypatch: pytest.MonkeyPatch, case: VerbCase
) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_EXIT", "5")
    outcome = await case.call(backend(timeout_s=60), progress)
    assert calls() == [case.argv]
    assert (outcome.ok, outcome.exit_code, outcome.timed_out) == (False, 5, False)
    assert outcome.error == f"exit code 5: {outcome.output.splitlines()[-1]}"
    assert outcome.result is None


@pytest.mark.parametrize("case", VERBS, ids=lambda case: case.label)
async def test_verb_maps_timeout(
    calls: Calls, progress: Progress, monkeypatch: pytest.MonkeyPatch, case: VerbCase
) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_SLEEP", "30")
    outcome = await case.call(backend(timeout_s=0.3), progress)
    assert outcome == Outcome(
        ok=False, exit_code=None, output="", error="timed out after 0.3 s", timed_out=True
    )


@pytest.mark.parametrize("case", VERBS, ids=lambda case: case.label)
async def test_verb_without_executables(calls: Calls, progress: Progress, case: VerbCase) -> None:
    missing = CliBackend(
        "/nonexistent/microk8s", "/nonexistent/snap", timeout_s=5, status_timeout_s=5
    )
    outcome = await case.call(missing, progress)
    assert (outcome.ok, outcome.exit_code, outcome.output) == (False, None, "")
    assert outcome.error is not None and "executable not found" in outcome.error


async def test_unknown_addon_fails_with_its_message(calls: Calls, progress: Progress) -> None:
    outcome = await backend().addon("foo", "enable", [], progress=progress)
    assert (outcome.ok, outcome.exit_code) == (False, 1)
    assert outcome.error == "exit code 1: Addon foo was not found in any repository"


async def test_addon_action_is_checked(calls: Calls, progress: Progress) -> None:
    with pytest.raises(ValueError, match="enable or disable"):
        await backend().addon("dns", "remove", [], progress=progress)
    assert calls() == []


async def test_join_error_exit_6(
    calls: Calls, progress: Progress, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_EXIT", "join=6")
    outcome = await backend().join(JOIN_URL, worker=False, progress=progress)
    assert (outcome.ok, outcome.exit_code) == (False, 6)
    assert outcome.error == "exit code 6: Connection failed. Invalid token (500)."


async def test_join_token_is_masked(
    calls: Calls, progress: Progress, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FAKE_MICROK8S_SCENARIO", "low-memory")
    outcome = await backend().join(JOIN_URL, worker=False, progress=progress)
    assert calls() == [["microk8s", "join", JOIN_URL]]
    assert not outcome.ok
    assert "microk8s join 127.0.0.11:25000/****/2c0cb3284b05 --worker" in outcome.output
    for text in (outcome.output, outcome.error or "", *progress.details):
        assert TOKEN not in text
    assert progress.details == [f"running {MICROK8S} join 127.0.0.11:25000/****/2c0cb3284b05"]


async def test_join_token_masked_even_when_printed_alone(
    calls: Calls, progress: Progress, fixtures: Path
) -> None:
    (fixtures / "join-success.txt").write_text(f"token {TOKEN} accepted\n")
    outcome = await backend().join(JOIN_URL, worker=True, progress=progress)
    assert outcome.output == "token **** accepted\n"


async def test_refresh_result(calls: Calls, progress: Progress) -> None:
    outcome = await backend().refresh("1.33/stable", progress=progress)
    assert outcome.result == {"channel": "1.33/stable", "version": "v1.33.0"}


@pytest.mark.parametrize(
    ("timeout_s", "drain_timeout_s", "expected"),
    [
        (600.0, None, "--timeout=585s"),
        (600.0, 300.0, "--timeout=300s"),
        (5.0, None, "--timeout=1s"),
    ],
)
async def test_drain_timeout_leaves_kubectl_time_to_report(
    calls: Calls, progress: Progress, timeout_s: float, drain_timeout_s: float | None, expected: str
) -> None:
    b = CliBackend(
        MICROK8S, SNAP, timeout_s=timeout_s, status_timeout_s=5, drain_timeout_s=drain_timeout_s
    )
    await b.drain("pi-02", progress=progress)
    assert calls()[0][-1] == expected


async def test_long_output_is_a_4_kib_tail(
    calls: Calls, progress: Progress, fixtures: Path
) -> None:
    (fixtures / "enable-dns.txt").write_text("".join(f"line {i}\n" for i in range(3000)))
    outcome = await backend().addon("dns", "enable", [], progress=progress)
    assert len(outcome.output.encode()) <= 4096
    assert outcome.output.endswith("line 2999\n")


# --- probe and NoBackend -------------------------------------------------------------------


async def test_probe_cli(tmp_path: Path) -> None:
    plain = tmp_path / "not-executable"
    plain.write_text("#!/bin/sh\n")
    assert await probe_cli(MICROK8S)
    assert await probe_cli("sh")
    assert not await probe_cli("/nonexistent/microk8s")
    assert not await probe_cli("definitely-not-on-path-xyz")
    assert not await probe_cli(str(plain))
    assert not await probe_cli(str(tmp_path))


async def test_no_backend(progress: Progress) -> None:
    none = NoBackend("snapd socket missing and microk8s not on PATH")
    assert await none.facts() == MicroK8sFacts(
        installed=False, running=None, error="snapd socket missing and microk8s not on PATH"
    )
    message = "no MicroK8s backend available: snapd socket missing and microk8s not on PATH"
    calls: list[Callable[[], Awaitable[object]]] = [
        none.version,
        lambda: none.join(JOIN_URL, worker=False, progress=progress),
        lambda: none.addon("dns", "enable", [], progress=progress),
        lambda: none.refresh("1.33/stable", progress=progress),
        lambda: none.cordon("pi-01", progress=progress),
        lambda: none.drain("pi-01", progress=progress),
        lambda: none.uncordon("pi-01", progress=progress),
        lambda: none.node_ready("pi-01"),
    ]
    for call in calls:
        with pytest.raises(BackendUnavailable) as caught:
            await call()
        assert str(caught.value) == message
    assert progress.details == []


# --- masking (agent.microk8s.redact) -----------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (JOIN_URL, "127.0.0.11:25000/****/2c0cb3284b05"),
        (
            f"microk8s join 192.168.50.11:25000/{TOKEN} --worker",
            "microk8s join 192.168.50.11:25000/**** --worker",
        ),
        (
            f"a 127.0.0.11:25000/{TOKEN}/ab, b 127.0.0.12:25000/{TOKEN}.",
            "a 127.0.0.11:25000/****/ab, b 127.0.0.12:25000/****.",
        ),
        (
            "POST https://127.0.0.11:25000/cluster/api/v2.0/join",
            "POST https://127.0.0.11:25000/cluster/api/v2.0/join",
        ),
        ("Contacting cluster at 127.0.0.11", "Contacting cluster at 127.0.0.11"),
        ("v1.10.0.11:25000/" + "a" * 32, "v1.10.0.11:25000/" + "a" * 32),
    ],
)
def test_mask_join_urls(text: str, expected: str) -> None:
    assert mask_join_urls(text) == expected


def test_mask_secrets() -> None:
    assert mask_secrets("a secret and secret2", ["secret", "secret2", ""]) == "a **** and ****"
    assert mask_secrets("nothing here", []) == "nothing here"
    assert join_url_secrets(JOIN_URL) == (TOKEN,)
    assert join_url_secrets("127.0.0.11:25000") == ()
