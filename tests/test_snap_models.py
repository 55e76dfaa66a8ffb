"""Pure parts of the snap backend against the recorded shapes in fixtures/snapd, kube."""

from __future__ import annotations

import dataclasses
import json

import pytest
import yaml

from agent.microk8s import kube_model, request_bodies, snapd_model
from agent.microk8s.kube_model import KubeconfigError, PodRef
from tests.fakes.kubeapi import pods
from tests.fakes.tls import b64
from tests.paths import FIXTURES

SNAPD = FIXTURES / "snapd"
KUBE = FIXTURES / "kube"


def snapd_fixture(name: str) -> object:
    return json.loads((SNAPD / name).read_text())


# --- snapd ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "status", "message"),
    [
        ("error-no-update.json", "snap-no-update-available", 400, 'snap "microk8s" has no updates'),
        ("error-channel-not-available.json", "snap-channel-not-available", 400, "requested"),
        ("error-change-conflict.json", "snap-change-conflict", 409, 'has "refresh-snap" change'),
    ],
)
def test_error_bodies_become_refusals(name: str, kind: str, status: int, message: str) -> None:
    env = snapd_model.envelope(snapd_fixture(name), status)
    refusal = snapd_model.refusal(env)
    assert env.is_error
    assert (refusal.kind, refusal.status_code) == (kind, status)
    assert message in refusal.message


def test_accepted_envelope_names_the_change() -> None:
    env = snapd_model.envelope(snapd_fixture("refresh-accepted.json"), 202)
    assert (env.type, env.status_code, env.change, env.is_error) == ("async", 202, "57", False)


def test_non_snapd_answer_is_an_error() -> None:
    env = snapd_model.envelope("<html>", 502)
    assert env.is_error
    assert snapd_model.refusal(env).message == "not a snapd answer (HTTP 502)"


def test_snap_info_from_fixture() -> None:
    info = snapd_model.parse_snap(snapd_fixture("snap-microk8s.json")["result"])  # type: ignore[index]
    assert (info.version, info.revision, info.channel, info.confinement, info.health) == (
        "v1.32.3",
        "7964",
        "1.32-strict/stable",
        "strict",
        "okay",
    )
    assert info.services["daemon-kubelite"] is True
    assert info.services["daemon-apiserver-proxy"] is False
    assert "daemon-apiserver-proxy" not in info.enabled
    facts = snapd_model.to_facts(info)
    assert (facts.installed, facts.running, facts.error) == (True, True, None)
    assert facts.to_health()["services"] == info.services
    assert facts.to_health()["confinement"] == "strict"


def test_snap_facts_say_what_is_wrong() -> None:
    info = snapd_model.parse_snap(snapd_fixture("snap-microk8s.json")["result"])  # type: ignore[index]
    services = {**info.services, "daemon-k8s-dqlite": False}
    stopped = dataclasses.replace(
        info, services=services, health="blocked", health_message="You must connect"
    )
    facts = snapd_model.to_facts(stopped)
    assert facts.running is False
    assert facts.error == (
        "snap health blocked: You must connect; inactive services: daemon-k8s-dqlite"
    )
    assert snapd_model.running(dataclasses.replace(info, services={})) is None


@pytest.mark.parametrize(
    ("name", "status", "ready", "ok", "percent"),
    [
        ("change-doing.json", "Doing", False, False, 50),
        ("change-done.json", "Done", True, True, 100),
        ("change-error.json", "Error", True, False, None),
    ],
)
def test_changes(name: str, status: str, ready: bool, ok: bool, percent: int | None) -> None:
    change = snapd_model.parse_change(snapd_fixture(name)["result"])  # type: ignore[index]
    assert (change.status, change.ready, change.ok, change.percent) == (
        status,
        ready,
        ok,
        percent,
    )
    if name == "change-error.json":
        assert change.err is not None and 'run hook "post-refresh"' in change.err


# --- Kubernetes -------------------------------------------------------------------------------


def kubeconfig(user: str, server: str = "https://127.0.0.1:16443") -> str:
    return (
        "apiVersion: v1\nclusters:\n- cluster:\n"
        f"    certificate-authority-data: {b64('CA PEM')}\n    server: {server}\n"
        "  name: microk8s-cluster\ncontexts:\n- context:\n    cluster: microk8s-cluster\n"
        "    user: admin\n  name: microk8s\ncurrent-context: microk8s\nkind: Config\n"
        f"users:\n- name: admin\n  user:\n{user}"
    )


def test_kubeconfig_with_token_and_with_client_certificate() -> None:
    by_token = kube_model.parse_kubeconfig(kubeconfig("    token: abc\n"))
    assert (by_token.server, by_token.ca_pem, by_token.token) == (
        "https://127.0.0.1:16443",
        "CA PEM",
        "abc",
    )
    user = f"    client-certificate-data: {b64('CERT')}\n    client-key-data: {b64('KEY')}\n"
    by_cert = kube_model.parse_kubeconfig(kubeconfig(user))
    assert (by_cert.token, by_cert.cert_pem, by_cert.key_pem) == (None, "CERT", "KEY")
    assert "abc" not in repr(by_token)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("[", "not valid YAML"),
        ("- a", "not a kubeconfig"),
        (kubeconfig("    username: admin\n"), "neither a token nor client certificate"),
        (kubeconfig("    token: a\n", server="http://x"), "no https server"),
        (kubeconfig("    client-key-data: '***'\n"), "not base64"),
    ],
)
def test_bad_kubeconfigs(text: str, problem: str) -> None:
    with pytest.raises(KubeconfigError, match=problem):
        kube_model.parse_kubeconfig(text)


def test_nodes_from_fixture() -> None:
    nodes = {
        n.name: n for n in kube_model.parse_node_list(json.loads((KUBE / "nodes.json").read_text()))
    }
    assert (nodes["pi-01"].ready, nodes["pi-01"].kubelet_version) == (True, "v1.32.3")
    assert nodes["pi-01"].addresses == ("127.0.0.11",)
    assert nodes["pi-03"].ready is False  # Ready "Unknown": the kubelet stopped posting
    assert nodes["pi-03"].conditions["Ready"] is None
    assert (nodes["pi-04"].worker, nodes["pi-04"].unschedulable) == (True, True)
    assert nodes["pi-01"].worker is False
    assert kube_model.parse_node({"kind": "Status"}) is None


def test_readyz_verbose_ok_and_etcd_failed() -> None:
    ok = kube_model.parse_readyz((KUBE / "readyz-verbose.txt").read_text(), 200)
    assert (ok.ready, ok.datastore_ok, ok.failed_checks) == (True, True, ())
    bad = kube_model.parse_readyz((KUBE / "readyz-etcd-failed.txt").read_text(), 500)
    assert (bad.ready, bad.datastore_ok, bad.failed_checks) == (
        False,
        False,
        ("etcd", "etcd-readiness"),
    )
    assert kube_model.parse_readyz("[+]ping ok\n", 200).datastore_ok is None


def test_kube_section_unknowns_are_null() -> None:
    section = kube_model.kube_section(None, None, ["no kubeconfig"])
    assert section == {
        "node_ready": None,
        "kubelet_version": None,
        "conditions": {},
        "apiserver_ready": None,
        "datastore_ok": None,
        "failed_checks": [],
        "error": "no kubeconfig",
    }


def test_join_verdict_needs_this_node_next_to_the_peer() -> None:
    nodes = kube_model.parse_node_list(json.loads((KUBE / "nodes.json").read_text()))
    alone = [n for n in nodes if n.name == "pi-01"]
    assert kube_model.join_verdict(alone, "pi-01", "127.0.0.11") == (
        False,
        "the Kubernetes API lists pi-01 (no other node with address 127.0.0.11)",
    )
    assert kube_model.join_verdict(nodes, "pi-02", "127.0.0.11")[0] is True
    assert kube_model.join_verdict(nodes, "pi-09", "127.0.0.11") == (
        False,
        "the Kubernetes API lists pi-01, pi-02, pi-03, pi-04 (no node 'pi-09')",
    )


def test_drain_leaves_daemonset_and_mirror_pods() -> None:
    on_node = [p for p in pods() if p["spec"]["nodeName"] == "pi-01"]
    evict, skipped = kube_model.pods_to_evict(on_node)
    assert evict == [PodRef("default", "web-7d4b9c-1"), PodRef("default", "api-5f6c7d-2")]
    assert skipped == [
        ("kube-system/calico-node-x7k2p", "DaemonSet"),
        ("kube-system/static-web-pi-01", "mirror pod"),
    ]


@pytest.mark.parametrize(
    ("event", "detail"),
    [
        ({"event": "cordoned", "node": "pi-01"}, "cordoned pi-01"),
        (
            {"event": "pods", "evict": ["a/b"], "skipped": []},
            "draining: 1 pods to evict, 0 left in place",
        ),
        ({"event": "evicted", "pod": "a/b"}, "draining: evicted a/b"),
        (
            {"event": "blocked", "pod": "a/b", "reason": "HTTP 429: pdb", "retry_in_s": 2},
            "draining: eviction of a/b blocked (HTTP 429: pdb), retry in 2 s",
        ),
        ({"event": "result", "ok": True}, None),
    ],
)
def test_helper_events_described(event: dict[str, object], detail: str | None) -> None:
    assert kube_model.describe_event(event) == detail


# --- request bodies ---------------------------------------------------------------------------


def test_join_launch_configuration() -> None:
    url = "127.0.0.11:25000/92b2db237428470dc4fcfc4ebbd9dc81/2c0cb3284b05"
    text = request_bodies.join_config(url, worker=True, nonce="n-1")
    assert text == (
        "version: 0.1.0\njoin:\n"
        "  url: 127.0.0.11:25000/92b2db237428470dc4fcfc4ebbd9dc81/2c0cb3284b05\n"
        "  worker: true\n# nonce: n-1\n"
    )
    assert yaml.safe_load(text) == {"version": "0.1.0", "join": {"url": url, "worker": True}}


def test_addon_launch_configurations() -> None:
    enable = request_bodies.addon_config("metallb", "enable", ["10.0.0.200-10.0.0.220"], nonce="n")
    assert yaml.safe_load(enable) == {
        "version": "0.1.0",
        "addons": [{"name": "metallb", "args": ["10.0.0.200-10.0.0.220"], "disable": False}],
    }
    disable = request_bodies.addon_config("ingress", "disable", [], nonce="n")
    assert yaml.safe_load(disable)["addons"] == [{"name": "ingress", "args": [], "disable": True}]
    assert request_bodies.noop_config("n") == "version: 0.1.0\n# nonce: n\n"
    with pytest.raises(ValueError, match="enable or disable"):
        request_bodies.addon_config("dns", "restart", [], nonce="n")


def test_configure_body_matches_the_recorded_request() -> None:
    recorded = json.loads((FIXTURES / "cluster-agent" / "configure-request.json").read_text())
    body = request_bodies.configure_body("tok", "metallb", "enable", ["10.0.0.200-10.0.0.220"])
    assert body == {"callback": "tok", "addon": [recorded["addon"][1]]}
    disable = request_bodies.configure_body("tok", "ingress", "disable", [])
    assert disable["addon"] == [recorded["addon"][2]]
    assert request_bodies.configure_body("tok", "dns", "enable", [])["addon"] == [
        recorded["addon"][0]
    ]
