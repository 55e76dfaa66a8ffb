"""Pure command envelope handling: bytes in, a typed `Envelope` or a `Rejected` out.

The wire contract (PROTOCOL.md, Commands) is checked in stages so that a rejection can be sent to
the right place: `decode` reads bytes into a JSON object and its id (no id → `R/cmd/_invalid`),
`check_envelope` checks every other field against this node and the clock. Signatures
(agent.commands.signing) and per-verb arguments (agent.commands.verbs) are checked by their own
modules. Nothing here does I/O or raises anything but `Rejected`, which is what lets the property
tests throw arbitrary bytes at it.
"""

from __future__ import annotations

import dataclasses
import enum
import json
import math
import re
from collections.abc import Mapping
from typing import Any

from agent.errors import AgentError
from agent.link import inbound

MAX_PAYLOAD_BYTES = 64 * 1024
# Every broker carries these characters in a topic level (`R/cmd/{id}`): NATS refuses `.` and
# ` ` (and closes the connection), RabbitMQ turns `.` into `/`, `:` is unsafe in NATS subjects.
ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
ID_RULE = (
    "1-64 characters of A-Z a-z 0-9 _ - starting with a letter or digit"
    " (it becomes a topic level that every broker must carry)"
)
ENVELOPE_VERSION = 1
REQUIRED_FIELDS = frozenset({"v", "id", "verb", "target", "args", "issued_at"})
OPTIONAL_FIELDS = frozenset({"expires_at", "key_id", "sig"})
KNOWN_FIELDS = REQUIRED_FIELDS | OPTIONAL_FIELDS


class Verb(enum.StrEnum):
    JOIN = "join"
    ADDON = "addon"
    UPGRADE = "upgrade"
    STATUS = "status"
    REBIRTH = "rebirth"

    @property
    def mutating(self) -> bool:
        """Join, addon and upgrade change the node: signed, journaled, queued."""
        return self.value not in READ_ONLY


READ_ONLY = frozenset({"status", "rebirth"})
"""Verbs that change nothing: unsigned allowed, answered by the intake, never journaled."""


VERBS = frozenset(v.value for v in Verb)


class Status(enum.StrEnum):
    ACCEPTED = "accepted"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    REJECTED = "rejected"

    @property
    def terminal(self) -> bool:
        return self not in (Status.ACCEPTED, Status.RUNNING)


class Rejected(AgentError):
    """A request the agent refuses; `reason` is for a person, `command_id` None if unreadable."""

    def __init__(self, reason: str, command_id: str | None = None, verb: str | None = None) -> None:
        self.reason = reason
        self.command_id = command_id
        self.verb = verb
        super().__init__(reason)


@dataclasses.dataclass(frozen=True, slots=True)
class Decoded:
    """A JSON object with a readable id: enough to answer on `R/cmd/{id}`."""

    command_id: str
    body: dict[str, Any]

    @property
    def verb_text(self) -> str | None:
        """The verb if it names one we know (for status payloads), else None."""
        verb = self.body.get("verb")
        return verb if isinstance(verb, str) and verb in VERBS else None


@dataclasses.dataclass(frozen=True, slots=True)
class Envelope:
    """A request whose fields all have the right types and values for this node and time."""

    id: str
    verb: Verb
    target: str
    args: dict[str, Any]
    issued_at: float
    expires_at: float
    key_id: str | None
    sig: str | None


@dataclasses.dataclass(frozen=True, slots=True)
class Limits:
    """The node's view of a request: its name and the time window it accepts."""

    node: str
    max_age_s: float
    clock_skew_s: float


def decode(payload: bytes) -> Decoded:
    """Read the payload into an object with a readable id.

    Raises:
        Rejected: with command_id None (answer on `R/cmd/_invalid`).
    """
    # Bounded size and depth before json.loads recurses, no lone surrogates (they could not be
    # echoed back in a rejection): agent.link.inbound, the decoder of everything from the broker.
    body = inbound.parse_json(payload, max_bytes=MAX_PAYLOAD_BYTES)
    if isinstance(body, inbound.Invalid):
        raise Rejected(body.reason)
    if not isinstance(body, dict):
        raise Rejected(f"payload must be a JSON object, not {_json_type(body)}")
    command_id = body.get("id")
    if not isinstance(command_id, str) or not ID_RE.fullmatch(command_id):
        raise Rejected(f"missing or invalid id: it must be a string of {ID_RULE}")
    return Decoded(command_id, body)


def check_envelope(decoded: Decoded, limits: Limits, now: float) -> Envelope:
    """Check every field of an authenticated request (types, version, target, time window).

    Raises:
        Rejected: naming the first problem found.
    """
    body = decoded.body
    reject = _Reject(decoded)
    _check_fields(body, reject)
    verb = _verb(body["verb"], reject)
    target = body["target"]
    if not isinstance(target, str):
        raise reject("target must be a string (the node name)")
    if target != limits.node:
        raise reject(f"wrong target {_short(target)!r}: this node is {limits.node!r}")
    if not isinstance(body["args"], dict):
        raise reject(f"args must be a JSON object, not {_json_type(body['args'])}")
    issued_at, expires_at = _window(body, limits, reject)
    _check_clock(issued_at, expires_at, limits, now, reject)
    return Envelope(
        id=decoded.command_id,
        verb=verb,
        target=target,
        args=body["args"],
        issued_at=issued_at,
        expires_at=expires_at,
        key_id=body.get("key_id"),
        sig=body.get("sig"),
    )


def _check_fields(body: Mapping[str, Any], reject: _Reject) -> None:
    unknown = sorted(set(body) - KNOWN_FIELDS)
    if unknown:
        raise reject(
            f"unknown field(s) {_short(', '.join(unknown))};"
            f" known: {', '.join(sorted(KNOWN_FIELDS))}"
        )
    missing = sorted(REQUIRED_FIELDS - set(body))
    if missing:
        raise reject(f"missing field(s): {', '.join(missing)}")
    if type(body["v"]) is not int or body["v"] != ENVELOPE_VERSION:
        version = _short(repr(body["v"]), 20)
        raise reject(f"unsupported envelope version v={version}; this agent speaks v=1")


class _Reject:
    """Builds Rejected errors that carry the id and verb of the request being checked."""

    def __init__(self, decoded: Decoded) -> None:
        self._id = decoded.command_id
        self._verb = decoded.verb_text

    def __call__(self, reason: str) -> Rejected:
        return Rejected(reason, self._id, self._verb)


def _verb(value: object, reject: _Reject) -> Verb:
    known = ", ".join(v.value for v in Verb)
    if not isinstance(value, str):
        raise reject(f"verb must be a string, one of {known}")
    try:
        return Verb(value)
    except ValueError:
        raise reject(f"unknown verb {_short(value)!r}; known verbs: {known}") from None


def _number(body: Mapping[str, Any], key: str, reject: _Reject) -> float:
    value = body[key]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise reject(f"{key} must be a number (unix seconds), not {_json_type(value)}")
    try:
        number = float(value)
    except OverflowError:  # an integer beyond float range: no real time
        number = math.inf
    if not math.isfinite(number) or number < 0:
        raise reject(f"{key} must be a finite, non-negative number of unix seconds")
    return number


def _window(body: Mapping[str, Any], limits: Limits, reject: _Reject) -> tuple[float, float]:
    issued_at = _number(body, "issued_at", reject)
    if "expires_at" not in body:
        return issued_at, issued_at + limits.max_age_s
    expires_at = _number(body, "expires_at", reject)
    if expires_at <= issued_at:
        raise reject("expires_at must be later than issued_at")
    if expires_at - issued_at > limits.max_age_s:
        raise reject(
            f"expires_at is {expires_at - issued_at:g} s after issued_at; this node accepts at"
            f" most commands.max_age_s = {limits.max_age_s:g} s"
        )
    return issued_at, expires_at


def _check_clock(
    issued_at: float, expires_at: float, limits: Limits, now: float, reject: _Reject
) -> None:
    skew = limits.clock_skew_s
    if issued_at > now + skew:
        raise reject(
            f"issued {issued_at - now:.0f} s in the future (allowed clock skew {skew:g} s):"
            " check the clocks of the sender and of this node (NTP)"
        )
    if now > expires_at + skew:
        raise reject(
            f"expired {now - expires_at:.0f} s ago: send a new command with a fresh issued_at"
            " (and check the clocks if it was just sent)"
        )


def replay_horizon(expires_at: float, limits: Limits) -> float:
    """The time after which a replay of a command is rejected as expired anyway."""
    return expires_at + limits.clock_skew_s


def _json_type(value: object) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean"}
    if value is None:
        return "null"
    for kind, name in names.items():
        if type(value) is kind:
            return name
    return "a number" if isinstance(value, int | float) else type(value).__name__


def short(text: str, limit: int = 80) -> str:
    """`text` cut to `limit` characters: reasons echo request values, never at length."""
    return _short(text, limit)


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def status_payload(
    command_id: str | None,
    verb: str | None,
    node: str,
    status: Status,
    ts: float,
    **extra: Any,
) -> dict[str, Any]:
    """A status update (PROTOCOL.md); `extra` holds the optional fields, None ones dropped."""
    body: dict[str, Any] = {
        "id": command_id,
        "verb": verb,
        "node": node,
        "status": status.value,
        "ts": round(ts, 3),
    }
    body.update({key: value for key, value in extra.items() if value is not None})
    return body


def encode(body: Mapping[str, Any]) -> bytes:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
