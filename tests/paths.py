"""Where tests find shared fixtures and the fake executables.

The shared folder is a sibling of the repository (on CI as on a developer machine), so it is found
from this file rather than from the working directory.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS.parents[1] / "shared" / "fixtures"
MICROK8S_CLI = FIXTURES / "microk8s-cli"
FAKES = TESTS / "fakes"
