"""A clone of the repository alone collects and runs its tests: nothing reads the shared folder."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.paths import REPO

# Paths the project must never read at run or test time: the shared folder beside the checkout.
SHARED_REFERENCE = re.compile(r"\.\./shared|/ \"shared\"|parents\[\d\] / \"shared\"|/work/shared")
SCANNED = ("agent", "tests", "bench", ".ci", "configs", "snap", "systemd")


def _tracked_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "-z", *SCANNED], cwd=REPO, capture_output=True, check=True
    ).stdout.split(b"\0")
    return [REPO / name.decode() for name in listed if name]


def test_no_file_reaches_the_shared_folder() -> None:
    here = Path(__file__).resolve()
    offenders = []
    for path in _tracked_files():
        if path == here or not path.is_file() or path.suffix in {".png", ".json"}:
            continue
        text = path.read_text(errors="replace")
        offenders += [
            f"{path.relative_to(REPO)}: {m.group(0)}" for m in SHARED_REFERENCE.finditer(text)
        ]
    assert not offenders, offenders


@pytest.mark.slow
def test_a_lone_clone_collects_the_suite_and_runs_its_fakes(tmp_path: Path) -> None:
    # The clone sits in a folder with nothing beside it, as on a stranger's machine.
    clone = tmp_path / "alone" / "repo"
    subprocess.run(["git", "clone", "-q", "--local", str(REPO), str(clone)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST_", "FAKE_"))}
    env["PYTHONPATH"] = str(clone)
    collected = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "--collect-only",
            "-q",
            "-n",
            "0",
            "-p",
            "no:cacheprovider",
        ],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert collected.returncode == 0, collected.stdout[-3000:] + collected.stderr[-3000:]
    assert re.search(r"^\d+ tests collected", collected.stdout, re.M), collected.stdout[-500:]
    fake = subprocess.run(
        [sys.executable, str(clone / "tests" / "fakes" / "microk8s"), "status", "--format", "yaml"],
        cwd=clone,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert fake.returncode == 0, fake.stderr
    assert "127.0.0.11:19001" in fake.stdout
