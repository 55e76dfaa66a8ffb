"""The detectors in running agents: a lab node whose every detector has a reading, and the peer
clock offset between agents whose wall clocks differ (libfaketime)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests import node_fakes
from tests.conftest import AgentProcess, Broker, agent_config, watch
from tests.fakes.fixtures import SnapEnv
from tests.faults.faultkit import FakeClock, libfaketime

pytestmark = pytest.mark.broker

Spawn = Callable[..., AgentProcess]
HEALTH = "microk8s/lab/nodes/{}/health"
BLOCKS = ("certs", "clock", "microk8s_processes", "storage", "eviction", "readiness")


def fake_node(root: Path) -> dict[str, dict[str, Any]]:
    """A MicroK8s node's files under `root`, and the config sections that point at them."""
    certs = node_fakes.certs_dir(root / "certs", {"ca": 3650, "server": 365})
    node_fakes.certs_dir(certs, {"front-proxy-client": 5})
    kubelet_dir = root / "kubelet"
    kubelet_dir.mkdir()
    args = node_fakes.KUBELET_ARGS.read_text()
    args = args.replace("${SNAP_DATA}/certs", str(certs))
    args = args.replace("${SNAP_COMMON}/var/lib/kubelet", str(kubelet_dir))
    (root / "kubelet.args").write_text(args)
    proc = root / "proc"
    for pid, name in ((4100, "k8s-dqlite"), (4200, "kubelite"), (4300, "containerd")):
        node_fakes.proc_entry(proc, pid, name, start=pid, cpu=500, rss_pages=20000)
    node_fakes.wear(root / "sysfs", "mmcblk0", "0x02 0x01", "0x01")
    backend = root / "backend"
    backend.mkdir()
    return {
        "health": {
            "detectors_enabled": True,
            "detectors_interval_s": 1.0,
            "proc_root": str(proc),
            "sysfs_root": str(root / "sysfs"),
            "not_ready_warn_s": 2.0,
            "clock_window_s": 20.0,
        },
        "microk8s": {
            "certs_dir": str(certs),
            "kubelet_args": str(root / "kubelet.args"),
            "kubelet_dir": str(kubelet_dir),
            "containerd_dir": str(root),
            "backend_dir": str(backend),  # on the state dir's filesystem: fsync is timed there
        },
    }


def spawn_node(
    where: Path, broker: Broker, spawn: Spawn, name: str, env: dict[str, str] | None = None,
    **sections: dict[str, Any],
) -> AgentProcess:  # fmt: skip
    where.mkdir(parents=True)
    sections["node"] = {"name": name, "cluster": "lab"}
    config = agent_config(where, broker, http_port=None, **sections)
    return spawn(config, env=env)


def kubelite_restarts(payload: Any) -> int | None:
    kubelite = (payload.get("microk8s_processes") or {}).get("kubelite") or {}
    return kubelite.get("restarts")


def restarted(times: int) -> Callable[[str, Any], bool]:
    return lambda t, p: t == HEALTH.format("pi-01") and kubelite_restarts(p) == times


def has_offset(payload: Any) -> bool:
    return (
        isinstance(payload, dict) and (payload.get("clock") or {}).get("peer_offset_s") is not None
    )


async def test_a_lab_node_reports_every_detector_and_a_shifted_peer(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn, snap_env: SnapEnv
) -> None:
    library = libfaketime()
    if library is None:
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    sections = fake_node(tmp_path / "node")
    sections["microk8s"] = snap_env.section(**sections["microk8s"])
    async with watch(broker, "microk8s/lab/nodes/+/health") as w:
        spawn_node(tmp_path / "pi-01", broker, spawn_agent, "pi-01", **sections)
        clock = FakeClock(tmp_path, library)
        clock.set("+5")
        detectors = {"detectors_enabled": True, "detectors_interval_s": 1.0}
        spawn_node(tmp_path / "pi-02", broker, spawn_agent, "pi-02", clock.env(), health=detectors)

        _, health = await w.wait_for(
            lambda t, p: t == HEALTH.format("pi-01") and has_offset(p)
            and all(p.get(b) is not None for b in BLOCKS),
            timeout_s=40,
        )  # fmt: skip
        assert health["certs"] == {
            "status": "critical", "earliest": "front-proxy-client.crt", "days": 5.0, "count": 3,
            "reasons": ["certificate front-proxy-client.crt expires in 5.0 days (<= 7)"],
        }  # fmt: skip
        assert "certificate front-proxy-client.crt expires in 5.0 days (<= 7)" in health["reasons"]
        assert health["status"] == "critical"
        assert health["clock"]["peer_offset_s"] == pytest.approx(-5, abs=1)
        assert health["clock"]["peers"] == 1
        processes = health["microk8s_processes"]
        assert processes["kubelite"]["rss_bytes"] > 0
        assert processes["status"] == "ok"
        assert "reasons" not in processes
        assert health["storage"]["fsync_samples"] == 1
        assert health["storage"]["wear"] == {"device": "mmcblk0", "life_time": 2, "pre_eol": 1}
        assert health["eviction"]["nodefs"]["free_pct"] > 0
        assert health["readiness"]["status"] == "ok"

        _, shifted = await w.wait_for(lambda t, p: t == HEALTH.format("pi-02") and has_offset(p))
        assert shifted["clock"]["peer_offset_s"] == pytest.approx(5, abs=1)
        assert shifted["certs"] is None  # no MicroK8s there: unknown, not invented

        # kubelite dies and comes back three times: a crash loop.
        proc = Path(sections["health"]["proc_root"])
        pid = 4200
        for restarts in (1, 2, 3):
            node_fakes.gone(proc, pid)
            pid = 5000 + restarts
            node_fakes.proc_entry(proc, pid, "kubelite", start=pid)
            _, health = await w.wait_for(restarted(restarts), timeout_s=20)
        assert "kubelite restarted 3 times in 10 min (crash loop)" in health["reasons"]
        assert health["microk8s_processes"]["status"] == "critical"

        # NotReady while pi-02 and the broker are heard: stuck.
        for condition in snap_env.kube.node("pi-01")["status"]["conditions"]:
            if condition["type"] == "Ready":
                condition["status"] = "False"
        _, stuck = await w.wait_for(
            lambda t, p: t == HEALTH.format("pi-01") and p["readiness"]["status"] == "degraded",
            timeout_s=30,
        )
        reason = next(r for r in stuck["reasons"] if r.startswith("node NotReady for "))
        assert reason.endswith("while the broker and 1 peers are reachable (restart kubelite)")
