"""Rolling-upgrade decisions, table-tested: plan, gates, proof of health, soak, abort, state."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.operator import rollout_plan as rp
from agent.operator.roster import NodeView

CH = "1.33-strict/stable"


def node(
    name: str,
    role: str | None = "voter",
    *,
    online: bool = True,
    verdict: str | None = "healthy",
    margin: int | None = 1,
    maintenance: bool = False,
    status: str = "ok",
    version: str = "v1.32.3",
    channel: str = "1.32-strict/stable",
    ready: bool | None = True,
    ha: bool = True,
) -> NodeView:
    return NodeView(
        name,
        state={"state": "online" if online else "offline", "ts": 1.0},
        health={
            "status": status,
            "reasons": [] if status == "ok" else ["disk 97% >= 95%"],
            "microk8s": {"version": version, "channel": channel},
            "kube": {"node_ready": ready},
        },
        ha={
            "role": role,
            "verdict": verdict,
            "quorum": {"margin": margin},
            "maintenance": maintenance,
        }
        if ha
        else None,
    )


def views(*nodes: NodeView) -> dict[str, NodeView]:
    return {n.name: n for n in nodes}


LAB = views(
    node("pi-01"),
    node("pi-02"),
    node("pi-03"),
    node("pi-04", "worker", verdict="not_ha", margin=None),
    node("pi-05", "worker", verdict="not_ha", margin=None),
    node("pi-06", "standby", verdict="healthy"),
    node("pi-07", None, ha=False),
)


@pytest.mark.parametrize(
    ("names", "concurrency", "batches", "already"),
    [
        (["pi-01", "pi-02", "pi-03", "pi-04", "pi-05"], 1,
         [["pi-04"], ["pi-05"], ["pi-01"], ["pi-02"], ["pi-03"]], []),
        (["pi-05", "pi-04", "pi-01"], 2, [["pi-04", "pi-05"], ["pi-01"]], []),
        # standby before voters; an unknown role (pi-07, no R/ha) counts as a voter
        (["pi-07", "pi-06", "pi-01", "pi-04"], 5, [["pi-04"], ["pi-06"], ["pi-01"], ["pi-07"]], []),
        # a name without any message is unknown too: a voter, one at a time
        (["pi-99", "pi-04"], 1, [["pi-04"], ["pi-99"]], []),
    ],
)  # fmt: skip
def test_plan_order(
    names: list[str], concurrency: int, batches: list[list[str]], already: list[str]
) -> None:
    assert rp.make_plan(LAB, names, CH, concurrency) == (batches, already)


def test_nodes_already_on_the_channel_and_version_are_skipped() -> None:
    done = node("pi-02", version="v1.33.0", channel=CH)
    same_channel_old_version = node("pi-03", version="v1.32.3", channel=CH)
    cluster = views(node("pi-01"), done, same_channel_old_version)
    batches, already = rp.make_plan(cluster, ["pi-01", "pi-02", "pi-03"], CH, 1)
    assert (batches, already) == ([["pi-01"], ["pi-03"]], ["pi-02"])
    latest = views(node("pi-01", channel="latest/edge", version="v1.34.1"))
    assert rp.make_plan(latest, ["pi-01"], "latest/edge", 1) == ([], ["pi-01"])


@pytest.mark.parametrize(
    ("change", "target", "reason"),
    [
        ({}, "pi-01", None),
        ({"pi-02": node("pi-02", verdict="at_risk", margin=0)}, "pi-01",
         "voter pi-02 reports at_risk"),
        ({"pi-02": node("pi-02", margin=0)}, "pi-01", "voter pi-02 reports a quorum margin of 0"),
        ({"pi-03": node("pi-03", online=False)}, "pi-01", "voter pi-03 is offline"),
        ({"pi-04": node("pi-04", "worker", maintenance=True)}, "pi-01", "pi-04 is in maintenance"),
        ({"pi-01": node("pi-01", online=False)}, "pi-01", "pi-01 is not online"),
        # a worker needs only to be online, whatever the voters say
        ({"pi-02": node("pi-02", verdict="lost", margin=-1)}, "pi-04", None),
        # the unknown-role node is gated like a voter
        ({"pi-02": node("pi-02", verdict="degraded")}, "pi-07", "voter pi-02 reports degraded"),
    ],
)  # fmt: skip
def test_gate(change: dict[str, NodeView], target: str, reason: str | None) -> None:
    assert rp.gate({**LAB, **change}, target) == reason


def test_gate_without_ha_checks_keeps_maintenance_and_one_at_a_time() -> None:
    quiet = views(*(node(f"pi-0{i}", None, ha=False) for i in range(1, 4)))
    assert rp.gate(quiet, "pi-01") is None
    assert rp.make_plan(quiet, list(quiet), CH, 3)[0] == [["pi-01"], ["pi-02"], ["pi-03"]]
    assert rp.gate(quiet, "pi-09") == "pi-09 is not online"


@pytest.mark.parametrize(
    ("view", "reason"),
    [
        (node("a", version="v1.33.0"), None),
        (node("a", version="v1.33.0", ready=None), None),  # the agent's own Ready wait holds
        (node("a", version="v1.33.0", status="degraded"), None),
        (node("a", version="v1.33.0", status="critical"), "health critical (disk 97% >= 95%)"),
        (node("a", version="v1.33.0", ready=False), "Kubernetes node not Ready"),
        (node("a", version="v1.32.3"), "MicroK8s runs v1.32.3, expected v1.33.0"),
        (node("a", version="v1.33.0", verdict="degraded"), "HA verdict degraded"),
        (node("a", "worker", version="v1.33.0", verdict="not_ha"), None),
        (node("a", version="v1.33.0", online=False), "offline"),
        (None, "offline"),
    ],
)
def test_health_proof(view: NodeView | None, reason: str | None) -> None:
    assert rp.health_proof(view, "v1.33.0") == reason


def test_soak_needs_an_unbroken_healthy_stretch() -> None:
    soak = rp.Soak(10)
    assert not soak.observe(0, None)
    assert not soak.observe(9, None)
    assert not soak.observe(9.5, "health critical")
    assert not soak.observe(12, None)
    assert not soak.observe(21, None)
    assert soak.observe(22, None)
    assert rp.Soak(0).observe(5, None)


def state_for(names: list[str], concurrency: int = 1) -> rp.RolloutState:
    plan = rp.make_plan(LAB, names, CH, concurrency)
    return rp.RolloutState.new("r-1", "lab", CH, LAB, plan)


@pytest.mark.parametrize(
    ("options", "failed", "planned", "aborts"),
    [
        (rp.Options(CH), 0, 4, False),
        (rp.Options(CH), 1, 4, True),
        (rp.Options(CH, max_failures=1), 1, 4, False),
        (rp.Options(CH, max_failures=1), 2, 4, True),
        (rp.Options(CH, max_failure_percent=30), 1, 4, False),  # 25%
        (rp.Options(CH, max_failure_percent=30), 2, 4, True),  # 50%
        (rp.Options(CH, max_failures=5, max_failure_percent=30), 2, 4, True),
    ],
)
def test_abort_criteria(options: rp.Options, failed: int, planned: int, aborts: bool) -> None:
    names = ["pi-01", "pi-02", "pi-03", "pi-04"][:planned]
    state = state_for(names)
    for name in names[:failed]:
        state.records[name].result = "failed"
    assert (state.abort_reason(options) is not None) == aborts


def test_abort_marks_every_pending_node_not_started_and_nothing_else() -> None:
    state = state_for(["pi-01", "pi-02", "pi-04", "pi-05"], concurrency=2)
    state.records["pi-04"].result = "failed"
    state.records["pi-05"].result = "running"
    state.abort("1 failed")
    results = {name: r.result for name, r in state.records.items()}
    assert results == {
        "pi-04": "failed",
        "pi-05": "running",
        "pi-01": "not_started",
        "pi-02": "not_started",
    }
    assert state.records["pi-01"].error == "aborted: 1 failed"
    assert state.finished and state.aborted


def test_state_survives_a_round_trip_and_resumes_mid_batch() -> None:
    state = state_for(["pi-01", "pi-04", "pi-05"], concurrency=2)
    assert state.next_batch() == ["pi-04", "pi-05"]
    state.records["pi-04"].result = "succeeded"
    state.records["pi-05"].result = "running"
    state.records["pi-05"].command_id = rp.command_id("r-1", "pi-05")
    again = rp.RolloutState.from_json(json.loads(json.dumps(state.to_json())))
    assert again == state
    assert again.next_batch() == ["pi-05"]
    again.records["pi-05"].result = "succeeded"
    assert again.next_batch() == ["pi-01"]
    again.records["pi-01"].result = "failed"
    assert again.next_batch() is None and again.finished


def test_summary_has_exactly_the_documented_keys() -> None:
    state = state_for(["pi-01", "pi-04"])
    state.records["pi-04"].started = 1764160000.0
    summary: dict[str, Any] = state.summary()
    assert list(summary) == ["rollout", "channel", "aborted", "nodes"]
    keys = ["node", "role", "result", "old_version", "new_version", "started", "finished", "error"]
    assert all(list(entry) == keys for entry in summary["nodes"])
    assert summary["nodes"][0]["started"] == "2025-11-26T12:26:40Z"
    assert summary["nodes"][1]["role"] == "voter"


def test_command_ids_are_stable_per_node_and_valid_on_the_wire() -> None:
    from agent.commands import wire

    first = rp.command_id("r-20261201T020000Z-abc123", "pi-01")
    assert first == rp.command_id("r-20261201T020000Z-abc123", "pi-01")
    assert first != rp.command_id("r-20261201T020000Z-abc123", "pi-02")
    assert wire.ID_RE.fullmatch(first)


@pytest.mark.parametrize(
    "data",
    [{}, {"schema": 2}, {"schema": 1, "records": "x"}, {"schema": 1, "records": [{"x": 1}]}],
)
def test_foreign_state_files_are_refused(data: dict[str, Any]) -> None:
    with pytest.raises((KeyError, TypeError, ValueError)):
        rp.RolloutState.from_json(data)


@pytest.mark.parametrize("tty", [True, False])
def test_progress_lines_only_on_a_terminal(tty: bool, monkeypatch: pytest.MonkeyPatch) -> None:
    import io
    import sys

    from agent.operator import fleet

    class Stream(io.StringIO):
        def isatty(self) -> bool:
            return tty

    stream = Stream()
    monkeypatch.setattr(sys, "stderr", stream)
    fleet.progress_printer()("pi-01 (voter): upgrading to 1.33/stable")
    lines = stream.getvalue().splitlines()
    if tty:
        assert len(lines) == 1 and lines[0].endswith("  pi-01 (voter): upgrading to 1.33/stable")
    else:
        assert lines == []


def test_the_rollout_report_counts_progress() -> None:
    state = state_for(["pi-01", "pi-04", "pi-05"])
    state.records["pi-04"].result = "succeeded"
    state.records["pi-05"].result = "failed"
    options = rp.Options(CH, max_failures=1)
    report = state.report("pi-01", "gate", options, 12.34567)
    assert report == {
        "rollout": "r-1", "channel": CH, "state": "running", "node": "pi-01", "step": "gate",
        "done": 2, "total": 3, "failures": 1, "max_failures": 1, "aborted": False, "ts": 12.346,
    }  # fmt: skip
    state.abort("2 failed")
    assert state.report(None, "aborted", options, 0)["state"] == "aborted"
