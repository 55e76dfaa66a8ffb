"""Kubelet headroom: free space and inodes against the kubelet's `--eviction-hard` thresholds.

When a filesystem crosses an eviction threshold the kubelet evicts pods, they reschedule, fill
the next node, and the cluster spirals (MicroK8s' eviction storms). The thresholds are MicroK8s'
own (`$SNAP_DATA/args/kubelet`), the kubelet's defaults where the flag is absent; the verdict
warns while there is still a margin, and is critical once eviction has started.
"""

from __future__ import annotations

import dataclasses
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.health.verdict import CRITICAL, DEGRADED, Finding, worst

# The kubelet's built-in --eviction-hard (Linux).
DEFAULT_HARD = (
    "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,"
    "imagefs.available<15%,imagefs.inodesFree<5%"
)
_UNITS = {
    "": 1,
    "k": 1000,
    "M": 1000**2,
    "G": 1000**3,
    "T": 1000**4,
    "Ki": 1 << 10,
    "Mi": 1 << 20,
    "Gi": 1 << 30,
    "Ti": 1 << 40,
}
_RULE_RE = re.compile(r"^([a-zA-Z.]+)<([0-9.]+)(%|[kMGT]i?|)$")


@dataclasses.dataclass(frozen=True, slots=True)
class Threshold:
    text: str
    """As written (`1Gi`, `10%`), for the reason."""
    percent: float | None = None
    amount: float | None = None

    def limit(self, total: float) -> float:
        return total * self.percent / 100 if self.percent is not None else self.amount or 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class Space:
    """One filesystem: bytes and inodes, free to unprivileged users, and the totals."""

    free: int
    total: int
    inodes_free: int
    inodes_total: int


def parse_hard(value: str) -> dict[str, Threshold]:
    """`memory.available<100Mi,nodefs.available<10%` → thresholds by signal; bad rules skipped."""
    rules: dict[str, Threshold] = {}
    for rule in value.split(","):
        match = _RULE_RE.match(rule.strip())
        if match is None:
            continue
        signal, number, unit = match.groups()
        try:
            figure = float(number)
        except ValueError:
            continue
        if unit == "%":
            rules[signal] = Threshold(f"{number}%", percent=figure)
        else:
            rules[signal] = Threshold(f"{number}{unit}", amount=figure * _UNITS[unit])
    return rules


def thresholds(flags: Mapping[str, str]) -> dict[str, Threshold]:
    """The kubelet's `--eviction-hard`, or its built-in default when the flag is absent."""
    return parse_hard(flags.get("eviction-hard", DEFAULT_HARD))


def statvfs(path: Path) -> Space | None:
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return Space(st.f_bavail * st.f_frsize, st.f_blocks * st.f_frsize, st.f_favail, st.f_files)


def assess(
    spaces: Mapping[str, Space | None],
    memory: Mapping[str, Any] | None,
    rules: Mapping[str, Threshold],
    margin_percent: float,
) -> tuple[dict[str, Any] | None, list[Finding]]:
    """The `eviction` block, for `nodefs`/`imagefs` (and memory when the system section has it).

    Degraded when a signal is within `margin_percent` of its total above the threshold,
    critical once below it (the kubelet is evicting).
    """
    if all(space is None for space in spaces.values()):
        return None, []
    findings: list[Finding] = []
    block: dict[str, Any] = {}
    for fs, space in spaces.items():
        if space is None:
            block[fs] = None
            continue
        for kind, free, total in (
            ("available", space.free, space.total),
            ("inodesFree", space.inodes_free, space.inodes_total),
        ):
            rule = rules.get(f"{fs}.{kind}")
            if rule is not None and total > 0:
                findings += _judge(f"{fs}.{kind}", free, total, rule, margin_percent)
        block[fs] = {
            "free_pct": _pct(space.free, space.total),
            "inodes_free_pct": _pct(space.inodes_free, space.inodes_total),
        }
    findings += _memory(memory, rules.get("memory.available"), margin_percent)
    return {"status": worst(findings), **block}, findings


def _pct(part: int, total: int) -> float | None:
    return round(100 * part / total, 1) if total > 0 else None


def _judge(
    signal: str, free: float, total: float, rule: Threshold, margin_percent: float
) -> list[Finding]:
    limit = rule.limit(total)
    shown = f"{signal} {100 * free / total:.1f}% free"
    if free < limit:
        return [(CRITICAL, f"{shown}, below eviction threshold {rule.text}: kubelet evicting")]
    if free < limit + total * margin_percent / 100:
        return [(DEGRADED, f"{shown}, near eviction threshold {rule.text}")]
    return []


def _memory(
    memory: Mapping[str, Any] | None, rule: Threshold | None, margin_percent: float
) -> list[Finding]:
    if not memory or rule is None:
        return []
    free, total = memory.get("available"), memory.get("total")
    if not isinstance(free, int) or not isinstance(total, int) or total <= 0:
        return []
    return _judge("memory.available", free, total, rule, margin_percent)
