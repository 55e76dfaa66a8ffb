from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from agent.health import pi

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "pi"

# fixture file -> where it lives under a real root
FIXTURE_PATHS = {
    "thermal_zone0_temp": pi.TEMPERATURE_FILE,
    "get_throttled": pi.THROTTLED_FILE,
    "device-tree-model": pi.MODEL_FILE,
}

THROTTLED_0X50005: pi.ThrottledFlags = {
    "raw": "0x50005",
    "under_voltage": True,
    "freq_capped": False,
    "throttled": True,
    "soft_temp_limit": False,
    "under_voltage_occurred": True,
    "freq_capped_occurred": False,
    "throttled_occurred": True,
    "soft_temp_limit_occurred": False,
}


def _fake_root(tmp_path: Path) -> Path:
    for name, relative in FIXTURE_PATHS.items():
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(FIXTURES / name, target)
    return tmp_path


def _write(root: Path, relative: str, content: str | bytes) -> None:
    target = root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        target.write_bytes(content)
    else:
        target.write_text(content)


def test_every_fixture_file_has_a_parser():
    data_files = {p.name for p in FIXTURES.iterdir() if p.name != "README.md"}
    assert data_files == set(FIXTURE_PATHS)


def test_parse_fixture_temperature():
    assert pi.parse_temperature((FIXTURES / "thermal_zone0_temp").read_text()) == 48.3


def test_parse_fixture_throttled():
    assert pi.parse_throttled((FIXTURES / "get_throttled").read_text()) == THROTTLED_0X50005


def test_parse_fixture_model():
    model = pi.parse_model((FIXTURES / "device-tree-model").read_bytes())
    assert model == "Raspberry Pi 4 Model B Rev 1.4"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("48312", 48.3),
        ("48312\n", 48.3),
        ("85000", 85.0),
        ("-5250", -5.2),
        ("0", 0.0),
        ("", None),
        ("hot", None),
        ("48.3", None),
    ],
)
def test_parse_temperature(text, expected):
    assert pi.parse_temperature(text) == expected


@pytest.mark.parametrize(
    ("text", "raw", "set_flags"),
    [
        ("0x0", "0x0", set()),
        ("0", "0x0", set()),
        (
            "0x50000",
            "0x50000",
            {"under_voltage_occurred", "throttled_occurred"},
        ),
        (
            "0x50005",
            "0x50005",
            {"under_voltage", "throttled", "under_voltage_occurred", "throttled_occurred"},
        ),
        (
            "throttled=0x50005\n",
            "0x50005",
            {"under_voltage", "throttled", "under_voltage_occurred", "throttled_occurred"},
        ),
        # The kernel's sysfs attribute prints bare hex ("%x").
        (
            "50005\n",
            "0x50005",
            {"under_voltage", "throttled", "under_voltage_occurred", "throttled_occurred"},
        ),
        ("0xa", "0xa", {"freq_capped", "soft_temp_limit"}),
        ("0x80008", "0x80008", {"soft_temp_limit", "soft_temp_limit_occurred"}),
        ("0x20000", "0x20000", {"freq_capped_occurred"}),
    ],
)
def test_parse_throttled(text, raw, set_flags):
    flags = pi.parse_throttled(text)
    assert flags is not None
    assert flags["raw"] == raw
    assert set(flags) == set(THROTTLED_0X50005)
    assert {name for name, value in flags.items() if value is True} == set_flags


@pytest.mark.parametrize(
    "text", ["", "garbage", "throttled=", "throttled=zz", "0x", "-0x5", "0x100000000"]
)
def test_parse_throttled_garbage(text):
    assert pi.parse_throttled(text) is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"Raspberry Pi 5 Model B Rev 1.0\x00", "Raspberry Pi 5 Model B Rev 1.0"),
        (b"Raspberry Pi 4 Model B Rev 1.4\x00\n", "Raspberry Pi 4 Model B Rev 1.4"),
        (b"Some Board", "Some Board"),
        (b"\x00", None),
        (b"", None),
    ],
)
def test_parse_model(raw, expected):
    assert pi.parse_model(raw) == expected


PROC_CGROUPS_ON = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t0\t1\t1\nmemory\t0\t39\t1\n"
PROC_CGROUPS_OFF = "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpu\t0\t1\t1\nmemory\t0\t1\t0\n"
PI_FLAGS = "console=tty1 cgroup_enable=memory cgroup_memory=1 rootwait"


@pytest.mark.parametrize(
    ("controllers", "proc_cgroups", "cmdline", "expected"),
    [
        ("cpuset cpu io memory pids\n", None, None, True),
        ("cpuset cpu io memory pids\n", PROC_CGROUPS_OFF, None, True),
        (None, PROC_CGROUPS_ON, None, True),
        (None, PROC_CGROUPS_OFF, PI_FLAGS, False),
        ("cpuset cpu io pids\n", None, None, False),
        ("cpuset cpu io pids\n", PROC_CGROUPS_ON, None, True),
        ("cpuset cpu io pids\n", None, PI_FLAGS, False),
        # The command line only decides when the kernel's own files are unreadable.
        (None, None, PI_FLAGS, True),
        (None, None, "console=tty1 cgroup_disable=memory", False),
        (None, None, "console=tty1", None),
        (None, None, None, None),
        (None, "#subsys_name\thierarchy\tnum_cgroups\tenabled\n", None, None),
    ],
)
def test_memory_cgroup_enabled(controllers, proc_cgroups, cmdline, expected):
    assert pi.memory_cgroup_enabled(controllers, proc_cgroups, cmdline) is expected


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        (PI_FLAGS, True),
        ("cgroup_enable=cpuset,memory cgroup_memory=1", True),
        ("cgroup_enable=memory", False),
        ("cgroup_memory=1", False),
        ("cgroup_enable=memory cgroup_memory=0", False),
        ("cgroup_enable=cpuset cgroup_memory=1", False),
        ("", False),
        (None, False),
    ],
)
def test_cmdline_has_memory_flags(cmdline, expected):
    assert pi.cmdline_has_memory_flags(cmdline) is expected


def test_read_pi_from_fixture_tree(tmp_path):
    root = _fake_root(tmp_path)
    _write(root, pi.CGROUP_CONTROLLERS_FILE, "cpuset cpu io memory pids\n")
    readings = pi.read_pi(root)
    assert readings == pi.PiReadings(
        temperature_c=48.3,
        throttled=THROTTLED_0X50005,
        model="Raspberry Pi 4 Model B Rev 1.4",
        memory_cgroup=True,
    )


def test_read_pi_memory_cgroup_from_v1_table_and_cmdline(tmp_path):
    root = _fake_root(tmp_path)
    _write(root, pi.PROC_CGROUPS_FILE, PROC_CGROUPS_OFF)
    _write(root, pi.CMDLINE_FILE, "console=tty1 rootwait\n")
    assert pi.read_pi(root).memory_cgroup is False


def test_read_pi_empty_root_is_all_none(tmp_path):
    assert pi.read_pi(tmp_path) == pi.PiReadings(None, None, None, None)


def test_read_pi_unreadable_and_garbage_files_are_none(tmp_path):
    # A directory where a file should be makes read fail with an OSError.
    (tmp_path / pi.TEMPERATURE_FILE).mkdir(parents=True)
    _write(tmp_path, pi.THROTTLED_FILE, b"\xff\xfe not text")
    _write(tmp_path, pi.MODEL_FILE, b"\x00")
    _write(tmp_path, pi.PROC_CGROUPS_FILE, b"\xff\xfe")
    assert pi.read_pi(tmp_path) == pi.PiReadings(None, None, None, None)


def test_read_pi_default_root_does_not_raise():
    readings = pi.read_pi()
    assert readings.temperature_c is None or isinstance(readings.temperature_c, float)
    assert readings.memory_cgroup in (True, False, None)
