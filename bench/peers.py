"""Side-by-side footprint (a benchmark, not a test): the agent next to the monitors people run.

In ONE run, so all see the same machine conditions, and for the same window after a warm-up:
the agent in its minimal form, the agent as a MicroK8s HA node runs it (the `pi` profile of
bench/footprint.py: snap backend on the fakes, HA on against a live three-voter dqlite, a trusted
key and one signed command), the agent with kubernetes_asyncio imported into its process,
collectd with its MQTT plugin, glances exporting to MQTT, prometheus-node-exporter scraped by this
script, and the floor (a bare interpreter of the same venv, sleeping) — all at a 10 s interval,
all on loopback against a private mosquitto on a free port. Prints a Markdown
table (RSS, PSS, CPU % of one core, bytes per sample, the agent's ratios to each peer);
`--write docs/performance.md` replaces its own section there. The window starts 10 s after every
process has produced its first sample. Missing peers are installed (apt for collectd and
node-exporter unless `--no-apt`, pip into a private venv for glances); a failed or skipped install
marks the row.

    .venv/bin/python -m bench.peers [--window 120 | --quick] [--write docs/performance.md]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiomqtt

from agent import __version__ as agent_version
from agent import config as agent_config
from bench import footprint_pi
from bench import peers_report as report
from bench import peers_setup as setup
from bench.footprint import REPO, WARMUP_S, commit, free_port, start_broker, write_config
from bench.peers_measure import Seen, listen_mqtt, scrape, tree, tree_cpu_s, tree_memory_mib

INTERVAL_S = 10.0
SAMPLE_EVERY_S = 5.0
FIRST_SAMPLE_TIMEOUT_S = 60.0
AGENT = "agent"
AGENT_PI = "agent, pi profile"
AGENT_KUBE = "agent + kubernetes_asyncio"
FLOOR = "floor (bare python of the venv)"
NODE_EXPORTER = "prometheus-node-exporter (scraped /10 s)"
KUBE_BOOT = (
    "import runpy, sys, kubernetes_asyncio.client; sys.argv = ['agent', 'run', *sys.argv[1:]]; "
    "runpy.run_module('agent', run_name='__main__', alter_sys=True)"
)


def agent_peer(workdir: Path, port: int, node: str, kube: bool) -> setup.Peer:
    """One agent in its own cluster (so neither hears the other): health every 10 s, HA off."""
    home = workdir / node
    home.mkdir()
    config = write_config(home, port, INTERVAL_S)
    if kube:  # its RSS is over the default memory budget by design: keep it from restarting
        config.write_text(config.read_text() + "\n[agent]\nmax_rss_mib = 0\n")
    env = {**os.environ, "EDGE_AGENT_NODE_NAME": node, "EDGE_AGENT_NODE_CLUSTER": node}
    settings = agent_config.load(config, env)
    peer = setup.Peer(AGENT_KUBE if kube else AGENT, env=env, version=f"agent {agent_version}")
    peer.topic_prefix = settings.root_topic + "/"
    launch = ["-c", KUBE_BOOT] if kube else ["-m", "agent", "run"]
    peer.argv = [sys.executable, *launch, "--config", str(config)]
    if kube:
        peer.missing = setup.ensure_kube_client()
        peer.version += f", {_kube_version()}"
    return peer


def _kube_version() -> str:
    code = "import importlib.metadata as m; print(m.version('kubernetes_asyncio'))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    return f"kubernetes_asyncio {done.stdout.strip() or 'unknown'}"


def pi_peer(home: Path, values: dict[str, Any]) -> setup.Peer:
    """The agent of bench/footprint_pi.py's world (started by the caller), health every 10 s."""
    config = home / "agent.toml"
    config.write_text(agent_config.to_toml(values))
    peer = setup.Peer(AGENT_PI, version=f"agent {agent_version}")
    peer.argv = [sys.executable, "-m", "agent", "run", "--config", str(config)]
    peer.topic_prefix = footprint_pi.ROOT + "/"
    peer.command = footprint_pi.signed_status(home)
    return peer


def floor_peer() -> setup.Peer:
    """What every Python process pays before its first import (killed with the others)."""
    peer = setup.Peer(FLOOR, version=f"python {sys.version.split()[0]}", silent=True)
    peer.argv = [sys.executable, "-c", "import time; time.sleep(3600)"]
    return peer


def prepare(
    workdir: Path, port: int, cache: Path, http_port: int, pi: setup.Peer, *, apt: bool = True
) -> list[setup.Peer]:
    installer = setup.Installer(apt_allowed=apt)
    peers = [
        agent_peer(workdir, port, "bench", kube=False),
        pi,
        agent_peer(workdir, port, "bench-kube", kube=True),
        setup.collectd(installer, workdir, port),
        setup.glances(cache, workdir, port),
        setup.node_exporter(installer, http_port),
        floor_peer(),
    ]
    for peer in peers:
        if peer.missing:
            print(f"peers: {peer.name} not available: {peer.missing}", flush=True)
    return peers


def log_path(workdir: Path, name: str) -> Path:
    return workdir / (re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") + ".log")


def last_line(path: Path) -> str:
    lines = path.read_text(errors="replace").strip().splitlines() if path.exists() else []
    return lines[-1][-200:] if lines else "no output"


def start(peer: setup.Peer, workdir: Path) -> subprocess.Popen[bytes]:
    with log_path(workdir, peer.name).open("wb") as log:
        return subprocess.Popen(
            peer.argv, cwd=REPO, env=peer.env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
        )


def stop(processes: dict[str, subprocess.Popen[bytes]]) -> None:
    """SIGTERM each tree we started, then SIGKILL what is left of it."""
    family = {name: tree(process.pid) for name, process in processes.items()}
    for process in processes.values():
        if process.poll() is None:
            process.terminate()
    for name, process in processes.items():
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)
        for pid in family[name][1:]:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)


def classify_by(peers: list[setup.Peer]):
    prefixes = [(peer.topic_prefix, peer.name) for peer in peers if peer.topic_prefix]

    def classify(topic: str) -> str | None:
        if topic.endswith("/availability"):  # glances' once-per-connection presence, no sample
            return None
        return next((name for prefix, name in prefixes if topic.startswith(prefix)), None)

    return classify


async def observe(
    processes: dict[str, subprocess.Popen[bytes]], window: float
) -> tuple[dict[str, report.Figures], float, float]:
    """Memory every 5 s over the window, CPU as the tree's CPU-time delta over the window."""
    cpu0 = {name: tree_cpu_s(process.pid) for name, process in processes.items()}
    memory: dict[str, list[tuple[float, float]]] = {name: [] for name in processes}
    t0 = time.monotonic()
    while (now := time.monotonic()) < t0 + window:
        for name, process in processes.items():
            if process.poll() is None:
                memory[name].append(tree_memory_mib(process.pid))
        await asyncio.sleep(min(SAMPLE_EVERY_S, t0 + window - now))
    t1 = time.monotonic()
    figures: dict[str, report.Figures] = {}
    for name, process in processes.items():
        row = figures[name] = report.Figures(name)
        if process.poll() is not None or not memory[name]:
            row.missing = f"exited with {process.returncode} during the run"
            continue
        row.cpu_percent = 100 * (tree_cpu_s(process.pid) - cpu0[name]) / (t1 - t0)
        row.rss_mib = max(rss for rss, _ in memory[name])
        row.pss_mib = max(pss for _, pss in memory[name])
        row.pss_median_mib = statistics.median(pss for _, pss in memory[name])
    return figures, t0, t1


async def first_samples(names: list[str], seen: list[Seen], timeout: float) -> None:
    """Wait until every process has published (or answered) once: glances needs ~20 s for that.

    Starting the window before a peer's first sample would count its start-up CPU and miss one
    of its cycles; a peer that never shows up is measured anyway (its row shows 0 bytes).
    """
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if set(names) <= {item.source for item in seen}:
            return
        await asyncio.sleep(0.2)
    print(f"peers: no sample within {timeout:g} s from some of {names}", flush=True)


def add_traffic(figures: report.Figures, seen: list[Seen], t0: float, t1: float) -> None:
    """Bytes per 10 s sample: MQTT bytes over the window's cycles, HTTP bytes per scrape.

    [t0, t1) must be exactly the window (a multiple of the interval): a periodic burst that
    falls on both edges of a slightly longer span would otherwise be counted once too often.
    """
    mine = [item for item in seen if item.source == figures.name and t0 <= item.at < t1]
    samples = len(mine) if figures.name == NODE_EXPORTER else (t1 - t0) / INTERVAL_S
    samples = samples or 1
    figures.payload_per_sample = sum(item.payload for item in mine) / samples
    figures.wire_per_sample = sum(item.wire for item in mine) / samples
    figures.units_per_sample = len(mine) / samples


async def send_commands(peers: list[setup.Peer], port: int) -> None:
    """Each peer's one signed command, before the window; waits for its terminal status."""
    async with aiomqtt.Client("127.0.0.1", port) as client:
        for peer in peers:
            if peer.command is None:
                continue
            topic, payload, status_topic = peer.command
            await client.subscribe(status_topic, qos=1)
            await client.publish(topic, payload, qos=1)
            status = await footprint_pi.terminal_status(client, status_topic, 30)
            print(f"peers: {peer.name}: signed command {status}", flush=True)


async def run_all(
    peers: list[setup.Peer], port: int, http_port: int, workdir: Path, window: float
) -> dict[str, report.Figures]:
    seen: list[Seen] = []
    ready = asyncio.Event()
    tasks = [asyncio.create_task(listen_mqtt(port, classify_by(peers), seen, ready))]
    await asyncio.wait_for(ready.wait(), 10)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    try:
        for peer in peers:
            if not peer.missing:
                processes[peer.name] = start(peer, workdir)
        if NODE_EXPORTER in processes:
            url = f"http://127.0.0.1:{http_port}/metrics"
            tasks.append(asyncio.create_task(scrape(url, NODE_EXPORTER, INTERVAL_S, seen)))
        talking = [peer.name for peer in peers if peer.name in processes and not peer.silent]
        await first_samples(talking, seen, FIRST_SAMPLE_TIMEOUT_S)
        await send_commands(peers, port)
        await asyncio.sleep(WARMUP_S)
        figures, t0, _ = await observe(processes, window)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        stop(processes)
    for row in figures.values():
        add_traffic(row, seen, t0, t0 + window)
        if row.missing:
            row.missing += f"; last output: {last_line(log_path(workdir, row.name))}"
    return figures


def render(peers: list[setup.Peer], figures: dict[str, report.Figures], args) -> str:
    rows = []
    for peer in peers:
        row = figures.get(peer.name) or report.Figures(peer.name, missing=peer.missing)
        row.version = peer.version
        rows.append(row)
    by_name = {row.name: row for row in rows}
    versions = {row.name: row.version or "n/a" for row in rows}
    versions["broker"] = setup.dpkg_version("mosquitto")
    versions["commit"] = commit()
    return (
        "## Side-by-side footprint\n\n"
        f"Command: `.venv/bin/python -m bench.peers --window {args.window:g}"
        f"{' --no-apt' if args.no_apt else ''}"
        f"{' --write ' + args.write if args.write else ''}`; window {args.window:g} s starting "
        f"{WARMUP_S:g} s after every process produced its first sample; every process at a "
        f"{INTERVAL_S:g} s interval, all at once.\n\n"
        + report.machine(versions)
        + "\n"
        + report.table(rows, by_name.get(AGENT), AGENT)
        + "\n"
        + report.ratio_table(rows, by_name[AGENT_PI])
        + "\n"
        + over_floor(rows, by_name.get(FLOOR))
        + NOTES
    )


def over_floor(rows: list[report.Figures], floor: report.Figures | None) -> str:
    """PSS and RSS of each Python row above the bare interpreter measured beside it."""
    if floor is None or floor.missing:
        return ""
    lines = [f"Over the floor (PSS {floor.pss_mib:.1f} MiB, RSS {floor.rss_mib:.1f} MiB):\n\n"]
    for row in rows:
        if row.name.startswith("agent") and not row.missing:
            pss, rss = row.pss_mib - floor.pss_mib, row.rss_mib - floor.rss_mib
            lines.append(f"- {row.name}: PSS +{pss:.1f} MiB, RSS +{rss:.1f} MiB\n")
    return "".join(lines) + "\n"


NOTES = """\
- RSS and PSS: the maximum of samples taken every 5 s over the window, summed over the process
  tree (`/proc/<pid>/status` VmRSS, `/proc/<pid>/smaps_rollup` Pss).
- CPU % of one core: CPU time of the tree over the window, from each process's CPU-time clock
  (`clock_gettime`, ns, all threads) plus its reaped children's cutime + cstime.
- bytes/sample (payload): MQTT payload bytes published per 10 s cycle, as seen by a subscriber to
  `#` on the private broker; for node-exporter the uncompressed body of one `/metrics` scrape.
- bytes/sample (wire): MQTT PUBLISH packets as framed by the publisher (topic, headers, MQTT 5
  properties; no TCP/IP, no acks); for node-exporter the gzip body Prometheus would fetch.
- msgs/sample: MQTT messages per cycle (collectd and glances publish one per metric), or scrapes.
- The ratio columns are `agent ÷ row`; below 1 means the agent uses less.
- agent, pi profile: what a MicroK8s HA node runs (bench/footprint_pi.py): snap backend on the
  snapd/cluster-agent/Kubernetes API fakes (which run in the bench process, not counted), HA on
  against three live `dqlite-demo` voters on 127.0.0.11-13, a trusted key and one signed
  `status` command before the window, HTTP on; its bytes include its `ha` verdicts.
- floor: `python -c 'import time; time.sleep(...)'` from the same venv; CPU figures on a shared
  machine are upper bounds, which is why every row is measured in the same run.
- glances runs with its built-in plugin defaults (its config file holds only the `[mqtt]`
  section, `topic_structure=per-metric`); collectd loads cpu, memory, load, df, interface.
"""


async def measure_all(
    workdir: Path, port: int, cache: Path, http_port: int, args: argparse.Namespace
) -> tuple[list[setup.Peer], dict[str, report.Figures]]:
    """The pi profile's world (dqlite, fakes) lives in this event loop while all are measured."""
    home = workdir / "pi"
    home.mkdir()
    async with footprint_pi.pi_world(home, port, free_port()) as values:
        pi = pi_peer(home, values)
        peers = prepare(workdir, port, cache, http_port, pi, apt=not args.no_apt)
        return peers, await run_all(peers, port, http_port, workdir, args.window)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--window", type=float, default=120.0, help="seconds measured")
    parser.add_argument("--quick", action="store_true", help="a 30 s window, for trying it")
    parser.add_argument("--write", metavar="PATH", help="replace the section in this Markdown file")
    parser.add_argument("--cache", default="/tmp/edge-bench-peers", help="for the glances venv")
    parser.add_argument(
        "--no-apt", action="store_true", help="never apt-get install a missing peer (shared hosts)"
    )
    args = parser.parse_args()
    if args.quick:
        args.window = 30.0
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="edge-bench-peers-") as tmp:
        workdir, port, http_port = Path(tmp), free_port(), free_port()
        broker = start_broker(workdir, port)
        try:
            peers, figures = asyncio.run(measure_all(workdir, port, cache, http_port, args))
        finally:
            broker.terminate()
            broker.wait(5)
    text = render(peers, figures, args)
    print(text)
    if args.write:
        report.write_section(Path(args.write), text)
        print(f"peers: section written to {args.write}")


if __name__ == "__main__":
    main()
