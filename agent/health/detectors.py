"""The detectors of what takes MicroK8s edge clusters down, scheduled off the health cycle.

Certificates, clock, MicroK8s' processes, storage, kubelet headroom and stuck NotReady
(docs/protocol.md "Detector blocks"). Their readings are slow (a child process for the
certificates), wear the card (fsync) or scan /proc, so `run` takes them on their own loop, each at
its own pace, in a thread; the health cycle only calls `report`, which assesses the last readings
(pure, microseconds). A reading that failed leaves its block null: unknown, never invented.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import ProcessError
from agent.health import certs, clock, eviction, kubelet_args, processes, storage
from agent.health.readiness import NotReadyWatch
from agent.health.verdict import DETECTOR_BLOCKS, Finding
from agent.link.mqtt import Inbound
from agent.logs import get_logger
from agent.settings import Settings

log = get_logger(__name__)

FIRST_REFRESH_MAX_WAIT_S = 10.0
"""The first readings wait for the first health message (start-up budget), at most this long."""
PROC_WALK_IDLE_S = 300.0
"""How often /proc is walked for processes not seen yet (k8s-dqlite on a worker: never)."""
PEER_RECENT_S = 60.0
"""A peer heard from within this long counts as reachable (health comes every 10 s)."""


class Detectors:
    def __init__(self, settings: Settings, *, python: str = sys.executable) -> None:
        self._settings = settings
        self._python = python
        h = settings.health
        self._peers = clock.PeerOffsets(h.clock_window_s)
        self._sessions: dict[str, int] = {}
        self._tracker = processes.ProcessTracker(
            processes.Limits(
                restarts_crit=h.process_restarts_crit,
                restart_window_s=h.process_restart_window_s,
                cpu_warn_percent=h.process_cpu_warn_percent,
                cpu_window_s=h.process_cpu_window_s,
                rss_growth_warn_mib_h=h.process_rss_growth_warn_mib_h,
            )
        )
        self._fsync = storage.FsyncWindow(h.fsync_window_s)
        self._not_ready = NotReadyWatch(h.not_ready_warn_s)
        self._expiries: dict[str, Any] | None = None
        self._kernel_clock: clock.KernelClock | None = None
        self._spaces: dict[str, eviction.Space | None] = {}
        self._rules: dict[str, eviction.Threshold] = {}
        self._flags: dict[str, str] = {}
        self._wear: dict[str, Any] | None = None
        self._due = {"certs": 0.0, "fsync": 0.0, "proc_walk": 0.0}
        self._peers_seen = 0
        self._assessed: dict[str, tuple[dict[str, Any] | None, list[Finding]]] = dict.fromkeys(
            DETECTOR_BLOCKS[:-1], (None, [])
        )
        self.memory: Mapping[str, Any] | None = None
        """The last `system.memory` of the health cycle, for the kubelet's memory threshold."""

    # --- the peers' feed -------------------------------------------------------------------

    def on_peer_health(self, node: str, inbound: Inbound, own: str, session: int) -> None:
        """Record a peer's `ts` against our clock, skipping the broker's replay of its retained
        copy: the first message from each peer in each of our sessions (a dead peer's retained
        health can be hours old; with MQTT 5's Retain As Published live ones carry the flag too).
        """
        if node == own:
            return
        if self._sessions.get(node) != session:
            self._sessions[node] = session
            return
        try:
            ts = json.loads(inbound.payload).get("ts")
        except (ValueError, AttributeError):
            return
        if isinstance(ts, int | float) and not isinstance(ts, bool):
            self._peers.record(node, float(ts), time.time(), time.monotonic())

    # --- readings ---------------------------------------------------------------------------

    async def run(self, first_published: asyncio.Event | None = None) -> None:
        """Refresh forever; the first time once `first_published` is set (or after a while).

        The first round starts the certificate probe (a Python child) and walks /proc: on a Pi
        that competes with the agent's own start-up, whose first health message has a budget.
        """
        if first_published is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(first_published.wait(), FIRST_REFRESH_MAX_WAIT_S)
        while True:
            await self.refresh()
            await asyncio.sleep(self._settings.health.detectors_interval_s)

    async def refresh(self) -> None:
        """Take every reading that is due; each failure is logged and leaves its block unknown."""
        now = time.monotonic()
        h = self._settings.health
        fsync_due = now >= self._due["fsync"]
        if fsync_due:
            self._due["fsync"] = now + h.fsync_interval_s
        await asyncio.to_thread(self._read_local, fsync_due, now)
        if now >= self._due["certs"]:
            self._due["certs"] = now + h.certs_interval_s
            await self._read_certs()
        self._assess(time.monotonic())

    def _read_local(self, fsync_due: bool, now: float) -> None:
        s = self._settings
        # Walking /proc reads a file per process: do it for a process that went missing, else
        # only every few minutes (a worker has no k8s-dqlite; a node may have no MicroK8s).
        walk = self._tracker.lost() or now >= self._due["proc_walk"]
        if walk:
            self._due["proc_walk"] = now + PROC_WALK_IDLE_S
        found = processes.scan(Path(s.health.proc_root), known=self._tracker.known(), walk=walk)
        self._tracker.update(found, now)
        self._kernel_clock = clock.read_kernel(Path(s.health.sysfs_root))
        self._flags = _kubelet_flags(Path(s.microk8s.kubelet_args))
        self._rules = eviction.thresholds(self._flags)
        self._spaces = {
            "nodefs": eviction.statvfs(Path(self._flags.get("root-dir", s.microk8s.kubelet_dir))),
            "imagefs": eviction.statvfs(Path(s.microk8s.containerd_dir)),
        }
        if fsync_due:
            self._wear = storage.read_wear(Path(s.health.sysfs_root))
            self._time_fsync(now)

    def _time_fsync(self, now: float) -> None:
        s = self._settings
        where = storage.probe_dir(
            Path(s.state.dir), Path(s.microk8s.backend_dir), s.health.fsync_path
        )
        if where is None:
            return
        try:
            self._fsync.add(storage.time_fsync(where), now)
        except OSError as exc:
            log.warning("fsync_probe_failed", path=str(where), error=str(exc))

    async def _read_certs(self) -> None:
        mk = self._settings.microk8s
        kubelet = certs.kubelet_cert(self._flags, Path(mk.kubelet_dir))
        if not await asyncio.to_thread(certs.anything_to_read, Path(mk.certs_dir), kubelet):
            self._expiries = None
            return
        try:
            self._expiries = await certs.read(Path(mk.certs_dir), [kubelet], self._python)
        except ProcessError as exc:
            self._expiries = None
            log.warning("certs_probe_failed", error=str(exc))

    # --- verdicts ---------------------------------------------------------------------------

    def _assess(self, mono: float) -> None:
        """Judge the readings once per refresh, so the health cycle only copies the result."""
        h = self._settings.health
        self._peers_seen = self._peers.peers_seen(mono, PEER_RECENT_S)
        self._assessed = {
            "certs": certs.assess(self._expiries, time.time(), h.cert_warn_days, h.cert_crit_days),
            "clock": clock.assess(
                self._kernel_clock,
                self._peers.median(mono),
                self._peers_seen,
                h.clock_offset_warn_s,
                h.clock_offset_crit_s,
            ),
            "microk8s_processes": self._tracker.assess(mono),
            "storage": storage.assess(
                self._fsync.percentiles(mono),
                self._wear,
                storage.Limits(h.fsync_warn_ms, h.fsync_crit_ms),
            ),
            "eviction": eviction.assess(
                self._spaces, self.memory, self._rules, h.eviction_margin_percent
            ),
        }

    def report(
        self, *, node_ready: object, connected: bool, now: float | None = None
    ) -> tuple[dict[str, Any], list[Finding]]:
        """Every block (None when unknown) and the findings, from the last readings."""
        mono = time.monotonic() if now is None else now
        readiness = self._not_ready.assess(node_ready, connected, self._peers_seen, mono)
        blocks: dict[str, Any] = {}
        findings: list[Finding] = []
        for name, (block, found) in (*self._assessed.items(), ("readiness", readiness)):
            blocks[name] = _with_reasons(block, found)
            findings += found
        return blocks, findings


def _kubelet_flags(path: Path) -> dict[str, str]:
    """The kubelet's flags; none when the args file is missing or unreadable (no MicroK8s)."""
    try:
        return kubelet_args.parse(path.read_text(errors="replace"))
    except OSError:
        return {}


def _with_reasons(block: dict[str, Any] | None, findings: list[Finding]) -> dict[str, Any] | None:
    """A block that is not ok carries its own reasons too: peers read blocks by key (the HA
    readiness's risk flags) and then say what is wrong without parsing the message's list."""
    if block is None or not findings:
        return block
    return {**block, "reasons": [reason for _, reason in findings]}
