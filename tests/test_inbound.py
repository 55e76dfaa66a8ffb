"""The untrusted-input decoders (agent.link.inbound) and the peer book fed by them (issue 11).

Regression cases are the payloads of the black-box attack: a retained 2 KB `[[[…]]]` on a peer's
`ha`/`state` (RecursionError crash-loop), `{"node": "pi-09", "members": 5}` (TypeError in the HA
task), lone surrogates. The Hypothesis part throws arbitrary JSON and bytes at the peer decoders
and at the cluster view built from them, with a fixed seed so a failure reproduces.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

from agent.ha import peers
from agent.link import inbound
from agent.link.inbound import CLEARED, Invalid, PeerVerdict, Presence

A, B, C = "127.0.0.11:19001", "127.0.0.12:19001", "127.0.0.13:19001"
DEEP = b"[" * 1000 + b"]" * 1000
HOSTILE = [
    DEEP,
    b'{"node": "pi-09", "members": 5}',
    b'{"node": "pi-09", "members": [5, "x", null, {"address": 7}], "voters": {"a": 1}}',
    b'{"node": "pi-09", "address": ' + b"[" * 500 + b"]" * 500 + b"}",
    b'{"node": "pi-09", "state": "online", "session": 1e400}',
    b'{"node": "\\ud800", "state": "offline", "session": "7"}',
    b"\xff\xfe",
    b"NaN",
    b'{"node": "pi-09", "members": [{"address": "' + b"9" * 70_000 + b'"}]}',
]


def own_verdict() -> dict[str, Any]:
    members = [
        {"address": A, "node": "pi-01", "role": "voter", "reachable": True},
        {"address": B, "node": "pi-09", "role": "voter", "reachable": True},
        {"address": C, "node": "pi-03", "role": "voter", "reachable": True},
    ]
    return {"node": "pi-01", "address": A, "members": members, "maintenance": False}


def test_depth_is_refused_before_json_recursion() -> None:
    assert inbound.nesting_depth(DEEP) == 1000
    assert inbound.nesting_depth(b'{"a": "[[[[[[[[[[[["}') == 1  # brackets inside strings
    assert inbound.nesting_depth(b'["\\"[[[[", [1]]') == 2  # escaped quote inside a string
    result = inbound.parse_json(b"[" * 100_000, max_bytes=1 << 20)
    assert isinstance(result, Invalid)
    assert "nests 100000 levels deep" in result.reason


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        (b"x" * (inbound.MAX_BYTES + 1), "the limit is 65536 bytes"),
        (b"\xc3\x28", "not valid UTF-8"),
        (b'{"a": Infinity}', "not valid JSON"),
        (b'"\\udc00"', "lone UTF-16 surrogate"),
        (b'{"\\ud800": 1}', "lone UTF-16 surrogate"),
        (b"1" * 5000, "not valid JSON"),  # beyond int's digit limit: ValueError, not a crash
    ],
)
def test_parse_json_gives_a_reason(payload: bytes, reason: str) -> None:
    result = inbound.parse_json(payload)
    assert isinstance(result, Invalid)
    assert reason in result.reason


def test_a_surrogate_pair_is_fine() -> None:
    assert inbound.parse_json(b'["\\ud83d\\ude00"]') == ["\U0001f600"]


def test_presence_decoding() -> None:
    assert inbound.decode_presence(b"") is CLEARED
    assert inbound.decode_presence(b'{"state": "online", "session": 3}') == Presence("online", 3)
    assert inbound.decode_presence(b'{"state": "offline", "session": true}') == Presence(
        "offline", 0
    )
    assert isinstance(inbound.decode_presence(b'{"state": ["online"]}'), Invalid)


def test_peer_verdict_keeps_only_typed_fields() -> None:
    body = {
        "node": "pi-09",
        "address": B,
        "maintenance": "yes",
        "members": [5, {"address": A, "reachable": "no"}, {"address": B, "reachable": False}],
        "voters": "all",
    }
    verdict = inbound.decode_peer_verdict(json.dumps(body).encode(), "pi-09")
    assert verdict == PeerVerdict(
        "pi-09", B, False, (inbound.Reach(A, None), inbound.Reach(B, False))
    )
    other = inbound.decode_peer_verdict(json.dumps(body).encode(), "pi-08")
    assert isinstance(other, Invalid)


@pytest.mark.parametrize("payload", HOSTILE)
def test_hostile_peer_payloads_cannot_break_the_view(payload: bytes) -> None:
    # Before the fix: RecursionError (DEEP) and TypeError ("members": 5) in the HA task.
    book = peers.PeerBook("pi-01", 60.0)
    book.record_verdict("pi-09", inbound.decode_peer_verdict(payload, "pi-09"), 0.0)
    book.record_presence("pi-09", inbound.decode_presence(payload))
    view = book.view(own_verdict(), 1.0)
    assert view["verdict"] == "healthy"
    assert book.names().get("127.0.0.12", "pi-09") == "pi-09"


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()
    | st.text(max_size=20)
    | st.sampled_from([A, B, "pi-09", "online", "offline"]),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
peer_documents = st.fixed_dictionaries(
    {},
    optional={
        "node": st.sampled_from(["pi-09", "pi-01"]) | json_values,
        "address": st.sampled_from([A, B, "[::1]:19001"]) | json_values,
        "maintenance": json_values,
        "members": st.lists(
            st.fixed_dictionaries(
                {},
                optional={
                    "address": st.sampled_from([A, B]) | json_values,
                    "reachable": json_values,
                },
            )
            | json_values,
            max_size=4,
        )
        | json_values,
        "voters": json_values,
        "state": st.sampled_from(["online", "offline"]) | json_values,
        "session": json_values,
    },
)
payloads = peer_documents.map(lambda d: json.dumps(d).encode()) | st.binary(max_size=64)


@seed(20261201)
@settings(max_examples=300, deadline=None, derandomize=False)
@given(st.lists(payloads, min_size=1, max_size=4))
def test_fuzz_peer_decoders_and_view(messages: list[bytes]) -> None:
    book = peers.PeerBook("pi-01", 60.0)
    for i, payload in enumerate(messages):
        node = f"pi-0{i + 2}"
        verdict = inbound.decode_peer_verdict(payload, node)
        presence = inbound.decode_presence(payload)
        assert isinstance(verdict, PeerVerdict | Invalid | inbound.Cleared)
        assert isinstance(presence, Presence | Invalid | inbound.Cleared)
        book.record_verdict(node, verdict, 0.0)
        book.record_presence(node, presence)
    view = book.view(own_verdict(), 1.0)
    json.dumps(view, allow_nan=False).encode("utf-8")  # publishable as this node's verdict


@seed(20261201)
@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200) | json_values.map(lambda v: json.dumps(v).encode()))
def test_fuzz_parse_json_never_raises(payload: bytes) -> None:
    result = inbound.parse_json(payload)
    if not isinstance(result, Invalid):
        json.dumps(result, ensure_ascii=False).encode("utf-8")
