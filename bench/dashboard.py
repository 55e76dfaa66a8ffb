"""Dashboard benchmark (not a test): `edge-agent dashboard` watching a simulated 50-node fleet.

The bench publishes, on a private mosquitto, what 50 agents would: a retained birth and HA verdict
per node (3 voters, the rest workers), then one retained health message per node every 10 s
(spread evenly, so 5 messages per second), plus a command status now and then. It measures the
dashboard process from /proc: PSS, RSS and CPU (% of one core), first with no page open, then
with one page open (one Server-Sent Events client, which gets the whole snapshot after each
change, at most once a second), and the snapshot's size.

    .venv/bin/python -m bench.dashboard [--nodes 50] [--interval 10] [--duration 60]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from bench.footprint import REPO, WARMUP_S, cpu_seconds, free_port, pss_mib, rss_mib, start_broker

BASE = "microk8s/bench/nodes"


def health(node: str, seq: int, rng: random.Random) -> dict[str, Any]:
    """A health message shaped like an agent's (about 1.2 kB)."""
    temperature = round(rng.uniform(42, 78), 1)
    return {
        "schema": 1,
        "node": node,
        "cluster": "bench",
        "ts": round(time.time(), 2),
        "session": 1,
        "seq": seq,
        "status": "degraded" if temperature >= 75 else "ok",
        "reasons": [f"temperature {temperature} C >= 75.0 C"] if temperature >= 75 else [],
        "system": {
            "cpu_percent": round(rng.uniform(2, 60), 1),
            "load": [0.31, 0.22, 0.18],
            "memory": {"total": 8.2e9, "available": 6.1e9, "percent": 25.6},
            "disks": [{"mount": "/", "total": 6.2e10, "used": 1.1e10, "percent": 17.7}],
            "temperature_c": temperature,
            "throttled": {"raw": "0x0", "under_voltage": False, "throttled": False},
            "uptime_s": 123456 + seq * 10,
            "net": {"rx_bytes": 1000 * seq, "tx_bytes": 2000 * seq},
        },
        "microk8s": {
            "installed": True,
            "running": True,
            "version": "v1.32.3",
            "channel": "1.32-strict/stable",
            "ha": True,
            "addons": ["dns", "ha-cluster"],
        },
        "kube": {"node_ready": True},
    }


def ha(node: str, voter: bool) -> dict[str, Any]:
    return {
        "schema": 1,
        "node": node,
        "ts": round(time.time(), 2),
        "role": "voter" if voter else "worker",
        "verdict": "healthy",
        "quorum": {"size": 3, "reachable": 3, "needed": 2, "ok": True, "margin": 1},
        "reasons": [],
    }


async def fleet(port: int, nodes: int, interval: float, stop: asyncio.Event) -> int:
    """Publish births and verdicts, then healths until `stop`; returns messages published."""
    names = [f"pi-{index:02d}" for index in range(1, nodes + 1)]
    rng = random.Random(7)
    sent = 0
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for index, name in enumerate(names):
            birth = {"state": "online", "session": 1, "ts": time.time(), "agent_version": "0.1.0"}
            await client.publish(f"{BASE}/{name}/state", json.dumps(birth), qos=1, retain=True)
            await client.publish(f"{BASE}/{name}/ha", json.dumps(ha(name, index < 3)), 1, True)
        seq = 0
        while not stop.is_set():
            for name in names:
                body = json.dumps(health(name, seq, rng))
                await client.publish(f"{BASE}/{name}/health", body, qos=1, retain=True)
                sent += 1
                if sent % 97 == 0:
                    status = {"id": f"c-{sent}", "verb": "status", "status": "succeeded"}
                    await client.publish(f"{BASE}/{name}/cmd/c-{sent}", json.dumps(status), 1)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), interval / len(names))
                if stop.is_set():
                    break
            seq += 1
    return sent


async def sse_client(url: str, stop: asyncio.Event, counts: dict[str, int]) -> None:
    async with aiohttp.ClientSession() as session, session.get(f"{url}/events") as answer:
        while not stop.is_set():
            line = await answer.content.readline()
            if line.startswith(b"data: "):
                counts["events"] += 1
                counts["bytes"] = len(line)


async def phase(pid: int, seconds: float) -> dict[str, float]:
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    pss: list[float] = []
    while time.monotonic() - t0 < seconds:
        await asyncio.sleep(2)
        pss.append(pss_mib(pid))
    cpu = cpu_seconds(pid) - cpu0
    return {
        "pss_mib": round(max(pss), 1),
        "rss_mib": round(rss_mib(pid), 1),
        "cpu_percent": round(100 * cpu / (time.monotonic() - t0), 2),
    }


async def run(nodes: int, interval: float, duration: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp:
        workdir = Path(tmp)
        mqtt_port, http_port = free_port(), free_port()
        broker = start_broker(workdir, mqtt_port)
        argv = [sys.executable, "-m", "agent", "dashboard", "--broker", f"127.0.0.1:{mqtt_port}"]
        argv += ["--cluster", "bench", "--port", str(http_port), "--log-level", "warning"]
        env = {"XDG_CONFIG_HOME": str(workdir), "PATH": "/usr/bin:/bin"}
        dashboard = subprocess.Popen(argv, cwd=REPO, env=env, stderr=subprocess.DEVNULL)
        stop = asyncio.Event()
        publisher = asyncio.create_task(fleet(mqtt_port, nodes, interval, stop))
        url = f"http://127.0.0.1:{http_port}"
        try:
            await asyncio.sleep(WARMUP_S)
            idle = await phase(dashboard.pid, duration)
            counts = {"events": 0, "bytes": 0}
            client = asyncio.create_task(sse_client(url, stop, counts))
            await asyncio.sleep(3)
            live = await phase(dashboard.pid, duration)
            async with aiohttp.ClientSession() as session:
                started = time.perf_counter()
                async with session.get(f"{url}/api/fleet") as answer:
                    snapshot = await answer.read()
                snapshot_ms = (time.perf_counter() - started) * 1000
            stop.set()
            client.cancel()
            with contextlib.suppress(asyncio.CancelledError, aiohttp.ClientError):
                await client
            sent = await publisher
        finally:
            stop.set()
            dashboard.terminate()
            dashboard.wait(timeout=10)
            broker.terminate()
            broker.wait(timeout=10)
    rows = len(json.loads(snapshot)["nodes"])
    return {
        "nodes": nodes,
        "rows_shown": rows,
        "health_every_s": interval,
        "messages_published": sent,
        "phase_s": duration,
        "no_page": idle,
        "one_live_page": live,
        "events_pushed": counts["events"],
        "snapshot_bytes": len(snapshot),
        "snapshot_ms": round(snapshot_ms, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=50)
    parser.add_argument("--interval", type=float, default=10.0, help="health period per node")
    parser.add_argument("--duration", type=float, default=60.0, help="seconds per phase")
    args = parser.parse_args()
    result = asyncio.run(run(args.nodes, args.interval, args.duration))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
