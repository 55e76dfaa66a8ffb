"""The auto-remove planner (pure): who acts, when, at most one per window, never unsafely."""

from __future__ import annotations

from typing import Any

import pytest

from agent.ha import failover

A, B, C, D, E = (f"127.0.0.1{i}:19001" for i in range(1, 6))
NAMES = {A: "pi-01", B: "pi-02", C: "pi-03", D: "pi-04", E: "pi-05"}


def view(
    roles: dict[str, str], down: set[str], *, reporters: tuple[str, ...] = ("pi-01", "pi-02")
) -> dict[str, Any]:
    """A cluster view as peers.view builds it: members with statuses and the voters' quorum."""
    members = [
        {"address": a, "node": NAMES[a], "role": r, "status": "down" if a in down else "up"}
        for a, r in roles.items()
    ]
    voters = [m for m in members if m["role"] == "voter"]
    up = sum(1 for m in voters if m["status"] == "up")
    needed = len(voters) // 2 + 1
    q = {"size": len(voters), "reachable": up, "needed": needed}
    q |= {"ok": up >= needed, "margin": up - needed}
    return {"reporters": list(reporters), "members": members, "quorum": q}


# Three voters up and a dead spare: what dqlite leaves after it replaced a lost voter.
DEAD_SPARE = view({A: "voter", B: "voter", D: "voter", C: "spare"}, {C})


def test_actor_is_the_lowest_named_up_voter_that_reports() -> None:
    assert failover.actor(DEAD_SPARE) == "pi-01"
    assert failover.actor({**DEAD_SPARE, "reporters": ["pi-02"]}) == "pi-02"
    assert failover.actor({**DEAD_SPARE, "reporters": ["pi-03"]}) is None


def test_waits_then_acts_once() -> None:
    remover = failover.AutoRemover(after_s=30)
    remover.observe(DEAD_SPARE, now=100)
    assert remover.decide("pi-01", DEAD_SPARE, now=120, live=True) is None
    removal = remover.decide("pi-01", DEAD_SPARE, now=131, live=True)
    assert removal == failover.Removal(C, "pi-03", "pi-03", 31.0)
    assert remover.decide("pi-02", DEAD_SPARE, now=131, live=True) is None  # not the actor
    remover.record(C, ok=True, now=131)
    assert remover.decide("pi-01", DEAD_SPARE, now=500, live=True) is None


def test_never_more_than_one_removal_per_window() -> None:
    two_dead = view({A: "voter", B: "voter", D: "voter", C: "spare", E: "standby"}, {C, E})
    remover = failover.AutoRemover(after_s=30)
    remover.observe(two_dead, now=0)
    first = remover.decide("pi-01", two_dead, now=31, live=True)
    assert isinstance(first, failover.Removal)
    remover.record(first.address, ok=True, now=31)
    assert remover.decide("pi-01", two_dead, now=60, live=True) is None
    second = remover.decide("pi-01", two_dead, now=62, live=True)
    assert isinstance(second, failover.Removal)
    assert second.address != first.address


@pytest.mark.parametrize(
    ("cluster", "live", "words"),
    [
        # Three voters, one down: removing it leaves margin 0 all the same; refused.
        (view({A: "voter", B: "voter", C: "voter"}, {C}), True, "quorum margin is 0"),
        # Five voters, two down: the other dead voter forbids touching the configuration.
        (
            view({A: "voter", B: "voter", C: "voter", D: "voter", E: "voter"}, {C, E}),
            True,
            "voter(s) pi-05 are down too",
        ),
        # No live view: the member list may be stale.
        (DEAD_SPARE, False, "the live dqlite view is unavailable"),
    ],
)
def test_refused_while_unsafe(cluster: dict[str, Any], live: bool, words: str) -> None:
    remover = failover.AutoRemover(after_s=1)
    remover.observe(cluster, now=0)
    refusal = remover.decide("pi-01", cluster, now=5, live=live)
    assert isinstance(refusal, failover.Refusal)
    assert refusal.address == C
    assert words in refusal.reason
    assert refusal.reason.startswith(f"{C} (pi-03) not removed: ")


def test_a_dead_voter_of_five_is_removed_with_margin_left() -> None:
    five = view({A: "voter", B: "voter", C: "voter", D: "voter", E: "voter"}, {C})
    remover = failover.AutoRemover(after_s=1)
    remover.observe(five, now=0)
    assert remover.decide("pi-01", five, now=5, live=True) == failover.Removal(
        C, "pi-03", "pi-03", 5.0
    )


def test_retries_a_failure_after_a_full_delay() -> None:
    remover = failover.AutoRemover(after_s=30)
    remover.observe(DEAD_SPARE, now=0)
    assert remover.decide("pi-01", DEAD_SPARE, now=31, live=True) is not None
    remover.record(C, ok=False, now=31)
    assert remover.decide("pi-01", DEAD_SPARE, now=50, live=True) is None
    assert remover.decide("pi-01", DEAD_SPARE, now=62, live=True) is not None


def test_restarts_the_clock_when_the_member_comes_back() -> None:
    remover = failover.AutoRemover(after_s=30)
    remover.observe(DEAD_SPARE, now=0)
    remover.observe(view({A: "voter", B: "voter", D: "voter", C: "spare"}, set()), now=20)
    remover.observe(DEAD_SPARE, now=25)
    assert remover.decide("pi-01", DEAD_SPARE, now=40, live=True) is None
    assert remover.decide("pi-01", DEAD_SPARE, now=56, live=True) is not None


def test_off_does_nothing() -> None:
    off = failover.AutoRemover(after_s=0)
    off.observe(DEAD_SPARE, now=0)
    assert off.decide("pi-01", DEAD_SPARE, now=10_000, live=True) is None


def test_uses_the_ip_when_the_name_is_unknown() -> None:
    cluster = {**DEAD_SPARE, "members": [dict(m) for m in DEAD_SPARE["members"]]}
    cluster["members"][3]["node"] = None
    remover = failover.AutoRemover(after_s=1)
    remover.observe(cluster, now=0)
    removal = remover.decide("pi-01", cluster, now=5, live=True)
    assert isinstance(removal, failover.Removal)
    assert removal.target == "127.0.0.13"
