"""Storage: fsync latency of dqlite's filesystem and eMMC/SD wear.

dqlite fsyncs every raft entry; a slow or worn SD card (1-1.6 s writes in MicroK8s reports, one
Pi's disk at a fifth of its peers') starves it and the cluster loses its leader. `time_fsync`
writes 4 KiB and fsyncs it, at most once a minute (the caller's interval) so the probe does not
wear the card itself; `FsyncWindow` keeps the samples for p50/p99; `read_wear` reads the MMC
`life_time` and `pre_eol_info` sysfs attributes. `assess` is the pure verdict.
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections import deque
from pathlib import Path
from typing import Any

from agent.health.verdict import CRITICAL, DEGRADED, Finding, worst

PROBE_NAME = ".edge-agent-fsync-probe"
PROBE_BYTES = b"\0" * 4096
# JEDEC eMMC 5.0: life_time is two estimates (types A, B) in 10 % steps, 0x0B = exceeded;
# pre_eol_info 0x01 normal, 0x02 warning (80 % of reserved blocks used), 0x03 urgent.
LIFE_WARN = 0x09
LIFE_EXCEEDED = 0x0B
PRE_EOL_WARNING = 0x02
PRE_EOL_URGENT = 0x03


def same_filesystem(a: Path, b: Path) -> bool:
    try:
        return a.stat().st_dev == b.stat().st_dev
    except OSError:
        return False


def probe_dir(state_dir: Path, backend_dir: Path, configured: str) -> Path | None:
    """Where to time fsync: the state dir on dqlite's filesystem, else the configured path."""
    if same_filesystem(state_dir, backend_dir):
        return state_dir
    return Path(configured) if configured else None


def time_fsync(directory: Path) -> float:
    """Milliseconds to write 4 KiB and fsync it (blocking: run it in a thread).

    Raises:
        OSError: the directory is not writable.
    """
    path = directory / PROBE_NAME
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, PROBE_BYTES)
        started = time.perf_counter()
        os.fsync(fd)
        return (time.perf_counter() - started) * 1000
    finally:
        os.close(fd)


def read_wear(sysfs_root: Path) -> dict[str, Any] | None:
    """The worst MMC device's wear indicators; None where no device exposes them."""
    worst_seen: dict[str, Any] | None = None
    for device in sorted((sysfs_root / "sys/block").glob("mmcblk*/device")):
        life = _hex_words(device / "life_time")
        pre_eol = _hex_words(device / "pre_eol_info")
        if not life and not pre_eol:
            continue
        entry = {
            "device": device.parent.name,
            "life_time": max(life) if life else None,
            "pre_eol": pre_eol[0] if pre_eol else None,
        }
        if worst_seen is None or _wear_rank(entry) > _wear_rank(worst_seen):
            worst_seen = entry
    return worst_seen


def _hex_words(path: Path) -> list[int]:
    try:
        return [int(word, 16) for word in path.read_text().split()]
    except (OSError, ValueError):
        return []


def _wear_rank(entry: dict[str, Any]) -> tuple[int, int]:
    return entry.get("pre_eol") or 0, entry.get("life_time") or 0


class FsyncWindow:
    """fsync samples (ms) of the last `window_s` seconds, for p50 and p99."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, float]] = deque()

    def add(self, ms: float, now: float) -> None:
        self._samples.append((now, ms))

    def percentiles(self, now: float) -> tuple[float, float, int] | None:
        while self._samples and self._samples[0][0] < now - self._window_s:
            self._samples.popleft()
        values = sorted(ms for _, ms in self._samples)
        if not values:
            return None
        return _rank(values, 0.50), _rank(values, 0.99), len(values)


def _rank(values: list[float], q: float) -> float:
    """Nearest-rank percentile: with few samples p99 is the slowest one, as it should be."""
    index = max(0, min(len(values) - 1, int(-(-q * len(values) // 1)) - 1))
    return values[index]


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    fsync_warn_ms: float
    fsync_crit_ms: float


def assess(
    fsync: tuple[float, float, int] | None, wear: dict[str, Any] | None, limits: Limits
) -> tuple[dict[str, Any] | None, list[Finding]]:
    """The `storage` block: fsync p99 against its limits, wear against the JEDEC levels."""
    if fsync is None and wear is None:
        return None, []
    findings: list[Finding] = []
    if fsync is not None:
        p99 = fsync[1]
        if p99 >= limits.fsync_crit_ms:
            findings.append((CRITICAL, f"fsync p99 {p99:.0f} ms >= {limits.fsync_crit_ms:g} ms"))
        elif p99 >= limits.fsync_warn_ms:
            findings.append((DEGRADED, f"fsync p99 {p99:.0f} ms >= {limits.fsync_warn_ms:g} ms"))
    if wear is not None:
        findings += _wear_findings(wear)
    block = {
        "status": worst(findings),
        "fsync_p50_ms": None if fsync is None else round(fsync[0], 1),
        "fsync_p99_ms": None if fsync is None else round(fsync[1], 1),
        "fsync_samples": None if fsync is None else fsync[2],
        "wear": wear,
    }
    return block, findings


def _wear_findings(wear: dict[str, Any]) -> list[Finding]:
    device, life, pre_eol = wear.get("device"), wear.get("life_time"), wear.get("pre_eol")
    if pre_eol == PRE_EOL_URGENT or life == LIFE_EXCEEDED:
        return [(CRITICAL, f"{device} worn out (life_time 0x{life or 0:02x}, pre_eol {pre_eol})")]
    if pre_eol == PRE_EOL_WARNING or (life or 0) >= LIFE_WARN:
        used = f"{((life or 1) - 1) * 10}%+" if life else "?"
        return [(DEGRADED, f"{device} wear {used} of rated life (pre_eol {pre_eol})")]
    return []
