"""Footprint benchmark (not a test): the agent against a private broker, measured from /proc.

Profiles, all run at once so they see the same machine, beside a bare interpreter of the same venv
sleeping in the same run (the floor every target is expressed against):
- `minimal`: no MicroK8s, HA off, no keys, HTTP on.
- `pi`: what a MicroK8s HA node runs (bench/footprint_pi.py): snap backend on the fakes, HA on
  against a live three-voter dqlite on 127.0.0.11-13, a trusted key and one signed command before
  the window, every health detector fed (Pi sysfs tree), HTTP on, defaults elsewhere.

For each: time to the first health message; steady PSS/RSS (max of 5 s samples) and over the
floor; CPU of the agent's process tree (children included, reaped ones too) as % of one core and
per health message over the window; bytes per health message; resident modules by family at the
end (dumped by the agent on SIGUSR1 through a small launcher), and whether kubernetes_asyncio was
one. CPU figures on a shared machine are upper bounds: compare runs made side by side.
`--starts N` instead starts each profile's agent N times, one at a time, and prints only the
times to the first health message (median, min, max): start-up is what a loaded machine bends most.

    .venv/bin/python -m bench.footprint [--profile minimal,pi] [--interval 10] [--window 120]
    .venv/bin/python -m bench.footprint --starts 10
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from agent.config import to_toml

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_S = 10.0
SAMPLE_EVERY_S = 5.0
PROFILES = ("minimal", "pi")
LAUNCHER = (
    "import runpy, signal, sys\n"
    "path = sys.argv.pop(1)\n"
    "def dump(*_):\n"
    "    with open(path, 'w') as out: out.write('\\n'.join(sorted(sys.modules)))\n"
    "signal.signal(signal.SIGUSR1, dump)\n"
    "sys.argv = ['agent', *sys.argv[1:]]\n"
    "runpy.run_module('agent', run_name='__main__', alter_sys=True)\n"
)
"""Runs `python -m agent ARGS` and writes sys.modules to a file on SIGUSR1 (nothing else)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith("Pss:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no Pss in smaps_rollup")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def cpu_seconds(pid: int) -> float:
    """utime + stime of one process (10 ms ticks; bench/peers_measure.py has the finer clock)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def start_broker(workdir: Path, port: int, max_packet: int = 0) -> subprocess.Popen[bytes]:
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
    conf = workdir / "mosquitto.conf"
    limit = f"max_packet_size {max_packet}\n" if max_packet else ""
    conf.write_text(
        f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nuser root\n{limit}"
    )
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
            return process
        except OSError:
            time.sleep(0.05)
    raise RuntimeError("mosquitto did not start")


def commit() -> str:
    """The measured tree's commit, for the figure's label (docs name the commit of each figure)."""
    git = shutil.which("git")
    if git is None:
        return "unknown (no git)"
    argv = [git, "rev-parse", "--short", "HEAD"]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, check=False)
    return done.stdout.strip() or "unknown (not a git checkout)"


def write_config(workdir: Path, port: int, interval: float, detectors: bool = False) -> Path:
    """The minimal profile's config (also the agent row of bench/peers.py); with `detectors`,
    the health detectors run against a fake MicroK8s node (`fake_microk8s`), else they are off."""
    values: dict[str, dict[str, Any]] = {
        "node": {"name": "bench"},
        "mqtt": {"port": port},
        "health": {"interval_s": interval, "detectors_enabled": detectors},
        "http": {"port": free_port()},
        "state": {"dir": str(workdir / "state")},
        "log": {"format": "json", "level": "warning"},
        "ha": {"enabled": False},
    }
    if detectors:
        values["microk8s"] = fake_microk8s(workdir, backend_dir=workdir / "state")
    return _write(workdir, values)


def fake_microk8s(workdir: Path, *, backend_dir: Path) -> dict[str, str]:
    """MicroK8s' files for the detectors (12 certificates, the kubelet's args); the `[microk8s]`
    keys that point at them. dqlite's backend dir is the caller's (fsync is timed there)."""
    from tests import node_fakes

    names = ["ca", "server", "front-proxy-ca", "front-proxy-client", "kubelet", "proxy"]
    names += ["controller", "scheduler", "apiserver-kubelet-client", "client", "etc1", "etc2"]
    certs = node_fakes.certs_dir(workdir / "certs", dict.fromkeys(names, 365))
    args = workdir / "kubelet.args"
    args.write_text(node_fakes.KUBELET_ARGS.read_text().replace("${SNAP_DATA}/certs", str(certs)))
    backend_dir.mkdir(parents=True, exist_ok=True)
    return {
        "certs_dir": str(certs),
        "kubelet_args": str(args),
        "backend_dir": str(backend_dir),
        "kubelet_dir": str(workdir),
    }


def _write(workdir: Path, values: dict[str, Any]) -> Path:
    path = workdir / "agent.toml"
    path.write_text(to_toml(values))
    return path


def memory_split(pid: int) -> dict[str, float]:
    """PSS by kind (anonymous = heap and stacks, file = code and libraries) and the thread count."""
    split: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("Pss_Anon", "Pss_File"):
            split[key.lower() + "_mib"] = int(line.split()[1]) / 1024
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            split["threads"] = float(line.split()[1])
    return split


def family(module: str) -> str:
    top = module.split(".", 1)[0]
    if top in sys.stdlib_module_names or top in ("__main__", "_distutils_hack"):
        return "stdlib"
    if top.startswith(("_", "cython")):
        return "native glue"
    return top


@dataclasses.dataclass
class Run:
    """One agent under measurement and what was seen of it."""

    name: str
    health_topic: str
    workdir: Path
    config: Path
    interval: float
    window: float
    command: tuple[str, bytes, str] | None = None
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    first_at: float | None = None
    command_status: str | None = None
    window_at: float | None = None
    cpu_start: float = 0.0
    messages: int = 0
    sizes: list[int] = dataclasses.field(default_factory=list)
    pss: list[float] = dataclasses.field(default_factory=list)
    rss: list[float] = dataclasses.field(default_factory=list)
    next_sample: float = 0.0
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    @property
    def window_end(self) -> float:
        return float("inf") if self.window_at is None else self.window_at + self.window

    @property
    def ready(self) -> bool:
        """First health seen and, in the pi profile, the signed command done."""
        return self.first_at is not None and (self.command is None or bool(self.command_status))

    def start(self) -> None:
        argv = [sys.executable, "-c", LAUNCHER, str(self.workdir / "modules.txt")]
        argv += ["run", "--config", str(self.config)]
        self.started = time.monotonic()
        with (self.workdir / "agent.log").open("wb") as log:
            self.process = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def modules(self) -> list[str]:
        path = self.workdir / "modules.txt"
        os.kill(self.pid, signal.SIGUSR1)
        for _ in range(50):
            if path.exists() and path.stat().st_size:
                return path.read_text().split()
            time.sleep(0.1)
        return []


async def _collect(client: aiomqtt.Client, runs: list[Run], floor_pid: int) -> list[float]:
    by_topic = {run.health_topic: run for run in runs}
    by_status = {run.command[2]: run for run in runs if run.command}
    floor: list[float] = []
    messages = client.messages
    while any(run.window_at is None or time.monotonic() < run.window_end for run in runs):
        try:
            message = await asyncio.wait_for(anext(messages), timeout=0.5)
        except TimeoutError:
            message = None
        now = time.monotonic()
        if message is not None and isinstance(message.payload, bytes):
            topic = message.topic.value
            if (run := by_topic.get(topic)) is not None:
                await _health_seen(client, run, len(message.payload), now)
            elif (run := by_status.get(topic)) is not None:
                status = json.loads(message.payload).get("status")
                if status in ("succeeded", "failed", "rejected", "timed_out"):
                    run.command_status = str(status)
        for run in runs:
            _tick(run, now, floor_pid, floor)
    for run in runs:
        _tick(run, float("inf"), floor_pid, floor)
    return floor


async def _health_seen(client: aiomqtt.Client, run: Run, size: int, now: float) -> None:
    if run.first_at is None:
        run.first_at = now
        if run.command is not None:
            await client.publish(run.command[0], run.command[1], qos=1)
    run.sizes.append(size)
    if run.window_at is not None and now < run.window_end:
        run.messages += 1


def _tick(run: Run, now: float, floor_pid: int, floor: list[float]) -> None:
    """Open the window once warmed up, sample memory every 5 s, close it at its end."""
    from bench.peers_measure import tree_cpu_s  # peers_measure imports this module

    warm = run.first_at is not None and now >= run.first_at + WARMUP_S
    if run.window_at is None and run.ready and warm:
        run.window_at, run.cpu_start, run.next_sample = now, tree_cpu_s(run.pid), now
    if run.window_at is None or run.figures:
        return
    if run.next_sample <= now < run.window_end:
        run.pss.append(pss_mib(run.pid))
        run.rss.append(rss_mib(run.pid))
        floor.append(pss_mib(floor_pid))
        run.next_sample = now + SAMPLE_EVERY_S
    if now >= run.window_end:
        ended = min(now, time.monotonic())
        _finish(run, tree_cpu_s(run.pid) - run.cpu_start, ended - run.window_at)


def _finish(run: Run, cpu_s: float, window_s: float) -> None:
    assert run.first_at is not None
    split = memory_split(run.pid)
    modules = run.modules()
    families: dict[str, int] = {}
    for name in modules:
        families[family(name)] = families.get(family(name), 0) + 1
    run.figures = {
        "startup_s": run.first_at - run.started,
        "pss_mib": max(run.pss),
        "rss_mib": max(run.rss),
        "cpu_percent_one_core": 100 * cpu_s / window_s,
        "cpu_ms_per_message": 1000 * cpu_s / max(run.messages, 1),
        "bytes_per_message": sum(run.sizes) / max(len(run.sizes), 1),
        "messages": run.messages,
        "window_s": window_s,
        "command": run.command_status,
        "modules": len(modules),
        "families": dict(sorted(families.items(), key=lambda item: -item[1])),
        "kubernetes_asyncio": "kubernetes_asyncio" in families,
        **split,
    }


async def first_health_times(port: int, runs: list[Run], starts: int) -> dict[str, list[float]]:
    """Start each profile's agent `starts` times, one at a time: seconds to its first health."""
    times: dict[str, list[float]] = {run.name: [] for run in runs}
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe("microk8s/#", qos=1)
        messages = client.messages
        for _ in range(starts):
            for run in runs:
                run.start()
                async with asyncio.timeout(60):
                    while (await anext(messages)).topic.value != run.health_topic:
                        pass
                times[run.name].append(time.monotonic() - run.started)
                assert run.process is not None
                run.process.terminate()
                run.process.wait(15)
    return times


async def measure(
    profiles: list[str], interval: float, window: float, starts: int = 0, *, detectors: bool = False
) -> dict[str, Any]:
    """The window's figures; with `starts`, only the times to the first health message.
    `detectors` turns the minimal profile's health detectors on (the pi profile always has them)."""
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        broker = start_broker(workdir, port)
        try:
            async with contextlib.AsyncExitStack() as stack:
                runs = [
                    await _prepare(
                        stack, name, workdir, port, (interval, window), detectors=detectors
                    )
                    for name in profiles
                ]
                if starts:
                    return {"starts": await first_health_times(port, runs, starts)}
                return await _run(port, runs, interval, window)
        finally:
            broker.terminate()
            broker.wait(5)


async def _prepare(
    stack: contextlib.AsyncExitStack,
    name: str,
    workdir: Path,
    port: int,
    timing: tuple[float, float],
    *,
    detectors: bool,
) -> Run:
    interval, window = timing
    home = workdir / name
    home.mkdir()
    if name == "minimal":
        config = write_config(home, port, interval, detectors)
        return Run(name, "microk8s/default/nodes/bench/health", home, config, interval, window)
    from bench import footprint_pi  # pulls in the fakes: only for this profile

    values = await stack.enter_async_context(footprint_pi.pi_world(home, port, free_port()))
    values["health"]["interval_s"] = interval
    config = _write(home, values)
    run = Run(name, f"{footprint_pi.ROOT}/health", home, config, interval, window)
    run.command = footprint_pi.signed_status(home)
    return run


async def _run(port: int, runs: list[Run], interval: float, window: float) -> dict[str, Any]:
    longest = window + 60 + WARMUP_S + 30
    floor = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({longest})"])
    try:
        async with aiomqtt.Client("127.0.0.1", port) as client:
            await client.subscribe("microk8s/#", qos=1)
            for run in runs:
                run.start()
            floor_pss = await _collect(client, runs, floor.pid)
            floor_rss = rss_mib(floor.pid)
    finally:
        for run in runs:
            if run.process is not None:
                run.process.terminate()
                run.process.wait(15)
        floor.kill()
        floor.wait(5)
    return {
        "floor_pss_mib": max(floor_pss),
        "floor_rss_mib": floor_rss,
        "profiles": {run.name: run.figures for run in runs},
    }


def report(result: dict[str, Any], interval: float, window: float) -> None:
    floor_pss, floor_rss = result["floor_pss_mib"], result["floor_rss_mib"]
    python = sys.version.split()[0]
    print(f"footprint: health every {interval:g} s, window {window:g} s, python {python}")
    print(f"  commit {commit()}")
    print(
        f"  floor (bare interpreter of this venv, same run): PSS {floor_pss:.1f} MiB,"
        f" RSS {floor_rss:.1f} MiB"
    )
    for name, fig in result["profiles"].items():
        print(f"  [{name}]")
        print(f"    first health after start        : {fig['startup_s']:.2f} s")
        pss, rss = fig["pss_mib"], fig["rss_mib"]
        print(f"    steady PSS / over floor         : {pss:.1f} / +{pss - floor_pss:.1f} MiB")
        print(f"    steady RSS / over floor         : {rss:.1f} / +{rss - floor_rss:.1f} MiB")
        anon, file, threads = fig["pss_anon_mib"], fig["pss_file_mib"], fig["threads"]
        print(f"    PSS anon / file at the end      : {anon:.1f} / {file:.1f} MiB, {threads:g} thr")
        print(f"    CPU with children, one core     : {fig['cpu_percent_one_core']:.3f} %")
        print(f"    CPU per health message          : {fig['cpu_ms_per_message']:.2f} ms")
        print(f"    bytes per health message        : {fig['bytes_per_message']:.0f} B")
        print(f"    health messages in window       : {fig['messages']}")
        if fig["command"] is not None:
            print(f"    signed command before window    : {fig['command']}")
        top = ", ".join(f"{k} {v}" for k, v in fig["families"].items())
        print(f"    resident modules ({fig['modules']})         : {top}")
        print(
            f"    kubernetes_asyncio resident     : {'YES' if fig['kubernetes_asyncio'] else 'no'}"
        )
    print(json.dumps(result, default=str))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--profile", default=",".join(PROFILES), help="comma-separated")
    parser.add_argument("--interval", type=float, default=10.0, help="health interval, s")
    parser.add_argument(
        "--window", "--duration", type=float, default=120.0, help="measured window, s"
    )
    parser.add_argument(
        "--detectors", action="store_true", help="the minimal profile's detectors on (fake node)"
    )
    parser.add_argument("--starts", type=int, default=0, help="only time N starts to first health")
    args = parser.parse_args()
    profiles = [name for name in args.profile.split(",") if name]
    unknown = set(profiles) - set(PROFILES)
    if unknown:
        parser.error(f"unknown profile(s) {sorted(unknown)}; choose from {PROFILES}")
    result = asyncio.run(
        measure(profiles, args.interval, args.window, args.starts, detectors=args.detectors)
    )
    if "starts" in result:
        for name, times in result["starts"].items():
            ordered = sorted(times)
            print(
                f"  [{name}] first health after start, {len(times)} starts: median"
                f" {statistics.median(ordered):.2f} s, min {ordered[0]:.2f}, max {ordered[-1]:.2f}"
            )
        print(json.dumps(result))
        return
    report(result, args.interval, args.window)


if __name__ == "__main__":
    main()
