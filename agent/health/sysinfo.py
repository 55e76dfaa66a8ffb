"""System figures for the health snapshot; the only module that imports psutil.

Everything here is synchronous and some calls scan /proc, so the monitor runs it through
`asyncio.to_thread`. Numbers are rounded where the extra digits carry no information, because the
whole health message has a size budget (1.5 KiB).
"""

from __future__ import annotations

import functools
import os
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import psutil

from agent.health import pi

_LOOPBACK = "lo"


class _NicCounters(Protocol):
    @property
    def bytes_recv(self) -> int: ...

    @property
    def bytes_sent(self) -> int: ...


def prime() -> None:
    """Start psutil's CPU sampling window.

    ``cpu_percent(interval=None)`` reports usage since the previous call, and the very first
    call has nothing to compare with (it returns 0.0). Call this once at start so that the
    first health snapshot already carries a meaningful figure.
    """
    psutil.cpu_percent(interval=None)


def collect(disk_paths: Sequence[str], root: Path = Path("/")) -> dict[str, Any]:
    """Return the ``system`` section of the health snapshot (see docs/protocol.md).

    Args:
        disk_paths: mount points to report; a path that does not exist is skipped.
        root: where the Raspberry Pi sysfs/procfs files live (a fixture tree in tests).
    """
    readings = pi.read_pi(root)
    memory = psutil.virtual_memory()
    return {
        "cpu_percent": round(psutil.cpu_percent(interval=None), 1),
        "load": _load(),
        "memory": {
            "total": memory.total,
            "available": memory.available,
            "percent": round(memory.percent, 1),
        },
        "disks": disks(disk_paths),
        "temperature_c": readings.temperature_c,
        "throttled": readings.throttled,
        "uptime_s": max(0, int(time.time() - psutil.boot_time())),
        "net": net_totals(psutil.net_io_counters(pernic=True)),
        "model": readings.model,
        "memory_cgroup": readings.memory_cgroup,
    }


def disks(paths: Iterable[str]) -> list[dict[str, Any]]:
    """Usage of each path, in the given order, once each; unreadable paths are left out.

    A missing mount (an unplugged USB disk, a typo in the config) must not stop the rest of the
    snapshot, so the error is swallowed here rather than in the monitor.
    """
    result: list[dict[str, Any]] = []
    seen: set[str] = set()
    for path in paths:
        if path in seen:
            continue
        seen.add(path)
        try:
            usage = psutil.disk_usage(path)
        except OSError:
            continue
        result.append(
            {
                "mount": path,
                "total": usage.total,
                "used": usage.used,
                "percent": round(usage.percent, 1),
            }
        )
    return result


def net_totals(pernic: Mapping[str, _NicCounters]) -> dict[str, int]:
    """Bytes received and sent, summed over every interface except loopback.

    Loopback traffic is the node talking to itself (the API server, the agent's own broker
    link on a single-node lab), which says nothing about the node's network.
    """
    rx_bytes = 0
    tx_bytes = 0
    for name, counters in pernic.items():
        if name == _LOOPBACK:
            continue
        rx_bytes += counters.bytes_recv
        tx_bytes += counters.bytes_sent
    return {"rx_bytes": rx_bytes, "tx_bytes": tx_bytes}


def process_figures() -> dict[str, Any]:
    """The agent's own footprint, so a leak shows up in the fleet's dashboards."""
    process = _own_process(os.getpid())
    with process.oneshot():
        rss_bytes = process.memory_info().rss
        cpu = process.cpu_times()
        open_fds = process.num_fds()
    return {
        "rss_bytes": rss_bytes,
        "cpu_seconds": round(cpu.user + cpu.system, 2),
        "open_fds": open_fds,
    }


# Keyed by pid so that a forked child does not report its parent's figures.
@functools.lru_cache(maxsize=1)
def _own_process(pid: int) -> psutil.Process:
    return psutil.Process(pid)


def _load() -> list[float] | None:
    # getloadavg raises OSError where the platform cannot tell; unknown is null, never invented.
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return None
    return [round(one, 2), round(five, 2), round(fifteen, 2)]
