"""The house rules hold for `agent/`, and the check that says so can fail."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests import import_rules
from tests.paths import REPO

AGENT = REPO / "agent"


def test_the_package_keeps_the_house_rules() -> None:
    broken = import_rules.violations(AGENT)
    assert not broken, "\n".join(map(str, broken))


def test_every_part_is_a_subpackage_with_a_docstring() -> None:
    for part in import_rules.PARTS:
        init = AGENT / part / "__init__.py"
        assert init.is_file(), f"agent/{part}/ is not a package"
        assert init.read_text().startswith('"""'), f"agent/{part}/__init__.py says nothing"


def test_the_top_level_keeps_only_entry_wiring_config_and_logs() -> None:
    top = {p.stem for p in AGENT.glob("*.py")}
    assert top <= {"__init__", "__main__", "cli", "app", *import_rules.LEAVES}, top


@pytest.mark.parametrize(
    ("where", "line", "rule"),
    [
        ("microk8s/snapd.py", "from agent.commands import journal", "microk8s/ must not import"),
        ("link/topics.py", "import agent.health.state", "link/ must not import health/"),
        ("health/pi.py", "from agent.commands.wire import decode", "health/ must not import"),
        ("commands/verbs.py", "import asyncio", "a pure module must not do I/O"),
        ("ha/quorum.py", "import aiohttp", "a pure module must not do I/O"),
        ("commands/journal.py", "import aiomqtt", "aiomqtt belongs to agent.link.*"),
        ("health/verdict.py", "def f():\n    import paho.mqtt.client", "paho belongs to"),
        ("link/mqtt.py", "import requests", "a new library needs an entry"),
        ("errors.py", "from agent.link import topics", "top-level errors must not import a part"),
    ],
)
def test_a_forbidden_import_is_caught(tmp_path: Path, where: str, line: str, rule: str) -> None:
    tree = tmp_path / "agent"
    shutil.copytree(AGENT, tree, ignore=shutil.ignore_patterns("__pycache__"))
    assert not import_rules.violations(tree)
    target = tree / where
    target.write_text(target.read_text() + "\n" + line + "\n")
    found = [str(v) for v in import_rules.violations(tree)]
    assert any(rule in v for v in found), found
