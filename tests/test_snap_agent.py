"""End to end: a real agent process (backend "snap") on a real Mosquitto, commands over MQTT,
MicroK8s played by the snapd, cluster-agent and Kubernetes API fakes (tests/fakes)."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.conftest import AgentProcess, Broker, Watcher, agent_config, watch
from tests.fakes.fixtures import SnapEnv
from tests.fakes.snapd import snapd_calls

pytestmark = pytest.mark.broker

TOKEN = "92b2db237428470dc4fcfc4ebbd9dc81"
JOIN_URL = f"127.0.0.11:25000/{TOKEN}/2c0cb3284b05"
SNAP = "/v2/snaps/microk8s"
CONF = "/v2/snaps/microk8s/conf"
HOLD = ("POST", SNAP, {"action": "hold", "time": "forever", "hold-level": "general"})
TERMINAL = {"succeeded", "failed", "timed_out", "rejected"}
Spawn = Callable[..., AgentProcess]


def root(node: str) -> str:
    return f"microk8s/lab/nodes/{node}"


def start_agent(
    tmp_path: Path, broker: Broker, env: SnapEnv, spawn: Spawn, node: str, **microk8s: Any
) -> AgentProcess:
    config = agent_config(
        tmp_path,
        broker,
        node={"name": node, "cluster": "lab"},
        microk8s=env.section(**microk8s),
        commands={"allow_unsigned": True},
    )
    return spawn(config)


async def ready(watcher: Watcher, node: str) -> dict[str, Any]:
    """The first health message that carries the Kubernetes facts (the agent is subscribed)."""
    _, health = await watcher.wait_for(
        lambda t, p: t == f"{root(node)}/health" and p["kube"].get("apiserver_ready") is not None,
        timeout_s=20,
    )
    return dict(health)


async def command(
    watcher: Watcher, node: str, verb: str, args: dict[str, Any], cid: str
) -> list[dict[str, Any]]:
    """Send one command; return every status published for it, the terminal one last."""
    start = len(watcher.messages)
    body = {"v": 1, "id": cid, "verb": verb, "target": node, "args": args}
    body["issued_at"] = int(time.time())
    await watcher.publish(f"{root(node)}/cmd", json.dumps(body), qos=1)
    topic = f"{root(node)}/cmd/{cid}"
    await watcher.wait_for(
        lambda t, p: t == topic and p.get("status") in TERMINAL, timeout_s=60, after=start
    )
    return [p for t, p, _ in watcher.messages[start:] if t == topic]


def assert_no_token(watcher: Watcher, agent: AgentProcess) -> None:
    published = [(t, p) for t, p, _ in watcher.messages if not t.endswith("/cmd")]
    assert any(t.endswith("/cmd/j-2") for t, _ in published)
    for topic, payload in published:
        assert TOKEN not in json.dumps(payload), topic
    assert TOKEN not in agent.log_path.read_text()


async def test_health_carries_snap_and_kube_facts_then_upgrade(
    tmp_path: Path, broker: Broker, snap_env: SnapEnv, spawn_agent: Spawn
) -> None:
    snap_env.snapd.on_refreshed = lambda version: snap_env.kube.set_kubelet("pi-01", version)
    async with watch(broker, "microk8s/#") as watcher:
        start_agent(tmp_path, broker, snap_env, spawn_agent, "pi-01")
        health = await ready(watcher, "pi-01")
        assert health["kube"]["node_ready"] is True
        assert health["kube"]["kubelet_version"] == "v1.32.3"
        assert (health["kube"]["datastore_ok"], health["kube"]["failed_checks"]) == (True, [])
        microk8s = health["microk8s"]
        assert (microk8s["version"], microk8s["channel"], microk8s["confinement"]) == (
            "v1.32.3",
            "1.32-strict/stable",
            "strict",
        )
        assert microk8s["running"] is True and microk8s["services"]["daemon-kubelite"] is True
        args = {"channel": "1.33-strict/stable", "drain": True}
        statuses = await command(watcher, "pi-01", "upgrade", args, "up-1")
    final = statuses[-1]
    assert final["status"] == "succeeded", final
    assert final["result"]["old_version"] == "v1.32.3"
    assert final["result"]["new_version"] == "v1.33.0"
    details = [s.get("detail") for s in statuses if s["status"] == "running"]
    for expected in ("cordoned pi-01", "draining: evicted default/api-5f6c7d-2", "refreshing 50%"):
        assert expected in details
    assert snapd_calls(snap_env.snapd) == [
        HOLD,
        ("POST", SNAP, {"action": "refresh", "channel": "1.33-strict/stable"}),
    ]
    patches = [c for c in snap_env.kube.recorder.calls() if c[0] == "PATCH"]
    assert [c[2] for c in patches] == [
        {"spec": {"unschedulable": True}},  # cordon
        {"spec": {"unschedulable": True}},  # drain cordons too (idempotent)
        {"spec": {"unschedulable": False}},  # uncordon after Ready on v1.33.0
    ]
    evicted = {c[1] for c in snap_env.kube.recorder.calls() if c[0] == "POST"}
    assert evicted == {
        "/api/v1/namespaces/default/pods/web-7d4b9c-1/eviction",
        "/api/v1/namespaces/default/pods/api-5f6c7d-2/eviction",
    }


async def test_upgrade_failures(
    tmp_path: Path, broker: Broker, snap_env: SnapEnv, spawn_agent: Spawn
) -> None:
    snap_env.kube.pdb_blocks = {"default/web-7d4b9c-1": -1}
    async with watch(broker, "microk8s/#") as watcher:
        start_agent(tmp_path, broker, snap_env, spawn_agent, "pi-01", drain_timeout_s=1.0)
        await ready(watcher, "pi-01")
        snap_env.snapd.refresh_refusal = "no-update"
        args = {"channel": "1.33-strict/stable", "drain": False}
        refused = (await command(watcher, "pi-01", "upgrade", args, "up-refused"))[-1]
        snap_env.snapd.refresh_refusal = None
        snap_env.snapd.refresh_fails = True
        broken = (await command(watcher, "pi-01", "upgrade", args, "up-error"))[-1]
        blocked_args = {"channel": "1.33-strict/stable", "drain": True}
        blocked = (await command(watcher, "pi-01", "upgrade", blocked_args, "up-pdb"))[-1]
    assert refused["status"] == "failed"
    assert refused["error"] == (
        'refresh failed: snapd refused the refresh: snap "microk8s" has no updates available '
        "(snap-no-update-available)"
    )
    assert broken["status"] == "failed"
    assert 'run hook "post-refresh": exit status 1' in broken["error"]
    assert blocked["status"] == "timed_out"
    assert blocked["error"].startswith("drain failed: eviction of default/web-7d4b9c-1 still")
    # The drain failed before the refresh: the node went back to the scheduler, no refresh.
    assert snap_env.kube.node("pi-01")["spec"]["unschedulable"] is False
    refreshes = [c for c in snapd_calls(snap_env.snapd) if c[0] == "POST" and c != HOLD]
    assert len(refreshes) == 2


async def test_addon_paths_and_failures(
    tmp_path: Path, broker: Broker, snap_env: SnapEnv, spawn_agent: Spawn
) -> None:
    token = snap_env.cluster_agent.token
    async with watch(broker, "microk8s/#") as watcher:
        start_agent(tmp_path, broker, snap_env, spawn_agent, "pi-01")
        await ready(watcher, "pi-01")
        args = {"name": "metallb", "action": "enable", "args": ["10.0.0.200-10.0.0.220"]}
        enabled = (await command(watcher, "pi-01", "addon", args, "ad-1"))[-1]
        snap_env.cluster_agent.addon_fails = True
        dns = {"name": "dns", "action": "enable"}
        failing = (await command(watcher, "pi-01", "addon", dns, "ad-2"))[-1]
        (snap_env.credentials / "callback-token.txt").write_text("stale\n")
        stale = (await command(watcher, "pi-01", "addon", dns, "ad-3"))[-1]
        snap_env.forget_token()
        ingress = {"name": "ingress", "action": "disable"}
        launched = (await command(watcher, "pi-01", "addon", ingress, "ad-4"))[-1]
    assert enabled["status"] == "succeeded" and enabled["result"] == {"via": "cluster-agent"}
    assert failing["status"] == "failed"
    assert failing["error"].startswith('cluster agent: Failed to enable addon "dns"')
    assert (stale["status"], stale["error"]) == (
        "failed",
        "cluster agent: Invalid token (HTTP 500)",
    )
    assert launched["status"] == "succeeded"
    assert launched["result"] == {"via": "launch-configuration"}
    configure = "/cluster/api/v1.0/configure"
    assert snap_env.cluster_agent.recorder.calls() == [
        (
            "POST",
            configure,
            {
                "callback": token,
                "addon": [{"name": "metallb:10.0.0.200-10.0.0.220", "enable": True}],
            },
        ),
        ("POST", configure, {"callback": token, "addon": [{"name": "dns", "enable": True}]}),
        ("POST", configure, {"callback": "stale", "addon": [{"name": "dns", "enable": True}]}),
    ]
    conf = [c for c in snapd_calls(snap_env.snapd) if c[0] == "PUT"]
    assert [c[:2] for c in conf] == [("PUT", CONF)]
    config = conf[0][2]["config"]
    assert yaml.safe_load(config) == {
        "version": "0.1.0",
        "addons": [{"name": "ingress", "args": [], "disable": True}],
    }
    assert re.search(r"\n# nonce: \S+ [0-9a-f]{12}\n$", config)


async def test_addon_refused_on_a_worker(
    tmp_path: Path, broker: Broker, snap_env: SnapEnv, spawn_agent: Spawn
) -> None:
    async with watch(broker, "microk8s/#") as watcher:
        start_agent(tmp_path, broker, snap_env, spawn_agent, "pi-04")
        health = await ready(watcher, "pi-04")
        final = (
            await command(watcher, "pi-04", "addon", {"name": "dns", "action": "enable"}, "w-1")
        )[-1]
    assert health["microk8s"]["role"] == "worker"
    assert health["kube"]["unschedulable"] is True
    assert final["status"] == "failed"
    assert final["error"] == (
        "cannot change addon 'dns' on pi-04: it is a worker node (addons are cluster-wide; "
        "send the command to a control-plane node)"
    )
    assert snap_env.cluster_agent.recorder.calls() == []


async def test_join_timed_out_then_joined(
    tmp_path: Path, broker: Broker, snap_env: SnapEnv, spawn_agent: Spawn
) -> None:
    from tests.test_snap_backend import pi_05

    async with watch(broker, "microk8s/#") as watcher:
        agent = start_agent(tmp_path, broker, snap_env, spawn_agent, "pi-05", join_timeout_s=1.0)
        await watcher.wait_for(lambda t, p: t == f"{root('pi-05')}/health", timeout_s=20)
        args = {"url": JOIN_URL, "worker": True}
        missed = (await command(watcher, "pi-05", "join", args, "j-1"))[-1]
        snap_env.kube.add_later(pi_05(), after_lists=1)
        statuses = await command(watcher, "pi-05", "join", args, "j-2")
        assert_no_token(watcher, agent)
    assert missed["status"] == "timed_out"
    assert missed["error"].startswith("join not confirmed within 1 s: the Kubernetes API lists")
    assert "the pending join was withdrawn" in missed["error"]
    joined = statuses[-1]
    assert joined["status"] == "succeeded", joined
    assert joined["result"]["nodes"][-1] == "pi-05"
    details = [s.get("detail") for s in statuses if s["status"] == "running"]
    assert (
        "joining 127.0.0.11:25000/****/2c0cb3284b05 as a worker through a launch configuration"
        in details
    )
    configs = [c[2]["config"] for c in snapd_calls(snap_env.snapd) if c[0] == "PUT"]
    assert [yaml.safe_load(c) for c in configs] == [
        {"version": "0.1.0", "join": {"url": JOIN_URL, "worker": True}},
        {"version": "0.1.0"},  # the unconfirmed join withdrawn
        {"version": "0.1.0", "join": {"url": JOIN_URL, "worker": True}},
    ]
    assert len({c.splitlines()[-1] for c in configs}) == 3  # a fresh nonce each time


async def test_no_backend_rejects_with_what_was_probed(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    missing = tmp_path / "no-snapd.socket"
    config = agent_config(
        tmp_path,
        broker,
        node={"name": "pi-01", "cluster": "lab"},
        microk8s={"backend": "auto", "snapd_socket": str(missing), "cli": "no-microk8s-here"},
        commands={"allow_unsigned": True},
    )
    spawn_agent(config)
    async with watch(broker, "microk8s/#") as watcher:
        await watcher.wait_for(lambda t, p: t == f"{root('pi-01')}/health", timeout_s=20)
        final = (
            await command(watcher, "pi-01", "addon", {"name": "dns", "action": "enable"}, "n-1")
        )[-1]
    assert final["status"] == "rejected"
    assert final["error"] == (
        f"no MicroK8s backend available: snapd at {missing} unreachable: "
        "no such file or directory; no 'no-microk8s-here' executable on PATH"
    )
