"""Who the dqlite members are: parsers for cluster.yaml/info.yaml and the status fallback.

`microk8s status` lists members as configured, never as alive (MICROK8S.md §2.4), so membership
is only the list of addresses to probe; liveness comes from `agent.ha.probes`. The parsers are pure
and raise `MembershipError` on anything they cannot trust, because a half-read member list would
make the quorum arithmetic lie. `load()` at the bottom is the only I/O: it reads the two files and
falls back to the HA nodes that `microk8s status --format yaml` printed.
"""

from __future__ import annotations

import dataclasses
import ipaddress
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from agent.errors import AgentError
from agent.microk8s import yamldoc

ROLES = {0: "voter", 1: "standby", 2: "spare"}
"""go-dqlite NodeRole numbers (internal/protocol/constants.go)."""
ROLE_WORDS = {"voter": "voter", "standby": "standby", "stand-by": "standby", "spare": "spare"}
SOURCE_DQLITE = "dqlite"
SOURCE_FILES = "cluster.yaml"
SOURCE_STATUS = "microk8s status"
MAX_FILE_BYTES = 1 << 20
LOOPBACK = "127.0.0.1"


class MembershipError(AgentError):
    """A membership document cannot be trusted (unreadable, malformed, inconsistent)."""


@dataclasses.dataclass(frozen=True, slots=True)
class Member:
    """One dqlite member as configured: its raft address and role."""

    address: str
    """`IP:port` exactly as dqlite lists it (`127.0.0.11:19001`, `[fd00::1]:19001`)."""
    role: str
    """voter, standby or spare."""
    id: int | None = None
    """go-dqlite node ID (up to 2**64-1); unknown when read from `microk8s status`."""
    failure_domain: int | None = None
    """From the member's own `describe` answer; None unless the live view got one."""

    @property
    def host(self) -> str:
        return split_address(self.address)[0]

    @property
    def port(self) -> int:
        return split_address(self.address)[1]


@dataclasses.dataclass(frozen=True, slots=True)
class Membership:
    """The members, where the list came from, and which of them is this node (if known)."""

    members: tuple[Member, ...] = ()
    source: str | None = None
    """"dqlite" (the live cluster), "cluster.yaml", "microk8s status", or None (nothing read)."""
    self_member: Member | None = None
    """This node's own record (info.yaml), None when unknown."""
    error: str | None = None
    """Why the preferred source was not used, or why nothing is known."""

    @property
    def voters(self) -> tuple[Member, ...]:
        return tuple(m for m in self.members if m.role == "voter")


def split_address(address: str) -> tuple[str, int]:
    """`127.0.0.11:19001` → ("127.0.0.11", 19001); `[fd00::1]:19001` → ("fd00::1", 19001).

    Raises:
        MembershipError: not an IP literal with a port in 1..65535 (these addresses are dialled,
            so nothing else is accepted).
    """
    host, sep, port_text = address.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        ip = ipaddress.ip_address(host)
        port = int(port_text)
    except ValueError as exc:
        raise MembershipError(f"bad member address {address[:80]!r}: want IP:port") from exc
    if not sep or not 1 <= port <= 65535 or (ip.version == 6 and ":" not in host):
        raise MembershipError(f"bad member address {address[:80]!r}: want IP:port")
    return str(ip), port


def _field(record: Mapping[Any, Any], name: str) -> Any:
    """A key of a go-dqlite record, whatever its case (`Address`, `address`)."""
    for key, value in record.items():
        if isinstance(key, str) and key.lower() == name:
            return value
    return None


def _role(value: Any) -> str:
    if isinstance(value, int) and not isinstance(value, bool) and value in ROLES:
        return ROLES[value]
    if isinstance(value, str) and value.strip().lower() in ROLE_WORDS:
        return ROLE_WORDS[value.strip().lower()]
    raise MembershipError(f"unknown dqlite role {value!r} (want 0, 1 or 2)")


def _node_id(value: Any) -> int | None:
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 1 << 64:
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return _node_id(int(value.strip()))
    raise MembershipError(f"bad dqlite node ID {value!r}")


def parse_record(record: Any) -> Member:
    """One go-dqlite NodeInfo mapping (`ID`, `Address`, `Role`, any key order)."""
    if not isinstance(record, Mapping):
        raise MembershipError(f"expected a mapping with ID, Address and Role, got {record!r:.80}")
    address = _field(record, "address")
    if not isinstance(address, str):
        raise MembershipError("member without an Address")
    split_address(address)
    return Member(
        address=address, role=_role(_field(record, "role")), id=_node_id(_field(record, "id"))
    )


def _load_yaml(text: str, what: str) -> Any:
    try:
        return yamldoc.safe_load(text)
    except yamldoc.YAMLError as exc:
        raise MembershipError(f"{what} is not valid YAML: {str(exc).splitlines()[0]}") from exc


def parse_cluster(text: str) -> tuple[Member, ...]:
    """cluster.yaml: a YAML list of NodeInfo records (go-dqlite YamlNodeStore)."""
    doc = _load_yaml(text, "cluster.yaml")
    if not isinstance(doc, list) or not doc:
        raise MembershipError("cluster.yaml does not list any member")
    return _unique(parse_record(record) for record in doc)


def parse_info(text: str) -> Member:
    """info.yaml: this node's own NodeInfo record."""
    return parse_record(_load_yaml(text, "info.yaml"))


def from_status(ha_nodes: Iterable[tuple[str, str]] | None) -> tuple[Member, ...]:
    """The (address, role) pairs of `microk8s status --format yaml` as members (no IDs)."""
    if not ha_nodes:
        raise MembershipError("microk8s status lists no HA members")
    members = []
    for address, role in ha_nodes:
        split_address(address)
        members.append(Member(address=address, role=_role(role)))
    return _unique(members)


def _unique(members: Iterable[Member]) -> tuple[Member, ...]:
    result = tuple(members)
    addresses = [m.address for m in result]
    duplicates = sorted({a for a in addresses if addresses.count(a) > 1})
    if duplicates:
        raise MembershipError(f"member listed twice: {', '.join(duplicates)}")
    return result


def find_self(
    members: tuple[Member, ...], info: Member | None, local_hosts: Iterable[str]
) -> Member | None:
    """This node among `members`: info.yaml's address, else a member on a local IP.

    The record in `members` wins over info.yaml's own role, because the dqlite leader keeps the
    member list current while info.yaml is what the node wrote when it started.
    """
    if info is not None:
        listed = next((m for m in members if m.address == info.address), None)
        return listed or info
    hosts = set(local_hosts)
    local = [m for m in members if m.host in hosts]
    return local[0] if len(local) == 1 else None


def node_role(membership: Membership, facts_role: str | None) -> str | None:
    """voter/standby/spare from this node's record; worker, standalone, or None when unknown."""
    if facts_role == "worker":
        return "worker"
    members = membership.members
    if len(members) == 1 and members[0].host == LOOPBACK:
        return "standalone"
    me = membership.self_member
    return me.role if me is not None else None


# --- I/O ---------------------------------------------------------------------------------


def _read(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise MembershipError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(data) > MAX_FILE_BYTES:
        raise MembershipError(f"{path} is larger than {MAX_FILE_BYTES} bytes")
    return data.decode("utf-8", errors="replace")


def load(
    backend_dir: Path,
    status_nodes: Iterable[tuple[str, str]] | None,
    local_hosts: Iterable[str] = (),
) -> Membership:
    """Membership from backend_dir, else from `microk8s status`; never raises.

    Blocking file reads: call it through `asyncio.to_thread`.
    """
    hosts = tuple(local_hosts)
    try:
        info: Member | None = parse_info(_read(backend_dir / "info.yaml"))
    except MembershipError:
        info = None
    try:
        members = parse_cluster(_read(backend_dir / "cluster.yaml"))
        return Membership(members, SOURCE_FILES, find_self(members, info, hosts))
    except MembershipError as exc:
        file_error = str(exc)
    try:
        members = from_status(status_nodes)
    except MembershipError as exc:
        return Membership(error=f"{file_error}; {exc}")
    return Membership(members, SOURCE_STATUS, find_self(members, info, hosts), error=file_error)
