"""Command pipeline benchmark (not a test): latency on loopback and parser throughput.

Starts a private mosquitto on a free port and the agent as a subprocess whose `microk8s` and
`snap` are `/bin/true` (so the figures are the agent's, not MicroK8s'), then prints:

- publish → `accepted` latency of signed mutating commands, p50/p99 (targets 20 / 50 ms); the
  journal is fsync'd before `accepted`, on the filesystem of the temporary directory;
- a `status` command's round trip (publish → `succeeded`), p99 (target 50 ms);
- parser + validator + signature check throughput on one core, envelopes/s (target 2,000/s).

    .venv/bin/python -m bench.commands [--samples 300] [--state-dir DIR]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from agent.commands import signing, verbs, wire
from agent.config import to_toml

REPO = Path(__file__).resolve().parents[1]
NODE = "bench-01"
ROOT = f"microk8s/bench/nodes/{NODE}"
NO_DELAY = ((socket.IPPROTO_TCP, socket.TCP_NODELAY, 1),)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_port(port: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"port {port} did not open")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def start_broker(work: Path, port: int, *, nodelay: bool) -> subprocess.Popen[bytes]:
    conf = work / "mosquitto.conf"
    text = f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n"
    conf.write_text(text + ("set_tcp_nodelay true\n" if nodelay else ""))
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    proc = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    return proc


def start_agent(work: Path, port: int, public: Path, state_dir: Path) -> subprocess.Popen[bytes]:
    config: dict[str, dict[str, Any]] = {
        "node": {"name": NODE, "cluster": "bench"},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "health": {"interval_s": 5},
        "http": {"enabled": False},
        "commands": {"trusted_keys": [str(public)], "queue_size": 64},
        "microk8s": {"backend": "cli", "cli": "/bin/true", "snap_cli": "/bin/true"},
        "ha": {"enabled": False},
        "state": {"dir": str(state_dir)},
        "log": {"level": "warning", "format": "json"},
    }
    path = work / "agent.toml"
    path.write_text(to_toml(config))
    argv = [sys.executable, "-m", "agent", "run", "--config", str(path)]
    return subprocess.Popen(argv, cwd=REPO, stdout=subprocess.DEVNULL)


class Waiter:
    """Reads statuses and wakes whoever waits for (id, status)."""

    def __init__(self, client: aiomqtt.Client) -> None:
        self.client = client
        self.waiting: dict[tuple[str, str], asyncio.Future[float]] = {}
        self.health = asyncio.Event()

    async def pump(self) -> None:
        async for message in self.client.messages:
            if message.topic.value.endswith("/health"):
                self.health.set()
                continue
            body = json.loads(message.payload)
            future = self.waiting.pop((body["id"], body["status"]), None)
            if future is not None and not future.done():
                future.set_result(time.perf_counter())

    def expect(self, command_id: str, status: str) -> asyncio.Future[float]:
        future: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.waiting[(command_id, status)] = future
        return future


def envelope(verb: str, args: dict[str, Any], index: int) -> dict[str, Any]:
    return {
        "v": 1,
        "id": f"b-{os.getpid()}-{index}",
        "verb": verb,
        "target": NODE,
        "args": args,
        "issued_at": int(time.time()),
    }


async def measure(port: int, signer: signing.Signer, samples: int) -> dict[str, list[float]]:
    accepted_ms: list[float] = []
    status_ms: list[float] = []
    async with aiomqtt.Client("127.0.0.1", port, socket_options=NO_DELAY) as client:
        await client.subscribe(f"{ROOT}/cmd/+", qos=1)
        await client.subscribe(f"{ROOT}/health", qos=0)
        waiter = Waiter(client)
        pump = asyncio.create_task(waiter.pump())
        await asyncio.wait_for(waiter.health.wait(), 30)
        for index in range(samples + 20):  # the first 20 warm up
            body = signer.sign(envelope("addon", {"name": "dns", "action": "enable"}, index))
            accepted = waiter.expect(body["id"], "accepted")
            finished = waiter.expect(body["id"], "succeeded")
            started = time.perf_counter()
            await client.publish(f"{ROOT}/cmd", json.dumps(body), qos=1)
            at = await asyncio.wait_for(accepted, 10)
            await asyncio.wait_for(finished, 10)
            if index >= 20:
                accepted_ms.append((at - started) * 1000)
        for index in range(samples + 20):
            body = envelope("status", {}, 100_000 + index)
            done = waiter.expect(body["id"], "succeeded")
            started = time.perf_counter()
            await client.publish(f"{ROOT}/cmd", json.dumps(body), qos=1)
            at = await asyncio.wait_for(done, 10)
            if index >= 20:
                status_ms.append((at - started) * 1000)
        pump.cancel()
    return {"accepted": accepted_ms, "status": status_ms}


def throughput(signer: signing.Signer, public: Path, seconds: float = 3.0) -> float:
    """Envelopes/s through decode → signature → envelope and argument checks, one core."""
    verifier = signing.Verifier.from_files([str(public)])
    limits = wire.Limits(NODE, 300, 60)
    args = {"name": "metallb", "action": "enable", "args": ["10.0.0.200-10.0.0.220"]}
    payloads = [json.dumps(signer.sign(envelope("addon", args, i))).encode() for i in range(1000)]
    count = 0
    started = time.perf_counter()
    while time.perf_counter() - started < seconds:
        for payload in payloads:
            decoded = wire.decode(payload)
            assert verifier.authenticate(decoded.body, mutating=True, allow_unsigned=False) is None
            verbs.read_request(decoded, limits, time.time(), retained=False)
        count += len(payloads)
    return count / (time.perf_counter() - started)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=300)
    parser.add_argument("--state-dir", type=Path, help="journal location (default: a temp dir)")
    parser.add_argument(
        "--broker-nagle",
        action="store_true",
        help="leave mosquitto's set_tcp_nodelay off (its default) to see what it costs",
    )
    ns = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-commands-") as tmp:
        work = Path(tmp)
        private, public = signing.generate("bench", work)
        signer = signing.Signer.from_file(private)
        state_dir = ns.state_dir or work / "state"
        port = free_port()
        broker = start_broker(work, port, nodelay=not ns.broker_nagle)
        agent = start_agent(work, port, public, state_dir)
        try:
            figures = asyncio.run(measure(port, signer, ns.samples))
        finally:
            agent.terminate()
            agent.wait(timeout=15)
            broker.terminate()
            broker.wait(timeout=5)
        rate = throughput(signer, public)
    accepted, status = figures["accepted"], figures["status"]
    nodelay = "false" if ns.broker_nagle else "true"
    print(f"journal: {state_dir} (fsync'd before accepted); broker set_tcp_nodelay: {nodelay}")
    print(
        f"publish -> accepted ({len(accepted)} signed addon commands): "
        f"p50 {statistics.median(accepted):.1f} ms, p99 {percentile(accepted, 99):.1f} ms "
        "(targets 20 / 50 ms)"
    )
    print(
        f"status round trip ({len(status)}): p50 {statistics.median(status):.1f} ms, "
        f"p99 {percentile(status, 99):.1f} ms (target p99 50 ms)"
    )
    print(f"parse + validate + verify: {rate:,.0f} envelopes/s on one core (target 2,000/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
