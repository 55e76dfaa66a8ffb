"""MicroK8s' own processes: CPU, RSS and restarts of k8s-dqlite, kubelite and containerd.

k8s-dqlite pegging a core or growing to gigabytes, and kubelite crash-looping on a corrupt raft
segment after a power cut, are how small MicroK8s clusters die. `scan` reads `/proc/<pid>/stat`
(one small file per process; the root is configurable so tests use a fake tree) off the event
loop; `ProcessTracker` keeps the short history the rules need (a new start time is a restart)
and `assess` is the pure verdict.
"""

from __future__ import annotations

import dataclasses
import os
from collections import deque
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.health.verdict import CRITICAL, DEGRADED, Finding, worst

NAMES = ("k8s-dqlite", "kubelite", "containerd")
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_BYTES = os.sysconf("SC_PAGE_SIZE")
RSS_WINDOW_S = 3600.0
RSS_MIN_SPAN_S = 600.0
"""RSS growth is judged over at least this long: start-up and compaction move it for minutes."""


@dataclasses.dataclass(frozen=True, slots=True)
class ProcReading:
    pid: int
    start_ticks: int
    cpu_ticks: int
    rss_bytes: int


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    restarts_crit: int
    restart_window_s: float
    cpu_warn_percent: float
    cpu_window_s: float
    rss_growth_warn_mib_h: float


def parse_stat(text: str) -> tuple[str, ProcReading] | None:
    """`/proc/<pid>/stat` → (comm, reading); None when it does not look like one."""
    head, sep, tail = text.rpartition(")")
    pid_text, _, comm = head.partition(" (")
    fields = tail.split()
    if not sep or len(fields) < 22 or not pid_text.strip().isdigit():
        return None
    try:
        cpu = int(fields[11]) + int(fields[12])
        return comm, ProcReading(int(pid_text), int(fields[19]), cpu, int(fields[21]) * PAGE_BYTES)
    except ValueError:
        return None


def _read(proc_root: Path, pid: str) -> tuple[str, ProcReading] | None:
    try:
        return parse_stat(Path(proc_root, pid, "stat").read_text("ascii", errors="replace"))
    except OSError:
        return None  # exited while we looked


def scan(
    proc_root: Path,
    names: Iterable[str] = NAMES,
    known: Mapping[str, int] | None = None,
    *,
    walk: bool = True,
) -> dict[str, ProcReading | None]:
    """The oldest process of each name (the daemon, not its short-lived children).

    `known` pids (the last scan's) are read first. /proc is walked (one file per process on
    the node) when `walk` is asked for or one of them is gone or renamed.
    """
    found: dict[str, ProcReading | None] = dict.fromkeys(names)
    for name, known_pid in (known or {}).items():
        parsed = _read(proc_root, str(known_pid))
        if parsed is not None and parsed[0] == name and name in found:
            found[name] = parsed[1]
    if not walk and all(found[name] is not None for name in known or {}):
        return found
    try:
        pids = [e.name for e in os.scandir(proc_root) if e.name.isdigit()]
    except OSError:
        return found
    for pid in pids:
        parsed = _read(proc_root, pid)
        if parsed is None or parsed[0] not in found:
            continue
        comm, reading = parsed
        current = found[comm]
        if current is None or reading.start_ticks < current.start_ticks:
            found[comm] = reading
    return found


@dataclasses.dataclass(slots=True)
class _History:
    identity: tuple[int, int] | None = None
    restarts: deque[float] = dataclasses.field(default_factory=deque)
    cpu: deque[tuple[float, int]] = dataclasses.field(default_factory=deque)
    rss: deque[tuple[float, int]] = dataclasses.field(default_factory=deque)
    last: ProcReading | None = None


class ProcessTracker:
    """History per process name: restart times, CPU-tick and RSS samples within their windows."""

    def __init__(self, limits: Limits, names: Iterable[str] = NAMES) -> None:
        self.limits = limits
        self._history = {name: _History() for name in names}

    def known(self) -> dict[str, int]:
        """The pids seen last time, for `scan` to try first."""
        return {name: h.last.pid for name, h in self._history.items() if h.last is not None}

    def lost(self) -> bool:
        """A process seen before is missing now: walk /proc to catch it coming back."""
        return any(h.identity is not None and h.last is None for h in self._history.values())

    def update(self, readings: Mapping[str, ProcReading | None], now: float) -> None:
        for name, history in self._history.items():
            reading = readings.get(name)
            history.last = reading
            if reading is None:
                continue
            identity = (reading.pid, reading.start_ticks)
            if history.identity is not None and identity != history.identity:
                history.restarts.append(now)
                history.cpu.clear()
                history.rss.clear()
            history.identity = identity
            history.cpu.append((now, reading.cpu_ticks))
            history.rss.append((now, reading.rss_bytes))
            _trim(history, now, self.limits)

    def assess(self, now: float) -> tuple[dict[str, Any] | None, list[Finding]]:
        """The `microk8s_processes` block; None until one of the processes has been seen."""
        if all(h.identity is None for h in self._history.values()):
            return None, []
        block: dict[str, Any] = {}
        findings: list[Finding] = []
        for name, history in self._history.items():
            _trim(history, now, self.limits)
            entry, found = _judge(name, history, self.limits)
            block[name] = entry
            findings += found
        return {"status": worst(findings), **block}, findings


def _trim(history: _History, now: float, limits: Limits) -> None:
    for samples, window in (
        (history.restarts, limits.restart_window_s),
        (history.cpu, limits.cpu_window_s),
        (history.rss, RSS_WINDOW_S),
    ):
        while samples and _at(samples[0]) < now - window:
            samples.popleft()


def _at(sample: float | tuple[float, int]) -> float:
    return sample[0] if isinstance(sample, tuple) else sample


def _rate(samples: deque[tuple[float, int]]) -> tuple[float, float] | None:
    """(change per second, span in seconds) between the oldest and newest sample."""
    if len(samples) < 2:
        return None
    span = samples[-1][0] - samples[0][0]
    if span <= 0:
        return None
    return (samples[-1][1] - samples[0][1]) / span, span


def _judge(
    name: str, history: _History, limits: Limits
) -> tuple[dict[str, Any] | None, list[Finding]]:
    restarts = len(history.restarts)
    findings: list[Finding] = []
    if restarts >= limits.restarts_crit:
        window_min = limits.restart_window_s / 60
        findings.append(
            (CRITICAL, f"{name} restarted {restarts} times in {window_min:g} min (crash loop)")
        )
    if history.last is None:
        return None, findings
    cpu = _rate(history.cpu)
    cpu_percent = None if cpu is None else 100 * cpu[0] / CLOCK_TICKS
    span_s = 0.0 if cpu is None else cpu[1]
    # Sustained: the average over at least half the window, so one busy compaction is not it.
    sustained = span_s >= limits.cpu_window_s / 2
    if sustained and cpu_percent is not None and cpu_percent >= limits.cpu_warn_percent:
        findings.append((DEGRADED, f"{name} CPU {cpu_percent:.0f}% over {span_s / 60:.0f} min"))
    rss = _rate(history.rss)
    if rss is not None and rss[1] >= RSS_MIN_SPAN_S:
        growth_mib_h = rss[0] * 3600 / (1 << 20)
        if growth_mib_h >= limits.rss_growth_warn_mib_h:
            findings.append((DEGRADED, f"{name} RSS growing {growth_mib_h:.0f} MiB/h"))
    entry = {
        "cpu_percent": None if cpu_percent is None else round(cpu_percent, 1),
        "rss_bytes": history.last.rss_bytes,
        "restarts": restarts,
    }
    return entry, findings
