"""Live-dqlite benchmark (not a test): one verdict round's time, and the memory the client adds.

Starts a real three-voter `dqlite-demo` cluster on 127.0.0.11-13 (go-dqlite; tests/dqlite_nodes)
and prints:

- one live view (`DqliteClient.view`: leader + cluster from the local member, `describe` of
  every member), asked from a follower as most agents do, p50/max over the rounds; then the
  same plus the verdict (`quorum.build_verdict` with readiness), i.e. what a round adds to the
  probes;
- the RSS the client adds to a process that already runs asyncio and ssl (as the agent does):
  after importing `agent.ha.dqlite`, and after the rounds (peak Python allocations by
  tracemalloc during one round, too).

    .venv/bin/python -m bench.dqlite_round [--rounds 50]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

# ssl is imported first on purpose: the agent always has it loaded (aiohttp, MQTT TLS).
LOADED = (ssl,)


def rss_kib() -> int:
    """Resident set size from /proc/self/statm (pages) in KiB."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * 4


CLIENT_MODULES = ("agent.ha.dqlite", "agent.ha.reconcile", "agent.ha.readiness")
KEPT = f"""
import asyncio, ssl, importlib, tracemalloc
importlib.import_module("agent.ha.membership")
tracemalloc.start()
for name in {CLIENT_MODULES!r}:
    importlib.import_module(name)
print(tracemalloc.get_traced_memory()[0])
"""


def kept_by_import_kib() -> float:
    """Python memory the client's modules keep once imported (tracemalloc, fresh interpreter)."""
    out = subprocess.run([sys.executable, "-c", KEPT], capture_output=True, text=True, check=True)
    return int(out.stdout) / 1024


async def main(rounds: int) -> None:
    # What the agent had loaded before this work (membership: PyYAML, errors), then the new code.
    importlib.import_module("agent.ha.membership")
    before_import = rss_kib()
    for name in CLIENT_MODULES:
        importlib.import_module(name)
    after_import = rss_kib()
    from tests.dqlite_nodes import start_cluster

    with tempfile.TemporaryDirectory(prefix="dqlite-bench-") as root:
        cluster = await start_cluster(Path(root), 3)
        try:
            await measure(cluster.addresses, rounds, after_import - before_import)
        finally:
            cluster.stop()


async def measure(addresses: list[str], rounds: int, import_kib: int) -> None:
    dqlite = importlib.import_module("agent.ha.dqlite")
    quorum = importlib.import_module("agent.ha.quorum")
    reconcile = importlib.import_module("agent.ha.reconcile")
    membership = importlib.import_module("agent.ha.membership")
    after_import = rss_kib()
    client = dqlite.DqliteClient(None, 2.0)
    leader = (await client.view(addresses)).leader.address
    follower = next(a for a in addresses if a != leader)
    views, verdicts = [], []
    files = membership.Membership((membership.Member(follower, "voter"),), "cluster.yaml")
    for _ in range(rounds):
        started = time.perf_counter()
        view = await client.view([follower, *addresses])
        views.append(time.perf_counter() - started)
        members = reconcile.live_membership(files, view)
        probes = {m.address: quorum.MemberProbe(dqlite=True) for m in members.members}
        obs = quorum.Observation("n", 0.0, members, "voter", probes, {}, leader=view.leader)
        quorum.build_verdict(obs)
        verdicts.append(time.perf_counter() - started)
    after_rounds = rss_kib()
    tracemalloc.start()
    await client.view([follower, *addresses])
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()

    def ms(values: list[float]) -> str:
        return f"{statistics.median(values) * 1000:.1f} / {max(values) * 1000:.1f} ms"

    print(
        f"dqlite live view, 3 voters, asked from a follower ({rounds} rounds): p50/max {ms(views)}"
    )
    print(f"live view + verdict with readiness: p50/max {ms(verdicts)}")
    print(f"RSS: +{import_kib} KiB after importing {', '.join(CLIENT_MODULES)}")
    print(f"of which Python objects kept (tracemalloc): {kept_by_import_kib():.0f} KiB")
    print(f"RSS: +{after_rounds - after_import} KiB more after {rounds} rounds")
    print(f"tracemalloc peak during one round: {peak / 1024:.1f} KiB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=50)
    asyncio.run(main(parser.parse_args().rounds))
