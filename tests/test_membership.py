"""The dqlite membership parsers against the recorded files and their variations, and `load()`."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.ha import membership
from agent.ha.membership import Member, MembershipError
from tests.paths import FIXTURES

DQLITE = FIXTURES / "dqlite"
BIG_ID = 10676789520824011173  # above 2**63: must survive as an int


def test_cluster_fixture() -> None:
    members = membership.parse_cluster((DQLITE / "cluster.yaml").read_text())
    assert [(m.address, m.role) for m in members] == [
        ("127.0.0.11:19001", "voter"),
        ("127.0.0.12:19001", "voter"),
        ("127.0.0.13:19001", "voter"),
        ("127.0.0.14:19001", "standby"),
    ]
    assert members[0].id == 3297041220608546238
    assert members[2].id == BIG_ID
    assert (members[0].host, members[0].port) == ("127.0.0.11", 19001)


def test_info_fixture() -> None:
    me = membership.parse_info((DQLITE / "info.yaml").read_text())
    assert me == Member(address="127.0.0.12:19001", role="voter", id=9373968242441247628)


def test_address_first_and_any_key_order() -> None:
    text = (
        "- Address: 127.0.0.11:19001\n  Role: 0\n  ID: 1\n"
        "- Role: 2\n  ID: 2\n  Address: 127.0.0.12:19001\n"
        "- {ID: 3, Address: '127.0.0.13:19001', Role: 1}\n"
    )
    members = membership.parse_cluster(text)
    assert [(m.address, m.role, m.id) for m in members] == [
        ("127.0.0.11:19001", "voter", 1),
        ("127.0.0.12:19001", "spare", 2),
        ("127.0.0.13:19001", "standby", 3),
    ]


def test_single_fresh_node() -> None:
    members = membership.parse_cluster(
        "- ID: 3297041220608546238\n  Address: 127.0.0.1:19001\n  Role: 0\n"
    )
    loaded = membership.Membership(members, membership.SOURCE_FILES, members[0])
    assert membership.node_role(loaded, None) == "standalone"


def test_two_nodes_one_voter() -> None:
    text = (
        "- ID: 1\n  Address: 127.0.0.11:19001\n  Role: 0\n"
        "- ID: 2\n  Address: 127.0.0.12:19001\n  Role: 2\n"
    )
    members = membership.parse_cluster(text)
    loaded = membership.Membership(members, membership.SOURCE_FILES, members[1])
    assert [m.address for m in loaded.voters] == ["127.0.0.11:19001"]
    assert membership.node_role(loaded, None) == "spare"


def test_ipv6_address() -> None:
    (member,) = membership.parse_cluster("- {ID: 1, Address: '[fd00::11]:19001', Role: 0}\n")
    assert (member.host, member.port) == ("fd00::11", 19001)


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "does not list"),
        ("[]", "does not list"),
        ("garbage: [", "not valid YAML"),
        ("\x00\x01binary", "not valid YAML"),
        ("just a string", "does not list"),
        ("- not a mapping", "expected a mapping"),
        ("- {ID: 1, Role: 0}", "without an Address"),
        ("- {ID: 1, Address: 127.0.0.11, Role: 0}", "bad member address"),
        ("- {ID: 1, Address: 'pi-01:19001', Role: 0}", "bad member address"),
        ("- {ID: 1, Address: '127.0.0.11:99999', Role: 0}", "bad member address"),
        ("- {ID: 1, Address: '127.0.0.11:19001', Role: 7}", "unknown dqlite role"),
        ("- {ID: 1, Address: '127.0.0.11:19001', Role: true}", "unknown dqlite role"),
        ("- {ID: 1, Address: '127.0.0.11:19001'}", "unknown dqlite role"),
        ("- {ID: -4, Address: '127.0.0.11:19001', Role: 0}", "bad dqlite node ID"),
        (
            "- {ID: 1, Address: '127.0.0.11:19001', Role: 0}\n"
            "- {ID: 2, Address: '127.0.0.11:19001', Role: 0}",
            "listed twice",
        ),
    ],
)
def test_garbage_is_refused_with_a_reason(text: str, words: str) -> None:
    with pytest.raises(MembershipError, match=words):
        membership.parse_cluster(text)


def test_from_status_nodes() -> None:
    members = membership.from_status(
        [("127.0.0.11:19001", "voter"), ("127.0.0.14:19001", "standby")]
    )
    assert [(m.address, m.role, m.id) for m in members] == [
        ("127.0.0.11:19001", "voter", None),
        ("127.0.0.14:19001", "standby", None),
    ]
    with pytest.raises(MembershipError, match="no HA members"):
        membership.from_status(())


def _backend_dir(tmp_path: Path, cluster: str | None, info: str | None) -> Path:
    if cluster is not None:
        (tmp_path / "cluster.yaml").write_text(cluster)
    if info is not None:
        (tmp_path / "info.yaml").write_text(info)
    return tmp_path


def test_load_prefers_files(tmp_path: Path) -> None:
    d = _backend_dir(
        tmp_path, (DQLITE / "cluster.yaml").read_text(), (DQLITE / "info.yaml").read_text()
    )
    loaded = membership.load(d, [("10.9.9.9:19001", "voter")])
    assert loaded.source == "cluster.yaml"
    assert loaded.error is None
    assert len(loaded.voters) == 3
    assert loaded.self_member is not None
    assert loaded.self_member.address == "127.0.0.12:19001"
    assert membership.node_role(loaded, None) == "voter"
    assert membership.node_role(loaded, "worker") == "worker"


def test_load_missing_info_finds_self_by_local_address(tmp_path: Path) -> None:
    d = _backend_dir(tmp_path, (DQLITE / "cluster.yaml").read_text(), None)
    assert membership.load(d, None).self_member is None
    loaded = membership.load(d, None, local_hosts=["192.168.1.5", "127.0.0.14"])
    assert loaded.self_member is not None
    assert loaded.self_member.role == "standby"
    assert membership.node_role(loaded, None) == "standby"


def test_cluster_role_wins_over_stale_info(tmp_path: Path) -> None:
    info = "Role: 1\nAddress: 127.0.0.11:19001\nID: 3297041220608546238\n"
    d = _backend_dir(tmp_path, (DQLITE / "cluster.yaml").read_text(), info)
    assert membership.node_role(membership.load(d, None), None) == "voter"


def test_load_falls_back_to_status(tmp_path: Path) -> None:
    d = _backend_dir(tmp_path, "garbage: [", None)
    nodes = [("127.0.0.11:19001", "voter"), ("127.0.0.12:19001", "voter")]
    loaded = membership.load(d, nodes)
    assert loaded.source == "microk8s status"
    assert [m.address for m in loaded.members] == ["127.0.0.11:19001", "127.0.0.12:19001"]
    assert loaded.error is not None
    assert "not valid YAML" in loaded.error


def test_load_nothing_known(tmp_path: Path) -> None:
    loaded = membership.load(tmp_path / "absent", None)
    assert loaded.source is None
    assert loaded.members == ()
    assert loaded.error is not None
    assert "cannot read" in loaded.error
    assert "no HA members" in loaded.error
    assert membership.node_role(loaded, None) is None


def test_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "cluster.yaml").mkdir()
    loaded = membership.load(tmp_path, None)
    assert loaded.source is None
    assert loaded.error is not None
    assert "cannot read" in loaded.error
