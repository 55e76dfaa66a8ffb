"""The dqlite client wire protocol, version 1 (pure encode/decode, no I/O).

Read from go-dqlite `internal/protocol` (message.go, request.go, response.go, constants.go) and
checked against the real `dqlite-demo`: after the client sends the protocol version as one
little-endian uint64, every message is an 8-byte header — body length in 8-byte words (uint32),
type (uint8), schema/revision (uint8), two reserved bytes — and a body of little-endian uint64s
and NUL-terminated strings, each padded to a word boundary. Only the three read-only requests
the HA check needs are encoded here: `leader`, `cluster` (format 1, with roles) and `describe`
(failure domain and weight). Anything a peer sends is bounds-checked: a malformed or oversized
answer raises `WireError`, never an IndexError.
"""

from __future__ import annotations

import dataclasses
import struct

from agent.errors import AgentError

PROTOCOL_VERSION = 1
WORD = 8
HEADER_SIZE = 8
MAX_BODY_WORDS = 1 << 16
"""512 KiB: far above a cluster list (each member is ~4 words); a bigger claim is an error."""

REQUEST_LEADER = 0
REQUEST_CLUSTER = 16
REQUEST_DESCRIBE = 18
CLUSTER_FORMAT_V1 = 1
"""Format 1 of the cluster answer carries each node's role (format 0 does not)."""
DESCRIBE_FORMAT_V0 = 0

RESPONSE_FAILURE = 0
RESPONSE_NODE = 1
RESPONSE_NODES = 3
RESPONSE_METADATA = 10

ROLES = {0: "voter", 1: "standby", 2: "spare"}
"""go-dqlite NodeRole numbers, spelled as `agent.ha.membership` spells them."""

_HEADER = struct.Struct("<IBBH")
_U64 = struct.Struct("<Q")


class WireError(AgentError):
    """A dqlite answer that does not follow the protocol (or is not dqlite at all)."""


class DqliteFailure(AgentError):
    """The server answered with a failure message: its code and description."""

    def __init__(self, code: int, description: str) -> None:
        super().__init__(f"{description} ({code})")
        self.code = code
        self.description = description


@dataclasses.dataclass(frozen=True, slots=True)
class Node:
    """One raft member as dqlite states it."""

    id: int
    address: str
    role: str | None = None
    """voter, standby or spare; None in answers that carry no role (`leader`)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Metadata:
    """A node's own `describe` answer."""

    failure_domain: int
    weight: int


def handshake() -> bytes:
    return _U64.pack(PROTOCOL_VERSION)


def _request(mtype: int, body: bytes) -> bytes:
    return _HEADER.pack(len(body) // WORD, mtype, 0, 0) + body


def leader_request() -> bytes:
    """Who the leader is, as this node knows it (any node answers; id 0 and "" when none)."""
    return _request(REQUEST_LEADER, _U64.pack(0))


def cluster_request() -> bytes:
    """The raft configuration as this node holds it, with roles."""
    return _request(REQUEST_CLUSTER, _U64.pack(CLUSTER_FORMAT_V1))


def describe_request() -> bytes:
    """The answering node's own failure domain and weight."""
    return _request(REQUEST_DESCRIBE, _U64.pack(DESCRIBE_FORMAT_V0))


def parse_header(header: bytes) -> tuple[int, int]:
    """(body size in bytes, message type) of an 8-byte header.

    Raises:
        WireError: short header, or a body larger than MAX_BODY_WORDS words.
    """
    if len(header) != HEADER_SIZE:
        raise WireError(f"short message header ({len(header)} bytes)")
    words, mtype, _schema, _extra = _HEADER.unpack(header)
    if words > MAX_BODY_WORDS:
        raise WireError(f"message body of {words} words is larger than {MAX_BODY_WORDS}")
    return words * WORD, mtype


class _Reader:
    """Walks a body word by word; every read checks the bounds."""

    def __init__(self, body: bytes) -> None:
        self._body = body
        self._offset = 0

    def uint64(self) -> int:
        if self._offset + WORD > len(self._body):
            raise WireError("message body ends inside a number")
        (value,) = _U64.unpack_from(self._body, self._offset)
        self._offset += WORD
        return int(value)

    def text(self) -> str:
        end = self._body.find(b"\0", self._offset)
        if end < 0:
            raise WireError("message body ends inside a string")
        raw = self._body[self._offset : end]
        size = end + 1 - self._offset
        self._offset += size + (-size % WORD)
        return raw.decode("utf-8", errors="replace")


def _expect(mtype: int, body: bytes, wanted: int, what: str) -> _Reader:
    reader = _Reader(body)
    if mtype == RESPONSE_FAILURE:
        code = reader.uint64()
        raise DqliteFailure(code, reader.text())
    if mtype != wanted:
        raise WireError(f"{what}: unexpected response type {mtype}")
    return reader


def decode_leader(mtype: int, body: bytes) -> Node | None:
    """The leader's id and address; None when the node knows no leader."""
    reader = _expect(mtype, body, RESPONSE_NODE, "leader")
    node = Node(reader.uint64(), reader.text())
    return node if node.address else None


def decode_cluster(mtype: int, body: bytes) -> tuple[Node, ...]:
    """The members of a format-1 `cluster` answer, in dqlite's order."""
    reader = _expect(mtype, body, RESPONSE_NODES, "cluster")
    count = reader.uint64()
    if count * 3 * WORD > len(body):
        raise WireError(f"cluster: {count} members cannot fit in {len(body)} bytes")
    nodes = []
    for _ in range(count):
        node_id, address, role = reader.uint64(), reader.text(), reader.uint64()
        if role not in ROLES:
            raise WireError(f"cluster: unknown role {role} for {address[:80]!r}")
        nodes.append(Node(node_id, address, ROLES[role]))
    return tuple(nodes)


def decode_describe(mtype: int, body: bytes) -> Metadata:
    reader = _expect(mtype, body, RESPONSE_METADATA, "describe")
    return Metadata(failure_domain=reader.uint64(), weight=reader.uint64())


@dataclasses.dataclass(frozen=True, slots=True)
class LiveView:
    """What one round learnt from the running dqlite cluster (built by `agent.ha.dqlite`)."""

    leader: Node | None = None
    members: tuple[Node, ...] = ()
    """The leader's configuration; without a leader, the first answering node's own."""
    metadata: dict[str, Metadata] = dataclasses.field(default_factory=dict)
    """`describe` answers by member address: only members that answered are in it."""
    errors: dict[str, str] = dataclasses.field(default_factory=dict)
    """Why an address did not help (refused, timed out, knows no leader, ...)."""
    error: str | None = None
    """Set when no leader was found (go-dqlite's words plus the per-address causes)."""
    unusable: str | None = None
    """Set when this client could not speak dqlite at all (no certificate, TLS refused): the
    cluster's state is then unknown, not lost."""

    @property
    def answered(self) -> bool:
        return bool(self.members)
