"""What the side-by-side bench observes: process trees in /proc, MQTT traffic, HTTP scrapes.

A peer may fork (or be a launcher script), so memory and CPU are summed over the process tree
rooted at the pid we started. CPU is each live process's CPU clock (clock_gettime on its process
CPU-time clock: nanoseconds, all threads, dead ones included) plus cutime+cstime (children already
reaped, in clock ticks), so short-lived helpers are not lost between samples. The clock matters:
utime+stime come in 10 ms ticks, too coarse for processes that use 0.03 % of a core.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import gzip
import os
import time
from collections.abc import Callable
from pathlib import Path

import aiohttp
import aiomqtt

from bench.footprint import pss_mib, rss_mib

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
    return parents


def tree(root: int) -> list[int]:
    """root and all its live descendants."""
    parents = _parents()
    found = [root]
    for pid in found:
        found.extend(child for child, parent in parents.items() if parent == pid)
    return found


def process_cpu_s(pid: int) -> float:
    """CPU time of the whole process (all threads) with ns resolution, plus reaped children's."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    reaped = (int(fields[13]) + int(fields[14])) / CLOCK_TICKS
    try:  # MAKE_PROCESS_CPUCLOCK(pid, CPUCLOCK_SCHED) of the kernel's posix-cpu-timers
        return time.clock_gettime((~pid << 3) | 2) + reaped
    except OSError:
        return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS + reaped


def tree_cpu_s(root: int) -> float:
    total = 0.0
    for pid in tree(root):
        with contextlib.suppress(OSError):
            total += process_cpu_s(pid)
    return total


def tree_memory_mib(root: int) -> tuple[float, float]:
    """(RSS, PSS) summed over the tree; RSS double-counts shared pages, PSS does not."""
    rss = pss = 0.0
    for pid in tree(root):
        try:
            rss += rss_mib(pid)
            pss += pss_mib(pid)
        except (OSError, RuntimeError):
            continue
    return rss, pss


@dataclasses.dataclass(frozen=True)
class Seen:
    """One observed sample unit: an MQTT message or an HTTP response."""

    at: float
    source: str
    payload: int  # application bytes (MQTT payload, HTTP body uncompressed)
    wire: int  # bytes as framed on the connection (PUBLISH packet, gzip body)


def publish_packet_bytes(topic: str, payload: int, qos: int, properties: int) -> int:
    """Size of the PUBLISH packet as the publisher framed it (no TCP/IP, no acks)."""
    remaining = 2 + len(topic.encode()) + (2 if qos else 0) + properties + payload
    length_bytes = 1
    while remaining >= 128**length_bytes:
        length_bytes += 1
    return 1 + length_bytes + remaining


def _properties_size(message: aiomqtt.Message) -> int:
    props = message.properties
    if props is None:
        return 0
    packed: bytes = props.pack()  # type: ignore[no-untyped-call]
    return len(packed) if len(packed) > 1 else 0


async def listen_mqtt(
    port: int, classify: Callable[[str], str | None], seen: list[Seen], ready: asyncio.Event
) -> None:
    """Subscribe to everything on the private broker (QoS 2, so delivered QoS = publisher's)."""
    async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as client:
        await client.subscribe("#", qos=2)
        ready.set()
        async for message in client.messages:
            topic = message.topic.value
            source = classify(topic)
            if source is None or not isinstance(message.payload, bytes | bytearray):
                continue
            size = len(message.payload)
            wire = publish_packet_bytes(topic, size, message.qos, _properties_size(message))
            seen.append(Seen(time.monotonic(), source, size, wire))


async def scrape(url: str, source: str, interval: float, seen: list[Seen]) -> None:
    """Scrape like Prometheus would (gzip accepted), every `interval` s, until cancelled."""
    timeout = aiohttp.ClientTimeout(total=5)
    headers = {"Accept-Encoding": "gzip"}
    async with aiohttp.ClientSession(timeout=timeout, auto_decompress=False) as session:
        for _ in range(100):  # the exporter is still starting: wait (quietly) until it answers
            with contextlib.suppress(aiohttp.ClientError, TimeoutError, OSError):
                async with session.get(url) as response:
                    await response.read()
                    break
            await asyncio.sleep(0.1)
        while True:
            started = time.monotonic()
            try:
                async with session.get(url, headers=headers) as response:
                    raw = await response.read()
                    gzipped = response.headers.get("Content-Encoding") == "gzip"
                body = gzip.decompress(raw) if gzipped else raw
                seen.append(Seen(started, source, len(body), len(raw)))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                print(f"peers: scrape of {url} failed: {exc!r}", flush=True)
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - started)))
