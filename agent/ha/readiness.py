"""Failover readiness: one 0-100 score saying how well the control plane takes the next failure.

Pure, from fields the verdict already publishes plus the voters' own health messages, so anyone
can recompute it (docs/ha.md has the formula and a worked example). Four factors add up:

- `margin` 0/20/40: quorum margin 0 / 1 / 2 or more;
- `standby` 0/10/20: no online stand-by or spare / an online spare only / an online stand-by;
- `spread` 0/10/20: voters all in one failure domain / in several, but losing the largest loses
  quorum / losing any one domain keeps quorum;
- `voter_risks` 0-20: 20 x (voters without a risk flag) / voters, rounded.

The score is 0 while quorum is lost or no leader is known, whatever the factors say.
"""

from __future__ import annotations

import collections
from collections.abc import Mapping, Sequence
from typing import Any

MARGIN_POINTS = 20
MARGIN_MAX = 40
STANDBY_MAX = 20
SPREAD_MAX = 20
RISK_MAX = 20
DETECTOR_BLOCKS = ("certs", "clock", "storage", "microk8s_processes", "eviction")
"""Health blocks other detectors add (PROTOCOL.md); read by key, `null` meaning unknown."""
PI_FLAGS = {
    "under_voltage": "under-voltage now",
    "throttled": "throttled now",
    "freq_capped": "frequency capped now",
    "soft_temp_limit": "soft temperature limit now",
}
OK_STATUSES = frozenset({"ok", "healthy", "pass", None})


def risk_flags(
    health: Mapping[str, Any] | None, temperature_warn_c: float, disk_warn_percent: float
) -> list[str] | None:
    """The risks one node's health message states, in words; None when it has none (unknown).

    Read defensively: every field may be missing, `null` or of another type (another version of
    the agent, another detector); what cannot be read is simply not a flag.
    """
    if not isinstance(health, Mapping):
        return None
    flags = []
    status = health.get("status")
    if status in ("degraded", "critical"):
        reasons = health.get("reasons")
        first = reasons[0] if isinstance(reasons, list) and reasons else None
        flags.append(f"health {status}" + (f": {first}" if isinstance(first, str) else ""))
    system = health.get("system")
    system = system if isinstance(system, Mapping) else {}
    temperature = system.get("temperature_c")
    if isinstance(temperature, int | float) and temperature >= temperature_warn_c:
        flags.append(f"temperature {temperature:g} C")
    throttled = system.get("throttled")
    if isinstance(throttled, Mapping):
        flags += [words for key, words in PI_FLAGS.items() if throttled.get(key) is True]
    disks = system.get("disks")
    for disk in disks if isinstance(disks, list) else ():
        percent = disk.get("percent") if isinstance(disk, Mapping) else None
        if isinstance(percent, int | float) and percent >= disk_warn_percent:
            flags.append(f"disk {disk.get('mount')} {percent:g}% full")
    for block in DETECTOR_BLOCKS:
        flags += _detector_flags(block, health.get(block))
    return flags


def _detector_flags(name: str, block: Any) -> list[str]:
    """A detector block's complaint: a non-ok `status`, else its first reason."""
    if not isinstance(block, Mapping):
        return []
    status = block.get("status")
    reasons = block.get("reasons")
    first = reasons[0] if isinstance(reasons, list) and reasons else None
    if status not in OK_STATUSES or (isinstance(first, str) and status is None):
        detail = first if isinstance(first, str) else f"status {status}"
        return [f"{name}: {detail}"]
    return []


def _margin(margin: int) -> tuple[int, str | None]:
    points = max(0, min(margin, 2)) * MARGIN_POINTS
    if margin == 0:
        return points, "quorum margin 0: one more voter failure stops the datastore"
    return points, None


def _standby(members: Sequence[Mapping[str, Any]]) -> tuple[int, dict[str, Any], str | None]:
    online = {
        role: [m["address"] for m in members if m.get("role") == role and m.get("reachable")]
        for role in ("standby", "spare")
    }
    if online["standby"]:
        return STANDBY_MAX, online, None
    if online["spare"]:
        return (
            STANDBY_MAX // 2,
            online,
            "no online stand-by: a lost voter is replaced by a spare, which must first catch up",
        )
    return 0, online, "no online stand-by or spare: a lost voter cannot be replaced"


def _spread(
    voters: Sequence[Mapping[str, Any]], needed: int
) -> tuple[int, dict[str, int], str | None]:
    domains = collections.Counter(
        str(v["failure_domain"]) for v in voters if v.get("failure_domain") is not None
    )
    if not domains:
        return 0, {}, "voters' failure domains unknown"
    largest, count = domains.most_common(1)[0]
    if len(domains) == 1:
        return (
            0,
            dict(domains),
            f"all {count} voters with a known failure domain are in domain {largest}:"
            " one shared failure (power, switch) takes them all",
        )
    if len(voters) - count >= needed:
        return SPREAD_MAX, dict(domains), None
    return (
        SPREAD_MAX // 2,
        dict(domains),
        f"failure domain {largest} holds {count} of {len(voters)} voters: losing it loses quorum",
    )


def _risks(
    voters: Sequence[Mapping[str, Any]], flags: Mapping[str, list[str] | None]
) -> tuple[int, dict[str, list[str]], list[str], list[str]]:
    flagged: dict[str, list[str]] = {}
    unknown = []
    for voter in voters:
        name = voter.get("node")
        found = flags.get(name) if isinstance(name, str) else None
        label = name or voter["address"]
        if found is None:
            unknown.append(label)
        elif found:
            flagged[label] = found
    points = round(RISK_MAX * (len(voters) - len(flagged)) / len(voters)) if voters else 0
    words = [f"voter {label}: {', '.join(found)}" for label, found in flagged.items()]
    return points, flagged, unknown, words


def assess(
    members: Sequence[Mapping[str, Any]],
    quorum: Mapping[str, Any],
    *,
    leader_known: bool,
    flags: Mapping[str, list[str] | None],
) -> dict[str, Any]:
    """The `readiness` block: score, factors (each with its points) and reasons in words.

    Args:
        members: the verdict's `members` entries (address, node, role, reachable,
            failure_domain).
        quorum: the verdict's `quorum`.
        leader_known: False when dqlite was asked and named no leader.
        flags: risk flags by node name (`risk_flags`); None for a node without health.
    """
    voters = [m for m in members if m.get("role") == "voter"]
    margin_points, margin_reason = _margin(int(quorum.get("margin", 0)))
    standby_points, online, standby_reason = _standby(members)
    spread_points, domains, spread_reason = _spread(voters, int(quorum.get("needed", 1)))
    risk_points, flagged, unknown, risk_words = _risks(voters, flags)
    total = margin_points + standby_points + spread_points + risk_points
    if not quorum.get("ok") or not leader_known:
        total = 0
    reasons = [r for r in (margin_reason, standby_reason, spread_reason) if r] + risk_words
    if not leader_known:
        reasons.insert(0, "no dqlite leader: readiness 0")
    elif not quorum.get("ok"):
        reasons.insert(0, "quorum lost: readiness 0")
    return {
        "score": total,
        "factors": {
            "margin": {"value": quorum.get("margin"), "points": margin_points, "max": MARGIN_MAX},
            "standby": {
                "online_standby": online["standby"],
                "online_spare": online["spare"],
                "points": standby_points,
                "max": STANDBY_MAX,
            },
            "spread": {"domains": domains, "points": spread_points, "max": SPREAD_MAX},
            "voter_risks": {
                "flags": flagged,
                "unknown": unknown,
                "points": risk_points,
                "max": RISK_MAX,
            },
        },
        "reasons": reasons,
    }
