"""Operator configuration: file, environment, flags; one validation pass naming every problem."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from agent.commands import signing
from agent.errors import ConfigError
from agent.operator import settings as opsettings


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    opsettings.add_options(parser)
    return parser.parse_args(list(argv))


def test_defaults_without_any_file(tmp_path: Path) -> None:
    got = opsettings.resolve(parse(), {"HOME": str(tmp_path)})
    assert (got.mqtt.host, got.mqtt.port, got.mqtt.protocol) == ("127.0.0.1", 1883, 5)
    assert (got.cluster, got.signing_key, got.source) == ("default", "", "")
    assert got.cluster_base() == "microk8s/default/nodes"


def test_file_then_flags_with_relative_paths(tmp_path: Path) -> None:
    private, _ = signing.generate("ops-1", tmp_path)
    (tmp_path / "ca.crt").write_text("x")
    cfg = tmp_path / "operator.toml"
    cfg.write_text(
        'cluster = "lab"\nsigning_key = "ops-1.key"\n'
        '[mqtt]\nhost = "broker.lan"\nport = 8883\nprotocol = 3\ntls = true\n'
        'ca_file = "ca.crt"\n'
    )
    env = {"HOME": str(tmp_path), opsettings.ENV_CONFIG: str(cfg)}
    got = opsettings.resolve(parse(), env)
    assert (got.cluster, got.signing_key) == ("lab", str(private))
    assert (got.mqtt.host, got.mqtt.port, got.mqtt.protocol, got.mqtt.tls) == (
        "broker.lan",
        8883,
        3,
        True,
    )
    assert got.mqtt.ca_file == str(tmp_path / "ca.crt")
    assert got.source == str(cfg)
    over = opsettings.resolve(
        parse("--broker", "127.0.0.1:18830", "--cluster", "shop", "--protocol", "5"), env
    )
    assert (over.mqtt.host, over.mqtt.port, over.mqtt.protocol, over.cluster) == (
        "127.0.0.1",
        18830,
        5,
        "shop",
    )
    text = opsettings.as_toml(over)
    assert 'cluster = "shop"' in text and "port = 18830" in text


def test_default_file_under_xdg_config(tmp_path: Path) -> None:
    path = tmp_path / ".config" / "edge-agent" / "operator.toml"
    path.parent.mkdir(parents=True)
    path.write_text('cluster = "lab"\n')
    got = opsettings.resolve(parse(), {"HOME": str(tmp_path)})
    assert (got.cluster, got.source) == ("lab", str(path))
    # --config wins over the environment and the default file.
    other = tmp_path / "o.toml"
    other.write_text('cluster = "shop"\n')
    env = {"HOME": str(tmp_path), opsettings.ENV_CONFIG: str(path)}
    assert opsettings.resolve(parse("--config", str(other)), env).cluster == "shop"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    _, public = signing.generate("ops-1", tmp_path)
    cfg = tmp_path / "bad.toml"
    cfg.write_text(
        'cluster = "Lab"\ncolour = "red"\n[mqtt]\nport = "many"\nhots = "x"\nprotocol = 4\n'
    )
    with pytest.raises(ConfigError) as caught:
        opsettings.resolve(parse("--config", str(cfg), "--signing-key", str(public)), {})
    text = str(caught.value)
    for needle in (
        "cluster: 'Lab' must be lowercase",
        "colour: unknown key",
        "mqtt.port: expected an integer",
        "mqtt.hots: unknown key",
        "mqtt.protocol: 4 is not one of",
        "is the public half; give the private key 'ops-1.key'",
    ):
        assert needle in text, needle


def test_named_file_must_exist_and_public_pem_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        opsettings.resolve(parse("--config", str(tmp_path / "missing.toml")), {})
    _, public = signing.generate("ops-2", tmp_path)
    renamed = tmp_path / "ops-2-copy.key"
    renamed.write_bytes(public.read_bytes())
    with pytest.raises(ConfigError, match="holds a public key"):
        opsettings.resolve(parse("--signing-key", str(renamed)), {"HOME": str(tmp_path)})


def test_tls_key_alone_says_it_is_not_the_signing_key(tmp_path: Path) -> None:
    private, _ = signing.generate("ops-3", tmp_path)
    with pytest.raises(ConfigError, match="to sign commands use --signing-key"):
        opsettings.resolve(parse("--key", str(private)), {"HOME": str(tmp_path)})


def test_ca_file_on_the_line_implies_tls(tmp_path: Path) -> None:
    ca = tmp_path / "ca.crt"
    ca.write_text("x")
    got = opsettings.resolve(parse("--cafile", str(ca)), {"HOME": str(tmp_path)})
    assert got.mqtt.tls and got.mqtt.ca_file == str(ca)


def test_the_example_file_is_valid_and_complete(tmp_path: Path) -> None:
    from tests.paths import REPO

    example = REPO / "configs" / "operator.example.toml"
    got = opsettings.resolve(parse("--config", str(example)), {"HOME": str(tmp_path)})
    assert (got.cluster, got.mqtt.host, got.mqtt.port) == ("lab", "127.0.0.1", 1883)
    # Every key of the schema is shown, so the example documents them all.
    text = example.read_text()
    for key in ("cluster", "signing_key", *opsettings.as_dict(got)["mqtt"]):
        assert f"\n{key} = " in text, key
