"""Total decoding of what other clients publish: bytes in, a typed value or an `Invalid` out.

Every byte read from the broker is untrusted: any node of any cluster can publish a retained
message on its own topics, and every agent subscribed to `+/ha` or `+/state` reads it. So these
decoders bound the size, bound the nesting depth *before* `json.loads` recurses (a 2 KB `[[[…]]]`
is enough to raise RecursionError), refuse lone surrogates (they cannot be encoded back into
UTF-8 when echoed), and turn the document into small typed records with only the fields the
agent uses. Nothing here raises: a caller gets a value or a reason. Pure: no I/O, no MQTT types.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, Literal

MAX_BYTES = 64 * 1024
"""Peer documents (presence, health, HA verdicts) are a few KiB; commands are held to 64 KiB."""
MAX_DEPTH = 32
"""No message of the protocol nests deeper than 6; 32 leaves room and stays far from recursion."""
MAX_MEMBERS = 64
"""dqlite members listed in one peer verdict (a MicroK8s cluster has a handful)."""
NODE_TEXT_LIMIT = 253
"""Longest string kept from a peer's verdict (node names and addresses)."""

_STRING = re.compile(rb'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKET = re.compile(rb"[\[\]{}]")
_SURROGATE = re.compile("[\ud800-\udfff]")


@dataclasses.dataclass(frozen=True, slots=True)
class Invalid:
    """Why a message was not accepted (for a log field or a rejection reason)."""

    reason: str


@dataclasses.dataclass(frozen=True, slots=True)
class Cleared:
    """An empty retained message: the publisher's retained copy was removed."""


CLEARED = Cleared()

Json = None | bool | int | float | str | list[Any] | dict[str, Any]


def parse_json(payload: bytes, *, max_bytes: int = MAX_BYTES, max_depth: int = MAX_DEPTH) -> Any:
    """The JSON document in `payload`, or `Invalid` (never raises).

    The return type is `Json | Invalid`; typed `Any` so that callers narrow it themselves.
    """
    try:
        return _parse(payload, max_bytes, max_depth)
    except Exception as exc:  # total: a decoder bug must cost one message, not the reader
        return Invalid(f"undecodable: {type(exc).__name__}")


def _parse(payload: bytes, max_bytes: int, max_depth: int) -> Json | Invalid:
    if len(payload) > max_bytes:
        return Invalid(f"payload is {len(payload)} bytes; the limit is {max_bytes} bytes")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        return Invalid(f"payload is not valid UTF-8 (byte {exc.start})")
    depth = nesting_depth(payload)
    if depth > max_depth:
        return Invalid(f"payload nests {depth} levels deep; the limit is {max_depth}")
    try:
        value: Json = json.loads(text, parse_constant=_no_constant)
    except (ValueError, RecursionError) as exc:
        return Invalid(f"payload is not valid JSON: {_short(str(exc))}")
    if _has_surrogate(value):
        return Invalid("payload holds a lone UTF-16 surrogate (\\ud800-\\udfff)")
    return value


def parse_object(payload: bytes, *, max_bytes: int = MAX_BYTES) -> dict[str, Any] | Invalid:
    """A JSON object (the shape of every message of the protocol), or `Invalid`."""
    value = parse_json(payload, max_bytes=max_bytes)
    if isinstance(value, Invalid | dict):
        return value
    return Invalid(f"payload must be a JSON object, not {type(value).__name__}")


def nesting_depth(payload: bytes) -> int:
    """The deepest bracket nesting outside string literals (an upper bound for malformed text)."""
    depth = deepest = 0
    for match in _BRACKET.finditer(_STRING.sub(b'""', payload)):
        if match.group() in (b"[", b"{"):
            depth += 1
            deepest = max(deepest, depth)
        else:
            depth = max(0, depth - 1)
    return deepest


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _has_surrogate(value: Json) -> bool:
    # Depth is bounded by MAX_DEPTH already, so this recursion is too.
    if isinstance(value, str):
        return _SURROGATE.search(value) is not None
    if isinstance(value, list):
        return any(_has_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(_has_surrogate(k) or _has_surrogate(v) for k, v in value.items())
    return False


def _short(text: str, limit: int = 80) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


# --- peer records --------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class Presence:
    """A peer's retained `R/state` (PROTOCOL.md "Presence"), reduced to what is used."""

    state: Literal["online", "offline"]
    session: int


@dataclasses.dataclass(frozen=True, slots=True)
class Reach:
    """One member as a peer saw it: its dqlite address and whether the peer reached it."""

    address: str
    reachable: bool | None
    node: str | None = None
    role: str | None = None
    status: str | None = None
    """The member's status in the peer's cluster view (`up`, `down`…); None in its own view."""

    def as_entry(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"address": self.address, "reachable": self.reachable}
        for key in ("node", "role", "status"):
            if getattr(self, key) is not None:
                entry[key] = getattr(self, key)
        return entry


@dataclasses.dataclass(frozen=True, slots=True)
class ClusterView:
    """The `cluster` section of a peer's verdict, as far as the join gate reads it."""

    verdict: str | None
    quorum: dict[str, int]
    members: tuple[Reach, ...]


@dataclasses.dataclass(frozen=True, slots=True)
class PeerVerdict:
    """A peer's retained `R/ha` verdict, reduced to the fields the cluster view reads."""

    node: str
    address: str | None
    maintenance: bool
    members: tuple[Reach, ...]
    cluster: ClusterView | None = None

    def as_report(self) -> dict[str, Any]:
        """The mapping shape `agent.ha` reads (the same as this node's own verdict)."""
        report: dict[str, Any] = {
            "node": self.node,
            "address": self.address,
            "maintenance": self.maintenance,
            "members": [m.as_entry() for m in self.members],
        }
        if self.cluster is not None:
            report["cluster"] = {
                "verdict": self.cluster.verdict,
                "quorum": dict(self.cluster.quorum),
                "members": [m.as_entry() for m in self.cluster.members],
            }
        return report


def decode_presence(payload: bytes) -> Presence | Cleared | Invalid:
    if not payload:
        return CLEARED
    body = parse_object(payload)
    if isinstance(body, Invalid):
        return body
    state = body.get("state")
    if state not in ("online", "offline"):
        return Invalid("state must be 'online' or 'offline'")
    session = body.get("session")
    if isinstance(session, bool) or not isinstance(session, int) or not 0 <= session < 2**63:
        session = 0
    return Presence("online" if state == "online" else "offline", session)


def decode_peer_verdict(payload: bytes, node: str) -> PeerVerdict | Cleared | Invalid:
    """A peer's verdict published on `node`'s own topic; it must name that node."""
    if not payload:
        return CLEARED
    body = parse_object(payload)
    if isinstance(body, Invalid):
        return body
    if body.get("node") != node:
        return Invalid("the verdict's node is not the node of its topic")
    return PeerVerdict(
        node=node,
        address=_text(body.get("address")),
        maintenance=body.get("maintenance") is True,
        members=_members(body, ("members", "voters")),
        cluster=_cluster(body.get("cluster")),
    )


def _members(body: Mapping[str, Any], keys: tuple[str, ...]) -> tuple[Reach, ...]:
    members: list[Reach] = []
    for key in keys:
        entries = body.get(key)
        for entry in entries if isinstance(entries, list) else ():
            reach = _reach(entry)
            if reach is not None and len(members) < MAX_MEMBERS:
                members.append(reach)
    return tuple(members)


def _cluster(value: object) -> ClusterView | None:
    if not isinstance(value, Mapping):
        return None
    numbers = value.get("quorum")
    quorum = {
        key: number
        for key, number in (numbers.items() if isinstance(numbers, Mapping) else ())
        if key in ("size", "reachable", "needed", "margin")
        and isinstance(number, int)
        and not isinstance(number, bool)
        and abs(number) < 1 << 31
    }
    return ClusterView(_text(value.get("verdict")), quorum, _members(value, ("members",)))


def _reach(entry: object) -> Reach | None:
    if not isinstance(entry, Mapping):
        return None
    address = _text(entry.get("address"))
    if address is None:
        return None
    reachable = entry.get("reachable")
    return Reach(
        address,
        reachable if isinstance(reachable, bool) else None,
        node=_text(entry.get("node")),
        role=_text(entry.get("role")),
        status=_text(entry.get("status")),
    )


def _text(value: object) -> str | None:
    return value if isinstance(value, str) and len(value) <= NODE_TEXT_LIMIT else None


def section(body: Mapping[str, Any], key: str) -> dict[str, Any]:
    """`body[key]` when it is an object, else an empty one (reading a peer's nested fields)."""
    value = body.get(key)
    return value if isinstance(value, dict) else {}
