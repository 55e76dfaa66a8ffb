"""The dashboard's pure parts: folding untrusted messages, rows and banner, access decisions."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.operator.dashboard import access, rows
from agent.operator.dashboard.fleet_view import MAX_PAYLOAD_BYTES, FleetView

BASE = "microk8s/lab/nodes"
NOW = 1_800_000_000.0


def put(view: FleetView, node: str, leaf: str, body: Any, at: float = NOW) -> bool:
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    return view.apply(f"{BASE}/{node}/{leaf}", payload, at)


def health(status: str = "ok", **system: Any) -> dict[str, Any]:
    return {
        "ts": NOW - 1,
        "status": status,
        "reasons": [] if status == "ok" else [f"something {status}"],
        "system": {
            "temperature_c": 50.0,
            "disks": [{"mount": "/", "percent": 40.0}, {"mount": "/data", "percent": 91.5}],
            "throttled": {"under_voltage": False, "throttled": False},
            **system,
        },
        "microk8s": {"version": "v1.32.3", "channel": "1.32-strict/stable", "running": True},
    }


def online(session: int = 3) -> dict[str, Any]:
    return {"state": "online", "session": session, "ts": NOW - 5, "agent_version": "0.1.0"}


def snapshot(view: FleetView, now: float = NOW) -> dict[str, Any]:
    return rows.snapshot(view, now)


def by_name(snap: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {row["name"]: row for row in snap["nodes"]}


@pytest.fixture
def view() -> FleetView:
    return FleetView("microk8s", "lab")


@pytest.mark.parametrize(
    ("body", "presence"),
    [
        (online(), "online"),
        ({"state": "offline", "session": 3, "reason": "shutdown"}, "offline"),
        ({"state": "offline", "session": 3, "reason": "connection lost"}, "lost"),
        ({"state": "offline", "session": 3}, "lost"),
    ],
)
def test_presence_words(view: FleetView, body: dict[str, Any], presence: str) -> None:
    assert put(view, "pi-01", "state", body)
    assert by_name(snapshot(view))["pi-01"]["presence"] == presence


def test_a_late_will_of_an_older_session_is_dropped(view: FleetView) -> None:
    put(view, "pi-01", "state", online(session=4))
    assert not put(view, "pi-01", "state", {"state": "offline", "session": 3})
    assert by_name(snapshot(view))["pi-01"]["presence"] == "online"
    assert put(view, "pi-01", "state", {"state": "offline", "session": 4})
    assert by_name(snapshot(view))["pi-01"]["presence"] == "lost"


@pytest.mark.parametrize(
    "payload",
    [
        b"not json",
        b"[1, 2, 3]",
        b'"a string"',
        b"\xff\xfe",
        b"[" * 100_000,
        json.dumps({"state": "dancing"}).encode(),
        json.dumps({"pad": "x" * MAX_PAYLOAD_BYTES}).encode(),
    ],
    ids=["text", "list", "string", "bad-utf8", "deep", "bad-state", "oversize"],
)
def test_garbage_is_counted_and_ignored(view: FleetView, payload: bytes) -> None:
    assert not put(view, "pi-01", "state", payload)
    assert view.ignored == 1
    assert snapshot(view)["nodes"] == []


def test_wrong_types_become_unknown_never_a_crash(view: FleetView) -> None:
    body = {
        "status": ["critical"],
        "reasons": "one string",
        "system": {"temperature_c": "hot", "disks": "all", "throttled": [1]},
        "microk8s": {"version": 1.32, "channel": None},
        "ts": float("nan"),
    }
    assert put(view, "pi-01", "health", json.dumps(body).replace("NaN", "1e999").encode())
    row = by_name(snapshot(view))["pi-01"]
    assert row["health"]["status"] == "unknown"
    assert row["health"]["reasons"] == []
    assert (row["temperature_c"], row["disk_percent"], row["under_voltage"]) == (None, None, None)
    assert row["microk8s"]["version"] is None


def test_strings_are_clipped_and_lists_cut(view: FleetView) -> None:
    body = health("critical")
    body["reasons"] = ["r" * 1000] * 50
    put(view, "pi-01", "health", body)
    reasons = by_name(snapshot(view))["pi-01"]["health"]["reasons"]
    assert len(reasons) == 8
    assert all(len(reason) <= 160 for reason in reasons)


def test_node_names_and_foreign_topics_are_checked(view: FleetView) -> None:
    assert not put(view, "../etc", "state", online())
    assert not put(view, "<script>", "state", online())
    assert not view.apply("microk8s/other/nodes/pi-01/state", json.dumps(online()).encode(), NOW)
    assert not put(view, "pi-01", "cmd", {"status": "running"})  # a request, not a status
    assert not put(view, "pi-01", "cmd/_invalid", {"status": "rejected"})
    assert snapshot(view)["nodes"] == []


def test_node_count_is_bounded() -> None:
    view = FleetView("microk8s", "lab", max_nodes=3)
    for index in range(5):
        put(view, f"pi-{index}", "state", online())
    assert len(view.nodes) == 3
    assert put(view, "pi-0", "health", health())  # known nodes still update


def test_an_empty_retained_message_forgets_that_leaf(view: FleetView) -> None:
    put(view, "pi-01", "state", online())
    put(view, "pi-01", "health", health())
    assert put(view, "pi-01", "health", b"")
    assert by_name(snapshot(view))["pi-01"]["health"] is None
    assert put(view, "pi-01", "state", b"")
    assert snapshot(view)["nodes"] == []


def test_row_values(view: FleetView) -> None:
    put(view, "pi-01", "state", online())
    put(view, "pi-01", "health", health(throttled={"under_voltage": True, "throttled": True}))
    put(view, "pi-01", "cmd/c-1", {"verb": "addon", "status": "running", "ts": NOW - 2})
    row = by_name(snapshot(view))["pi-01"]
    assert row["temperature_c"] == 50.0
    assert row["disk_percent"] == 91.5  # the fullest disk
    assert (row["under_voltage"], row["throttled"]) == (True, True)
    assert row["agent_version"] == "0.1.0"
    assert row["command"] == {
        "id": "c-1",
        "verb": "addon",
        "status": "running",
        "age_s": 2.0,
        "error": None,
    }
    assert row["last_seen_age_s"] == 1.0
    assert row["severity"] == "warning"
    assert "under-voltage" in row["why"]


def test_offline_values_are_kept_and_stale_with_their_age(view: FleetView) -> None:
    put(view, "pi-01", "state", online(), at=NOW - 100)
    put(view, "pi-01", "health", {**health(), "ts": NOW - 100}, at=NOW - 100)
    put(view, "pi-01", "state", {"state": "offline", "session": 3, "ts": NOW - 400}, at=NOW - 90)
    row = by_name(snapshot(view))["pi-01"]
    assert row["presence"] == "lost"
    assert row["stale"]
    assert row["stale_reason"] == "connection lost"
    assert row["temperature_c"] == 50.0
    assert row["last_seen_age_s"] == 100.0  # the will carries its connect time: not newer
    assert row["severity"] == "critical"


def test_an_online_node_with_old_health_is_stale(view: FleetView) -> None:
    put(view, "pi-01", "state", online(), at=NOW - 200)
    put(view, "pi-01", "health", health(), at=NOW - 200)
    row = by_name(snapshot(view))["pi-01"]
    assert row["stale"]
    assert row["stale_reason"] == "no health for 200 s"
    assert row["severity"] == "warning"


def test_a_fast_clock_cannot_make_a_node_look_fresher_than_its_messages(view: FleetView) -> None:
    put(view, "pi-01", "health", {**health(), "ts": NOW + 3600}, at=NOW - 30)
    assert by_name(snapshot(view))["pi-01"]["last_seen_age_s"] == 30.0


def test_rows_are_sorted_by_severity_then_name(view: FleetView) -> None:
    for name, status in (("a-ok", "ok"), ("b-crit", "critical"), ("c-deg", "degraded")):
        put(view, name, "state", online())
        put(view, name, "health", health(status))
    put(view, "d-lost", "state", {"state": "offline", "session": 1})
    put(view, "e-clean", "state", {"state": "offline", "session": 1, "reason": "shutdown"})
    put(view, "e-clean", "health", health())
    order = [(r["name"], r["severity"]) for r in snapshot(view)["nodes"]]
    assert order == [
        ("b-crit", "critical"),
        ("d-lost", "critical"),
        ("c-deg", "warning"),
        ("e-clean", "warning"),
        ("a-ok", "ok"),
    ]


def test_version_skew_marks_the_odd_ones_out(view: FleetView) -> None:
    for name, version, channel in (
        ("pi-01", "v1.32.3", "1.32/stable"),
        ("pi-02", "v1.32.3", "1.32/stable"),
        ("pi-03", "v1.33.0", "1.33/stable"),
    ):
        body = health()
        body["microk8s"] = {"version": version, "channel": channel}
        put(view, name, "health", body)
    snap = snapshot(view)
    skewed = {r["name"]: r["microk8s"]["version_skew"] for r in snap["nodes"]}
    assert skewed == {"pi-01": False, "pi-02": False, "pi-03": True}
    assert by_name(snap)["pi-03"]["microk8s"]["channel_skew"]
    assert snap["banner"]["skew"] == [
        "MicroK8s versions differ: v1.33.0 on pi-03; v1.32.3 on pi-01, pi-02",
        "channels differ: 1.33/stable on pi-03; 1.32/stable on pi-01, pi-02",
    ]


@pytest.mark.parametrize(
    ("versions", "usual"),
    [
        (["v1.32.3", "v1.32.3"], None),
        (["v1.32.3", "v1.33.0"], "v1.33.0"),  # a tie: the one left behind is highlighted
        (["v1.32.3", "v1.32.3", "v1.33.0"], "v1.32.3"),
        ([None, "v1.32.3"], None),
    ],
)
def test_usual_value(versions: list[str | None], usual: str | None) -> None:
    assert rows.usual(versions) == usual


def ha(verdict: str, **extra: Any) -> dict[str, Any]:
    return {
        "ts": NOW - 1,
        "role": "voter",
        "verdict": verdict,
        "quorum": {"size": 3, "reachable": 3, "needed": 2, "ok": True, "margin": 1},
        "reasons": [],
        **extra,
    }


def test_banner_from_the_cluster_view_with_readiness_and_leader(view: FleetView) -> None:
    cluster = {
        "verdict": "at_risk",
        "quorum": {"size": 3, "reachable": 2, "needed": 2, "margin": 0},
        "reasons": ["only 2 of 3 voters"],
    }
    readiness = {
        "score": 67,
        "factors": {
            "margin": {"value": 1, "points": 20, "max": 40},  # docs/ha.md's scored factors
            "spread": {"domains": {"0": 3}},  # no points: not shown
            "standby": False,
            "voters_up": 2,
            "x" * 99: "y" * 99,
        },
        "reasons": ["no online stand-by or spare: a lost voter cannot be replaced"],
    }
    for name in ("pi-01", "pi-02"):
        put(view, name, "state", online())
        put(
            view,
            name,
            "ha",
            ha(
                "healthy",
                cluster=cluster,
                readiness=readiness,
                leader={"address": "127.0.0.11:19001", "node": "pi-02"},
            ),
        )
    put(view, "pi-03", "state", online())
    put(view, "pi-03", "ha", ha("lost", ts=NOW))
    snap = snapshot(view)
    banner = snap["banner"]
    # pi-03 is freshest but has no cluster view; the voters agree on at_risk via theirs.
    assert banner["verdict_from"] == "pi-03"
    assert banner["verdict"] == "lost"
    assert banner["disagree"] == [
        {"node": "pi-01", "verdict": "at_risk"},
        {"node": "pi-02", "verdict": "at_risk"},
    ]
    put(view, "pi-03", "state", {"state": "offline", "session": 3, "reason": "shutdown"})
    banner = snapshot(view)["banner"]
    assert banner["verdict"] == "at_risk"
    assert (banner["voters_up"], banner["voters_total"], banner["needed"], banner["margin"]) == (
        2,
        3,
        2,
        0,
    )
    assert banner["reasons"] == ["only 2 of 3 voters"]
    assert banner["leader"] == "pi-02"
    assert banner["readiness"]["score"] == 67
    assert banner["readiness"]["factors"]["standby"] is False
    assert banner["readiness"]["factors"]["margin"] == "20/40"
    assert "spread" not in banner["readiness"]["factors"]
    assert banner["readiness"]["reasons"] == [
        "no online stand-by or spare: a lost voter cannot be replaced"
    ]
    assert all(len(key) <= 40 for key in banner["readiness"]["factors"])
    assert by_name(snapshot(view))["pi-02"]["leader"]


def test_banner_without_ha_says_why(view: FleetView) -> None:
    put(view, "pi-01", "state", online())
    banner = snapshot(view)["banner"]
    assert banner["verdict"] == "unknown"
    assert "HA checks are off" in banner["reasons"][0]
    assert banner["counts"] == {
        "nodes": 1,
        "online": 1,
        "offline": 0,
        "lost": 0,
        "critical": 0,
        "warning": 1,
        "ok": 0,
    }


def test_maintenance_and_rollout(view: FleetView) -> None:
    put(view, "pi-02", "ha", ha("healthy", maintenance=True, maintenance_reason="upgrading"))
    body = {"rollout": "r-1", "channel": "1.33/stable", "node": "pi-02", "step": "soak"}
    assert view.apply(
        "microk8s/lab/rollout", json.dumps({**body, "done": 1, "total": 5}).encode(), NOW
    )
    banner = snapshot(view)["banner"]
    assert banner["maintenance"] == [{"node": "pi-02", "reason": "upgrading"}]
    assert banner["rollout"]["node"] == "pi-02"
    assert (banner["rollout"]["done"], banner["rollout"]["total"]) == (1, 5)
    assert view.apply("microk8s/lab/rollout", b"", NOW)
    assert snapshot(view)["banner"]["rollout"] is None


# -- access ---------------------------------------------------------------------------------

TOKEN = "0123456789abcdef0123"


@pytest.mark.parametrize(
    ("bind", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.3.2.1", True),
        ("::1", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("192.168.1.10", False),
        ("::", False),
        ("dashboard.lan", False),
    ],
)
def test_loopback(bind: str, loopback: bool) -> None:
    assert access.is_loopback(bind) is loopback


@pytest.mark.parametrize(
    ("headers", "allowed", "cookie"),
    [
        ({}, False, False),
        ({"authorization": f"Bearer {TOKEN}"}, True, False),
        ({"authorization": f"bearer {TOKEN}"}, True, False),
        ({"authorization": "Bearer wrong"}, False, False),
        ({"authorization": f"Basic {TOKEN}"}, False, False),
        ({"query_token": TOKEN}, True, True),
        ({"query_token": "wrong"}, False, False),
        ({"query_token": "é" * 20}, False, False),
        ({"cookie": access.cookie_value(TOKEN)}, True, False),
        ({"cookie": TOKEN}, False, False),  # the cookie holds a proof, never the token
    ],
)
def test_token_decisions(headers: dict[str, str], allowed: bool, cookie: bool) -> None:
    kwargs = {"authorization": None, "cookie": None, "query_token": None, **headers}
    decision = access.decide(TOKEN, **kwargs)
    assert (decision.allowed, decision.set_cookie) == (allowed, cookie)
    assert access.decide(None, **kwargs).allowed


def test_weak_tokens_are_refused() -> None:
    assert access.check_token("short") is not None
    assert access.check_token("with a space in it!!") is not None
    assert access.check_token(TOKEN) is None


# -- fuzzing: nothing a neighbour publishes can raise, and the snapshot is always JSON ----------

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=25,
)
FIELDS = st.sampled_from(
    [
        "state",
        "session",
        "ts",
        "reason",
        "status",
        "reasons",
        "system",
        "microk8s",
        "role",
        "verdict",
        "quorum",
        "cluster",
        "readiness",
        "leader",
        "maintenance",
        "verb",
        "done",
    ]
)
OBJECTS = st.dictionaries(FIELDS | st.text(max_size=8), JSON_VALUES, max_size=8)
LEAVES = st.sampled_from(["state", "health", "ha", "cmd/c-1", "cmd/_invalid", "cmd", "x/y", ""])
NAMES = st.sampled_from(["pi-01", "pi-02", "", "+", "a" * 70]) | st.text(max_size=10)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            NAMES, LEAVES, OBJECTS.map(lambda o: json.dumps(o).encode()) | st.binary(max_size=40)
        ),
        max_size=12,
    )
)
def test_any_messages_fold_without_raising(messages: list[tuple[str, str, bytes]]) -> None:
    view = FleetView("microk8s", "lab")
    for node, leaf, payload in messages:
        view.apply(f"{BASE}/{node}/{leaf}", payload, NOW)
        view.apply("microk8s/lab/rollout", payload, NOW)
    snap = snapshot(view)
    json.dumps(snap, allow_nan=False)  # what the page receives is strict JSON
    assert [r["severity"] for r in snap["nodes"]] == sorted(
        (r["severity"] for r in snap["nodes"]),
        key=lambda s: {"critical": 0, "warning": 1, "ok": 2}[s],
    )


def test_replay_topics_only_for_nodes_the_view_holds(view: FleetView) -> None:
    assert view.replay_topics(f"{BASE}/pi-01/health") == []  # not accepted (yet)
    put(view, "pi-01", "health", health())
    assert view.replay_topics(f"{BASE}/pi-01/health") == [
        f"{BASE}/pi-01/state",
        f"{BASE}/pi-01/health",
        f"{BASE}/pi-01/ha",
    ]
    assert view.replay_topics("microk8s/lab/rollout") == []
    assert view.replay_topics("elsewhere/pi-01/health") == []
