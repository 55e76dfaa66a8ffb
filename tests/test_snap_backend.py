"""SnapBackend against the snapd, cluster-agent and Kubernetes API fakes (tests/fakes).

Every request the backend sends is asserted with its exact method, path and body.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest

from agent.errors import BackendError
from agent.microk8s.backends import select
from agent.microk8s.backends.base import Backend, NoBackend
from agent.microk8s.backends.cli import CliBackend
from agent.microk8s.backends.snap import SnapBackend
from agent.microk8s.clusteragent import ClusterAgent, ClusterAgentError
from tests.fakes.fixtures import NONCE, SnapEnv
from tests.fakes.snapd import snapd_calls
from tests.paths import FAKES, FIXTURES

TOKEN = "92b2db237428470dc4fcfc4ebbd9dc81"
JOIN_URL = f"127.0.0.11:25000/{TOKEN}/2c0cb3284b05"
SNAP = "/v2/snaps/microk8s"
CONF = "/v2/snaps/microk8s/conf"
CONFIGURE = "/cluster/api/v1.0/configure"


class Progress:
    def __init__(self) -> None:
        self.details: list[str] = []

    async def __call__(self, detail: str) -> None:
        self.details.append(detail)


def pi_05() -> dict[str, Any]:
    """A node that appears once the join went through (shape of fixtures/kube/nodes.json)."""
    import json

    node: dict[str, Any] = json.loads((FIXTURES / "kube" / "nodes.json").read_text())["items"][1]
    node["metadata"]["name"] = "pi-05"
    node["status"]["addresses"] = [{"type": "InternalIP", "address": "10.0.0.15"}]
    return node


def test_snap_backend_satisfies_the_protocol(snap_env: SnapEnv) -> None:
    backend: Backend = snap_env.backend()
    assert backend.name == "snap"


# --- facts ------------------------------------------------------------------------------------


async def test_facts_from_snapd_and_the_node_labels(snap_env: SnapEnv) -> None:
    facts = await snap_env.backend().facts()
    assert (facts.installed, facts.running, facts.version, facts.channel) == (
        True,
        True,
        "v1.32.3",
        "1.32-strict/stable",
    )
    assert (facts.confinement, facts.role, facts.error) == ("strict", None, None)
    assert facts.services is not None and facts.services["daemon-k8s-dqlite"] is True
    assert snap_env.snapd.recorder.calls() == [("GET", SNAP, None)]
    assert snap_env.kube.recorder.calls() == [("GET", "/api/v1/nodes/pi-01", None)]
    worker = await snap_env.backend(node="pi-04").facts()
    assert worker.role == "worker"


async def test_facts_when_microk8s_is_not_installed(snap_env: SnapEnv) -> None:
    snap_env.snapd.snap = None
    facts = await snap_env.backend().facts()
    assert (facts.installed, facts.running) == (False, False)


async def test_without_snapd_control_health_and_addons_still_work(snap_env: SnapEnv) -> None:
    """Option B of MICROK8S.md §4.5: no snapd socket, but the content interface is there."""
    missing = str(Path(snap_env.settings.snapd_socket).parent / "x")
    backend = snap_env.backend(node="pi-04", snapd_socket=missing)
    facts = await backend.facts()
    assert (facts.installed, facts.running, facts.version, facts.role) == (
        True,
        True,
        "v1.32.3",
        "worker",
    )
    assert facts.error == (
        f"snapd: snapd at {missing} unreachable: no such file or directory; "
        "channel and services unknown"
    )
    backend = snap_env.backend(snapd_socket=missing)
    added = await backend.addon("dns", "enable", [], progress=Progress())
    assert added.ok, added
    refresh = await backend.refresh("1.33-strict/stable", progress=Progress())
    assert refresh.error == (
        f"refresh not started: snapd at {missing} unreachable: no such file or directory "
        "(it needs the snapd-control interface)"
    )
    (snap_env.credentials / "client.config").unlink()
    facts = await backend.facts()
    assert (facts.installed, facts.running) == (False, None)
    assert facts.error is not None and "unreachable: no such file or directory" in facts.error


async def test_kube_facts(snap_env: SnapEnv) -> None:
    section = await snap_env.backend().kube_facts()
    assert section == {
        "node_ready": True,
        "kubelet_version": "v1.32.3",
        "conditions": {
            "MemoryPressure": False,
            "DiskPressure": False,
            "PIDPressure": False,
            "Ready": True,
        },
        "apiserver_ready": True,
        "datastore_ok": True,
        "failed_checks": [],
        "unschedulable": False,
    }
    seen = snap_env.kube.recorder.requests
    assert [(r.method, r.path, r.query, r.body) for r in seen] == [
        ("GET", "/api/v1/nodes/pi-01", {}, None),
        ("GET", "/readyz", {"verbose": ""}, None),
    ]
    assert {r.headers["Authorization"] for r in seen} == {f"Bearer {snap_env.kube.token}"}


async def test_kube_facts_when_the_datastore_fails(snap_env: SnapEnv) -> None:
    snap_env.kube.etcd_failed = True
    section = await snap_env.backend(node="pi-03").kube_facts()
    assert (section["node_ready"], section["apiserver_ready"], section["datastore_ok"]) == (
        False,
        False,
        False,
    )
    assert section["failed_checks"] == ["etcd", "etcd-readiness"]
    assert section["conditions"]["Ready"] is None


async def test_kube_facts_with_a_client_certificate(snap_env: SnapEnv) -> None:
    (snap_env.credentials / "client.config").write_text(snap_env.kube.kubeconfig(client_cert=True))
    section = await snap_env.backend().kube_facts()
    assert (section["node_ready"], section["apiserver_ready"]) == (True, True)
    assert all("Authorization" not in r.headers for r in snap_env.kube.recorder.requests)


async def test_kube_facts_say_why_they_are_unknown(snap_env: SnapEnv, tmp_path: Path) -> None:
    (snap_env.credentials / "client.config").unlink()
    section = await snap_env.backend().kube_facts()
    assert section["node_ready"] is None and section["apiserver_ready"] is None
    assert "is the microk8s content interface connected?" in section["error"]
    # A kubeconfig whose CA did not sign the server's certificate: TLS is verified.
    from tests.fakes.tls import make_tls

    other = dataclasses.replace(snap_env.kube.tls, ca_pem=make_tls(tmp_path / "other").ca_pem)
    snap_env.kube.tls, real = other, snap_env.kube.tls
    (snap_env.credentials / "client.config").write_text(snap_env.kube.kubeconfig())
    snap_env.kube.tls = real
    section = await snap_env.backend().kube_facts()
    assert section["node_ready"] is None
    assert "certificate verify failed" in section["error"]
    assert snap_env.kube.recorder.requests == []


async def test_version_and_node_ready(snap_env: SnapEnv) -> None:
    backend = snap_env.backend()
    assert await backend.version() == ("v1.32.3", "7964")
    assert await backend.node_ready("pi-01") == (True, "v1.32.3")
    assert await backend.node_ready("pi-03") == (False, "v1.32.3")
    assert await backend.node_ready("pi-09") == (None, None)
    snap_env.kube.down = True
    assert await backend.node_ready("pi-01") == (None, None)
    snap_env.snapd.snap = None
    with pytest.raises(BackendError, match="snap not installed"):
        await backend.version()


# --- start-up ---------------------------------------------------------------------------------


async def test_hold_refresh(snap_env: SnapEnv) -> None:
    assert await snap_env.backend().hold_refresh() is True
    assert snapd_calls(snap_env.snapd) == [
        ("POST", SNAP, {"action": "hold", "time": "forever", "hold-level": "general"})
    ]
    gone = snap_env.backend(snapd_socket="/nonexistent/snapd.socket")
    assert await gone.hold_refresh() is False


async def test_auto_prefers_snapd_and_holds_refreshes(snap_env: SnapEnv) -> None:
    settings = dataclasses.replace(snap_env.settings, backend="auto")
    backend = await select.choose(settings, node="pi-01")
    assert isinstance(backend, SnapBackend)
    assert snap_env.snapd.recorder.calls()[0] == ("GET", SNAP, None)  # the probe
    assert snapd_calls(snap_env.snapd) == [
        ("POST", SNAP, {"action": "hold", "time": "forever", "hold-level": "general"})
    ]
    quiet = dataclasses.replace(settings, hold_refresh=False)
    assert isinstance(await select.choose(quiet, node="pi-01"), SnapBackend)
    assert len(snapd_calls(snap_env.snapd)) == 1
    snap_env.snapd.snap = None  # snapd answers "not installed": still the snap backend
    assert isinstance(await select.choose(quiet, node="pi-01"), SnapBackend)


async def test_auto_falls_back_to_cli_then_to_none(snap_env: SnapEnv, tmp_path: Path) -> None:
    missing = str(tmp_path / "no-snapd.socket")
    settings = dataclasses.replace(
        snap_env.settings, backend="auto", snapd_socket=missing, cli=str(FAKES / "microk8s")
    )
    assert isinstance(await select.choose(settings, node="pi-01"), CliBackend)
    nothing = dataclasses.replace(settings, cli=str(tmp_path / "no-microk8s"))
    backend = await select.choose(nothing, node="pi-01")
    assert isinstance(backend, NoBackend)
    assert backend.reason == (
        f"snapd at {missing} unreachable: no such file or directory; "
        f"no {str(tmp_path / 'no-microk8s')!r} executable on PATH"
    )
    with pytest.raises(BackendError, match=r"^no MicroK8s backend available: snapd at "):
        await backend.refresh("1.33/stable", progress=Progress())


# --- refresh ----------------------------------------------------------------------------------


async def test_refresh_follows_the_change(snap_env: SnapEnv) -> None:
    progress = Progress()
    outcome = await snap_env.backend().refresh("1.33-strict/stable", progress=progress)
    assert outcome.ok, outcome
    assert outcome.result == {
        "channel": "1.33-strict/stable",
        "version": "v1.33.0",
        "revision": "8012",
        "previous_version": "v1.32.3",
        "previous_revision": "7964",
    }
    assert snap_env.snapd.recorder.calls() == [
        ("GET", SNAP, None),
        ("POST", SNAP, {"action": "refresh", "channel": "1.33-strict/stable"}),
        ("GET", "/v2/changes/57", None),
        ("GET", "/v2/changes/57", None),
        ("GET", "/v2/changes/57", None),
        ("GET", SNAP, None),
    ]
    assert progress.details == [
        "refreshing microk8s to 1.33-strict/stable (snapd change 57)",
        "refreshing 50%",
        "refreshing 100%",
    ]


@pytest.mark.parametrize(
    ("refusal", "kind", "message"),
    [
        ("no-update", "snap-no-update-available", 'snap "microk8s" has no updates available'),
        (
            "channel-not-available",
            "snap-channel-not-available",
            'requested channel "1.99-strict/stable" is not available',
        ),
        (
            "change-conflict",
            "snap-change-conflict",
            'snap "microk8s" has "refresh-snap" change in progress',
        ),
    ],
)
async def test_refresh_refused_by_snapd(
    snap_env: SnapEnv, refusal: str, kind: str, message: str
) -> None:
    snap_env.snapd.refresh_refusal = refusal
    outcome = await snap_env.backend().refresh("1.99-strict/stable", progress=Progress())
    assert not outcome.ok and not outcome.timed_out
    assert outcome.error == f"snapd refused the refresh: {message} ({kind})"
    assert outcome.result == {"kind": kind}
    assert snapd_calls(snap_env.snapd) == [
        ("POST", SNAP, {"action": "refresh", "channel": "1.99-strict/stable"})
    ]


async def test_refresh_change_ends_in_error(snap_env: SnapEnv) -> None:
    snap_env.snapd.refresh_fails = True
    outcome = await snap_env.backend().refresh("1.33-strict/stable", progress=Progress())
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith('snapd change 58 Error: Refresh "microk8s" snap')
    assert 'run hook "post-refresh": exit status 1' in outcome.error
    assert ("GET", "/v2/changes/58", None) in snap_env.snapd.recorder.calls()


async def test_refresh_times_out(snap_env: SnapEnv) -> None:
    snap_env.snapd.polls_before_done = 10_000
    backend = snap_env.backend(command_timeout_s=0.2)
    outcome = await backend.refresh("1.33-strict/stable", progress=Progress())
    assert outcome.timed_out and not outcome.ok
    assert outcome.error == "snapd change 57 still Doing after 0.2 s"


async def test_refresh_without_an_answer_may_have_started(snap_env: SnapEnv) -> None:
    # A stuck snapd took the request and never answered: it may have acted, so the agent must
    # not claim it did not (nor blame a missing interface).
    snap_env.snapd.hang = True
    try:
        backend = snap_env.backend(status_timeout_s=0.3)
        outcome = await backend.refresh("1.33-strict/stable", progress=Progress())
    finally:
        snap_env.snapd.hang = False
    assert not outcome.ok
    assert outcome.error is not None
    assert outcome.error.startswith("refresh may have started: snapd at ")
    assert "did not answer: timed out after 0.3 s" in outcome.error
    assert "snapd-control" not in outcome.error


# --- join -------------------------------------------------------------------------------------


def join_config(worker: str = "false") -> str:
    return f"version: 0.1.0\njoin:\n  url: {JOIN_URL}\n  worker: {worker}\n# nonce: {NONCE}\n"


def assert_masked(*texts: str | None) -> None:
    for text in texts:
        assert TOKEN not in (text or "")


async def test_join_through_a_launch_configuration(snap_env: SnapEnv) -> None:
    snap_env.kube.add_later(pi_05(), after_lists=2)
    progress = Progress()
    outcome = await snap_env.backend(node="pi-05").join(JOIN_URL, worker=True, progress=progress)
    assert outcome.ok, outcome
    assert outcome.result == {
        "node": "pi-05",
        "nodes": ["pi-01", "pi-02", "pi-03", "pi-04", "pi-05"],
    }
    assert snapd_calls(snap_env.snapd) == [("PUT", CONF, {"config": join_config("true")})]
    lists = [c for c in snap_env.kube.recorder.calls() if c == ("GET", "/api/v1/nodes", None)]
    assert len(lists) == 3
    assert progress.details[0] == (
        "joining 127.0.0.11:25000/****/2c0cb3284b05 as a worker through a launch configuration"
    )
    assert_masked(*progress.details, outcome.output, outcome.error)


async def test_join_not_confirmed_is_withdrawn(snap_env: SnapEnv) -> None:
    backend = snap_env.backend(node="pi-05", join_timeout_s=0.3)
    outcome = await backend.join(JOIN_URL, worker=False, progress=Progress())
    assert outcome.timed_out and not outcome.ok
    assert outcome.error == (
        "join not confirmed within 0.3 s: the Kubernetes API lists pi-01, pi-02, pi-03, pi-04 "
        "(no node 'pi-05'); the pending join was withdrawn (replaced by an empty launch "
        "configuration)"
    )
    assert snapd_calls(snap_env.snapd) == [
        ("PUT", CONF, {"config": join_config()}),
        ("PUT", CONF, {"config": f"version: 0.1.0\n# nonce: {NONCE}\n"}),
    ]


async def test_join_change_fails_or_is_refused(snap_env: SnapEnv) -> None:
    snap_env.snapd.conf_fails = True
    failed = await snap_env.backend(node="pi-05").join(JOIN_URL, worker=False, progress=Progress())
    assert not failed.ok and failed.error is not None
    assert failed.error.startswith('snapd change 61 Error: Change configuration of "microk8s"')
    snap_env.snapd.conf_refusal = "change-conflict"
    refused = await snap_env.backend(node="pi-05").join(JOIN_URL, worker=False, progress=Progress())
    assert refused.error == (
        'snapd refused the join: snap "microk8s" has "refresh-snap" change in progress '
        "(snap-change-conflict)"
    )
    assert snap_env.kube.recorder.calls() == []
    assert_masked(failed.error, failed.output, refused.error)


# --- addons -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "action", "args", "entry"),
    [
        ("dns", "enable", [], {"name": "dns", "enable": True}),
        (
            "metallb",
            "enable",
            ["10.0.0.200-10.0.0.220"],
            {"name": "metallb:10.0.0.200-10.0.0.220", "enable": True},
        ),
        ("ingress", "disable", [], {"name": "ingress", "disable": True}),
    ],
)
async def test_addon_through_the_cluster_agent(
    snap_env: SnapEnv, name: str, action: str, args: list[str], entry: dict[str, Any]
) -> None:
    outcome = await snap_env.backend().addon(name, action, args, progress=Progress())
    assert outcome.ok, outcome
    assert outcome.result == {"via": "cluster-agent"}
    token = snap_env.cluster_agent.token
    assert snap_env.cluster_agent.recorder.calls() == [
        ("POST", CONFIGURE, {"callback": token, "addon": [entry]})
    ]
    assert snapd_calls(snap_env.snapd) == []


async def test_addon_failures_from_the_cluster_agent(snap_env: SnapEnv) -> None:
    snap_env.cluster_agent.addon_fails = True
    failed = await snap_env.backend().addon("dns", "enable", [], progress=Progress())
    assert failed.error == (
        'cluster agent: Failed to enable addon "dns": command '
        "[/snap/microk8s/7964/microk8s-enable.wrapper dns] failed with exit code 1: "
        "exit status 1 (HTTP 500)"
    )
    (snap_env.credentials / "callback-token.txt").write_text("stale-token\n")
    refused = await snap_env.backend().addon("dns", "enable", [], progress=Progress())
    assert refused.error == "cluster agent: Invalid token (HTTP 500)"
    (snap_env.credentials / "callback-token.txt").write_text(snap_env.cluster_agent.token)
    snap_env.cluster_agent.delay_s = 1.0
    backend = snap_env.backend()
    backend.cluster_agent = ClusterAgent(
        snap_env.cluster_agent.url, snap_env.credentials, timeout_s=0.2
    )
    slow = await backend.addon("dns", "enable", [], progress=Progress())
    assert slow.timed_out and slow.error == "the cluster agent did not answer within 0.2 s"


async def test_cluster_agent_fake_refuses_string_booleans(snap_env: SnapEnv) -> None:
    agent = ClusterAgent(snap_env.cluster_agent.url, snap_env.credentials)
    body = {"callback": snap_env.cluster_agent.token, "addon": [{"name": "dns", "enable": "true"}]}
    with pytest.raises(ClusterAgentError, match="HTTP 400") as caught:
        await agent.configure(body)
    assert caught.value.status == 400


async def test_addon_without_a_callback_token_uses_a_launch_configuration(
    snap_env: SnapEnv,
) -> None:
    snap_env.forget_token()
    outcome = await snap_env.backend().addon(
        "metallb", "enable", ["10.0.0.200-10.0.0.220"], progress=Progress()
    )
    assert outcome.ok, outcome
    assert outcome.result == {"via": "launch-configuration"}
    config = (
        "version: 0.1.0\naddons:\n- name: metallb\n  args:\n  - 10.0.0.200-10.0.0.220\n"
        f"  disable: false\n# nonce: {NONCE}\n"
    )
    assert snapd_calls(snap_env.snapd) == [("PUT", CONF, {"config": config})]
    assert snap_env.cluster_agent.recorder.calls() == []


async def test_addon_refused_on_a_worker(snap_env: SnapEnv) -> None:
    with pytest.raises(BackendError, match="pi-04: it is a worker node") as caught:
        await snap_env.backend(node="pi-04").addon("dns", "enable", [], progress=Progress())
    assert caught.value.kind == "refused"
    assert snap_env.cluster_agent.recorder.calls() == []
    assert snapd_calls(snap_env.snapd) == []


async def test_remove_node_is_not_possible(snap_env: SnapEnv) -> None:
    with pytest.raises(BackendError, match="microk8s remove-node pi-03 --force"):
        await snap_env.backend().remove_node("pi-03")
