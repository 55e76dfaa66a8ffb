"""`snap set` → configure hook → $SNAP_DATA/agent.toml, against a fake snapctl (no snapd here).

The hook under test is the real snap/hooks/configure running the real `edge-agent snap-configure`;
tests/snapenv.py plays snapd (store the options, run the hook, roll back when it fails).
"""

from __future__ import annotations

import subprocess
import tomllib
from pathlib import Path

import pytest

from agent import config
from agent.platform import snap_configure, snap_paths
from tests.snapenv import NAME, FakeSnap

SERVICE = f"{NAME}.daemon"
COMMON = "/var/snap/microk8s-edge-agent/common"


@pytest.fixture
def snap(tmp_path: Path) -> FakeSnap:
    return FakeSnap(tmp_path)


# -- pure mapping --------------------------------------------------------------------------


def test_options_map_onto_toml_keys() -> None:
    sections, problems = snap_configure.to_sections(
        {
            "mqtt": {"host": "broker.lan", "port": 8883, "keepalive-s": 15},
            "commands": {"trusted-keys": [f"{COMMON}/keys/ops-1.pub"]},
            "mqtt-extra": {},
        },
        COMMON,
    )
    assert problems == []
    assert sections["mqtt"] == {"host": "broker.lan", "port": 8883, "keepalive_s": 15}
    assert sections["commands"] == {"trusted_keys": [f"{COMMON}/keys/ops-1.pub"]}
    assert snap_configure.option_name("mqtt", "password_file") == "mqtt.password-file"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"mqtt": {"password": "hunter2-secret"}}, "set mqtt.password-file to that path"),
        ({"mqtt": {"key": "hunter2-secret"}}, "set mqtt.key-file to that path"),
        ({"mqtt": {"password-file": "/etc/hunter2-secret"}}, f"a file under {COMMON}"),
        ({"mqtt": {"key-file": f"{COMMON}/../hunter2-secret"}}, f"a file under {COMMON}"),
        ({"mqtt": {"key-file": "hunter2-secret"}}, f"a file under {COMMON}"),
        (
            {"mqtt": {"ca-file": "-----BEGIN PRIVATE KEY-----hunter2-secret"}},
            "looks like a private key",
        ),
    ],
)
def test_secrets_are_refused_without_being_echoed(options: dict[str, object], needle: str) -> None:
    sections, problems = snap_configure.to_sections(options, COMMON)
    assert len(problems) == 1
    assert needle in problems[0]
    assert "hunter2" not in problems[0]
    assert sections == {}


def test_secret_files_under_snap_common_are_accepted() -> None:
    sections, problems = snap_configure.to_sections(
        {"mqtt": {"password-file": f"{COMMON}/mqtt-password"}}, COMMON
    )
    assert problems == []
    assert sections == {"mqtt": {"password_file": f"{COMMON}/mqtt-password"}}


def test_a_group_where_a_value_belongs_is_refused() -> None:
    _, problems = snap_configure.to_sections(
        {"mqtt": {"host": {"name": "x"}}, "node": "pi"}, COMMON
    )
    assert any("mqtt.host: expected a single value" in p for p in problems)
    assert any(p.startswith("node: expected a group of options") for p in problems)


def test_the_daemon_runs_only_once_a_broker_is_set() -> None:
    assert snap_configure.service_commands({"mqtt": {"host": "b"}}, NAME) == [
        ["snapctl", "start", "--enable", SERVICE],
        ["snapctl", "restart", SERVICE],
    ]
    assert snap_configure.service_commands({"node": {"name": "pi-01"}}, NAME) == [
        ["snapctl", "stop", "--disable", SERVICE]
    ]


# -- the hook, end to end ----------------------------------------------------------------------


def test_good_options_write_agent_toml_and_restart(snap: FakeSnap) -> None:
    result = snap.snap_set(
        "mqtt.host=broker.lan", "mqtt.port=8883", "node.name=pi-01", "health.interval-s=2.5"
    )
    assert result.returncode == 0, result.stderr
    settings = config.load(snap.config_file, {})
    assert (settings.mqtt.host, settings.mqtt.port) == ("broker.lan", 8883)
    assert settings.node.name == "pi-01"
    assert settings.health.interval_s == 2.5
    assert snap.service_log() == [["start", "--enable", SERVICE], ["restart", SERVICE]]


def test_without_a_broker_the_daemon_stays_disabled(snap: FakeSnap) -> None:
    result = snap.snap_set("node.name=pi-01")
    assert result.returncode == 0, result.stderr
    assert tomllib.loads(snap.config_file.read_text()) == {"node": {"name": "pi-01"}}
    assert snap.service_log() == [["stop", "--disable", SERVICE]]


@pytest.mark.parametrize(
    ("assignment", "needle"),
    [
        ("mqtt.port=99999", "mqtt.port: 99999 is out of range [1, 65535]"),
        ("mqtt.protocol=4", "mqtt.protocol: 4 is not one of 5, 3"),
        ("mqtt.pasword-file=x", "mqtt.pasword_file: unknown key"),
        ("node.name=Pi_01", "node.name: 'Pi_01' must be lowercase"),
        ("health.interval-s=fast", "health.interval_s: expected a number"),
        ("mqtt.password=hunter2-secret", "set mqtt.password-file to that path"),
        ("mqtt.password-file=/etc/hunter2-secret", f"a file under {COMMON}"),
    ],
)
def test_bad_options_fail_and_change_nothing(
    snap: FakeSnap, tmp_path: Path, assignment: str, needle: str
) -> None:
    assert snap.snap_set("mqtt.host=broker.lan", "node.name=pi-01").returncode == 0
    before = snap.config_file.read_bytes()
    options = snap.options()
    restarts = len(snap.service_log())
    result = snap.snap_set(assignment)
    assert result.returncode == snap_configure.EXIT_CONFIG
    assert needle.replace(COMMON, str(snap.common)) in result.stderr
    assert "hunter2" not in result.stderr + result.stdout
    assert snap.config_file.read_bytes() == before
    assert snap.options() == options
    assert len(snap.service_log()) == restarts


def test_secret_file_in_snap_common_is_accepted_and_masked(snap: FakeSnap) -> None:
    secret = snap.common / "mqtt-password"
    secret.write_text("hunter2-secret\n")
    result = snap.snap_set(
        "mqtt.host=broker.lan", "mqtt.username=pi-01", f"mqtt.password-file={secret}"
    )
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in snap.config_file.read_text()
    shown = subprocess.run(
        [str(snap.snap / "bin" / "edge-agent"), "check-config"],
        env=snap.env(),
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    assert 'password_file = "***"' in shown


def test_a_failed_restart_puts_the_previous_file_back(snap: FakeSnap) -> None:
    assert snap.snap_set("mqtt.host=broker.lan").returncode == 0
    before = snap.config_file.read_bytes()
    result = snap.snap_set("mqtt.port=8883", FAKE_SNAPCTL_FAIL="restart")
    assert result.returncode == snap_configure.EXIT_FAILURE
    assert "snapctl restart failed" in result.stderr
    assert snap.config_file.read_bytes() == before
    assert "port" not in snap.options()["mqtt"]  # type: ignore[operator]


def test_run_without_config_reads_the_hooks_file_and_snap_defaults(snap: FakeSnap) -> None:
    assert snap.snap_set("mqtt.host=broker.lan", "node.name=pi-07").returncode == 0
    shown = subprocess.run(
        [str(snap.snap / "bin" / "edge-agent"), "check-config"],
        env={k: v for k, v in snap.env().items() if k != "EDGE_AGENT_CONFIG"},
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout
    effective = tomllib.loads(shown)
    assert effective["mqtt"]["host"] == "broker.lan"
    assert effective["node"]["name"] == "pi-07"
    assert effective["state"]["dir"] == str(snap.common)
    assert effective["microk8s"]["credentials_dir"] == str(snap.data / "microk8s-credentials")


def test_outside_a_snap_the_defaults_are_the_classic_ones(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SNAP", "SNAP_DATA", "SNAP_COMMON"):
        monkeypatch.delenv(var, raising=False)
    settings = config.Settings()
    assert settings.state.dir == "/var/lib/edge-agent"
    assert settings.microk8s.credentials_dir == "/var/snap/microk8s/current/credentials"
    assert snap_paths.default_config_path() is None


def test_snap_configure_outside_a_hook_says_so(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SNAP_DATA", "SNAP_COMMON", "SNAP_INSTANCE_NAME", "SNAP_NAME"):
        monkeypatch.delenv(var, raising=False)
    from agent import cli

    assert cli.main(["snap-configure"]) == snap_configure.EXIT_FAILURE
