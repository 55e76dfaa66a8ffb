"""A snap's environment without snapd: $SNAP, $SNAP_DATA, $SNAP_COMMON in a tmp dir, a fake
`snapctl` (tests/fakes/snapctl) holding the options, and `snap set` emulated as snapd does it:
store the options, run the configure hook, roll the options back when the hook fails.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.paths import FAKES, REPO

NAME = "microk8s-edge-agent"
HOOK = REPO / "snap" / "hooks" / "configure"


class FakeSnap:
    def __init__(self, root: Path, revision: str = "x1") -> None:
        self.root = root
        self.snap = root / "snap" / NAME / revision
        self.data = root / "var" / "snap" / NAME / revision
        self.common = root / "var" / "snap" / NAME / "common"
        self.db = root / "snapctl-db.json"
        self.log = root / "snapctl.log"
        for directory in (self.snap / "bin", self.snap / "meta" / "hooks", self.data, self.common):
            directory.mkdir(parents=True, exist_ok=True)
        # The python plugin puts the venv's console scripts in $SNAP/bin.
        (self.snap / "bin" / "edge-agent").symlink_to(Path(sys.executable).parent / "edge-agent")
        shutil.copy2(HOOK, self.snap / "meta" / "hooks" / "configure")

    @property
    def config_file(self) -> Path:
        return self.data / "agent.toml"

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "PATH": f"{FAKES}:{os.environ.get('PATH', '')}",
            "SNAP": str(self.snap),
            "SNAP_DATA": str(self.data),
            "SNAP_COMMON": str(self.common),
            "SNAP_NAME": NAME,
            "SNAP_INSTANCE_NAME": NAME,
            "SNAP_REVISION": self.snap.name,
            "FAKE_SNAPCTL_DB": str(self.db),
            "FAKE_SNAPCTL_LOG": str(self.log),
            **extra,
        }

    def snapctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(FAKES / "snapctl"), *args],
            env=self.env(),
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )

    def options(self) -> dict[str, object]:
        return json.loads(self.db.read_text()) if self.db.exists() else {}

    def snap_set(self, *assignments: str, **env: str) -> subprocess.CompletedProcess[str]:
        """`snap set NAME KEY=VALUE...`: store, run the hook, roll back when it fails."""
        before = self.db.read_bytes() if self.db.exists() else None
        if assignments:
            self.snapctl("set", *assignments)
        result = subprocess.run(
            [str(self.snap / "meta" / "hooks" / "configure")],
            env=self.env(**env),
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        if result.returncode != 0:
            if before is None:
                self.db.unlink(missing_ok=True)
            else:
                self.db.write_bytes(before)
        return result

    def service_log(self) -> list[list[str]]:
        if not self.log.exists():
            return []
        return [json.loads(line) for line in self.log.read_text().splitlines()]
