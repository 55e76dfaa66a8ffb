"""Static checks run as part of the suite, so the README's single test command covers them."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.paths import REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.parametrize(
    "args",
    [
        ("ruff", "check", "agent", "tests", "bench"),
        ("ruff", "format", "--check", "agent", "tests", "bench"),
    ],
    ids=["ruff-check", "ruff-format"],
)
def test_ruff(args: tuple[str, ...]) -> None:
    result = run(*args)
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict() -> None:
    result = run("mypy")
    assert result.returncode == 0, result.stdout + result.stderr
