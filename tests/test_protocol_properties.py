"""Property tests: whatever arrives on R/cmd, the parser answers with a rejection or a command."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.commands import signing, verbs, wire
from agent.commands.wire import Limits, Rejected

NOW = 1_764_160_000.0
LIMITS = Limits(node="pi-01", max_age_s=300, clock_skew_s=60)
VERIFIER = signing.Verifier({})

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner),
    max_leaves=10,
)
simple_values = json_scalars | st.lists(json_scalars, max_size=3)
field_values: dict[str, st.SearchStrategy[Any]] = {
    "v": st.sampled_from([1, 2, "1", 1.0, True]) | simple_values,
    "id": st.from_regex(wire.ID_RE, fullmatch=True) | simple_values,
    "verb": st.sampled_from(["join", "addon", "upgrade", "status", "x"]) | simple_values,
    "target": st.sampled_from(["pi-01", "pi-02"]) | simple_values,
    "args": st.fixed_dictionaries(
        {},
        optional={
            "url": st.sampled_from(["127.0.0.11:25000/" + "a" * 32, "x"]) | simple_values,
            "worker": simple_values,
            "name": st.sampled_from(["dns", "core/dns", "DNS"]) | simple_values,
            "action": st.sampled_from(["enable", "disable"]) | simple_values,
            "args": st.lists(st.text(max_size=20), max_size=20) | simple_values,
            "channel": st.sampled_from(["1.33/stable", "latest/edge", "1.33"]) | simple_values,
            "drain": simple_values,
            "force": simple_values,
        },
    )
    | simple_values,
    "issued_at": st.sampled_from([NOW, NOW - 400, NOW + 100]) | simple_values,
    "expires_at": st.sampled_from([NOW + 100, NOW - 1000]) | simple_values,
    "key_id": simple_values,
    "sig": simple_values,
    "extra": simple_values,
}
envelopes = st.fixed_dictionaries({}, optional=field_values)


def read_everything(payload: bytes, *, retained: bool = False) -> verbs.Command:
    """The intake's pure checks, in the intake's order."""
    decoded = wire.decode(payload)
    reason = VERIFIER.authenticate(
        decoded.body, mutating=decoded.verb_text != "status", allow_unsigned=True
    )
    if reason is not None:
        raise Rejected(reason, decoded.command_id)
    return verbs.read_request(decoded, LIMITS, NOW, retained=retained)


def outcome(payload: bytes, retained: bool = False) -> verbs.Command | Rejected:
    try:
        return read_everything(payload, retained=retained)
    except Rejected as exc:
        assert exc.reason  # a person always gets a reason
        return exc


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(payload: bytes) -> None:
    assert isinstance(outcome(payload), verbs.Command | Rejected)


@settings(max_examples=400, deadline=None)
@given(json_values)
def test_arbitrary_json(value: Any) -> None:
    assert isinstance(outcome(json.dumps(value).encode()), verbs.Command | Rejected)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(envelopes, st.booleans())
def test_envelope_shaped_json(body: dict[str, Any], retained: bool) -> None:
    result = outcome(json.dumps(body).encode(), retained)
    if isinstance(result, verbs.Command):
        # Anything accepted really is valid for this node, now, and not retained.
        assert not retained
        assert result.envelope.target == "pi-01"
        assert result.envelope.issued_at <= NOW + LIMITS.clock_skew_s
        assert result.envelope.expires_at + LIMITS.clock_skew_s >= NOW
    elif isinstance(body.get("id"), str) and wire.ID_RE.fullmatch(body["id"]):
        assert result.command_id == body["id"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=256), st.binary(max_size=64))
def test_signature_checks_never_raise(sig: bytes, noise: bytes) -> None:
    import base64

    verifier = signing.Verifier({})
    body = {"id": "c-1", "key_id": noise.hex(), "sig": base64.b64encode(sig).decode()}
    assert verifier.verify(body) is not None
    assert verifier.verify({"key_id": sig.decode("latin-1"), "sig": noise.decode("latin-1")})


def test_signature_checks_against_a_real_key_never_raise(tmp_path: Path) -> None:
    _, public = signing.generate("k", tmp_path)
    verifier = signing.Verifier.from_files([str(public)])
    for sig in ("", "=", "AAAA", "A" * 86 + "==", "A" * 88, "\u00e9" * 10):
        assert verifier.verify({"key_id": "k", "sig": sig}) is not None
