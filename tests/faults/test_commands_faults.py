"""Commands under faults: a 60 s broker outage mid-command, kill -9 mid-verb, a full or read-only
state dir, wall-clock jumps, a flood of commands (a hanging microk8s or snapd: test_hangs.py).

The agent runs as a subprocess against a real mosquitto. MicroK8s is played by the fake CLI,
whose argv log is how "never executed twice" is read. The state dir faults use a real tmpfs in
the agent's private mount namespace, the clock jumps libfaketime. Overlaps avoided: an
unreadable journal at start is test_commands_durability.py's, the broker kill without a command
test_broker_faults.py's.
"""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.commands_helpers import (
    CMD,
    JOIN_URL,
    NODE,
    ROOT,
    TERMINAL,
    Keys,
    envelope,
    fake_env,
    kill_fakes,
    mutating_calls,
    ready,
    send,
    signed,
    status_of,
    terminal,
)
from tests.conftest import AgentProcess, Broker, Watcher, watch
from tests.faults.faultkit import (
    FakeClock,
    SmallStateAgent,
    events,
    fault_config,
    health_after,
    health_flows,
    libfaketime,
    settled,
    small_state_unavailable,
    terminal_count,
)

pytestmark = pytest.mark.broker

Spawn = Callable[..., AgentProcess]
DNS = {"name": "dns", "action": "enable"}
HELM = {"name": "helm", "action": "enable"}
HEALTH = f"{ROOT}/health"
UPGRADE = "1.33-strict/stable"


# -- a: the broker away for 60 s while a command runs --------------------------------------------


def observer(broker: Broker) -> aiomqtt.Client:
    """A persistent session: the broker restores its subscription after the restart."""
    return aiomqtt.Client(
        broker.host, broker.port, identifier="fault-observer", clean_session=False
    )


async def collect(
    broker: Broker, into: list[dict[str, Any]], subscribed: asyncio.Event | None = None
) -> None:
    """Append every status on R/cmd/+ until the connection ends (the broker is killed)."""
    try:
        async with observer(broker) as client:
            await client.subscribe(f"{CMD}/+", qos=1)
            if subscribed is not None:
                subscribed.set()
            async for message in client.messages:
                payload: Any = message.payload
                into.append(json.loads(payload))
    except aiomqtt.MqttError:
        return


async def until_terminal(seen: list[dict[str, Any]], ids: list[str], timeout_s: float) -> None:
    async with asyncio.timeout(timeout_s):
        while not all(any(s["id"] == i and s["status"] in TERMINAL for s in seen) for i in ids):
            await asyncio.sleep(0.05)


async def kill_mid_command(
    tmp_path: Path, broker: Broker, commands: list[dict[str, Any]], seen: list[dict[str, Any]]
) -> None:
    """Send both commands, then kill the broker while the first runs and the second waits."""
    subscribed = asyncio.Event()
    before = asyncio.create_task(collect(broker, seen, subscribed))
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        await subscribed.wait()
        for command in commands:
            await send(w, command)
        await status_of(w, commands[0]["id"], "running")
        await status_of(w, commands[1]["id"], "accepted")
        await asyncio.sleep(1.5)  # an autosave with the observer's subscription in it
        assert ["enable", "dns"] in mutating_calls(tmp_path)
        broker.kill()
    await before


async def test_results_of_a_command_cross_a_60_s_broker_outage(
    tmp_path: Path, make_broker: Callable[..., Broker], spawn_agent: Spawn
) -> None:
    # autosave every second: the observer's session survives the SIGKILL of the broker.
    persistent = f"persistence true\npersistence_location {tmp_path}/\nautosave_interval 1\n"
    broker = make_broker(persistent)
    keys = Keys(tmp_path / "keys")
    env = fake_env(tmp_path, FAKE_MICROK8S_SLEEP="enable=3")
    spawn_agent(fault_config(tmp_path, broker, keys), env=env)
    first, second = signed(keys, "addon", DNS), signed(keys, "addon", HELM)
    seen: list[dict[str, Any]] = []
    await kill_mid_command(tmp_path, broker, [first, second], seen)
    killed_at = time.time()
    await asyncio.sleep(60)  # both commands end while the broker is away
    broker = make_broker(persistent, port=broker.port)
    returned = time.monotonic()
    after = asyncio.create_task(collect(broker, seen))
    try:
        await until_terminal(seen, [first["id"], second["id"]], timeout_s=30)
        print(f"results delivered {time.monotonic() - returned:.2f} s after the broker returned")
        async with watch(broker, "microk8s/#") as w:
            await settled(w)  # anything the outbox still held has been sent by now
    finally:
        after.cancel()
    by_id = {c["id"]: [s for s in seen if s["id"] == c["id"]] for c in (first, second)}
    for command_id, updates in by_id.items():
        kinds = [s["status"] for s in updates if "detail" not in s]
        assert kinds == ["accepted", "running", "succeeded"], (command_id, kinds)
    # Produced during the outage (first ends ~1.5 s into it, second ~3 s later), sent after it.
    assert killed_at < by_id[first["id"]][-1]["ts"] < killed_at + 30
    assert killed_at < by_id[second["id"]][1]["ts"] < by_id[second["id"]][-1]["ts"]
    assert [a[0] for a in mutating_calls(tmp_path)] == ["enable", "enable"]


# -- b: kill -9 in the middle of each verb -------------------------------------------------------

KILL_POINTS: dict[str, tuple[str, dict[str, Any], str, list[str]]] = {
    "join": ("join", {"url": JOIN_URL}, "join=30", ["join", JOIN_URL]),
    "addon": ("addon", DNS, "enable=30", ["enable", "dns"]),
    "upgrade-draining": (
        "upgrade",
        {"channel": UPGRADE, "drain": True},
        "kubectl-drain=30",
        ["kubectl", "drain", NODE],
    ),
    "upgrade-refreshing": (
        "upgrade",
        {"channel": UPGRADE, "drain": True},
        "refresh=30",
        ["refresh", "microk8s", f"--channel={UPGRADE}"],
    ),
}
"""verb, args, which fake call hangs (FAKE_MICROK8S_SLEEP), the start of the argv it runs."""


def runs(argv_start: list[str], calls: list[list[str]]) -> int:
    return sum(1 for argv in calls if argv[: len(argv_start)] == argv_start)


@pytest.mark.parametrize("point", list(KILL_POINTS))
async def test_kill_9_mid_verb_is_interrupted_and_never_rerun(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn, point: str
) -> None:
    verb, args, hang, argv_start = KILL_POINTS[point]
    keys = Keys(tmp_path / "keys")
    config = fault_config(tmp_path, broker, keys)
    crashed = spawn_agent(config, env=fake_env(tmp_path, FAKE_MICROK8S_SLEEP=hang))
    command = signed(keys, verb, args)
    try:
        async with watch(broker, "microk8s/#") as w:
            await ready(w)
            await send(w, command)
            async with asyncio.timeout(20):
                while not runs(argv_start, mutating_calls(tmp_path)):
                    await asyncio.sleep(0.05)
            crashed.stop()  # SIGKILL, in the middle of the hanging call
            at_kill = mutating_calls(tmp_path)
            spawn_agent(config, env=fake_env(tmp_path))
            interrupted = await terminal(w, command["id"])
            assert (interrupted["status"], interrupted["error"]) == ("failed", "interrupted")
            assert interrupted["verb"] == verb
            await send(w, command)  # a redelivery, an operator's retry
            _, again = await w.wait_for(
                lambda t, p: t == f"{CMD}/{command['id']}" and p.get("duplicate") is True
            )
            assert (again["status"], again["error"]) == ("failed", "interrupted")
            await settled(w)
            assert terminal_count(w, command["id"]) == 2  # the interrupted one and its echo
    finally:
        kill_fakes(tmp_path / "argv.log")
    # Nothing ran after the kill: no second run, and no clean-up step (an upgrade killed while
    # draining leaves the node cordoned, for the operator to look at).
    assert mutating_calls(tmp_path) == at_kill
    assert runs(argv_start, at_kill) == 1


# -- c: the state dir becomes read-only or full --------------------------------------------------

STATE_FAULTS = {"read-only": "Read-only file system", "full": "No space left on device"}


def assert_refused(refused: dict[str, Any], strerror: str) -> None:
    assert refused["status"] == "rejected"
    assert refused["error"].startswith("cannot record the command in the journal")
    assert strerror in refused["error"]
    assert "refused until state.dir is writable and has room" in refused["error"]


@pytest.mark.parametrize("fault", list(STATE_FAULTS))
async def test_unwritable_state_dir_refuses_mutations_but_not_health(
    tmp_path: Path, broker: Broker, fault: str
) -> None:
    why = small_state_unavailable()
    if why is not None:
        pytest.skip(why)
    keys = Keys(tmp_path / "keys")
    config = fault_config(tmp_path, broker, keys)
    env = fake_env(tmp_path)
    agent = SmallStateAgent(config, tmp_path / "agent.log", tmp_path / "state", "64k", env)
    try:
        async with watch(broker, "microk8s/#") as w:
            agent.start()
            await ready(w)
            # The fault strikes while the agent runs (no journal file is open yet: a file open
            # for writing would make the read-only remount fail with EBUSY).
            agent.make_read_only() if fault == "read-only" else agent.fill()
            mark = len(w.messages)
            command = signed(keys, "addon", DNS)
            await send(w, command)
            assert_refused(await terminal(w, command["id"]), STATE_FAULTS[fault])
            status = envelope("status")
            await send(w, status)
            assert (await terminal(w, status["id"]))["status"] == "succeeded"
            await health_flows(w, mark, 4)
            logged = events(agent, "journal_write_failed")
            assert logged and logged[0]["level"] == "error"
            assert STATE_FAULTS[fault] in logged[0]["error"]
            # Repaired: the same command (never recorded, so never reserved) now runs.
            agent.make_writable() if fault == "read-only" else agent.empty()
            await send(w, command)
            await status_of(w, command["id"], "succeeded")
    finally:
        agent.stop()
    assert mutating_calls(tmp_path) == [["enable", "dns"]]
    assert [e for e in agent.log_lines() if e.get("event") == "agent_crashed"] == []


# -- d: the wall clock jumps -----------------------------------------------------------------------


async def jumped(w: Watcher, clock: FakeClock, offset: str, seconds: float) -> int:
    """Move the agent's wall clock; returns the index from which its health shows the jump."""
    clock.set(offset)
    mark = len(w.messages)
    await w.wait_for(
        lambda t, p: t == HEALTH and abs(p["ts"] - time.time() - seconds) < 60, after=mark
    )
    return mark


async def replay_is_duplicate(w: Watcher, command: dict[str, Any]) -> None:
    mark = len(w.messages)
    await send(w, command)
    _, again = await w.wait_for(lambda t, p: t == f"{CMD}/{command['id']}", after=mark)
    assert (again["status"], again.get("duplicate")) == ("succeeded", True)


async def test_wall_clock_jumps_with_signed_commands(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    library = libfaketime()
    if library is None:
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    clock = FakeClock(tmp_path, library)
    keys = Keys(tmp_path / "keys")
    env = {**fake_env(tmp_path), **clock.env()}
    spawn_agent(fault_config(tmp_path, broker, keys), env=env)
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        first = signed(keys, "addon", DNS)
        await send(w, first)
        assert (await terminal(w, first["id"]))["status"] == "succeeded"
        session = health_after(w, 0, ROOT)[-1]["session"]
        cases = [("+1h", 3600.0, "expired 3"), ("-1h", -3600.0, "issued 3")]
        for offset, seconds, reason in cases:
            mark = await jumped(w, clock, offset, seconds)
            late = signed(keys, "addon", HELM)  # signed with the real time
            await send(w, late)
            refused = await terminal(w, late["id"])
            assert refused["status"] == "rejected"
            assert refused["error"].startswith(reason), refused["error"]
            assert "check the clocks" in refused["error"]
            await replay_is_duplicate(w, first)
            # Timers run on the monotonic clock: health keeps its pace, on the same session.
            await health_flows(w, mark, 4)
            assert {h["session"] for h in health_after(w, mark, ROOT)} == {session}
        await jumped(w, clock, "+0", 0.0)
        fresh = signed(keys, "addon", HELM)
        await send(w, fresh)
        assert (await terminal(w, fresh["id"]))["status"] == "succeeded"
        await replay_is_duplicate(w, first)
    assert mutating_calls(tmp_path) == [["enable", "dns"], ["enable", "helm"]]


async def test_a_restart_during_a_forward_jump_keeps_the_ids(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    library = libfaketime()
    if library is None:
        pytest.skip("libfaketime is not installed (Debian package faketime)")
    clock = FakeClock(tmp_path, library)
    keys = Keys(tmp_path / "keys")
    config = fault_config(tmp_path, broker, keys)
    env = {**fake_env(tmp_path), **clock.env()}
    first_agent = spawn_agent(config, env=env)
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        first = signed(keys, "addon", DNS)
        await send(w, first)
        assert (await terminal(w, first["id"]))["status"] == "succeeded"
        await jumped(w, clock, "+1h", 3600.0)
        first_agent.signal(signal.SIGTERM)
        assert first_agent.wait() == 0
        mark = len(w.messages)
        spawn_agent(config, env=env)
        await health_flows(w, mark, 1)
        await jumped(w, clock, "+0", 0.0)
        try:
            await replay_is_duplicate(w, first)
        finally:
            await settled(w)
    assert mutating_calls(tmp_path) == [["enable", "dns"]]


# -- e: twenty commands at once ------------------------------------------------------------------


async def test_twenty_commands_at_once_are_bounded_and_accounted_for(
    tmp_path: Path, broker: Broker, spawn_agent: Spawn
) -> None:
    keys = Keys(tmp_path / "keys")
    config = fault_config(tmp_path, broker, keys, commands={"queue_size": 4})
    spawn_agent(config, env=fake_env(tmp_path, FAKE_MICROK8S_SLEEP="enable=1"))
    bodies = [
        signed(keys, "addon", {"name": "metallb", "action": "enable", "args": [f"10.0.0.{i}"]})
        for i in range(20)
    ]
    async with watch(broker, "microk8s/#") as w:
        await ready(w)
        for body in bodies:
            await send(w, body)
        finals = {b["id"]: await terminal(w, b["id"], timeout_s=60) for b in bodies}
        await settled(w)
        assert [terminal_count(w, b["id"]) for b in bodies] == [1] * 20
    busy = [b for b in bodies if finals[b["id"]]["status"] == "rejected"]
    ran = [b for b in bodies if finals[b["id"]]["status"] != "rejected"]
    assert {finals[b["id"]]["status"] for b in ran} == {"succeeded"}
    for body in busy:
        error = finals[body["id"]]["error"]
        assert error.startswith("busy: 4 commands are already waiting (commands.queue_size = 4)")
    # Four wait, one runs: at most one more is admitted if the first finished during the burst.
    assert 4 <= len(ran) <= 6, len(ran)
    print(f"20 commands at once: {len(ran)} accepted and run, {len(busy)} rejected busy")
    executed = sorted(argv[2:] for argv in mutating_calls(tmp_path))
    assert executed == sorted(b["args"]["args"] for b in ran)
