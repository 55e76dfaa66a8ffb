"""Clock: the kernel's synchronisation state and this node's offset against its peers.

A skewed clock breaks MicroK8s quietly: certificates look not-yet-valid, join tokens and signed
commands expire early. The kernel knows whether NTP keeps it synchronised (`adjtimex` with no
mode bits: a pure read). snapd's seccomp profile allows `adjtimex` only with `time-control`,
which would also let the agent set the clock, so under strict confinement the call fails with
EPERM and the agent falls back to systemd-timesyncd's flag file (Ubuntu Core's NTP client
touches `/run/systemd/timesync/synchronized` once synchronised). The peers' health
messages carry their `ts`, so the difference to our clock on arrival is a free, continuous
estimate of the offset (transit adds milliseconds; the median over a window ignores a message
that sat in a queue).
"""

from __future__ import annotations

import ctypes
import dataclasses
import functools
from collections import deque
from pathlib import Path
from typing import Any

from agent.health.verdict import CRITICAL, DEGRADED, Finding, worst

TIME_ERROR = 5
STA_UNSYNC = 0x0040
MIN_SAMPLES = 3
MAX_SAMPLES = 512


class _Timex(ctypes.Structure):
    # The leading fields of Linux's struct timex; the tail is padding we never read, sized
    # generously so the kernel's write of the whole struct stays inside our buffer.
    _fields_ = (
        ("modes", ctypes.c_uint),
        ("offset", ctypes.c_long),
        ("freq", ctypes.c_long),
        ("maxerror", ctypes.c_long),
        ("esterror", ctypes.c_long),
        ("status", ctypes.c_int),
        ("_rest", ctypes.c_byte * 256),
    )


TIMESYNCD_DIR = Path("run/systemd/timesync")


@dataclasses.dataclass(frozen=True, slots=True)
class KernelClock:
    synced: bool
    est_error_us: int | None
    """None when the state came from timesyncd's flag, which carries no error estimate."""
    max_error_us: int | None


@functools.cache
def _libc() -> ctypes.CDLL:
    # dlopen(NULL): the interpreter's own symbols, libc's included; ctypes.util.find_library
    # would run ldconfig in a subprocess to find the same library.
    return ctypes.CDLL(None, use_errno=True)


def read_kernel(root: Path = Path("/")) -> KernelClock | None:
    """`adjtimex(modes=0)` (read-only), else timesyncd's flag under `root`; None if neither."""
    timex = _Timex()
    try:
        state = _libc().adjtimex(ctypes.byref(timex))
    except (OSError, AttributeError):
        state = -1
    if state < 0:
        return read_timesyncd(root)
    synced = state != TIME_ERROR and not timex.status & STA_UNSYNC
    return KernelClock(synced, int(timex.esterror), int(timex.maxerror))


def read_timesyncd(root: Path) -> KernelClock | None:
    """Synchronised when timesyncd's flag exists; unknown when timesyncd is not running."""
    directory = root / TIMESYNCD_DIR
    if not directory.is_dir():
        return None
    return KernelClock((directory / "synchronized").exists(), None, None)


class PeerOffsets:
    """Our clock minus each peer's, sampled on arrival of their messages, over a window."""

    def __init__(self, window_s: float) -> None:
        self._window_s = window_s
        self._samples: deque[tuple[float, str, float]] = deque(maxlen=MAX_SAMPLES)

    def record(self, peer: str, peer_ts: float, local_ts: float, now_mono: float) -> None:
        self._samples.append((now_mono, peer, local_ts - peer_ts))

    def _recent(self, now_mono: float) -> list[tuple[float, str, float]]:
        while self._samples and self._samples[0][0] < now_mono - self._window_s:
            self._samples.popleft()
        return list(self._samples)

    def median(self, now_mono: float) -> float | None:
        """Median offset in seconds (positive: we are ahead); None below MIN_SAMPLES."""
        recent = self._recent(now_mono)
        if len(recent) < MIN_SAMPLES:
            return None
        return median([offset for _, _, offset in recent])

    def peers_seen(self, now_mono: float, within_s: float) -> int:
        """How many distinct peers were heard from in the last `within_s` seconds."""
        return len({peer for at, peer, _ in self._recent(now_mono) if at >= now_mono - within_s})


def median(values: list[float]) -> float:
    """The middle value (mean of the two middle ones); `statistics` would cost 0.4 MiB here."""
    ordered = sorted(values)
    middle = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[middle]
    return (ordered[middle - 1] + ordered[middle]) / 2


def assess(
    kernel: KernelClock | None, offset_s: float | None, peers: int, warn_s: float, crit_s: float
) -> tuple[dict[str, Any] | None, list[Finding]]:
    """The `clock` block: unsynchronised or offset past warn is degraded, past crit critical."""
    if kernel is None and offset_s is None:
        return None, []
    findings: list[Finding] = []
    if kernel is not None and not kernel.synced:
        findings.append((DEGRADED, "clock not synchronised (kernel reports no NTP sync)"))
    if offset_s is not None and abs(offset_s) > warn_s:
        limit = crit_s if abs(offset_s) > crit_s else warn_s
        severity = CRITICAL if abs(offset_s) > crit_s else DEGRADED
        findings.append(
            (severity, f"clock offset {offset_s:+.1f} s against {peers} peers (> {limit:g} s)")
        )
    block = {
        "status": worst(findings),
        "synced": None if kernel is None else kernel.synced,
        "est_error_ms": _ms(None if kernel is None else kernel.est_error_us),
        "peer_offset_s": None if offset_s is None else round(offset_s, 3),
        "peers": peers,
    }
    return block, findings


def _ms(microseconds: int | None) -> float | None:
    return None if microseconds is None else round(microseconds / 1000, 1)
