"""Flood benchmark (not a test): the agent's memory while 16 MB messages rain on its topics.

Issue 11 measured 54 MB → 714 MB peak (634 MB kept) for 40 x 16 MB messages on `R/cmd`, and
326 MB held by a retained 50 MB peer verdict. This runs the agent (HA on) against a private
Mosquitto with *no* `max_packet_size` (the agent's own MQTT 5 Maximum Packet Size is what is
measured), publishes the flood, samples the agent's RSS every 50 ms, then checks that it still
answers a `status` command.

    .venv/bin/python -m bench.flood [--messages 40] [--size-mib 16] [--retained-mib 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

from bench.footprint import REPO, free_port, rss_mib, start_broker

ROOT = "microk8s/default/nodes/bench"


def write_config(workdir: Path, port: int) -> Path:
    path = workdir / "agent.toml"
    path.write_text(
        f'[node]\nname = "bench"\n[mqtt]\nport = {port}\n[health]\ninterval_s = 5\n'
        f'[http]\nport = {free_port()}\n[state]\ndir = "{workdir / "state"}"\n'
        '[log]\nformat = "json"\nlevel = "info"\n[ha]\nenabled = true\ninterval_s = 1\n'
    )
    return path


async def sample(pid: int, peak: list[float], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak.append(rss_mib(pid))
        await asyncio.sleep(0.05)


async def publish(port: int, topic: str, payload: bytes, *, retain: bool = False) -> bool:
    """One message from a fresh connection; False when the broker refused it (disconnect)."""
    try:
        async with aiomqtt.Client("127.0.0.1", port, protocol=aiomqtt.ProtocolVersion.V5) as c:
            await c.publish(topic, payload, qos=1, retain=retain, timeout=15)
    except aiomqtt.MqttError:
        return False
    return True


async def answered(client: aiomqtt.Client, qos: int, timeout_s: float = 20) -> bool:
    """Send an unsigned `status` (allowed by PROTOCOL.md) and wait for its final status."""
    command_id = f"flood-{time.time_ns()}"
    await client.subscribe(f"{ROOT}/cmd/{command_id}")
    body = {"v": 1, "id": command_id, "verb": "status", "target": "bench", "args": {}}
    body["issued_at"] = int(time.time())
    await client.publish(f"{ROOT}/cmd", json.dumps(body).encode(), qos=qos)
    try:
        async with asyncio.timeout(timeout_s):
            async for message in client.messages:
                payload = message.payload
                if json.loads(bytes(payload))["status"] == "succeeded":
                    return True
    except TimeoutError:
        return False
    return False


async def flood(port: int, config: Path, ns: argparse.Namespace) -> dict[str, float]:
    log = (config.parent / "agent.log").open("wb")
    agent = subprocess.Popen(
        [sys.executable, "-m", "agent", "run", "--config", str(config)],
        cwd=REPO,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        await asyncio.sleep(3)  # connected, subscribed, first health out
        before = rss_mib(agent.pid)
        peak: list[float] = []
        stop = asyncio.Event()
        sampler = asyncio.create_task(sample(agent.pid, peak, stop))
        started = time.monotonic()
        big = b"x" * int(ns.size_mib * 1024 * 1024)
        retained = b"[" + b"0," * int(ns.retained_mib * 512 * 1024) + b"0]"
        target = f"{ROOT}/cmd" if ns.target == "cmd" else "microk8s/default/nodes/peer/state"
        floods = [(target, big, False)] * ns.messages
        refused = 0
        for topic, payload, retain in [*floods, ("microk8s/default/nodes/peer/ha", retained, True)]:
            refused += not await publish(port, topic, payload, retain=retain)
        flood_s = time.monotonic() - started
        await asyncio.sleep(3)
        stop.set()
        await sampler
        await publish(port, "microk8s/default/nodes/peer/ha", b"", retain=True)
        async with aiomqtt.Client("127.0.0.1", port) as fresh:
            ok = await answered(fresh, ns.status_qos)
            after = rss_mib(agent.pid)
        return {
            "refused_by_broker": float(refused),
            "rss_before_mib": before,
            "rss_peak_mib": max(peak),
            "rss_after_mib": after,
            "flood_s": flood_s,
            "status_answered": float(ok),
            "alive": float(agent.poll() is None),
        }
    finally:
        agent.terminate()
        agent.wait(10)
        log.close()
        if ns.log:
            print((config.parent / "agent.log").read_text()[-4000:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--messages", type=int, default=40)
    parser.add_argument("--size-mib", type=float, default=16)
    parser.add_argument("--retained-mib", type=float, default=50)
    parser.add_argument("--log", action="store_true", help="print the end of the agent's log")
    parser.add_argument(
        "--broker-max-packet",
        type=int,
        default=0,
        help="the broker's max_packet_size (configs/mosquitto ships 131072); 0: none",
    )
    parser.add_argument("--status-qos", type=int, default=1, choices=(0, 1))
    parser.add_argument(
        "--target", choices=("cmd", "peer"), default="cmd", help="R/cmd, or a peer's R/state"
    )
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-flood-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        broker = start_broker(workdir, port, ns.broker_max_packet)
        try:
            figures = asyncio.run(flood(port, write_config(workdir, port), ns))
        finally:
            broker.terminate()
            broker.wait(5)
    print(
        f"flood: {ns.messages} x {ns.size_mib:g} MiB on {ns.target} + a retained"
        f" {ns.retained_mib:g} MiB peer verdict, python {sys.version.split()[0]}"
    )
    print(f"  broker max_packet_size           : {ns.broker_max_packet or 'none'}")
    print(f"  flood messages refused by broker : {figures['refused_by_broker']:.0f}")
    print(f"  status request QoS               : {ns.status_qos}")
    print(f"  agent RSS before                 : {figures['rss_before_mib']:.1f} MiB")
    print(f"  agent RSS peak during the flood  : {figures['rss_peak_mib']:.1f} MiB")
    print(f"  agent RSS after                  : {figures['rss_after_mib']:.1f} MiB")
    print(f"  flood published in               : {figures['flood_s']:.1f} s")
    print(f"  status answered after the flood  : {bool(figures['status_answered'])}")
    print(f"  agent alive                      : {bool(figures['alive'])}")
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
