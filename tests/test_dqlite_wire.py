"""The dqlite wire encoding (pure), against answers recorded from a real dqlite-demo.

Recorded with go-dqlite 1.11.5 / libdqlite 1.11.1 (Debian), three voters on 127.0.0.11-13:19001
(the raw bytes of `leader`, `cluster` format 1 and `describe` answers).
"""

from __future__ import annotations

import struct

import pytest

from agent.ha import dqlite_wire as wire

ADDRESS = b"127.0.0.11:19001\x00" + b"\x00" * 7  # 17 bytes padded to 24
LEADER_BODY = b"\xbeU1\x8c\x85q\xc1-" + ADDRESS
CLUSTER_BODY = (
    b"\x03\x00\x00\x00\x00\x00\x00\x00"
    + b"\xbeU1\x8c\x85q\xc1-" + ADDRESS + b"\x00" * 8
    + b"\x86\xef\x98\xd8^vJ#" + b"127.0.0.12:19001\x00" + b"\x00" * 7 + b"\x00" * 8
    + b"\xa0g~\x83\x8eN\xc7n" + b"127.0.0.13:19001\x00" + b"\x00" * 7 + b"\x00" * 8
)  # fmt: skip
DESCRIBE_BODY = b"\x00" * 16


def test_requests_are_header_plus_word_aligned_body() -> None:
    assert wire.handshake() == struct.pack("<Q", 1)
    # words=1, type, schema 0, reserved 0; then the single uint64 argument.
    assert wire.leader_request() == bytes([1, 0, 0, 0, 0, 0, 0, 0]) + bytes(8)
    assert wire.cluster_request() == bytes([1, 0, 0, 0, 16, 0, 0, 0]) + struct.pack("<Q", 1)
    assert wire.describe_request() == bytes([1, 0, 0, 0, 18, 0, 0, 0]) + bytes(8)


def test_recorded_answers_decode() -> None:
    leader = wire.decode_leader(wire.RESPONSE_NODE, LEADER_BODY)
    assert leader == wire.Node(0x2DC171858C3155BE, "127.0.0.11:19001")
    nodes = wire.decode_cluster(wire.RESPONSE_NODES, CLUSTER_BODY)
    assert [(n.address, n.role) for n in nodes] == [
        ("127.0.0.11:19001", "voter"),
        ("127.0.0.12:19001", "voter"),
        ("127.0.0.13:19001", "voter"),
    ]
    assert nodes[0].id == 3297041220608546238  # go-dqlite's BootstrapID
    assert wire.decode_describe(wire.RESPONSE_METADATA, DESCRIBE_BODY) == wire.Metadata(0, 0)


def test_roles_and_no_leader() -> None:
    body = struct.pack("<Q", 2) + struct.pack("<Q", 7) + b"a:1\x00" + bytes(4)
    body += struct.pack("<Q", 1) + struct.pack("<Q", 8) + b"b:2\x00" + bytes(4)
    body += struct.pack("<Q", 2)
    nodes = wire.decode_cluster(wire.RESPONSE_NODES, body)
    assert [n.role for n in nodes] == ["standby", "spare"]
    assert wire.decode_leader(wire.RESPONSE_NODE, bytes(8) + bytes(8)) is None


def test_failure_answer_raises_with_code_and_text() -> None:
    body = struct.pack("<Q", 5) + b"not leader\x00" + bytes(5)
    with pytest.raises(wire.DqliteFailure, match=r"not leader \(5\)") as caught:
        wire.decode_cluster(wire.RESPONSE_FAILURE, body)
    assert caught.value.code == 5


@pytest.mark.parametrize(
    ("mtype", "body", "words"),
    [
        (wire.RESPONSE_NODES, CLUSTER_BODY[:80], "ends inside a number"),
        (wire.RESPONSE_NODES, struct.pack("<Q", 1 << 40), "cannot fit"),
        (wire.RESPONSE_NODE, b"\x01" * 8 + b"no-terminator", "ends inside a string"),
        (wire.RESPONSE_METADATA, LEADER_BODY, "unexpected response type"),
        (wire.RESPONSE_NODES, CLUSTER_BODY[:-8] + struct.pack("<Q", 9), "unknown role 9"),
    ],
)
def test_malformed_answers_raise_wire_error(mtype: int, body: bytes, words: str) -> None:
    decoders = {
        wire.RESPONSE_NODES: wire.decode_cluster,
        wire.RESPONSE_NODE: wire.decode_leader,
        wire.RESPONSE_METADATA: wire.decode_cluster,
    }
    with pytest.raises(wire.WireError, match=words):
        decoders[mtype](mtype, body)


def test_header_limits() -> None:
    assert wire.parse_header(bytes([3, 0, 0, 0, 3, 0, 0, 0])) == (24, 3)
    with pytest.raises(wire.WireError, match="larger than"):
        wire.parse_header(struct.pack("<IBBH", wire.MAX_BODY_WORDS + 1, 3, 0, 0))
    with pytest.raises(wire.WireError, match="short"):
        wire.parse_header(b"\x01")
