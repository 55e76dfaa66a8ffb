"""Cost of the health detectors in-process (not a test): one refresh, and the health cycle's share.

The footprint bench shows the whole agent under a noisy machine; this one splits the detectors'
cost in two: a refresh (their own loop, every `health.detectors_interval_s`; with the fsync
probe and the certificate probe when due) and what every health message pays (the blocks'
report, the snapshot and its encoding). Against a fake MicroK8s node (tests/node_fakes.py) and
this machine's real /proc.

    .venv/bin/python -m bench.detectors [--rounds 50]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from pathlib import Path
from typing import Any

from agent.health import verdict
from agent.health.detectors import Detectors
from agent.settings import MicroK8sSettings, Settings, StateSettings
from tests import node_fakes

SYSTEM: dict[str, Any] = {
    "cpu_percent": 1.0,
    "memory": {"total": 4 << 30, "available": 3 << 30, "percent": 25.0},
    "disks": [],
}


def settings(workdir: Path) -> Settings:
    certs = node_fakes.certs_dir(workdir / "certs", {f"c{i}": 365 for i in range(12)})
    state = workdir / "state"
    state.mkdir()
    microk8s = MicroK8sSettings(
        certs_dir=str(certs),
        kubelet_args=str(node_fakes.KUBELET_ARGS),
        backend_dir=str(state),
        kubelet_dir=str(workdir),
    )
    return Settings(microk8s=microk8s, state=StateSettings(dir=str(state)))


def cpu_ms(started: float, rounds: int) -> float:
    return (time.process_time() - started) * 1000 / rounds


async def refreshes(detectors: Detectors, rounds: int) -> dict[str, float]:
    started = time.process_time()
    await detectors.refresh()  # the first: certificate probe (its child's CPU is not counted)
    first = cpu_ms(started, 1)
    started = time.process_time()
    for _ in range(rounds):
        await detectors.refresh()
    return {"first_refresh_ms": first, "refresh_ms": cpu_ms(started, rounds)}


def per_message(detectors: Detectors, rounds: int) -> dict[str, float]:
    def encode(blocks: tuple[dict[str, Any], list[verdict.Finding]] | None) -> bytes:
        snapshot = verdict.build_snapshot(
            node="pi-01", cluster="lab", ts=1.0, session=1, seq=1, system=SYSTEM,
            microk8s={}, kube={}, thresholds=verdict.Thresholds(), detectors=blocks,
        )  # fmt: skip
        return verdict.encode(snapshot)

    started = time.process_time()
    for _ in range(rounds):
        encode(None)
    without = cpu_ms(started, rounds)
    started = time.process_time()
    for _ in range(rounds):
        encode(detectors.report(node_ready=True, connected=True))
    return {"message_without_ms": without, "message_with_ms": cpu_ms(started, rounds)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-bench-detectors-") as tmp:
        detectors = Detectors(settings(Path(tmp)))
        figures = asyncio.run(refreshes(detectors, args.rounds))
        figures |= per_message(detectors, args.rounds * 100)
    print(f"detectors: {args.rounds} refreshes, {args.rounds * 100} messages, CPU time")
    print(f"  first refresh (certs probe started, fsync) : {figures['first_refresh_ms']:.2f} ms")
    print(f"  refresh (processes, clock, eviction)       : {figures['refresh_ms']:.3f} ms")
    print(f"  snapshot + encode without detector blocks  : {figures['message_without_ms']:.4f} ms")
    print(f"  snapshot + encode with the six blocks      : {figures['message_with_ms']:.4f} ms")


if __name__ == "__main__":
    main()
