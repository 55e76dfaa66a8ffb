"""Tools of the command fault tests: configs with short intervals, an HTTP prober, a state dir on
a private tmpfs, libfaketime, and counting what reached the wire.

Everything here acts at a process or socket boundary (a subprocess agent, real TCP, a real file
system in a private mount namespace, the C library's clock), never inside the agent.
"""

from __future__ import annotations

import contextlib
import glob
import http.client
import os
import shutil
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tests.commands_helpers import (
    CMD,
    ROOT,
    TERMINAL,
    Keys,
    commands_config,
    envelope,
    send,
    terminal,
)
from tests.conftest import AgentProcess, Broker, Watcher
from tests.paths import REPO

SMALL_STATE = Path(__file__).resolve().with_name("small-state")
LIBFAKETIME_NAME = "libfaketime.so.1"


def fault_config(
    tmp_path: Path,
    broker: Broker,
    keys: Keys | None,
    *,
    health_s: float = 0.5,
    commands: dict[str, Any] | None = None,
    microk8s: dict[str, Any] | None = None,
    **sections: Any,
) -> Path:
    """pi-01 on the cli backend's fakes (tests.commands_helpers), health every `health_s`."""
    return commands_config(
        tmp_path,
        broker,
        keys,
        health_s=health_s,
        commands=commands,
        microk8s=microk8s,
        **sections,
    )


# -- what reached the wire ----------------------------------------------------------------------


def statuses(w: Watcher, command_id: str) -> list[str]:
    return [p["status"] for t, p, _ in w.messages if t == f"{CMD}/{command_id}"]


def terminal_count(w: Watcher, command_id: str) -> int:
    return sum(1 for s in statuses(w, command_id) if s in TERMINAL)


def health_after(w: Watcher, mark: int, root: str) -> list[dict[str, Any]]:
    """Live health messages received after index `mark`."""
    return [p for t, p, retained in w.messages[mark:] if t == f"{root}/health" and not retained]


def events(agent: AgentProcess, name: str) -> list[dict[str, Any]]:
    return [line for line in agent.log_lines() if line.get("event") == name]


async def settled(w: Watcher) -> None:
    """Barrier: a `status` command answered, so every earlier status has been delivered too."""
    probe = envelope("status")
    await send(w, probe)
    await terminal(w, probe["id"])


async def health_flows(w: Watcher, mark: int, count: int, timeout_s: float = 15) -> None:
    """Wait until `count` live health messages arrived after index `mark`."""
    await w.wait_for(lambda t, p: len(health_after(w, mark, ROOT)) >= count, timeout_s, after=mark)


# -- HTTP over real TCP -------------------------------------------------------------------------


class Prober:
    """GET a path every `every_s` on a fresh TCP connection, in a thread, recording latencies.

    A thread with blocking sockets, not the test's event loop: the figures must not include the
    time the test itself spends handling MQTT messages.
    """

    def __init__(self, port: int, path: str = "/healthz", every_s: float = 0.05) -> None:
        self.port = port
        self.path = path
        self.every_s = every_s
        self.latencies: list[float] = []
        self.statuses: list[int] = []
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="healthz-prober", daemon=True)

    def _get(self) -> None:
        started = time.monotonic()
        connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            connection.request("GET", self.path)
            response = connection.getresponse()
            response.read()
            self.statuses.append(response.status)
        except OSError as exc:
            self.failures.append(f"{type(exc).__name__}: {exc}")
        finally:
            connection.close()
        self.latencies.append(time.monotonic() - started)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._get()
            self._stop.wait(self.every_s)

    @contextlib.contextmanager
    def running(self) -> Iterator[Prober]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(timeout=10)

    def summary(self) -> str:
        ms = sorted(x * 1000 for x in self.latencies)
        if not ms:
            return "no probes"
        p99 = ms[min(len(ms) - 1, int(len(ms) * 0.99))]
        return (
            f"{len(ms)} probes of {self.path}: median {statistics.median(ms):.1f} ms,"
            f" p99 {p99:.1f} ms, max {ms[-1]:.1f} ms"
        )


# -- a state dir on a private tmpfs -------------------------------------------------------------


def small_state_unavailable() -> str | None:
    """Why the tmpfs state dir cannot be built here (for pytest.skip), or None."""
    if os.geteuid() != 0:
        return "needs root to mount a tmpfs in a private mount namespace"
    for tool in ("unshare", "nsenter", "mount"):
        if shutil.which(tool) is None:
            return f"needs util-linux {tool}"
    return None


class SmallStateAgent(AgentProcess):
    """The agent with `state.dir` on a private tmpfs of `size` (tests/faults/small-state)."""

    def __init__(
        self, config: Path, log_path: Path, state_dir: Path, size: str, env: dict[str, str]
    ) -> None:
        super().__init__(config, log_path, env)
        self.state_dir = state_dir
        self.size = size

    def start(self) -> SmallStateAgent:
        wrapper = [str(SMALL_STATE), str(self.state_dir), self.size, "--"]
        agent = [sys.executable, "-m", "agent", "run", "--config", str(self.config)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [*wrapper, *agent], stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=self.env
            )
        return self

    def inside(self, *argv: str) -> subprocess.CompletedProcess[str]:
        """Run argv in the agent's mount namespace (where its state dir is the tmpfs)."""
        assert self.process is not None
        enter = ["nsenter", "--target", str(self.process.pid), "--mount", "--"]
        return subprocess.run(
            [*enter, *argv], capture_output=True, text=True, timeout=20, check=False
        )

    def make_read_only(self) -> None:
        done = self.inside("mount", "-o", "remount,ro", str(self.state_dir))
        assert done.returncode == 0, done.stderr

    def make_writable(self) -> None:
        done = self.inside("mount", "-o", "remount,rw", str(self.state_dir))
        assert done.returncode == 0, done.stderr

    def fill(self) -> None:
        """Write zeros until the tmpfs is full (dd ends with ENOSPC)."""
        filler = f"of={self.state_dir / 'filler'}"
        done = self.inside("dd", "if=/dev/zero", filler, "bs=4096")
        assert "No space left on device" in done.stderr, done.stderr

    def empty(self) -> None:
        done = self.inside("rm", "-f", str(self.state_dir / "filler"))
        assert done.returncode == 0, done.stderr


# -- libfaketime --------------------------------------------------------------------------------


def libfaketime() -> Path | None:
    """The preload library of Debian's `libfaketime`, on whatever architecture this is."""
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        listed = subprocess.run(
            ["dpkg", "-L", "libfaketime"], capture_output=True, text=True, timeout=10, check=False
        ).stdout.splitlines()
        for line in listed:
            if line.endswith(f"/faketime/{LIBFAKETIME_NAME}"):
                return Path(line)
    found = sorted(glob.glob(f"/usr/lib/*/faketime/{LIBFAKETIME_NAME}"))
    return Path(found[0]) if found else None


class FakeClock:
    """A wall-clock offset the agent's C library re-reads on every call; monotonic untouched.

    libfaketime 0.9.10 reads FAKETIME_DONT_FAKE_MONOTONIC (DONT_FAKE_MONOTONIC is the older
    spelling, kept for other versions). Python's own time.sleep() fails under 0.9.10 with
    FAKETIME_DONT_FAKE_MONOTONIC (wolfcw/libfaketime#426); the agent never calls it, and the
    fakes it runs only do when told to sleep, which the clock test does not do.
    """

    def __init__(self, directory: Path, library: Path) -> None:
        self.file = directory / "faketime.rc"
        self.library = library
        self.set("+0")

    def set(self, offset: str) -> None:
        """`+0`, `+1h`, `-1h`: relative to the real time, effective at the agent's next call."""
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(offset + "\n")
        tmp.replace(self.file)

    def env(self) -> dict[str, str]:
        return {
            "LD_PRELOAD": str(self.library),
            "FAKETIME_TIMESTAMP_FILE": str(self.file),
            "FAKETIME_NO_CACHE": "1",
            "FAKETIME_DONT_FAKE_MONOTONIC": "1",
            "DONT_FAKE_MONOTONIC": "1",
        }
