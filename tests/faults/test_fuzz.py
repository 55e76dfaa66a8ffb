"""Fuzzing the command intake: whatever arrives on R/cmd, one rejection or a safe execution plan.

10,000 examples per test under a fixed seed (the `fuzz` profile), so the README's plain `pytest`
runs exactly what CI runs. For every accepted request the real Executor and CliBackend build
their argv lists (a recorder stands in for process.run) and each list must have the shape of a
known command line whose values pass docs/protocol.md's rules, checked by an oracle written
independently of agent.commands.verbs (tests/faults/fuzzing.py). Every listed near miss is tried
every run, and a sample of the same requests goes through a real mosquitto to a subprocess agent
on the fake microk8s, where what counts is the wire: one status thread per request, every argv
the fake ran safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

from agent.commands import signing, verbs, wire
from agent.commands.wire import Rejected
from tests.commands_helpers import CMD, TERMINAL, fake_env
from tests.conftest import AgentProcess, Broker, Watcher, agent_config, watch
from tests.faults import fuzzing
from tests.faults.fuzzing import MK, SNAP, judge, plan, readable_id, safe_argv, token_of
from tests.faults.mutations import Case, damaged_bytes, examples, listed_near_misses, requests
from tests.paths import FAKES

settings.register_profile(
    "fuzz",
    max_examples=10_000,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
FUZZ = settings.get_profile("fuzz")


@pytest.fixture(scope="module")
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    """One loop for all examples: the executor's coroutines run to completion on it."""
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def decide(case: Case) -> verbs.Command | Rejected:
    executor = fuzzing.executor_for(fuzzing.Recorder(case.channel))
    return judge(
        case.payload,
        executor,
        retained=case.retained,
        allow_unsigned=case.allow_unsigned,
        channel=case.channel,
    )


def check_rejection(rejected: Rejected, case: Case) -> None:
    """A reason for a person, the request's id when readable (else R/cmd/_invalid), no token."""
    assert rejected.reason.strip()
    assert rejected.command_id == readable_id(case.payload)
    token = token_of(case.body)
    if token is not None:
        assert token not in rejected.reason, "a rejection repeated a join token"


def check_plan(
    loop: asyncio.AbstractEventLoop, command: verbs.Command, channel: str
) -> list[list[str]]:
    """The command runs only argv lists the oracle calls safe, carrying its own values.

    Returns the mutating argv lists (queries left out).
    """
    argvs = plan(loop, command, channel)
    unsafe = [argv for argv in argvs if not safe_argv(argv)]
    assert not unsafe, f"unvalidated text would reach a process: {unsafe}"
    args = command.args
    actions = [argv for argv in argvs if not fuzzing.is_query(argv)]
    if isinstance(args, verbs.JoinArgs):
        assert actions == [[MK, "join", args.url, *(["--worker"] if args.worker else [])]]
    elif isinstance(args, verbs.AddonArgs):
        assert actions == [[MK, args.action, args.name, *args.args]]
    elif isinstance(args, verbs.UpgradeArgs) and actions:
        # The executor re-checks the policy against fresh facts; if it runs, it runs this.
        steps = [argv[2] if argv[1] == "kubectl" else argv[1] for argv in actions]
        assert steps == (["cordon", "drain", "refresh", "uncordon"] if args.drain else ["refresh"])
        assert [SNAP, "refresh", "microk8s", f"--channel={args.channel}"] in actions
    else:
        assert actions == []
    return actions


def _args_as_sent(command: verbs.Command, sent: dict[str, Any]) -> verbs.Args:
    """What the accepted args must be: exactly the values sent, never normalised."""
    args = command.args
    if isinstance(args, verbs.JoinArgs):
        return verbs.JoinArgs(
            url=sent["url"], worker=sent.get("worker", False), force=sent.get("force", False)
        )
    if isinstance(args, verbs.AddonArgs):
        values = tuple(sent.get("args", []))
        return verbs.AddonArgs(name=sent["name"], action=sent["action"], args=values)
    if isinstance(args, verbs.UpgradeArgs):
        assert args.channel.text == sent["channel"]
    return args


def check_valid(case: Case, result: verbs.Command | Rejected) -> None:
    """Valid: accepted; or unsigned and mutating, or an upgrade against the version policy.

    Signatures are required here (no allow_unsigned), so unsigned, only `status` and `rebirth`
    pass; only an upgrade the version policy forbids may be refused, with the policy's words.
    """
    if "sig" not in case.body and case.body["verb"] not in wire.READ_ONLY:
        assert isinstance(result, Rejected) and "signature" in result.reason
    elif isinstance(result, Rejected):
        assert case.body["verb"] == "upgrade", result.reason
        assert "force" in result.reason or "strict" in result.reason, result.reason


@FUZZ
@given(requests())
def test_requests(loop: asyncio.AbstractEventLoop, case: Case) -> None:
    """Valid, or one thing off: one rejection with a reason and the right id, or a safe plan."""
    check_case(loop, case)


def test_listed_near_misses(loop: asyncio.AbstractEventLoop) -> None:
    """Each listed value just outside a rule (url parts, names, args, channels, targets, ids)."""
    cases = listed_near_misses()
    accepted = [case for case in cases if check_case(loop, case)]
    # The few listed values that are valid after all (e.g. a 32-character fingerprint).
    assert len(accepted) < len(cases) // 10, [case.body["args"] for case in accepted]


def check_case(loop: asyncio.AbstractEventLoop, case: Case) -> bool:
    """The invariants for one request; True when it was accepted."""
    result = decide(case)
    if case.kind == "valid":
        check_valid(case, result)
    if isinstance(result, Rejected):
        check_rejection(result, case)
        return False
    assert not case.retained
    if case.signed_before is not None:
        # Changed after signing: only a change the signature does not cover may pass.
        assert signing.signed_bytes(case.body) == signing.signed_bytes(case.signed_before)
    envelope = result.envelope
    assert envelope.target == fuzzing.NODE and envelope.id == case.body["id"]
    assert envelope.issued_at <= fuzzing.NOW + fuzzing.LIMITS.clock_skew_s
    assert envelope.expires_at + fuzzing.LIMITS.clock_skew_s >= fuzzing.NOW
    assert result.args == _args_as_sent(result, case.body["args"])
    actions = check_plan(loop, result, case.channel)
    if case.kind == "valid" and isinstance(result.args, verbs.UpgradeArgs):
        assert actions, "an accepted upgrade must refresh"
    return True


@FUZZ
@given(damaged_bytes(), st.booleans())
def test_raw_bytes(loop: asyncio.AbstractEventLoop, raw: bytes, retained: bool) -> None:
    """Arbitrary or damaged bytes: a rejection (or, rarely, a still-valid request), no crash."""
    case = Case({}, raw, "bytes", retained=retained, allow_unsigned=True)
    result = decide(case)
    if len(raw) > wire.MAX_PAYLOAD_BYTES:
        assert isinstance(result, Rejected) and "limit" in result.reason
    if isinstance(result, Rejected):
        check_rejection(result, case)
        return
    assert not retained
    check_plan(loop, result, case.channel)


# --- the same requests through a real broker to a real agent ------------------------------------
WIRE_REQUESTS = 160
WIRE_BYTES = 40
WIRE_VALID = 40
PROBE = "wire-probe"


def corpus(strategy: st.SearchStrategy[Any], count: int) -> list[Any]:
    """`count` examples of a strategy, reproducibly (a fixed seed, no example database)."""
    found: list[Any] = []

    @settings(FUZZ, max_examples=count, phases=[Phase.generate])
    @given(strategy)
    def collect(example: Any) -> None:
        found.append(example)

    collect()
    return found


def wire_corpus(now: int) -> list[Case]:
    """Requests at `now`: near misses and valid ones, distinct ids; damaged bytes, not retained."""
    cases: list[Case] = []
    ids: set[str] = set()
    for case in corpus(requests(now), WIRE_REQUESTS) + listed_near_misses(now):
        command_id = readable_id(case.payload)
        if command_id is None or command_id not in ids:
            ids.add(command_id or "")
            cases.append(case)
    for index, body in enumerate(corpus(fuzzing.valid_bodies(now), WIRE_VALID)):
        signed = fuzzing.SIGNER.sign({**body, "id": f"valid-{index}"})
        cases.append(Case(signed, fuzzing.payload(signed), "valid"))
    raw = corpus(damaged_bytes(), WIRE_BYTES)
    return cases + [Case({}, payload, "bytes") for payload in raw if readable_id(payload) is None]


def wire_config(tmp_path: Path, broker: Broker) -> Path:
    public = tmp_path / "keys" / "ops-1.pub"
    public.parent.mkdir()
    public.write_bytes(signing.public_pem(fuzzing.SIGNER.public_key))
    return agent_config(
        tmp_path,
        broker,
        node={"name": fuzzing.NODE, "cluster": "lab"},
        health={"interval_s": 5},
        commands={"trusted_keys": [str(public)], "queue_size": 1024},
        microk8s={
            "backend": "cli",
            "cli": str(FAKES / "microk8s"),
            "snap_cli": str(FAKES / "snap"),
            "command_timeout_s": 20,
            "join_timeout_s": 2,
        },
    )


@pytest.mark.broker
async def test_fuzzed_requests_over_a_real_broker(
    tmp_path: Path, broker: Broker, spawn_agent: Callable[..., AgentProcess]
) -> None:
    """One status thread per request on the wire, every argv the fake ran safe, no crash.

    A readable id gets exactly one terminal status on R/cmd/{id} (accepted before it when
    accepted at all); an unreadable request gets one rejection on R/cmd/_invalid.
    """
    cases = wire_corpus(int(time.time()))
    agent = spawn_agent(wire_config(tmp_path, broker), env=fake_env(tmp_path))
    # An empty payload clears a retained command: ignored, never answered (docs/protocol.md).
    unreadable = sum(readable_id(case.payload) is None and case.payload != b"" for case in cases)
    ids = {readable_id(case.payload) for case in cases} - {None}
    async with watch(broker, f"{CMD}/+") as w:
        await _agent_subscribed(w)
        for case in cases:
            await w.publish(CMD, case.payload, qos=1, retain=case.retained)
        await _until_answered(w, ids, unreadable)
    threads = _threads(w.messages)
    threads.pop(PROBE, None)
    assert len(threads.pop("_invalid", [])) == unreadable
    assert set(threads) == ids
    for command_id, statuses in threads.items():
        terminal = [s for s in statuses if s in TERMINAL]
        assert len(terminal) == 1, (command_id, statuses)
        assert statuses[-1] == terminal[0] and statuses[0] in ("accepted", "rejected")
    ran = [[MK if argv[0] == "microk8s" else SNAP, *argv[1:]] for argv in _fake_argv(tmp_path)]
    assert ran and all(safe_argv(argv) for argv in ran), [a for a in ran if not safe_argv(a)]
    executed = [statuses for statuses in threads.values() if statuses[0] == "accepted"]
    print(
        f"{len(cases)} requests: {unreadable} unreadable, {len(ids)} ids, {len(executed)} accepted;"
        f" the fake ran {len(ran)} command lines"
    )
    assert len(executed) >= WIRE_VALID // 2, "too few requests were valid to prove anything"
    assert agent.process is not None and agent.process.poll() is None
    events = {line.get("event") for line in agent.log_lines()}
    assert not events & {"command_intake_error", "command_worker_error", "command_crashed"}


async def _agent_subscribed(w: Watcher) -> None:
    """A status request answered: the agent listens on R/cmd."""
    probe = fuzzing.payload({**examples(int(time.time()))[-1], "id": PROBE})
    for _ in range(100):
        await w.publish(CMD, probe, qos=1)
        with contextlib.suppress(TimeoutError):
            await w.wait_for(lambda t, p: t == f"{CMD}/{PROBE}", timeout_s=0.3)
            return
    raise AssertionError("the agent never answered")


async def _until_answered(w: Watcher, ids: set[str | None], unreadable: int) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        threads = _threads(w.messages)
        done = {i for i, s in threads.items() if any(x in TERMINAL for x in s)}
        if ids <= done and len(threads.get("_invalid", [])) >= unreadable:
            await asyncio.sleep(0.5)  # anything more (a second terminal) would show now
            return
        await asyncio.sleep(0.1)
    threads = _threads(w.messages)
    missing = sorted(str(i) for i in ids if not set(threads.get(str(i), [])) & TERMINAL)
    invalid = len(threads.get("_invalid", []))
    raise AssertionError(
        f"not every request was answered: {missing[:10]} ({len(missing)} ids);"
        f" {invalid} of {unreadable} unreadable"
    )


def _threads(messages: list[tuple[str, Any, bool]]) -> dict[str, list[str]]:
    """Statuses per id in arrival order (duplicates of a repeated id left out)."""
    threads: dict[str, list[str]] = {}
    for topic, body, _ in messages:
        if isinstance(body, dict) and not body.get("duplicate"):
            threads.setdefault(topic.rsplit("/", 1)[1], []).append(body["status"])
    return threads


def _fake_argv(tmp_path: Path) -> list[list[str]]:
    log = tmp_path / "argv.log"
    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
