"""The peer-witnessed cluster view (pure); the auto-remove planner is in test_failover.py."""

from __future__ import annotations

import json
from typing import Any

from agent.ha import peers
from agent.link import inbound

A, B, C = "127.0.0.11:19001", "127.0.0.12:19001", "127.0.0.13:19001"
NODES = {A: "pi-01", B: "pi-02", C: "pi-03"}
WINDOW = 10.0


def report(node: str, unreachable: set[str] | None = None, **extra: Any) -> dict[str, Any]:
    members = [
        {"address": a, "node": n, "role": "voter", "reachable": a not in (unreachable or set())}
        for a, n in NODES.items()
    ]
    address = next((a for a, n in NODES.items() if n == node), "127.0.0.14:19001")
    return {"node": node, "address": address, "members": members, "maintenance": False, **extra}


def statuses(view: dict[str, Any]) -> dict[str, str]:
    return {m["node"]: m["status"] for m in view["members"]}


def verdict(node: str, body: object) -> inbound.PeerVerdict | inbound.Cleared | inbound.Invalid:
    """A peer's verdict as the HA monitor hands it over: decoded from the wire."""
    return inbound.decode_peer_verdict(b"" if body is None else json.dumps(body).encode(), node)


def presence(body: dict[str, Any]) -> inbound.Presence | inbound.Cleared | inbound.Invalid:
    return inbound.decode_presence(json.dumps(body).encode())


def book_with(*peer_reports: dict[str, Any], at: float = 0.0) -> peers.PeerBook:
    book = peers.PeerBook("pi-01", WINDOW)
    for r in peer_reports:
        book.record_verdict(r["node"], verdict(r["node"], r), at)
    return book


def test_all_up() -> None:
    book = book_with(report("pi-02"), report("pi-03"))
    view = book.view(report("pi-01"), now=1.0)
    assert view["reporters"] == ["pi-01", "pi-02", "pi-03"]
    assert statuses(view) == {"pi-01": "up", "pi-02": "up", "pi-03": "up"}
    assert view["verdict"] == "healthy"
    assert view["reasons"] == []


def test_majority_witnesses_a_failure() -> None:
    book = book_with(report("pi-02", {C}), report("pi-03", {C}))
    view = book.view(report("pi-01", {C}), now=1.0)
    assert statuses(view)["pi-03"] == "down"
    member = view["members"][2]
    assert member["unreachable_by"] == ["pi-01", "pi-02", "pi-03"]
    assert view["quorum"] == {"size": 3, "reachable": 2, "needed": 2, "ok": True, "margin": 0}
    assert view["verdict"] == "at_risk"
    assert any("pi-03) is down" in r for r in view["reasons"])


def test_only_this_node_loses_a_member_is_a_partition_not_a_failure() -> None:
    book = book_with(report("pi-02"), report("pi-03"))
    view = book.view(report("pi-01", {C}), now=1.0)
    assert statuses(view)["pi-03"] == "partitioned"
    assert view["quorum"]["reachable"] == 3
    assert view["verdict"] == "healthy"


def test_two_of_four_is_not_a_majority() -> None:
    # pi-04 is a fourth agent (a stand-by's) that reaches pi-03 too: 2 of 4 is no majority.
    book = book_with(report("pi-02", {C}), report("pi-03"), report("pi-04"))
    view = book.view(report("pi-01", {C}), now=1.0)
    assert statuses(view)["pi-03"] == "partitioned"


def test_another_node_alone_losing_a_member_changes_nothing_here() -> None:
    book = book_with(report("pi-02", {C}), report("pi-03"))
    view = book.view(report("pi-01"), now=1.0)
    assert statuses(view)["pi-03"] == "up"


def test_stale_and_offline_reporters_do_not_count() -> None:
    book = book_with(report("pi-02", {C}), report("pi-03", {C}), at=0.0)
    assert statuses(book.view(report("pi-01"), now=WINDOW + 1))["pi-03"] == "up"
    assert book.view(report("pi-01"), now=WINDOW + 1)["reporters"] == ["pi-01"]
    book = book_with(report("pi-02", {C}), report("pi-03", {C}))
    book.record_presence("pi-02", presence({"state": "offline", "session": 4}))
    view = book.view(report("pi-01"), now=1.0)
    assert view["reporters"] == ["pi-01", "pi-03"]
    assert statuses(view)["pi-03"] == "up"


def test_agent_down_when_dqlite_answers() -> None:
    book = book_with(report("pi-02"))
    book.record_presence("pi-03", presence({"state": "online", "session": 7}))
    book.record_presence(
        "pi-03", presence({"state": "offline", "session": 7, "reason": "connection lost"})
    )
    view = book.view(report("pi-01"), now=1.0)
    assert statuses(view)["pi-03"] == "agent_down"
    assert view["quorum"]["reachable"] == 3


def test_a_stale_will_does_not_override_a_newer_birth() -> None:
    book = book_with()
    book.record_presence("pi-03", presence({"state": "online", "session": 8}))
    book.record_presence("pi-03", presence({"state": "offline", "session": 7}))
    assert not book.offline("pi-03")


def test_maintenance_is_not_a_failure_but_does_not_vote() -> None:
    book = book_with(report("pi-02", {C}), report("pi-03", {C}, maintenance=True))
    view = book.view(report("pi-01", {C}), now=1.0)
    assert statuses(view)["pi-03"] == "maintenance"
    assert view["quorum"]["reachable"] == 2
    assert view["verdict"] == "at_risk"


def test_own_echo_and_mismatched_payloads_are_ignored() -> None:
    book = book_with()
    book.record_verdict("pi-01", verdict("pi-01", report("pi-01", {B, C})), 0.0)
    book.record_verdict("pi-02", verdict("pi-02", report("pi-03")), 0.0)
    book.record_verdict("pi-02", verdict("pi-02", "not a verdict"), 0.0)
    assert book.view(report("pi-01"), now=1.0)["reporters"] == ["pi-01"]


def test_empty_retained_message_forgets_the_peer() -> None:
    book = book_with(report("pi-02", {C}), report("pi-03", {C}))
    book.record_verdict("pi-02", verdict("pi-02", None), 1.0)
    book.record_verdict("pi-03", verdict("pi-03", None), 1.0)
    assert statuses(book.view(report("pi-01"), now=1.0))["pi-03"] == "up"


def test_a_lone_report_is_not_a_witness() -> None:
    view = book_with().view(report("pi-01", {C}), now=1.0)
    assert statuses(view)["pi-03"] == "unreachable"
    assert view["quorum"]["reachable"] == 2
    assert any("no other agent reported yet" in r for r in view["reasons"])


def test_members_are_matched_by_host_whatever_the_port() -> None:
    moved = report("pi-02", {C})
    moved["members"][2]["address"] = "127.0.0.13:19002"
    book = book_with(moved, report("pi-03", {C}))
    assert statuses(book.view(report("pi-01", {C}), now=1.0))["pi-03"] == "down"


def test_names_come_from_peers_own_addresses() -> None:
    book = book_with(report("pi-02"), report("pi-03"))
    assert book.names() == {"127.0.0.12": "pi-02", "127.0.0.13": "pi-03"}
