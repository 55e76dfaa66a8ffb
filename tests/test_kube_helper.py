"""cordon, drain and uncordon: the snap backend runs `python -m agent.microk8s.drain` (a real
child process) against the Kubernetes API fake; the requests are asserted as the fake received
them."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from tests.fakes.fixtures import SnapEnv
from tests.fakes.kubeapi import PDB_MESSAGE
from tests.paths import REPO

NODE = "/api/v1/nodes/pi-01"
STRATEGIC = "application/strategic-merge-patch+json"


class Progress:
    def __init__(self) -> None:
        self.details: list[str] = []

    async def __call__(self, detail: str) -> None:
        self.details.append(detail)


def eviction(namespace: str, name: str) -> tuple[str, str, Any]:
    body = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": name, "namespace": namespace},
    }
    return ("POST", f"/api/v1/namespaces/{namespace}/pods/{name}/eviction", body)


async def test_cordon_then_uncordon(snap_env: SnapEnv) -> None:
    backend, progress = snap_env.backend(), Progress()
    cordoned = await backend.cordon("pi-01", progress=progress)
    assert cordoned.ok, cordoned
    assert snap_env.kube.node("pi-01")["spec"]["unschedulable"] is True
    uncordoned = await backend.uncordon("pi-01", progress=progress)
    assert uncordoned.ok, uncordoned
    assert snap_env.kube.node("pi-01")["spec"]["unschedulable"] is False
    seen = snap_env.kube.recorder.requests
    assert [(r.method, r.path, r.body, r.headers["Content-Type"]) for r in seen] == [
        ("PATCH", NODE, {"spec": {"unschedulable": True}}, STRATEGIC),
        ("PATCH", NODE, {"spec": {"unschedulable": False}}, STRATEGIC),
    ]
    assert {r.headers["Authorization"] for r in seen} == {f"Bearer {snap_env.kube.token}"}
    assert progress.details == ["cordoned pi-01", "uncordoned pi-01"]


async def test_drain_evicts_all_but_daemonset_and_mirror_pods(snap_env: SnapEnv) -> None:
    progress = Progress()
    outcome = await snap_env.backend().drain("pi-01", progress=progress)
    assert outcome.ok, outcome
    assert outcome.result is not None
    assert (outcome.result["evicted"], outcome.result["skipped"]) == (2, 2)
    calls = snap_env.kube.recorder.calls()
    assert calls[:2] == [
        ("PATCH", NODE, {"spec": {"unschedulable": True}}),
        ("GET", "/api/v1/pods", None),
    ]
    evictions = sorted(c for c in calls if c[0] == "POST")
    assert evictions == sorted(
        [
            eviction("default", "web-7d4b9c-1"),  # 429 from the PodDisruptionBudget first
            eviction("default", "web-7d4b9c-1"),
            eviction("default", "api-5f6c7d-2"),
        ]
    )
    lists = [r for r in snap_env.kube.recorder.requests if r.path == "/api/v1/pods"]
    assert [r.query for r in lists] == [{"fieldSelector": "spec.nodeName=pi-01"}] * 2
    assert [p["metadata"]["name"] for p in snap_env.kube.pods] == [
        "calico-node-x7k2p",
        "static-web-pi-01",
        "db-0",
    ]
    blocked = f"eviction of default/web-7d4b9c-1 blocked (HTTP 429: {PDB_MESSAGE}), retry in 1.0 s"
    assert f"draining: {blocked}" in progress.details
    assert "draining: 2 pods to evict, 2 left in place" in progress.details


async def test_drain_times_out_while_a_budget_blocks(snap_env: SnapEnv) -> None:
    snap_env.kube.pdb_blocks = {"default/web-7d4b9c-1": -1}
    outcome = await snap_env.backend(drain_timeout_s=1.5).drain("pi-01", progress=Progress())
    assert outcome.timed_out and not outcome.ok
    assert outcome.exit_code == 3
    assert outcome.error == (
        f"eviction of default/web-7d4b9c-1 still blocked: HTTP 429: {PDB_MESSAGE}"
    )
    attempts = [
        c for c in snap_env.kube.recorder.calls() if c == eviction("default", "web-7d4b9c-1")
    ]
    assert len(attempts) >= 2


async def test_helper_failures(snap_env: SnapEnv) -> None:
    snap_env.kube.down = True
    outcome = await snap_env.backend().cordon("pi-01", progress=Progress())
    assert not outcome.ok and not outcome.timed_out
    assert outcome.exit_code == 1
    assert outcome.error == "cordon pi-01: HTTP 503: apiserver restarting"
    (snap_env.credentials / "client.config").unlink()
    missing = await snap_env.backend().uncordon("pi-01", progress=Progress())
    assert missing.exit_code == 4
    assert missing.error is not None and missing.error.startswith("cannot use ")


def test_helper_usage_and_no_client_in_the_agent() -> None:
    usage = subprocess.run(
        [
            sys.executable,
            "-m",
            "agent.microk8s.drain",
            "delete",
            "--kubeconfig",
            "x",
            "--node",
            "y",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    assert usage.returncode == 2 and "invalid choice: 'delete'" in usage.stderr
    probe = (
        "import sys, agent.app, agent.microk8s.backends.snap, agent.microk8s.backends.select\n"
        "print(sorted(m for m in sys.modules if m.startswith('kubernetes')))"
    )
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    )
    assert loaded.stdout.strip() == "[]"
