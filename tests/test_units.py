"""Small pure pieces: topics, backoff, presence payloads, session file, readiness."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from agent import durable
from agent.errors import StateError
from agent.health.state import AgentState, LinkView, readiness
from agent.link.presence import BACKOFF_CAP_S, backoff_delay, presence_payload
from agent.link.topics import Topics


def test_topics() -> None:
    topics = Topics("microk8s", "default", "pi-01")
    assert topics.state == "microk8s/default/nodes/pi-01/state"
    assert topics.health == "microk8s/default/nodes/pi-01/health"
    assert topics.ha == "microk8s/default/nodes/pi-01/ha"
    assert topics.cmd == "microk8s/default/nodes/pi-01/cmd"
    assert topics.invalid == "microk8s/default/nodes/pi-01/cmd/_invalid"
    assert topics.cmd_status("c-1") == "microk8s/default/nodes/pi-01/cmd/c-1"
    assert topics.peers("ha") == "microk8s/default/nodes/+/ha"
    assert topics.node_of("microk8s/default/nodes/pi-02/ha") == "pi-02"
    assert topics.node_of("other/default/nodes/pi-02/ha") is None


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(7)
    for attempt in range(40):
        delay = backoff_delay(attempt, rng)
        assert 0 <= delay <= min(BACKOFF_CAP_S, 0.5 * 2**attempt)
    late = [backoff_delay(30, rng) for _ in range(200)]
    assert max(late) <= BACKOFF_CAP_S
    assert max(late) > BACKOFF_CAP_S / 2  # jitter spans the whole range, not a constant


def test_presence_payloads() -> None:
    online = json.loads(presence_payload("online", 7, "0.1.0"))
    assert online["state"] == "online"
    assert online["session"] == 7
    assert "reason" not in online
    will = json.loads(presence_payload("offline", 7, "0.1.0", "connection lost"))
    assert will["reason"] == "connection lost"


def test_session_file_roundtrip(tmp_path: Path) -> None:
    assert durable.read_session(tmp_path) == 0
    durable.write_session(tmp_path / "sub", 41)
    assert durable.read_session(tmp_path / "sub") == 41
    assert not list((tmp_path / "sub").glob(".*tmp"))


def test_session_file_garbage_and_unwritable(tmp_path: Path) -> None:
    (tmp_path / "session").write_text("not a number")
    with pytest.raises(StateError):
        durable.read_session(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StateError, match="cannot write"):
        durable.write_session(blocker, 1)


def test_readiness_reasons() -> None:
    state = AgentState()
    assert readiness(state, interval_s=10, now=100.0) == [
        "not connected to the MQTT broker",
        "no health sample yet",
    ]
    state.link = lambda: LinkView(connected=True)
    state.record_health({"seq": 0}, 0.01, now=100.0)
    assert readiness(state, interval_s=10, now=110.0) == []
    stale = readiness(state, interval_s=10, now=126.0)
    assert len(stale) == 1
    assert "old" in stale[0]


def test_recent_commands_keep_latest_status_per_id() -> None:
    state = AgentState()
    state.record_command({"id": "a", "status": "accepted"})
    state.record_command({"id": "b", "status": "accepted"})
    state.record_command({"id": "a", "status": "succeeded"})
    assert [(c["id"], c["status"]) for c in state.recent_commands] == [
        ("b", "accepted"),
        ("a", "succeeded"),
    ]
