"""HA round benchmark (not a test): how long one probe round and one verdict take.

Opens fake members on loopback addresses (dqlite, API server and cluster agent listeners on the
real ports; needs root to bind 16443/25000 on 127.a.b.x) and prints, for 3, 7 and 15 members:

- one `probes.probe_all` round, p50/max wall time (the round runs all probes concurrently, so it
  should stay near one TLS handshake, far below `ha.probe_timeout_s`);
- the same round with one member whose cluster agent accepts TCP but never answers (bounded by
  the probe timeout, here 0.5 s);
- the pure part (verdict + peer view over 3 peers' reports), µs per evaluation.

    .venv/bin/python -m bench.ha_round [--rounds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

from agent.ha import peers, probes, quorum
from agent.ha.membership import Member, Membership
from agent.link import inbound
from tests.cluster_fakes import FakeMember, loopback_block, self_signed

TIMEOUT_S = 0.5


HELD: list[asyncio.StreamWriter] = []


async def _silent(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Accept and never answer the TLS handshake (closed at the end of the run)."""
    HELD.append(writer)


async def _rounds(members: list[Member], rounds: int) -> list[float]:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await probes.probe_all(members, TIMEOUT_S)
        times.append(time.perf_counter() - started)
    return times


def _pure(members: tuple[Member, ...], evaluations: int) -> float:
    found = {m.address: quorum.MemberProbe(dqlite=True, apiserver=True) for m in members}
    obs = quorum.Observation(
        "n0", 0.0, Membership(members, "cluster.yaml", members[0]), "voter", found, {}
    )
    book = peers.PeerBook("n0", 60.0)
    own = quorum.build_verdict(obs)
    for i in range(1, 4):
        peer = json.dumps({**own, "node": f"n{i}"}).encode()
        book.record_verdict(f"n{i}", inbound.decode_peer_verdict(peer, f"n{i}"), 0.0)
    started = time.perf_counter()
    for _ in range(evaluations):
        book.view(quorum.build_verdict(obs), 1.0)
    return (time.perf_counter() - started) / evaluations * 1e6


async def bench(size: int, rounds: int, tmp: Path) -> None:
    block = loopback_block()
    tls = self_signed(tmp)
    fakes = [await FakeMember(f"{block}.{i + 2}", tls).start() for i in range(size)]
    silent_host = f"{block}.{size + 2}"
    silent = await asyncio.start_server(_silent, silent_host, probes.CLUSTER_AGENT_PORT)
    try:
        members = [Member(f.address, "voter") for f in fakes]
        healthy = await _rounds(members, rounds)
        slow = await _rounds(
            [*members, Member(f"{silent_host}:19001", "voter")], max(3, rounds // 4)
        )
    finally:
        for writer in HELD:
            writer.close()
        silent.close()
        for fake in fakes:
            await fake.stop()
    print(
        f"{size:>3} members: round p50 {statistics.median(healthy) * 1000:6.1f} ms, "
        f"max {max(healthy) * 1000:6.1f} ms | with a silent cluster agent: "
        f"p50 {statistics.median(slow) * 1000:6.1f} ms (timeout {TIMEOUT_S * 1000:.0f} ms) | "
        f"verdict+view {_pure(tuple(members), 2000):6.1f} µs"
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for size in (3, 7, 15):
            await bench(size, args.rounds, Path(tmp))


if __name__ == "__main__":
    asyncio.run(main())
