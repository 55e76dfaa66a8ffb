"""Memory budget: shed optional collectors, then restart cleanly — never while disconnected."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.health.budget import MIB, OPTIONAL_COLLECTORS, RESTART_AFTER_SAMPLES, Action, Budget
from tests.conftest import Broker, agent_config, watch


def test_disabled_budget_never_acts() -> None:
    budget = Budget(0)
    assert budget.check(10_000 * MIB, connected=True) is Action.NONE


def test_under_budget_does_nothing_and_resets() -> None:
    budget = Budget(64)
    assert budget.check(10 * MIB, connected=True) is Action.NONE
    assert budget.shed == []


def test_sheds_each_collector_then_restarts() -> None:
    budget = Budget(32)
    actions = [budget.check(40 * MIB, connected=True) for _ in range(len(OPTIONAL_COLLECTORS))]
    assert actions == [Action.SHED] * len(OPTIONAL_COLLECTORS)
    assert budget.shed == list(OPTIONAL_COLLECTORS)
    later = [budget.check(40 * MIB, connected=True) for _ in range(RESTART_AFTER_SAMPLES)]
    assert later[-1] is Action.RESTART
    assert all(action is Action.NONE for action in later[:-1])
    assert "40.0 MiB over budget 32 MiB" in budget.reason(40 * MIB)


def test_never_restarts_while_disconnected() -> None:
    budget = Budget(32)
    for _ in range(len(OPTIONAL_COLLECTORS)):
        budget.check(40 * MIB, connected=False)
    assert all(budget.check(40 * MIB, connected=False) is Action.NONE for _ in range(10))
    assert budget.check(40 * MIB, connected=True) is Action.RESTART


@pytest.mark.broker
async def test_agent_over_budget_restarts_itself_cleanly(
    tmp_path: Path, broker: Broker, spawn_agent
) -> None:
    state = "microk8s/lab/nodes/test-node/state"
    health = "microk8s/lab/nodes/test-node/health"
    config = agent_config(tmp_path, broker, agent={"max_rss_mib": 1}, health={"interval_s": 0.1})
    async with watch(broker, state, health) as w:
        agent = spawn_agent(config)
        _, birth = await w.wait_for(lambda t, p: t == state and p["state"] == "online")
        _, offline = await w.wait_for(
            lambda t, p: t == state and p["state"] == "offline", timeout_s=20
        )
        assert offline["reason"].startswith("restarting: rss")
        assert "over budget 1 MiB" in offline["reason"]
        _, again = await w.wait_for(
            lambda t, p: t == state and p["state"] == "online" and p["session"] > birth["session"],
            timeout_s=20,
        )
        assert again["session"] == birth["session"] + 1
        shed = [line for line in agent.log_lines() if line.get("event") == "budget_shed"]
        assert [line["collector"] for line in shed][:3] == list(OPTIONAL_COLLECTORS)
        assert agent.process is not None and agent.process.poll() is None  # re-executed in place
