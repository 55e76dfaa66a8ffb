from __future__ import annotations

import json
from typing import Any

import pytest

from agent import config
from agent.health import pi, verdict

T = verdict.Thresholds()
INSTALLED_RUNNING = {"installed": True, "running": True}


def _system(**overrides: Any) -> dict[str, Any]:
    system: dict[str, Any] = {
        "cpu_percent": 12.5,
        "load": [0.31, 0.22, 0.18],
        "memory": {"total": 8_200_000_000, "available": 6_100_000_000, "percent": 25.6},
        "disks": [{"mount": "/", "total": 62_000_000_000, "used": 11_000_000_000, "percent": 17.7}],
        "temperature_c": 48.3,
        "throttled": pi.parse_throttled("0x0"),
        "uptime_s": 123456,
        "net": {"rx_bytes": 1, "tx_bytes": 2},
        "model": "Raspberry Pi 4 Model B Rev 1.4",
        "memory_cgroup": True,
    }
    system.update(overrides)
    return system


def _disk(mount: str, percent: float) -> dict[str, Any]:
    return {"mount": mount, "total": 100, "used": int(percent), "percent": percent}


def test_healthy_node_is_ok_without_reasons():
    assert verdict.evaluate(_system(), INSTALLED_RUNNING, T) == ("ok", [])


@pytest.mark.parametrize(
    ("overrides", "status", "reasons"),
    [
        ({"temperature_c": 74.9}, "ok", []),
        ({"temperature_c": 75.0}, "degraded", ["temperature 75.0 C >= 75.0 C"]),
        ({"temperature_c": 82.1}, "degraded", ["temperature 82.1 C >= 75.0 C"]),
        ({"temperature_c": 85}, "critical", ["temperature 85.0 C >= 85.0 C"]),
        ({"disks": [_disk("/", 84.9)]}, "ok", []),
        ({"disks": [_disk("/", 85.0)]}, "degraded", ["disk / 85.0% used >= 85.0%"]),
        ({"disks": [_disk("/", 95.0)]}, "critical", ["disk / 95.0% used >= 95.0%"]),
        ({"disks": [_disk("/", 96.0)]}, "critical", ["disk / 96.0% used >= 95.0%"]),
        ({"memory": {"percent": 89.9}}, "ok", []),
        ({"memory": {"percent": 90.0}}, "degraded", ["memory 90.0% used >= 90.0%"]),
        ({"memory": {"percent": 91.2}}, "degraded", ["memory 91.2% used >= 90.0%"]),
        ({"memory": {"percent": 97.0}}, "critical", ["memory 97.0% used >= 97.0%"]),
    ],
)
def test_threshold_boundaries(overrides, status, reasons):
    assert verdict.evaluate(_system(**overrides), INSTALLED_RUNNING, T) == (status, reasons)


@pytest.mark.parametrize(
    ("raw", "status", "reasons"),
    [
        ("0x0", "ok", []),
        (
            "0x50000",
            "degraded",
            [
                "under-voltage has occurred since boot (throttled=0x50000)",
                "throttling has occurred since boot",
            ],
        ),
        ("0x50005", "critical", ["under-voltage now (throttled=0x50005)", "throttled now"]),
        ("0x4", "critical", ["throttled now (throttled=0x4)"]),
        ("0x2", "degraded", ["frequency capped now (throttled=0x2)"]),
        ("0x8", "degraded", ["soft temperature limit active now (throttled=0x8)"]),
        (
            "0x80001",
            "critical",
            [
                "under-voltage now (throttled=0x80001)",
                "soft temperature limit has occurred since boot",
            ],
        ),
    ],
)
def test_throttling(raw, status, reasons):
    system = _system(throttled=pi.parse_throttled(raw))
    assert verdict.evaluate(system, INSTALLED_RUNNING, T) == (status, reasons)


@pytest.mark.parametrize(
    ("memory_cgroup", "microk8s", "status", "reasons"),
    [
        (False, INSTALLED_RUNNING, "degraded", [verdict.MEMORY_CGROUP_HINT]),
        (False, {"installed": False, "running": None}, "ok", []),
        (None, INSTALLED_RUNNING, "ok", []),
        (True, {"installed": True, "running": False}, "critical", [verdict.NOT_RUNNING]),
        (True, {"installed": True, "running": None}, "ok", []),
        (True, {"installed": False, "running": False}, "ok", []),
        (
            False,
            {"installed": True, "running": False},
            "critical",
            [verdict.NOT_RUNNING, verdict.MEMORY_CGROUP_HINT],
        ),
        (True, {}, "ok", []),
    ],
)
def test_microk8s_rules(memory_cgroup, microk8s, status, reasons):
    system = _system(memory_cgroup=memory_cgroup)
    assert verdict.evaluate(system, microk8s, T) == (status, reasons)


def test_memory_cgroup_hint_names_the_kernel_flags():
    assert "cgroup_enable=memory cgroup_memory=1" in verdict.MEMORY_CGROUP_HINT


def test_worst_finding_wins_and_every_reason_is_kept():
    system = _system(
        temperature_c=80.0,
        disks=[_disk("/", 50.0), _disk("/var/snap", 96.0), _disk("/boot", 86.0)],
        memory={"percent": 91.2},
    )
    status, reasons = verdict.evaluate(system, INSTALLED_RUNNING, T)
    assert status == "critical"
    assert reasons == [
        "temperature 80.0 C >= 75.0 C",
        "disk /var/snap 96.0% used >= 95.0%",
        "disk /boot 86.0% used >= 85.0%",
        "memory 91.2% used >= 90.0%",
    ]


@pytest.mark.parametrize(
    "system",
    [
        {},
        _system(temperature_c=None, throttled=None, memory_cgroup=None, disks=[], memory=None),
        _system(disks=None, memory={"percent": None}),
        _system(disks=[{"mount": "/", "percent": None}, "not a disk"]),
        # A wrong type is as unknown as a null; a bool must not read as a number.
        _system(temperature_c="hot", memory={"percent": True}, throttled="0x50005"),
    ],
)
def test_unknown_values_never_produce_a_reason(system):
    assert verdict.evaluate(system, {"installed": True, "running": None}, T) == ("ok", [])


def test_thresholds_are_configurable():
    strict = verdict.Thresholds(temperature_warn_c=40, temperature_crit_c=45)
    assert verdict.evaluate(_system(), INSTALLED_RUNNING, strict) == (
        "critical",
        ["temperature 48.3 C >= 45.0 C"],
    )


def test_thresholds_from_settings():
    settings = config.HealthSettings(
        temperature_warn_c=70,
        temperature_crit_c=80,
        disk_warn_percent=80,
        disk_crit_percent=90,
        memory_warn_percent=85,
        memory_crit_percent=95,
    )
    assert verdict.Thresholds.from_settings(settings) == verdict.Thresholds(70, 80, 80, 90, 85, 95)


def test_default_thresholds_match_config_defaults():
    assert verdict.Thresholds.from_settings(config.HealthSettings()) == verdict.Thresholds()


MICROK8S = {
    "installed": True,
    "running": True,
    "version": "v1.32.3",
    "channel": "1.32-strict/stable",
    "ha": True,
    "addons": [
        "dns",
        "ha-cluster",
        "helm",
        "helm3",
        "hostpath-storage",
        "metallb",
        "metrics-server",
    ],
}
KUBE = {"node_ready": True, "nodes_ready": 3, "nodes_total": 3}
AGENT = {"rss_bytes": 48_123_904, "cpu_seconds": 1234.56, "open_fds": 23}


def _snapshot(**overrides: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "node": "pi-01",
        "cluster": "default",
        "ts": 1764160000.123456,
        "session": 7,
        "seq": 42,
        "system": _system(),
        "microk8s": MICROK8S,
        "kube": KUBE,
        "agent": AGENT,
        "thresholds": T,
    }
    kwargs.update(overrides)
    return verdict.build_snapshot(**kwargs)


def test_build_snapshot_has_every_required_field():
    snapshot = _snapshot(system=_system(temperature_c=82.1))
    assert snapshot["schema"] == 1
    assert (snapshot["node"], snapshot["cluster"]) == ("pi-01", "default")
    assert snapshot["ts"] == 1764160000.12
    assert (snapshot["session"], snapshot["seq"]) == (7, 42)
    assert snapshot["status"] == "degraded"
    assert snapshot["reasons"] == ["temperature 82.1 C >= 75.0 C"]
    required_system = {
        "cpu_percent", "load", "memory", "disks", "temperature_c", "throttled", "uptime_s", "net"
    }  # fmt: skip
    assert required_system <= set(snapshot["system"])
    assert snapshot["microk8s"] == MICROK8S
    assert snapshot["kube"] == KUBE
    assert snapshot["agent"] == AGENT


def test_build_snapshot_without_agent_has_no_agent_key():
    assert "agent" not in _snapshot(agent=None)


def test_encode_is_compact_utf8_json():
    snapshot = _snapshot(node="pi-01", kube={"note": "température"})
    data = verdict.encode(snapshot)
    assert b", " not in data
    assert b": " not in data
    assert "température".encode() in data
    assert json.loads(data) == snapshot


def test_encode_refuses_nan():
    with pytest.raises(ValueError, match="JSON"):
        verdict.encode({"x": float("nan")})


def test_realistic_worst_case_snapshot_fits_the_budget():
    # Two disks, nine reasons firing, a long addon list: 1424 bytes today, under 1.5 KiB.
    system = _system(
        temperature_c=86.4,
        throttled=pi.parse_throttled("0x5000f"),
        memory={"total": 8_200_000_000, "available": 100_000_000, "percent": 98.8},
        disks=[
            {"mount": "/", "total": 62_000_000_000, "used": 61_000_000_000, "percent": 98.4},
            {"mount": "/boot/firmware", "total": 535_805_952, "used": 66_000_000, "percent": 12.3},
        ],
        memory_cgroup=False,
        uptime_s=31_536_000,
        net={"rx_bytes": 123_456_789_012, "tx_bytes": 98_765_432_109},
    )
    snapshot = _snapshot(
        system=system,
        microk8s={**MICROK8S, "running": False},
        seq=1_000_000,
        session=1_000,
    )
    data = verdict.encode(snapshot)
    assert snapshot["status"] == "critical"
    assert len(snapshot["reasons"]) == 9
    assert len(data) < 1536, len(data)
