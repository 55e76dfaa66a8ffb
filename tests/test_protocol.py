"""Every rejection rule of PROTOCOL.md (Commands), table-driven against the pure parsers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from agent.commands import dispatch, verbs, wire
from agent.commands.statuses import response_topic_allowed
from agent.commands.wire import Limits, Rejected, Status, Verb

NOW = 1_764_160_000.0
LIMITS = Limits(node="pi-01", max_age_s=300, clock_skew_s=60)
TOKEN = "92b2db237428470dc4fcfc4ebbd9dc81"
URL = f"127.0.0.11:25000/{TOKEN}/2c0cb3284b05"


def envelope(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "v": 1,
        "id": "c-2026-11-26-0001",
        "verb": "addon",
        "target": "pi-01",
        "args": {"name": "dns", "action": "enable"},
        "issued_at": int(NOW),
    }
    body.update(changes)
    return {k: v for k, v in body.items() if v is not DROP}


DROP = object()


def read(body: dict[str, Any] | bytes, *, retained: bool = False, now: float = NOW):
    payload = body if isinstance(body, bytes) else json.dumps(body).encode()
    decoded = wire.decode(payload)
    return verbs.read_request(decoded, LIMITS, now, retained=retained)


# -- payloads without a readable id: answered on R/cmd/_invalid -----------------------------

UNREADABLE = [
    (b"x" * (64 * 1024 + 1), "limit is 65536 bytes"),
    (b'{"id": "a\xff"}', "not valid UTF-8"),
    (b"{not json", "not valid JSON"),
    (b"", "not valid JSON"),
    (b'{"id": NaN}', "not valid JSON"),
    (b"[1, 2]", "must be a JSON object, not an array"),
    (b'"text"', "must be a JSON object, not a string"),
    (b"{}", "missing or invalid id"),
    (b'{"id": 7}', "missing or invalid id"),
    (b'{"id": "-starts-with-dash"}', "missing or invalid id"),
    (b'{"id": "has space"}', "missing or invalid id"),
    # Not a topic level every broker carries: NATS closes the connection on `.`.
    (b'{"id": "c.1"}', "A-Z a-z 0-9 _ -"),
    (b'{"id": "c:1"}', "A-Z a-z 0-9 _ -"),
    (json.dumps({"id": "a" * 65}).encode(), "missing or invalid id"),
    (b"[" * 60_000, "nests 60000 levels deep"),  # refused before json.loads recurses
    (b'{"id": "a", "x": ' + b"[" * 999 + b"]" * 999 + b"}", "levels deep"),
    (b'{"id": "\\ud800"}', "lone UTF-16 surrogate"),
]


@pytest.mark.parametrize(("payload", "reason"), UNREADABLE)
def test_unreadable_payloads_have_no_id(payload: bytes, reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        wire.decode(payload)
    assert reason in caught.value.reason
    assert caught.value.command_id is None


def test_a_payload_of_exactly_64_kib_is_read() -> None:
    body = envelope(args={"name": "dns", "action": "enable"})
    text = json.dumps(body)
    padded = text[:-1] + " " * (64 * 1024 - len(text)) + "}"
    assert len(padded.encode()) == 64 * 1024
    assert wire.decode(padded.encode()).command_id == body["id"]


# -- readable id: rejected on R/cmd/{id} ----------------------------------------------------

BAD_ENVELOPES = [
    ({"extra": 1}, "unknown field(s) extra"),
    ({"v": DROP}, "missing field(s): v"),
    ({"args": DROP, "target": DROP}, "missing field(s): args, target"),
    ({"v": 2}, "unsupported envelope version"),
    ({"v": True}, "unsupported envelope version"),
    ({"v": 1.0}, "unsupported envelope version"),
    ({"verb": "reboot"}, "unknown verb 'reboot'"),
    ({"verb": 3}, "verb must be a string"),
    ({"target": "pi-02"}, "wrong target 'pi-02': this node is 'pi-01'"),
    ({"target": None}, "target must be a string"),
    ({"args": []}, "args must be a JSON object, not an array"),
    ({"issued_at": "1764160000"}, "issued_at must be a number"),
    ({"issued_at": True}, "issued_at must be a number"),
    ({"issued_at": -5}, "finite, non-negative"),
    ({"issued_at": NOW + 61}, "in the future"),
    ({"issued_at": NOW - 361}, "expired"),
    ({"issued_at": NOW - 200, "expires_at": NOW - 61}, "expired"),
    ({"expires_at": NOW - 10, "issued_at": NOW - 5}, "expires_at must be later than issued_at"),
    ({"expires_at": NOW + 301}, "at most commands.max_age_s = 300 s"),
    ({"expires_at": None}, "expires_at must be a number"),
]


@pytest.mark.parametrize(("changes", "reason"), BAD_ENVELOPES)
def test_envelope_rejections(changes: dict[str, Any], reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        read(envelope(**changes))
    assert reason in caught.value.reason
    assert caught.value.command_id == "c-2026-11-26-0001"


def test_infinite_times_are_rejected() -> None:
    payload = json.dumps(envelope(issued_at=12345)).replace("12345", "1e400").encode()
    with pytest.raises(Rejected, match="finite, non-negative"):
        read(payload)


def test_retained_requests_are_rejected() -> None:
    with pytest.raises(Rejected, match="retained command"):
        read(envelope(), retained=True)


@pytest.mark.parametrize(
    ("changes", "now"),
    [
        ({}, NOW + 300 + 60),  # expiry plus the allowed skew
        ({}, NOW - 60),  # issued up to the skew in the future
        ({"expires_at": NOW + 10}, NOW + 70),
        ({"issued_at": NOW + 0.5}, NOW),  # float times are accepted
    ],
)
def test_time_window_edges_are_accepted(changes: dict[str, Any], now: float) -> None:
    assert read(envelope(**changes), now=now).id == "c-2026-11-26-0001"


def test_expiry_defaults_to_issued_at_plus_max_age() -> None:
    command = read(envelope())
    assert command.envelope.expires_at == NOW + 300
    assert command.verb is Verb.ADDON


# -- per-verb arguments ---------------------------------------------------------------------

BAD_ARGS = [
    ("join", {}, "missing argument(s): url"),
    ("join", {"url": URL, "extra": 1}, "unknown argument(s) extra"),
    ("join", {"url": 7}, "url must be"),
    ("join", {"url": f"pi-01:25000/{TOKEN}"}, "url must be"),  # host name
    ("join", {"url": f"[::1]:25000/{TOKEN}"}, "url must be"),  # IPv6
    ("join", {"url": f"10.0.0.256:25000/{TOKEN}"}, "url must be"),
    ("join", {"url": f"0127.0.0.11:25000/{TOKEN}"}, "url must be"),  # octal-looking octet
    ("join", {"url": f"127.0.0.11:0/{TOKEN}"}, "url must be"),
    ("join", {"url": f"127.0.0.11:70000/{TOKEN}"}, "url must be"),
    ("join", {"url": "127.0.0.11:25000/short"}, "url must be"),
    ("join", {"url": f"127.0.0.11:25000/{TOKEN[:31]}"}, "url must be"),
    ("join", {"url": f"127.0.0.11:25000/{TOKEN}-x"}, "url must be"),
    ("join", {"url": f"127.0.0.11:25000/{TOKEN}/2c0cb3284b0"}, "url must be"),  # fp < 12
    ("join", {"url": f"127.0.0.11:25000/{TOKEN}/zzzzzzzzzzzz"}, "url must be"),
    ("join", {"url": f"127.0.0.11:25000/{TOKEN} --skip-verify"}, "url must be"),
    ("join", {"url": URL, "worker": "yes"}, "worker must be true or false"),
    ("join", {"url": URL, "force": 1}, "force must be true or false"),
    ("addon", {"name": "dns"}, "missing argument(s): action"),
    ("addon", {"name": "DNS", "action": "enable"}, "name must be"),
    ("addon", {"name": "-dns", "action": "enable"}, "name must be"),
    ("addon", {"name": "--x/dns", "action": "enable"}, "name must be"),
    ("addon", {"name": "a/b/c", "action": "enable"}, "name must be"),
    ("addon", {"name": "dns;rm", "action": "enable"}, "name must be"),
    ("addon", {"name": "dns", "action": "restart"}, "action must be enable or disable"),
    ("addon", {"name": "dns", "action": "enable", "args": "x"}, "args must be a list"),
    ("addon", {"name": "dns", "action": "enable", "args": ["a b"]}, "args[0] must be"),
    ("addon", {"name": "dns", "action": "enable", "args": [""]}, "args[0] must be"),
    ("addon", {"name": "dns", "action": "enable", "args": ["ok", "$(x)"]}, "args[1] must be"),
    ("addon", {"name": "dns", "action": "enable", "args": ["x" * 257]}, "args[0] must be"),
    ("addon", {"name": "dns", "action": "enable", "args": ["a"] * 17}, "at most 16 args"),
    ("upgrade", {}, "missing argument(s): channel"),
    ("upgrade", {"channel": "1.33"}, "channel must be <track>/<risk>"),
    ("upgrade", {"channel": "1.33/stable/hotfix"}, "channel must be"),
    ("upgrade", {"channel": "1.33/daily"}, "risk must be one of"),
    ("upgrade", {"channel": "v1.33/stable"}, "channel must be"),
    ("upgrade", {"channel": 1.33}, "channel must be a string"),
    ("upgrade", {"channel": "1.33/stable", "drain": "no"}, "drain must be true or false"),
    ("upgrade", {"channel": "1.33/stable", "force": 1}, "force must be true or false"),
    ("status", {"verbose": True}, "status takes no args"),
    ("rebirth", {"now": True}, "rebirth takes no args"),
]


@pytest.mark.parametrize(("verb", "args", "reason"), BAD_ARGS)
def test_argument_rejections(verb: str, args: dict[str, Any], reason: str) -> None:
    with pytest.raises(Rejected) as caught:
        read(envelope(verb=verb, args=args))
    assert reason in caught.value.reason
    assert caught.value.verb == verb
    # A rejection never repeats a join token.
    assert TOKEN not in caught.value.reason


GOOD_ARGS = [
    ("join", {"url": URL}, verbs.JoinArgs(URL, False)),
    ("join", {"url": URL, "force": True}, verbs.JoinArgs(URL, False, force=True)),
    ("join", {"url": f"127.0.0.11:25000/{TOKEN}", "worker": True}, None),
    (
        "addon",
        {"name": "core/dns", "action": "disable"},
        verbs.AddonArgs("core/dns", "disable", ()),
    ),
    (
        "addon",
        {"name": "metallb", "action": "enable", "args": ["10.0.0.200-10.0.0.220"]},
        verbs.AddonArgs("metallb", "enable", ("10.0.0.200-10.0.0.220",)),
    ),
    ("addon", {"name": "community/argocd", "action": "enable", "args": ["a"] * 16}, None),
    ("status", {}, verbs.StatusArgs()),
    ("rebirth", {}, verbs.RebirthArgs()),
]


@pytest.mark.parametrize(("verb", "args", "expected"), GOOD_ARGS)
def test_valid_arguments(verb: str, args: dict[str, Any], expected: object) -> None:
    command = read(envelope(verb=verb, args=args))
    if expected is not None:
        assert command.args == expected


def test_upgrade_defaults_drain_on_and_force_off() -> None:
    command = read(envelope(verb="upgrade", args={"channel": "1.33-strict/stable"}))
    assert isinstance(command.args, verbs.UpgradeArgs)
    assert command.args.drain is True
    assert command.args.force is False
    assert command.args.channel.strict
    assert command.args.channel.minor == (1, 33)


# -- Response Topic rule --------------------------------------------------------------------

ROOT = "microk8s/lab/nodes/pi-01"


@pytest.mark.parametrize(
    ("topic", "allowed"),
    [
        (f"{ROOT}/reply/abc", True),
        (f"{ROOT}/reply", True),
        (f"{ROOT}/anything/else", True),
        ("microk8s/lab/nodes/pi-02/reply/x", False),  # another node's tree
        (f"{ROOT}", False),
        (f"{ROOT}/", False),
        (f"{ROOT}x/reply", False),
        ("elsewhere/reply", False),
        (f"{ROOT}/cmd", False),  # would feed the agent its own statuses
        (f"{ROOT}/cmd/c-1", False),
        (f"{ROOT}/state", False),
        (f"{ROOT}/health", False),
        (f"{ROOT}/ha", False),
        (f"{ROOT}/reply/+", False),
        (f"{ROOT}/reply/#", False),
    ],
)
def test_response_topic_rule(topic: str, allowed: bool) -> None:
    assert response_topic_allowed(topic, ROOT) is allowed


# -- status payloads ------------------------------------------------------------------------


def test_status_payload_drops_absent_optional_fields() -> None:
    body = wire.status_payload("c-1", "join", "pi-01", Status.FAILED, 12.34567, error="x")
    assert body == {
        "id": "c-1",
        "verb": "join",
        "node": "pi-01",
        "status": "failed",
        "ts": 12.346,
        "error": "x",
    }
    assert json.loads(wire.encode(body)) == body


def test_terminal_statuses() -> None:
    assert {s for s in Status if s.terminal} == {
        Status.SUCCEEDED,
        Status.FAILED,
        Status.TIMED_OUT,
        Status.REJECTED,
    }
    assert [v for v in Verb if v.mutating] == [Verb.JOIN, Verb.ADDON, Verb.UPGRADE]


def test_read_only_verbs() -> None:
    assert {v for v in wire.Verb if not v.mutating} == {wire.Verb.STATUS, wire.Verb.REBIRTH}
    assert wire.ID_RE.fullmatch("c-20261201T020000Z-0a1b2c3d")
    assert wire.ID_RE.fullmatch("A_b-9" + "x" * 59) and not wire.ID_RE.fullmatch("a" * 65)


@pytest.mark.parametrize(
    ("last", "now", "wait"),
    [(None, 100.0, 0.0), (100.0, 101.5, 3.5), (100.0, 105.0, 0.0), (100.0, 40.0, 5.0)],
)
def test_rebirth_wait(last: float | None, now: float, wait: float) -> None:
    """One rebirth per 5 s; a wall clock stepped back never blocks more than that."""
    assert dispatch.rebirth_wait(last, now) == wait
