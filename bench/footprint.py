"""Footprint benchmark (not a test): the agent against a private broker, measured from /proc.

Prints steady RSS and PSS, CPU per health message and as % of one core, start-up time to the
first health message, bytes per health message, and the PSS of a bare interpreter sleeping in the
same run (the baseline the target is expressed against).

    .venv/bin/python -m bench.footprint [--duration 60] [--interval 1] [--detectors]

With --detectors the health detectors run at their shipped intervals against a fake MicroK8s
node (12 certificates, MicroK8s' kubelet args, dqlite's backend dir on the state dir's filesystem
so fsync is timed; this machine's real /proc is scanned); without, they are turned off. The
certificate probe is a child process: its CPU is printed apart ("children").
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiomqtt

REPO = Path(__file__).resolve().parents[1]
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
WARMUP_S = 10.0


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


def cpu_seconds(pid: int, *, children: bool = False) -> float:
    """utime + stime of the process, or of its waited-for children (cutime + cstime)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    first = 13 if children else 11
    return (int(fields[first]) + int(fields[first + 1])) / CLOCK_TICKS


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


def write_config(workdir: Path, port: int, interval: float, detectors: bool = False) -> Path:
    path = workdir / "agent.toml"
    path.write_text(
        f'[node]\nname = "bench"\n[mqtt]\nport = {port}\n[health]\ninterval_s = {interval}\n'
        f"detectors_enabled = {str(detectors).lower()}\n"
        f'[http]\nport = {free_port()}\n[state]\ndir = "{workdir / "state"}"\n'
        '[log]\nformat = "json"\nlevel = "warning"\n[ha]\nenabled = false\n'
        + (fake_microk8s(workdir) if detectors else "")
    )
    return path


def fake_microk8s(workdir: Path) -> str:
    """MicroK8s' files for the detectors; the `[microk8s]` section that points at them."""
    from tests import node_fakes

    names = ["ca", "server", "front-proxy-ca", "front-proxy-client", "kubelet", "proxy"]
    names += ["controller", "scheduler", "apiserver-kubelet-client", "client", "etc1", "etc2"]
    certs = node_fakes.certs_dir(workdir / "certs", dict.fromkeys(names, 365))
    args = workdir / "kubelet.args"
    args.write_text(node_fakes.KUBELET_ARGS.read_text().replace("${SNAP_DATA}/certs", str(certs)))
    (workdir / "state").mkdir(exist_ok=True)
    return (
        f'[microk8s]\ncerts_dir = "{certs}"\nkubelet_args = "{args}"\n'
        f'backend_dir = "{workdir / "state"}"\nkubelet_dir = "{workdir}"\n'
    )


async def measure(port: int, config: Path, duration: float) -> dict[str, float]:
    topic = "microk8s/default/nodes/bench/health"
    async with aiomqtt.Client("127.0.0.1", port) as client:
        await client.subscribe(topic)
        started = time.monotonic()
        agent = subprocess.Popen(
            [sys.executable, "-m", "agent", "run", "--config", str(config)],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        bare = subprocess.Popen([sys.executable, "-c", f"import time; time.sleep({duration + 30})"])
        try:
            return await _collect(client, agent.pid, bare.pid, started, duration)
        finally:
            agent.terminate()
            bare.kill()
            agent.wait(10)
            bare.wait(10)


async def _collect(
    client: aiomqtt.Client, pid: int, bare_pid: int, started: float, duration: float
) -> dict[str, float]:
    first_at: float | None = None
    sizes: list[int] = []
    steady_count = 0
    cpu_start: float | None = None
    cpu_start_at = started
    pss: list[float] = []
    rss: list[float] = []
    bare_pss: list[float] = []
    next_sample = started + WARMUP_S
    deadline = started + duration
    messages = client.messages
    while time.monotonic() < deadline:
        try:
            message = await asyncio.wait_for(anext(messages), timeout=0.5)
        except TimeoutError:
            message = None
        now = time.monotonic()
        if message is not None and isinstance(message.payload, bytes):
            first_at = first_at or now
            sizes.append(len(message.payload))
            if cpu_start is not None:
                steady_count += 1
        if now >= next_sample:
            if cpu_start is None:
                cpu_start, cpu_start_at = cpu_seconds(pid), now
            pss.append(pss_mib(pid))
            rss.append(rss_mib(pid))
            bare_pss.append(pss_mib(bare_pid))
            next_sample = now + 5
    cpu_used = cpu_seconds(pid) - (cpu_start or 0)
    window = time.monotonic() - cpu_start_at
    return {
        "children_cpu_s": cpu_seconds(pid, children=True),
        "startup_s": (first_at or float("nan")) - started,
        "rss_mib": max(rss),
        "pss_mib": max(pss),
        "bare_pss_mib": max(bare_pss),
        "cpu_ms_per_message": 1000 * cpu_used / max(steady_count, 1),
        "cpu_percent_one_core": 100 * cpu_used / window,
        "bytes_per_message": sum(sizes) / max(len(sizes), 1),
        "messages": float(len(sizes)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--duration", type=float, default=60.0)
    parser.add_argument("--interval", type=float, default=1.0)
    parser.add_argument("--detectors", action="store_true", help="turn the health detectors on")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
        workdir = Path(tmp)
        port = free_port()
        broker = start_broker(workdir, port)
        try:
            figures = asyncio.run(
                measure(
                    port, write_config(workdir, port, args.interval, args.detectors), args.duration
                )
            )
        finally:
            broker.terminate()
            broker.wait(5)
    python = sys.version.split()[0]
    detectors = "on" if args.detectors else "off"
    print(
        f"footprint: interval {args.interval:g} s, window {args.duration:g} s, python {python},"
        f" detectors {detectors}"
    )
    print(f"  start-up to first health message : {figures['startup_s']:.2f} s")
    print(f"  steady RSS                       : {figures['rss_mib']:.1f} MiB")
    print(f"  steady PSS                       : {figures['pss_mib']:.1f} MiB")
    print(f"  bare python3 PSS (same run)      : {figures['bare_pss_mib']:.1f} MiB")
    above = figures["pss_mib"] - figures["bare_pss_mib"]
    print(f"  PSS above bare interpreter       : {above:.1f} MiB")
    print(f"  CPU per health message           : {figures['cpu_ms_per_message']:.2f} ms")
    print(f"  CPU, % of one core               : {figures['cpu_percent_one_core']:.3f} %")
    print(f"  bytes per health message         : {figures['bytes_per_message']:.0f} B")
    print(f"  health messages received         : {figures['messages']:.0f}")
    print(f"  children CPU (whole run)         : {figures['children_cpu_s']:.2f} s")
    print(json.dumps({k: round(v, 3) for k, v in figures.items()}))


if __name__ == "__main__":
    main()
