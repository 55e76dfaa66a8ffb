"""Soak benchmark (not a test): the agent as a subprocess for many fast health cycles.

A private mosquitto, the agent at a 0.1 s health interval with the cli backend on the fake
`microk8s`/`snap` (tests/fakes, built from the recorded fixtures), and a driver that counts live
health messages as cycles and mixes in commands: a signed `status` every 10 cycles and a signed
`addon enable dns` every 100 (which runs the fake microk8s), plus a GET of /status and /metrics
every 100. It prints the agent's RSS and open file descriptors (from /proc) after the warm-up, in
the middle and at the end, and a verdict: RSS growth after warm-up < 1 MiB and no fd growth.

    .venv/bin/python -m bench.soak [--cycles 10000] [--interval 0.1]

RSS is read at quiet moments (just after a health message, no command running) and each figure
is the median of five consecutive cycles, so one transient buffer does not decide the verdict.
The journal keeps every command id (a status result with its health snapshot, ~4 KiB) until its
replay window ends, max_age_s + clock_skew_s: 360 s by default, bounded but longer than the
warm-up. The soak uses 30 + 5 s so that the journal is in steady state before the baseline; with
--max-age 300 --clock-skew 60 expect about rate x 360 s x 4 KiB more, once.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt

from agent.commands import signing
from agent.config import to_toml
from bench.commands import free_port, wait_port

REPO = Path(__file__).resolve().parents[1]
FAKES = REPO / "tests" / "fakes"
FIXTURES = REPO / "tests" / "fixtures" / "microk8s-cli"
NODE = "pi-01"  # a node of the fixtures' kube/nodes.json
ROOT = f"microk8s/soak/nodes/{NODE}"
SAMPLES = 5
TERMINAL = {"succeeded", "failed", "timed_out", "rejected"}


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclasses.dataclass
class Figures:
    """One measurement point: medians over SAMPLES quiet cycles."""

    cycle: int
    rss_kib: float
    fds: int


@dataclasses.dataclass
class Driver:
    """Counts cycles, sends commands, and records every status update by id."""

    client: aiomqtt.Client
    signer: signing.Signer
    http_port: int
    cycles: int = 0
    sent: dict[str, str] = dataclasses.field(default_factory=dict)
    terminal: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    running: set[str] = dataclasses.field(default_factory=set)
    http_errors: int = 0
    tick: asyncio.Event = dataclasses.field(default_factory=asyncio.Event)

    async def pump(self) -> None:
        async for message in self.client.messages:
            topic = message.topic.value
            if topic.endswith("/health"):
                if not message.retain:
                    self.cycles += 1
                    self.tick.set()
                continue
            body = json.loads(bytes(message.payload))
            if body.get("status") in TERMINAL:
                self.terminal.setdefault(body["id"], []).append(body["status"])
                self.running.discard(body["id"])

    async def send(self, verb: str, args: dict[str, Any]) -> None:
        command_id = f"soak-{verb}-{len(self.sent)}"
        now = int(time.time())
        body = {"v": 1, "id": command_id, "verb": verb, "target": NODE, "args": args}
        signed = self.signer.sign({**body, "issued_at": now})
        self.sent[command_id] = verb
        self.running.add(command_id)
        await self.client.publish(f"{ROOT}/cmd", json.dumps(signed), qos=1)

    async def poke_http(self, http: aiohttp.ClientSession) -> None:
        for path in ("/status", "/metrics"):
            try:
                async with http.get(f"http://127.0.0.1:{self.http_port}{path}") as response:
                    await response.read()
                    self.http_errors += response.status != 200
            except aiohttp.ClientError:
                self.http_errors += 1

    async def next_cycle(self) -> int:
        self.tick.clear()
        await asyncio.wait_for(self.tick.wait(), 30)
        return self.cycles


async def quiet_figures(driver: Driver, pid: int) -> Figures:
    """Medians of RSS and fds over the next SAMPLES cycles with no command in flight."""
    rss: list[int] = []
    fds: list[int] = []
    cycle = driver.cycles
    while len(rss) < SAMPLES:
        cycle = await driver.next_cycle()
        if not driver.running:
            rss.append(rss_kib(pid))
            fds.append(open_fds(pid))
    return Figures(cycle, statistics.median(rss), int(statistics.median(fds)))


async def drive(
    ns: argparse.Namespace, port: int, http_port: int, signer: signing.Signer, pid: int
):
    marks = _marks(ns)
    figures: dict[str, Figures] = {}
    async with (
        aiomqtt.Client("127.0.0.1", port) as client,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http,
    ):
        await client.subscribe(f"{ROOT}/health", qos=0)
        await client.subscribe(f"{ROOT}/cmd/+", qos=1)
        driver = Driver(client, signer, http_port)
        pump = asyncio.create_task(driver.pump())
        await driver.next_cycle()
        figures["first"] = Figures(driver.cycles, rss_kib(pid), open_fds(pid))
        started = time.monotonic()
        last = driver.cycles
        while driver.cycles < ns.cycles:
            cycle = await driver.next_cycle()
            for step in range(last + 1, cycle + 1):
                if step % ns.status_every == 0:
                    await driver.send("status", {})
                if step % ns.addon_every == 0:
                    await driver.send("addon", {"name": "dns", "action": "enable"})
                    await driver.poke_http(http)
            last = cycle
            for name, at in marks.items():
                if name not in figures and cycle >= at:
                    figures[name] = await quiet_figures(driver, pid)
                    print(f"  {name:>7}: {_line(figures[name])}", flush=True)
        elapsed = time.monotonic() - started
        await _settle(driver)
        pump.cancel()
        with contextlib.suppress(asyncio.CancelledError, aiomqtt.MqttError):
            await pump
    return figures, driver, elapsed


def _marks(ns: argparse.Namespace) -> dict[str, int]:
    """Where RSS is read: start (after the warm-up), middle, end, and every tenth for the trend."""
    tenth = max(1, ns.cycles // 10)
    marks = {f"@{cycle}": cycle for cycle in range(tenth, ns.cycles, tenth)}
    marks.update(start=ns.warmup, middle=(ns.warmup + ns.cycles) // 2, end=ns.cycles)
    return dict(sorted(marks.items(), key=lambda item: item[1]))


async def _settle(driver: Driver, timeout_s: float = 30) -> None:
    deadline = time.monotonic() + timeout_s
    while driver.running and time.monotonic() < deadline:
        await asyncio.sleep(0.1)


def _line(f: Figures) -> str:
    return f"cycle {f.cycle:>6}  RSS {f.rss_kib / 1024:7.2f} MiB  open fds {f.fds}"


def write_config(work: Path, ns: argparse.Namespace, port: int, http_port: int) -> Path:
    config: dict[str, dict[str, Any]] = {
        "node": {"name": NODE, "cluster": "soak"},
        "mqtt": {"host": "127.0.0.1", "port": port},
        "health": {"interval_s": ns.interval, "sysfs_root": str(work / "no-sysfs")},
        "http": {"port": http_port},
        "commands": {
            "trusted_keys": [str(work / "soak.pub")],
            "max_age_s": ns.max_age,
            "clock_skew_s": ns.clock_skew,
        },
        "microk8s": {
            "backend": "cli",
            "cli": str(FAKES / "microk8s"),
            "snap_cli": str(FAKES / "snap"),
            "status_interval_s": 5,
        },
        "ha": {"enabled": False},
        "state": {"dir": str(work / "state")},
        "log": {"level": "warning", "format": "json"},
    }
    path = work / "agent.toml"
    path.write_text(to_toml(config))
    return path


def start(work: Path, ns: argparse.Namespace) -> tuple[subprocess.Popen[bytes], ...]:
    port, http_port = free_port(), free_port()
    conf = work / "mosquitto.conf"
    conf.write_text(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n")
    mosquitto = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    broker = subprocess.Popen([mosquitto, "-c", str(conf)], stderr=subprocess.DEVNULL)
    wait_port(port)
    env = {**os.environ, "FAKE_FIXTURES": str(FIXTURES)}
    argv = [
        sys.executable,
        "-m",
        "agent",
        "run",
        "--config",
        str(write_config(work, ns, port, http_port)),
    ]
    with (work / "agent.log").open("wb") as log:
        agent = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT, env=env)
    ns.port, ns.http_port = port, http_port
    return broker, agent


def report(
    figures: dict[str, Figures], driver: Driver, elapsed: float, ns: argparse.Namespace, log: Path
) -> bool:
    unreached = [name for name in ("start", "middle", "end") if name not in figures]
    if unreached:
        print(f"too few cycles to reach the {', '.join(unreached)} reading(s): raise --cycles")
        return False
    start, middle, end = figures["start"], figures["middle"], figures["end"]
    growth_kib = end.rss_kib - start.rss_kib
    fd_growth = end.fds - start.fds
    outcomes: dict[str, int] = {}
    for statuses in driver.terminal.values():
        key = statuses[0] if len(statuses) == 1 else f"{len(statuses)} terminals"
        outcomes[key] = outcomes.get(key, 0) + 1
    missing = len(set(driver.sent) - set(driver.terminal))
    errors = sum(
        '"level": "error"' in line for line in log.read_text(errors="replace").splitlines()
    )
    print(f"cycles: {driver.cycles} in {elapsed:.0f} s ({driver.cycles / elapsed:.1f}/s)")
    print(f"commands sent: {len(driver.sent)}; terminal statuses: {outcomes}; none: {missing}")
    print(f"http errors: {driver.http_errors}; agent error log lines: {errors}")
    print(f"first cycle: {_line(figures['first'])}")
    for name in ("start", "middle", "end"):
        print(f"{name:>11}: {_line(figures[name])}")
    trend = sorted(figures.values(), key=lambda f: f.cycle)[1:]
    print("RSS trend (MiB):", " ".join(f"{f.rss_kib / 1024:.2f}" for f in trend))
    late = (end.rss_kib - middle.rss_kib) / 1024
    print(
        f"growth start->middle {(middle.rss_kib - start.rss_kib) / 1024:+.2f} MiB,"
        f" middle->end {late:+.2f} MiB"
    )
    rss_ok = growth_kib < ns.threshold_mib * 1024
    fds_ok = fd_growth <= 0
    print(
        f"verdict: RSS growth after warm-up {growth_kib / 1024:+.2f} MiB"
        f" (limit {ns.threshold_mib:g} MiB) {'PASS' if rss_ok else 'FAIL'};"
        f" fd growth {fd_growth:+d} {'PASS' if fds_ok else 'FAIL'}"
    )
    return rss_ok and fds_ok and not missing and set(outcomes) == {"succeeded"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--interval", type=float, default=0.1, help="health.interval_s")
    parser.add_argument("--warmup", type=int, help="cycles before the baseline (default 30 %%)")
    parser.add_argument("--status-every", type=int, default=10)
    parser.add_argument("--addon-every", type=int, default=100)
    parser.add_argument("--max-age", type=int, default=30, help="commands.max_age_s")
    parser.add_argument("--clock-skew", type=int, default=5, help="commands.clock_skew_s")
    parser.add_argument("--threshold-mib", type=float, default=1.0)
    ns = parser.parse_args()
    # RSS keeps settling for minutes (allocator arenas, worker threads' stacks, high-water marks)
    # after Python's own memory is flat: measured, a 100 s warm-up left +1 MiB that then stopped.
    ns.warmup = ns.warmup if ns.warmup is not None else max(100, ns.cycles * 3 // 10)
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        work = Path(tmp)
        private, _ = signing.generate("soak", work)
        signer = signing.Signer.from_file(private)
        broker, agent = start(work, ns)
        print(f"agent pid {agent.pid}, {ns.cycles} cycles at {ns.interval} s", flush=True)
        try:
            figures, driver, elapsed = asyncio.run(
                drive(ns, ns.port, ns.http_port, signer, agent.pid)
            )
        finally:
            agent.terminate()
            agent.wait(timeout=15)
            broker.terminate()
            broker.wait(timeout=5)
        ok = report(figures, driver, elapsed, ns, work / "agent.log")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
