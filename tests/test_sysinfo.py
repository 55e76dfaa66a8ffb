from __future__ import annotations

import shutil
import time
from collections import namedtuple
from pathlib import Path

from agent.health import pi, sysinfo, verdict

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pi"

Counters = namedtuple("Counters", "bytes_recv bytes_sent")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def test_collect_returns_the_protocol_system_section(tmp_path):
    sysinfo.prime()
    system = sysinfo.collect(["/"], tmp_path)
    assert set(system) == {
        "cpu_percent", "load", "memory", "disks", "temperature_c", "throttled",
        "uptime_s", "net", "model", "memory_cgroup",
    }  # fmt: skip
    assert _is_number(system["cpu_percent"])
    assert 0 <= system["cpu_percent"] <= 100
    assert len(system["load"]) == 3
    assert all(isinstance(x, float) and x >= 0 for x in system["load"])
    memory = system["memory"]
    assert set(memory) == {"total", "available", "percent"}
    assert memory["total"] > 0
    assert 0 <= memory["available"] <= memory["total"]
    assert 0 <= memory["percent"] <= 100
    assert isinstance(system["uptime_s"], int)
    assert system["uptime_s"] >= 0
    assert set(system["net"]) == {"rx_bytes", "tx_bytes"}
    assert all(isinstance(v, int) and v >= 0 for v in system["net"].values())


def test_collect_reports_existing_disks_and_skips_missing(tmp_path):
    missing = str(tmp_path / "not-mounted")
    system = sysinfo.collect([missing, "/", "/"], tmp_path)
    assert [d["mount"] for d in system["disks"]] == ["/"]
    disk = system["disks"][0]
    assert set(disk) == {"mount", "total", "used", "percent"}
    assert disk["total"] > 0
    assert 0 <= disk["used"] <= disk["total"]
    assert 0 <= disk["percent"] <= 100


def test_collect_with_no_disks(tmp_path):
    assert sysinfo.collect([], tmp_path)["disks"] == []


def test_collect_takes_pi_readings_from_root(tmp_path):
    for name, relative in [
        ("thermal_zone0_temp", pi.TEMPERATURE_FILE),
        ("get_throttled", pi.THROTTLED_FILE),
        ("device-tree-model", pi.MODEL_FILE),
    ]:
        target = tmp_path / relative
        target.parent.mkdir(parents=True)
        shutil.copyfile(FIXTURES / name, target)
    system = sysinfo.collect(["/"], tmp_path)
    assert system["temperature_c"] == 48.3
    assert system["throttled"] == pi.parse_throttled("0x50005")
    assert system["model"] == "Raspberry Pi 4 Model B Rev 1.4"
    assert system["memory_cgroup"] is None


def test_collect_on_a_bare_root_reports_pi_fields_as_null(tmp_path):
    system = sysinfo.collect(["/"], tmp_path)
    assert system["temperature_c"] is None
    assert system["throttled"] is None
    assert system["model"] is None
    assert system["memory_cgroup"] is None


def test_uptime_matches_boot_time(tmp_path):
    import psutil

    expected = time.time() - psutil.boot_time()
    assert abs(sysinfo.collect([], tmp_path)["uptime_s"] - expected) <= 2


def test_net_totals_skip_loopback():
    pernic = {
        "lo": Counters(1_000_000, 1_000_000),
        "eth0": Counters(100, 10),
        "wlan0": Counters(5, 1),
    }
    assert sysinfo.net_totals(pernic) == {"rx_bytes": 105, "tx_bytes": 11}


def test_net_totals_without_interfaces():
    assert sysinfo.net_totals({}) == {"rx_bytes": 0, "tx_bytes": 0}


def test_process_figures_are_positive():
    figures = sysinfo.process_figures()
    assert set(figures) == {"rss_bytes", "cpu_seconds", "open_fds"}
    assert isinstance(figures["rss_bytes"], int)
    assert figures["rss_bytes"] > 1_000_000
    assert isinstance(figures["cpu_seconds"], float)
    assert figures["cpu_seconds"] > 0
    # stdin/stdout/stderr at least
    assert figures["open_fds"] >= 3


def test_process_figures_track_cpu_use():
    before = sysinfo.process_figures()["cpu_seconds"]
    deadline = time.process_time() + 0.1
    while time.process_time() < deadline:
        pass
    assert sysinfo.process_figures()["cpu_seconds"] >= before + 0.05


def test_real_snapshot_fits_the_budget():
    # This machine's own figures, a few mounts and an agent section: under 1.5 KiB.
    sysinfo.prime()
    system = sysinfo.collect(["/", "/tmp", "/var"], Path("/"))
    snapshot = verdict.build_snapshot(
        node="pi-01",
        cluster="default",
        ts=time.time(),
        session=1,
        seq=0,
        system=system,
        microk8s={"installed": False, "running": None, "version": None},
        kube={"node_ready": None},
        agent=sysinfo.process_figures(),
        thresholds=verdict.Thresholds(),
    )
    assert len(verdict.encode(snapshot)) < 1536
