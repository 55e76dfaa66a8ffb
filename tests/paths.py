"""Where tests find the fixtures and the fake executables.

The fixtures are the project's own copy of the recorded formats (`tests/fixtures`), found from
this file rather than from the working directory; nothing reads the shared folder beside it.
"""

from __future__ import annotations

from pathlib import Path

TESTS = Path(__file__).resolve().parent
REPO = TESTS.parent
FIXTURES = TESTS / "fixtures"
MICROK8S_CLI = FIXTURES / "microk8s-cli"
FAKES = TESTS / "fakes"
