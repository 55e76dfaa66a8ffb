"""configs/agent.example.toml documents every key of agent/config.py with its default."""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

import pytest

from agent import config
from tests.paths import REPO

EXAMPLE = REPO / "configs" / "agent.example.toml"
# A key that is commented out because its default depends on the machine (the host name).
COMMENTED_KEY = re.compile(r"^# ([a-z_]+ = .+)$")


@pytest.fixture(autouse=True)
def outside_a_snap(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("SNAP", "SNAP_DATA", "SNAP_COMMON"):
        monkeypatch.delenv(var, raising=False)


def all_keys() -> set[tuple[str, str]]:
    return {
        (section, field.name)
        for section, cls in config.SECTIONS.items()
        for field in dataclasses.fields(cls)
    }


def test_the_example_loads_as_it_is() -> None:
    config.load(EXAMPLE, {})


def test_the_example_names_every_key(tmp_path: Path) -> None:
    uncommented = "\n".join(
        COMMENTED_KEY.sub(r"\1", line) for line in EXAMPLE.read_text().splitlines()
    )
    data = tomllib.loads(uncommented)
    named = {(section, key) for section, values in data.items() for key in values}
    assert named == all_keys()
    path = tmp_path / "agent.toml"
    path.write_text(uncommented)
    config.load(path, {})


def test_every_set_key_has_its_default() -> None:
    data = tomllib.loads(EXAMPLE.read_text())
    defaults = config.as_dict(config.Settings(), mask_secrets=False)
    for section, values in data.items():
        for key, value in values.items():
            assert value == defaults[section][key], f"{section}.{key}"


def test_every_key_is_explained_by_a_comment() -> None:
    previous = ""
    for line in EXAMPLE.read_text().splitlines():
        is_key = bool(re.match(r"^#? ?[a-z_]+ = ", line))
        if is_key and not previous.startswith("#") and not re.match(r"^[a-z_]+ = ", previous):
            pytest.fail(f"no comment above {line!r}")
        previous = line
