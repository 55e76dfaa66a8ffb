"""The health detectors: each reading from faked node files, each rule crossed both ways."""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.health import certs, clock, eviction, kubelet_args, processes, storage
from agent.health.readiness import NotReadyWatch
from tests import node_fakes
from tests.paths import REPO

DAY = 86400.0

# -- certificates ------------------------------------------------------------------------------


async def test_the_probe_names_the_certificate_that_expires_first(tmp_path: Path) -> None:
    directory = node_fakes.certs_dir(
        tmp_path / "certs", {"ca": 3650, "server": 365, "front-proxy-client": 5}
    )
    (directory / "broken.crt").write_text("not a certificate")
    flags = kubelet_args.parse(node_fakes.KUBELET_ARGS.read_text())
    kubelet = certs.kubelet_cert(flags, tmp_path)
    assert kubelet == Path("/var/snap/microk8s/current/certs/kubelet.crt")  # --cert-dir

    expiries = await certs.read(directory, [directory / "server.crt"])

    assert sorted(expiries) == ["ca.crt", "front-proxy-client.crt", "server.crt"]
    block, findings = certs.assess(expiries, time.time(), warn_days=30, crit_days=7)
    assert block == {"status": "critical", "earliest": "front-proxy-client.crt", "days": 5.0,
                     "count": 3}  # fmt: skip
    assert findings == [
        ("critical", "certificate front-proxy-client.crt expires in 5.0 days (<= 7)")
    ]


@pytest.mark.parametrize(
    ("days", "status"),
    [(40, "ok"), (30.5, "ok"), (29.9, "degraded"), (7.5, "degraded"), (6.9, "critical"),
     (-2, "critical")],
)  # fmt: skip
def test_certificate_thresholds(days: float, status: str) -> None:
    now = 1_800_000_000.0
    block, findings = certs.assess({"a.crt": now + days * DAY}, now, 30, 7)
    assert block is not None
    assert block["status"] == status
    assert [s for s, _ in findings] == ([] if status == "ok" else [status])


def test_no_certificate_is_unknown() -> None:
    assert certs.assess({}, 0, 30, 7) == (None, [])
    assert certs.assess(None, 0, 30, 7) == (None, [])


# -- clock -------------------------------------------------------------------------------------


def test_the_kernel_clock_is_read() -> None:
    kernel = clock.read_kernel()
    assert kernel is not None
    assert kernel.max_error_us is not None and kernel.max_error_us >= 0


# A child that installs a seccomp filter like snapd's without `time-control` (adjtimex and
# clock_adjtime, which glibc's adjtimex uses, → EPERM; everything else allowed), then reads the
# clock with timesyncd's directory under `root`.
SECCOMP_CHILD = """
import ctypes, json, struct, sys
from pathlib import Path
adjtimex, clock_adjtime = int(sys.argv[1]), int(sys.argv[2])
code = [(0x20, 0, 0, 0), (0x15, 2, 0, adjtimex), (0x15, 1, 0, clock_adjtime),
        (0x06, 0, 0, 0x7FFF0000), (0x06, 0, 0, 0x00050001)]
program = ctypes.create_string_buffer(b"".join(struct.pack("HBBI", *c) for c in code))
class Fprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]
fprog = Fprog(len(code), ctypes.addressof(program))
libc = ctypes.CDLL(None, use_errno=True)
assert libc.prctl(38, 1, 0, 0, 0) == 0  # PR_SET_NO_NEW_PRIVS
# PR_SET_SECCOMP, SECCOMP_MODE_FILTER (every argument given: prctl reads five)
u = ctypes.c_ulong
assert libc.prctl(22, u(2), ctypes.byref(fprog), u(0), u(0)) == 0
assert libc.adjtimex(ctypes.byref(ctypes.create_string_buffer(512))) == -1
assert ctypes.get_errno() == 1  # EPERM, as snapd's profile answers
from agent.health import clock
kernel = clock.read_kernel(Path(sys.argv[3]))
print(json.dumps(None if kernel is None else [kernel.synced, kernel.est_error_us]))
"""
SYSCALLS = {"x86_64": ("159", "305"), "aarch64": ("171", "266")}  # adjtimex, clock_adjtime


@pytest.mark.parametrize(("flag", "expected"), [(True, [True, None]), (False, [False, None])])
def test_under_a_seccomp_denial_the_clock_comes_from_timesyncd(
    tmp_path: Path, flag: bool, expected: list[object]
) -> None:
    machine = platform.machine()
    if machine not in SYSCALLS:
        pytest.skip(f"no adjtimex syscall number for {machine}")
    timesync = tmp_path / "run" / "systemd" / "timesync"
    timesync.mkdir(parents=True)
    if flag:
        (timesync / "synchronized").touch()
    done = subprocess.run(
        [sys.executable, "-c", SECCOMP_CHILD, *SYSCALLS[machine], str(tmp_path)],
        capture_output=True, text=True, timeout=60, cwd=REPO, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == expected
    assert clock.read_timesyncd(tmp_path / "elsewhere") is None  # no timesyncd: unknown


def test_the_peer_offset_is_a_median_over_the_window() -> None:
    offsets = clock.PeerOffsets(window_s=300)
    offsets.record("pi-02", peer_ts=1000.0, local_ts=1003.0, now_mono=0)
    offsets.record("pi-03", peer_ts=1000.0, local_ts=1003.1, now_mono=1)
    assert offsets.median(2) is None  # too few samples
    offsets.record("pi-02", peer_ts=1000.0, local_ts=1090.0, now_mono=2)  # one sat in a queue
    assert offsets.median(3) == pytest.approx(3.1)
    offsets.record("pi-03", peer_ts=1000.0, local_ts=1003.2, now_mono=3)
    assert offsets.median(4) == pytest.approx(3.15)
    assert offsets.peers_seen(4, within_s=60) == 2
    assert offsets.median(400) is None  # all older than the window


@pytest.mark.parametrize(
    ("synced", "offset", "status", "reason"),
    [
        (True, 0.2, "ok", None),
        (True, -1.9, "ok", None),
        (True, 2.5, "degraded", "clock offset +2.5 s against 2 peers (> 2 s)"),
        (True, -75.0, "critical", "clock offset -75.0 s against 2 peers (> 60 s)"),
        (False, 0.1, "degraded", "clock not synchronised (kernel reports no NTP sync)"),
        (True, None, "ok", None),
    ],
)
def test_clock_rules(synced: bool, offset: float | None, status: str, reason: str | None) -> None:
    kernel = clock.KernelClock(synced=synced, est_error_us=1500, max_error_us=30000)
    block, findings = clock.assess(kernel, offset, 2, warn_s=2, crit_s=60)
    assert block is not None
    assert (block["status"], block["synced"], block["est_error_ms"]) == (status, synced, 1.5)
    assert [r for _, r in findings] == ([] if reason is None else [reason])


# -- MicroK8s' processes -----------------------------------------------------------------------

LIMITS = processes.Limits(
    restarts_crit=3,
    restart_window_s=600,
    cpu_warn_percent=90,
    cpu_window_s=300,
    rss_growth_warn_mib_h=100,
)


def test_restarts_make_a_crash_loop_and_it_clears(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    node_fakes.proc_entry(proc, 4100, "k8s-dqlite", start=500, cpu=100)
    node_fakes.proc_entry(proc, 4200, "containerd", start=300, cpu=100)
    node_fakes.proc_entry(proc, 4300, "containerd-shim", start=900)  # not containerd
    node_fakes.proc_entry(proc, 4201, "containerd", start=990)  # a child; the daemon is older
    tracker = processes.ProcessTracker(LIMITS)
    now = 0.0
    for start in (1000, 1100, 1200):  # kubelite comes back with a new start time, 3 times
        node_fakes.proc_entry(proc, 5000 + start, "kubelite", start=start)
        tracker.update(processes.scan(proc), now)
        node_fakes.gone(proc, 5000 + start)
        now += 60
    node_fakes.proc_entry(proc, 6300, "kubelite", start=1300)
    tracker.update(processes.scan(proc), now)
    block, findings = tracker.assess(now)
    assert block is not None
    assert block["status"] == "critical"
    assert block["kubelite"]["restarts"] == 3
    assert block["containerd"]["rss_bytes"] == 1000 * processes.PAGE_BYTES
    assert block["k8s-dqlite"]["restarts"] == 0
    assert findings == [("critical", "kubelite restarted 3 times in 10 min (crash loop)")]
    # Ten quiet minutes later the restarts have left the window.
    tracker.update(processes.scan(proc), now + 600)
    block, findings = tracker.assess(now + 600)
    assert (block or {})["status"] == "ok"
    assert findings == []


def test_sustained_cpu_and_rss_growth_and_back(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    tracker = processes.ProcessTracker(LIMITS)
    ticks = processes.CLOCK_TICKS
    for minute in range(11):  # 95 % of a core, RSS +20 MiB a minute
        rss_pages = (100 + 20 * minute) * (1 << 20) // processes.PAGE_BYTES
        node_fakes.proc_entry(
            proc, 4100, "k8s-dqlite", start=500, cpu=int(0.95 * ticks * 60 * minute),
            rss_pages=rss_pages,
        )  # fmt: skip
        tracker.update(processes.scan(proc), minute * 60.0)
    block, findings = tracker.assess(600)
    assert (block or {})["status"] == "degraded"
    assert [r for _, r in findings] == [
        "k8s-dqlite CPU 95% over 5 min",
        "k8s-dqlite RSS growing 1200 MiB/h",
    ]
    assert block is not None and block["kubelite"] is None
    for minute in range(11, 30):  # idle and flat again
        node_fakes.proc_entry(proc, 4100, "k8s-dqlite", start=500, cpu=int(0.95 * ticks * 600),
                              rss_pages=320 * (1 << 20) // processes.PAGE_BYTES)  # fmt: skip
        tracker.update(processes.scan(proc), minute * 60.0 + 3600)
    block, findings = tracker.assess(29 * 60 + 3600)
    assert ((block or {})["status"], findings) == ("ok", [])


def test_known_pids_spare_the_walk_until_one_is_lost(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    node_fakes.proc_entry(proc, 4200, "kubelite", start=100)
    tracker = processes.ProcessTracker(LIMITS)
    tracker.update(processes.scan(proc), 0)
    assert tracker.known() == {"kubelite": 4200}
    node_fakes.proc_entry(proc, 4300, "containerd", start=200)
    quick = processes.scan(proc, known=tracker.known(), walk=False)
    assert quick["kubelite"] is not None and quick["containerd"] is None  # /proc not walked
    node_fakes.gone(proc, 4200)
    node_fakes.proc_entry(proc, 4201, "kubelite", start=300)
    found = processes.scan(proc, known=tracker.known(), walk=False)  # the known pid is gone
    assert (found["kubelite"] or processes.ProcReading(0, 0, 0, 0)).pid == 4201
    tracker.update({"kubelite": None}, 60)
    assert tracker.lost()  # seen before, missing now: the caller walks to catch it coming back


def test_no_microk8s_process_is_unknown(tmp_path: Path) -> None:
    tracker = processes.ProcessTracker(LIMITS)
    tracker.update(processes.scan(tmp_path / "no-proc"), 0)
    assert tracker.assess(0) == (None, [])


# -- storage -----------------------------------------------------------------------------------


def test_fsync_is_timed_in_the_state_dir_when_dqlite_shares_its_filesystem(tmp_path: Path) -> None:
    backend = tmp_path / "backend"
    backend.mkdir()
    assert storage.probe_dir(tmp_path, backend, "") == tmp_path
    assert storage.probe_dir(tmp_path, tmp_path / "absent", "") is None
    assert storage.probe_dir(tmp_path, tmp_path / "absent", "/var/x") == Path("/var/x")
    assert storage.time_fsync(tmp_path) >= 0


@pytest.mark.parametrize(
    ("p99", "status"), [(20, "ok"), (99.9, "ok"), (100, "degraded"), (1500, "critical")]
)
def test_fsync_thresholds(p99: float, status: str) -> None:
    window = storage.FsyncWindow(3600)
    for ms in [5.0] * 98 + [p99] * 2:  # nearest rank: p99 of 100 is the 99th
        window.add(ms, 0)
    p50, worst_p99, samples = window.percentiles(10) or (0, 0, 0)
    assert (p50, worst_p99, samples) == (5.0, max(5.0, p99), 100)
    block, findings = storage.assess((p50, worst_p99, samples), None, storage.Limits(100, 1000))
    assert (block or {})["status"] == status
    assert len(findings) == (status != "ok")
    assert window.percentiles(4000) is None  # the window moved on


@pytest.mark.parametrize(
    ("life", "pre_eol", "status", "reason"),
    [
        ("0x01 0x02", "0x01", "ok", None),
        ("0x09 0x02", "0x01", "degraded", "mmcblk0 wear 80%+ of rated life (pre_eol 1)"),
        ("0x03 0x03", "0x02", "degraded", "mmcblk0 wear 20%+ of rated life (pre_eol 2)"),
        ("0x0b 0x05", "0x01", "critical", "mmcblk0 worn out (life_time 0x0b, pre_eol 1)"),
        ("0x04 0x04", "0x03", "critical", "mmcblk0 worn out (life_time 0x04, pre_eol 3)"),
    ],
)
def test_wear_from_sysfs(
    tmp_path: Path, life: str, pre_eol: str, status: str, reason: str | None
) -> None:
    node_fakes.wear(tmp_path, "mmcblk0", life, pre_eol)
    node_fakes.wear(tmp_path, "mmcblk1", "0x01 0x01", "0x01")
    wear = storage.read_wear(tmp_path)
    assert wear is not None and wear["device"] == "mmcblk0"
    block, findings = storage.assess(None, wear, storage.Limits(100, 1000))
    assert (block or {})["status"] == status
    assert [r for _, r in findings] == ([] if reason is None else [reason])


def test_no_wear_attributes_is_unknown(tmp_path: Path) -> None:
    assert storage.read_wear(tmp_path) is None
    assert storage.assess(None, None, storage.Limits(100, 1000)) == (None, [])


# -- kubelet headroom --------------------------------------------------------------------------

GIB = 1 << 30


def test_thresholds_come_from_microk8s_args_else_the_kubelet_defaults() -> None:
    flags = kubelet_args.parse(node_fakes.KUBELET_ARGS.read_text())
    assert flags["root-dir"] == "/var/snap/microk8s/common/var/lib/kubelet"
    rules = eviction.thresholds(flags)
    assert sorted(rules) == ["imagefs.available", "memory.available", "nodefs.available"]
    assert rules["nodefs.available"].limit(100 * GIB) == GIB
    defaults = eviction.thresholds({})
    assert defaults["nodefs.available"].limit(100 * GIB) == 10 * GIB
    assert defaults["nodefs.inodesFree"].text == "5%"
    assert eviction.parse_hard("bogus,nodefs.available<x,memory.available<1G") == {
        "memory.available": eviction.Threshold("1G", amount=1e9)
    }


@pytest.mark.parametrize(
    ("free_gib", "inodes_free", "status", "reason"),
    [
        (20.0, 500_000, "ok", None),
        (6.5, 500_000, "ok", None),  # 1Gi + 5 % of 100Gi = 6Gi
        (5.5, 500_000, "degraded", "nodefs.available 5.5% free, near eviction threshold 1Gi"),
        (0.5, 500_000, "critical",
         "nodefs.available 0.5% free, below eviction threshold 1Gi: kubelet evicting"),
        (20.0, 90_000, "degraded", "nodefs.inodesFree 9.0% free, near eviction threshold 5%"),
        (20.0, 40_000, "critical",
         "nodefs.inodesFree 4.0% free, below eviction threshold 5%: kubelet evicting"),
    ],
)  # fmt: skip
def test_eviction_headroom(
    free_gib: float, inodes_free: int, status: str, reason: str | None
) -> None:
    rules = eviction.thresholds({"eviction-hard": "nodefs.available<1Gi,nodefs.inodesFree<5%"})
    space = eviction.Space(int(free_gib * GIB), 100 * GIB, inodes_free, 1_000_000)
    block, findings = eviction.assess({"nodefs": space, "imagefs": None}, None, rules, 5)
    assert block is not None and block["status"] == status
    assert block["imagefs"] is None
    assert [r for _, r in findings] == ([] if reason is None else [reason])


def test_memory_headroom_and_a_real_filesystem(tmp_path: Path) -> None:
    rules = eviction.thresholds({})
    space = eviction.statvfs(tmp_path)
    assert space is not None and space.total > 0
    memory = {"total": 4 * GIB, "available": 50 * (1 << 20), "percent": 98.8}
    _, findings = eviction.assess({"nodefs": space}, memory, rules, 0)
    assert findings[-1][0] == "critical"
    assert findings[-1][1].startswith("memory.available 1.2% free, below eviction threshold 100Mi")
    assert eviction.assess({"nodefs": None}, memory, rules, 0) == (None, [])


# -- stuck NotReady ----------------------------------------------------------------------------


def test_not_ready_is_stuck_only_while_the_network_is_fine() -> None:
    watch = NotReadyWatch(warn_s=300)
    assert watch.assess(None, True, 2, 0) == (None, [])
    assert watch.assess(False, True, 2, 0)[1] == []
    block, findings = watch.assess(False, True, 2, 301)
    assert block == {"status": "degraded", "not_ready_s": 301, "peers": 2}
    assert findings == [("degraded", "node NotReady for 301 s while the broker and 2 peers are "
                                     "reachable (restart kubelite)")]  # fmt: skip
    assert watch.assess(False, False, 2, 400)[1] == []  # the broker is gone: the network, then
    assert watch.assess(False, True, 0, 400)[1] == []  # no peer heard: the network, then
    assert watch.assess(True, True, 2, 401) == ({"status": "ok", "not_ready_s": 0, "peers": 2}, [])
    assert watch.assess(False, True, 2, 402)[1] == []  # the count starts again


def test_each_detector_has_a_metric() -> None:
    from prometheus_client import generate_latest

    from agent.health.metrics import Metrics
    from agent.health.state import AgentState

    state = AgentState()
    state.record_health(
        {
            "status": "critical",
            "system": {},
            "microk8s": {},
            "certs": {"status": "critical", "earliest": "a.crt", "days": 5.0, "count": 1},
            "clock": {"status": "ok", "synced": True, "peer_offset_s": -0.25, "peers": 2},
            "microk8s_processes": {
                "status": "critical",
                "kubelite": {"restarts": 3, "rss_bytes": 1000, "cpu_percent": 2.0},
                "k8s-dqlite": None,
            },
            "storage": {"status": "degraded", "fsync_p99_ms": 120.0},
            "eviction": {"status": "ok", "nodefs": {"free_pct": 42.5}},
            "readiness": None,
        },
        0.01,
        time.monotonic(),
    )
    text = generate_latest(Metrics(state).registry).decode()
    for line in (
        'edge_agent_detector_status{detector="certs"} 2.0',
        'edge_agent_detector_status{detector="storage"} 1.0',
        'edge_agent_detector_status{detector="eviction"} 0.0',
        "edge_agent_cert_expiry_days 5.0",
        "edge_agent_clock_peer_offset_seconds -0.25",
        "edge_agent_clock_synced 1.0",
        'edge_agent_microk8s_process_restarts{process="kubelite"} 3.0',
        'edge_agent_microk8s_process_rss_bytes{process="kubelite"} 1000.0',
        "edge_agent_fsync_p99_ms 120.0",
        "edge_agent_nodefs_free_percent 42.5",
    ):
        assert line in text.splitlines(), line
    assert 'detector="readiness"' not in text
    assert "edge_agent_not_ready_seconds" not in text


def test_findings_join_the_message_and_blocks_are_kept_as_they_are() -> None:
    from agent.health import verdict

    blocks = dict.fromkeys(verdict.DETECTOR_BLOCKS)
    blocks["storage"] = {"status": "degraded", "fsync_p99_ms": 150.0}
    finding = ("degraded", "fsync p99 150 ms >= 100 ms")
    snapshot = verdict.build_snapshot(
        node="pi-01", cluster="lab", ts=1.0, session=1, seq=0, system={},
        microk8s={"installed": False}, kube={}, thresholds=verdict.Thresholds(),
        detectors=(blocks, [finding]),
    )  # fmt: skip
    assert (snapshot["status"], snapshot["reasons"]) == ("degraded", [finding[1]])
    assert snapshot["storage"] == blocks["storage"]
    assert snapshot["certs"] is None  # unknown stays null in the message


def test_the_retained_replay_of_a_peer_health_is_not_a_sample() -> None:
    from agent.health.detectors import Detectors
    from agent.link.mqtt import Inbound
    from agent.settings import Settings

    detectors = Detectors(Settings())

    def arrive(node: str, ts: float, session: int) -> None:
        payload = json.dumps({"ts": ts}).encode()
        topic = f"microk8s/lab/nodes/{node}/health"
        detectors.on_peer_health(node, Inbound(topic, payload, 0, True), "pi-01", session)

    arrive("pi-02", 0.0, session=1)  # the replay at subscription: hours old, must not count
    arrive("pi-01", 0.0, session=1)  # our own
    for _ in range(3):
        arrive("pi-02", time.time() - 0.5, session=1)
    median = detectors._peers.median(time.monotonic())
    assert median == pytest.approx(0.5, abs=0.2)
    arrive("pi-02", 0.0, session=2)  # reconnected: the replay again
    assert detectors._peers.median(time.monotonic()) == pytest.approx(0.5, abs=0.2)
