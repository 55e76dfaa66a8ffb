"""The peer-witnessed cluster view and the auto-remove planner (pure)."""

from __future__ import annotations

from typing import Any

from agent.ha import failover, peers

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


def book_with(*peer_reports: dict[str, Any], at: float = 0.0) -> peers.PeerBook:
    book = peers.PeerBook("pi-01", WINDOW)
    for r in peer_reports:
        book.record_verdict(r["node"], r, at)
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
    book.record_presence("pi-02", {"state": "offline", "session": 4})
    view = book.view(report("pi-01"), now=1.0)
    assert view["reporters"] == ["pi-01", "pi-03"]
    assert statuses(view)["pi-03"] == "up"


def test_agent_down_when_dqlite_answers() -> None:
    book = book_with(report("pi-02"))
    book.record_presence("pi-03", {"state": "online", "session": 7})
    book.record_presence("pi-03", {"state": "offline", "session": 7, "reason": "connection lost"})
    view = book.view(report("pi-01"), now=1.0)
    assert statuses(view)["pi-03"] == "agent_down"
    assert view["quorum"]["reachable"] == 3


def test_a_stale_will_does_not_override_a_newer_birth() -> None:
    book = book_with()
    book.record_presence("pi-03", {"state": "online", "session": 8})
    book.record_presence("pi-03", {"state": "offline", "session": 7})
    assert not book.offline("pi-03")


def test_maintenance_is_not_a_failure_but_does_not_vote() -> None:
    book = book_with(report("pi-02", {C}), report("pi-03", {C}, maintenance=True))
    view = book.view(report("pi-01", {C}), now=1.0)
    assert statuses(view)["pi-03"] == "maintenance"
    assert view["quorum"]["reachable"] == 2
    assert view["verdict"] == "at_risk"


def test_own_echo_and_mismatched_payloads_are_ignored() -> None:
    book = book_with()
    book.record_verdict("pi-01", report("pi-01", {B, C}), 0.0)
    book.record_verdict("pi-02", report("pi-03"), 0.0)
    book.record_verdict("pi-02", "not a verdict", 0.0)
    assert book.view(report("pi-01"), now=1.0)["reporters"] == ["pi-01"]


def test_empty_retained_message_forgets_the_peer() -> None:
    book = book_with(report("pi-02", {C}), report("pi-03", {C}))
    book.record_verdict("pi-02", None, 1.0)
    book.record_verdict("pi-03", None, 1.0)
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


# --- auto-remove planner -------------------------------------------------------------------


def down_view(*, reporters: list[str], margin_ok: bool = True) -> dict[str, Any]:
    members = [
        {"address": A, "node": "pi-01", "role": "voter", "status": "up"},
        {"address": B, "node": "pi-02", "role": "voter", "status": "up"},
        {"address": C, "node": "pi-03", "role": "voter", "status": "down"},
    ]
    q = {"size": 3, "reachable": 2, "needed": 2, "ok": margin_ok, "margin": 0}
    return {"reporters": reporters, "members": members, "quorum": q}


def test_actor_is_the_lowest_named_up_voter_that_reports() -> None:
    assert failover.actor(down_view(reporters=["pi-01", "pi-02"])) == "pi-01"
    assert failover.actor(down_view(reporters=["pi-02"])) == "pi-02"
    assert failover.actor(down_view(reporters=["pi-03"])) is None


def test_remover_waits_then_acts_once() -> None:
    remover = failover.AutoRemover(after_s=30)
    view = down_view(reporters=["pi-01", "pi-02"])
    remover.observe(view, now=100)
    assert remover.decide("pi-01", view, now=120) is None
    remover.observe(view, now=131)
    removal = remover.decide("pi-01", view, now=131)
    assert removal == failover.Removal(C, "pi-03", "pi-03", 31.0)
    assert remover.decide("pi-02", view, now=131) is None
    remover.record(C, ok=True, now=131)
    assert remover.decide("pi-01", view, now=500) is None


def test_remover_retries_a_failure_after_a_full_delay() -> None:
    remover = failover.AutoRemover(after_s=30)
    view = down_view(reporters=["pi-01", "pi-02"])
    remover.observe(view, now=0)
    assert remover.decide("pi-01", view, now=31) is not None
    remover.record(C, ok=False, now=31)
    assert remover.decide("pi-01", view, now=50) is None
    assert remover.decide("pi-01", view, now=62) is not None


def test_remover_restarts_the_clock_when_the_member_comes_back() -> None:
    remover = failover.AutoRemover(after_s=30)
    view = down_view(reporters=["pi-01", "pi-02"])
    remover.observe(view, now=0)
    back = {**view, "members": [{**m, "status": "up"} for m in view["members"]]}
    remover.observe(back, now=20)
    remover.observe(view, now=25)
    assert remover.decide("pi-01", view, now=40) is None
    assert remover.decide("pi-01", view, now=56) is not None


def test_remover_off_or_without_quorum_does_nothing() -> None:
    view = down_view(reporters=["pi-01", "pi-02"])
    off = failover.AutoRemover(after_s=0)
    off.observe(view, now=0)
    assert off.decide("pi-01", view, now=10_000) is None
    lost = down_view(reporters=["pi-01", "pi-02"], margin_ok=False)
    remover = failover.AutoRemover(after_s=1)
    remover.observe(lost, now=0)
    assert remover.decide("pi-01", lost, now=100) is None


def test_remover_uses_the_ip_when_the_name_is_unknown() -> None:
    view = down_view(reporters=["pi-01"])
    view["members"][2]["node"] = None
    remover = failover.AutoRemover(after_s=1)
    remover.observe(view, now=0)
    removal = remover.decide("pi-01", view, now=5)
    assert removal is not None
    assert removal.target == "127.0.0.13"
