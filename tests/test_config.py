"""Configuration: TOML + environment, every problem listed at once (pure, no I/O but tmp files)."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent import config, settings
from agent.errors import ConfigError


def load_text(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> config.Settings:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return config.load(path, env or {})


def problems_of(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_text(tmp_path, text, env)
    return info.value.problems


def test_defaults_work_without_a_file() -> None:
    settings = config.load(None, {})
    assert settings.mqtt.host == "127.0.0.1"
    assert settings.mqtt.port == 1883
    assert settings.mqtt.protocol == 5
    assert settings.health.interval_s == 10
    assert settings.http.bind == "127.0.0.1"
    assert settings.http.port == 9880
    assert settings.commands.allow_unsigned is False
    assert settings.commands.queue_size == 8
    assert settings.microk8s.backend == "auto"
    assert settings.ha.dqlite_tls is True
    assert settings.root_topic == f"microk8s/default/nodes/{settings.node.name}"


def test_file_values_and_environment_overrides(tmp_path: Path) -> None:
    settings = load_text(
        tmp_path,
        '[node]\nname = "pi-01"\n[mqtt]\nport = 1884\n[health]\ndisk_paths = ["/", "/var"]\n',
        {
            "EDGE_AGENT_MQTT_PORT": "1999",
            "EDGE_AGENT_MQTT_TLS": "false",
            "EDGE_AGENT_HTTP_ENABLED": "no",
        },
    )
    assert settings.node.name == "pi-01"
    assert settings.mqtt.port == 1999
    assert settings.http.enabled is False
    assert settings.health.disk_paths == ("/", "/var")


@pytest.mark.parametrize(
    ("text", "env", "needle"),
    [
        ("[mqtt]\nport = 0\n", {}, "mqtt.port"),
        ('[mqtt]\nport = "x"\n', {}, "mqtt.port: expected an integer"),
        ("[mqtt]\nprotocol = 4\n", {}, "mqtt.protocol"),
        ('[mqtt]\ncert_file = "/etc/hostname"\ntls = true\n', {}, "give both or neither"),
        ('[mqtt]\nca_file = "/etc/hostname"\n', {}, "mqtt.tls: must be true"),
        ('[mqtt]\npassword_file = "/etc/hostname"\n', {}, "mqtt.username: required"),
        ('[mqtt]\nusername = "u"\npassword_file = "/nonexistent"\n', {}, "not a readable file"),
        ('[node]\nname = "Pi_01"\n', {}, "node.name"),
        ('[node]\ncluster = "-x"\n', {}, "node.cluster"),
        ("[health]\nqos = 2\n", {}, "health.qos"),
        ("[health]\ntemperature_warn_c = 90\ntemperature_crit_c = 80\n", {}, "temperature_warn_c"),
        ('[health]\ndisk_paths = ["var"]\n', {}, "absolute path"),
        ("[health]\ncert_warn_days = 5\ncert_crit_days = 7\n", {}, "cert_crit_days: must not"),
        ("[health]\nclock_offset_warn_s = 90\n", {}, "clock_offset_warn_s: must not exceed"),
        ("[health]\nfsync_warn_ms = 2000\n", {}, "fsync_warn_ms: must not exceed"),
        ("[health]\nfsync_interval_s = 5\n", {}, "health.fsync_interval_s: 5 is out of range"),
        ('[health]\nproc_root = "proc"\n', {}, "health.proc_root: 'proc' must be an absolute"),
        ("[health]\nprocess_restarts_crit = 0\n", {}, "health.process_restarts_crit"),
        ('[microk8s]\nbackend = "docker"\n', {}, "microk8s.backend"),
        ('[log]\nformat = "xml"\n', {}, "log.format"),
        ("[commands]\nqueue_size = 0\n", {}, "commands.queue_size"),
        ("[mqtt]\nfrobnicate = 1\n", {}, "mqtt.frobnicate: unknown key"),
        ("[frob]\nx = 1\n", {}, "[frob]: unknown section"),
        ("", {"EDGE_AGENT_MQTT_NOPE": "1"}, "$EDGE_AGENT_MQTT_NOPE: unknown key"),
        ("", {"EDGE_AGENT_FROB_X": "1"}, "$EDGE_AGENT_FROB_X: unknown section"),
        (
            "",
            {"EDGE_AGENT_HEALTH_INTERVAL_S": "soon"},
            "$EDGE_AGENT_HEALTH_INTERVAL_S: expected a number",
        ),
        ("[mqtt\n", {}, "not valid TOML"),
        ("", {"EDGE_AGENT_HA_DQLITE_TLS": "maybe"}, "expected true or false"),
    ],
)
def test_each_problem_is_named(tmp_path: Path, text: str, env: dict[str, str], needle: str) -> None:
    assert any(needle in problem for problem in problems_of(tmp_path, text, env))


def test_every_problem_listed_at_once(tmp_path: Path) -> None:
    problems = problems_of(
        tmp_path,
        '[mqtt]\nport = 99999\nbogus = true\n[health]\nqos = 5\n[nope]\n[node]\nname = "A"\n',
        {"EDGE_AGENT_HTTP_PORT": "-1"},
    )
    joined = "\n".join(problems)
    for needle in ("mqtt.port", "mqtt.bogus", "health.qos", "[nope]", "node.name", "http.port"):
        assert needle in joined
    assert len(problems) >= 6


def test_missing_file_is_a_problem(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        config.load(tmp_path / "absent.toml", {})


def test_effective_config_masks_secrets_and_roundtrips(tmp_path: Path) -> None:
    secret = tmp_path / "pw"
    secret.write_text("x")
    settings = load_text(tmp_path, f'[mqtt]\nusername = "u"\npassword_file = "{secret}"\n')
    data = config.as_dict(settings)
    assert data["mqtt"]["password_file"] == "***"
    again = tmp_path / "again.toml"
    again.write_text(config.to_toml(config.as_dict(settings, mask_secrets=False)))
    assert config.load(again, {}) == settings


def test_default_node_name_is_first_label_lowercased(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("agent.settings.socket.gethostname", lambda: "Pi-07.Lab.Example")
    assert settings.default_node_name() == "pi-07"
