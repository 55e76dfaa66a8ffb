"""`remove_node` of each backend: the cli one against the fake `microk8s`, the others refuse."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agent.errors import BackendUnavailable
from agent.microk8s.backends.base import NoBackend
from agent.microk8s.backends.cli import CliBackend
from tests.paths import FAKES, MICROK8S_CLI


@pytest.fixture
def backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> CliBackend:
    for name in ("SCENARIO", "SLEEP", "EXIT", "SPAWN_CHILD"):
        monkeypatch.delenv(f"FAKE_MICROK8S_{name}", raising=False)
    monkeypatch.setenv("FAKE_FIXTURES", str(MICROK8S_CLI))
    monkeypatch.setenv("FAKE_MICROK8S_LOG", str(tmp_path / "calls"))
    return CliBackend(
        str(FAKES / "microk8s"), str(FAKES / "snap"), timeout_s=10, status_timeout_s=5
    )


def calls(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line)[1:] for line in (tmp_path / "calls").read_text().splitlines()]


async def test_cli_remove_node_forces(backend: CliBackend, tmp_path: Path) -> None:
    outcome = await backend.remove_node("pi-03")
    assert outcome.ok
    assert outcome.exit_code == 0
    assert calls(tmp_path) == [["remove-node", "pi-03", "--force"]]


async def test_cli_remove_node_by_ip(backend: CliBackend, tmp_path: Path) -> None:
    assert (await backend.remove_node("127.0.0.13")).ok
    assert calls(tmp_path) == [["remove-node", "127.0.0.13", "--force"]]


async def test_cli_remove_node_failure_is_an_outcome(backend: CliBackend) -> None:
    outcome = await backend.remove_node("pi-99")
    assert not outcome.ok
    assert outcome.exit_code == 1
    assert outcome.error == "exit code 1: Node pi-99 does not exist in Kubernetes."


@pytest.mark.parametrize("name", ["--force", "pi 03", "PI-03", "", "127.0.0.13:19001", "a;b"])
async def test_cli_remove_node_refuses_odd_names(
    backend: CliBackend, tmp_path: Path, name: str
) -> None:
    with pytest.raises(ValueError, match="remove-node wants"):
        await backend.remove_node(name)
    assert not (tmp_path / "calls").exists()


async def test_no_backend_cannot_remove() -> None:
    with pytest.raises(BackendUnavailable, match="no MicroK8s backend available"):
        await NoBackend("no microk8s").remove_node("pi-03")
