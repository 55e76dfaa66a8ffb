"""The dqlite client against a real three-voter dqlite-demo cluster, plainly and through TLS.

The answers are checked against go-dqlite's own `dqlite` shell. dqlite-demo speaks no TLS, so the
TLS path goes through an asyncio TLS front on loopback that holds a generated certificate in
MicroK8s' file names (`cluster.crt`/`cluster.key`) and, like go-dqlite's listener, requires and
verifies the same certificate from the client before relaying bytes to a member.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import ssl
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from cryptography import x509

from agent.ha import dqlite, dqlite_wire
from tests.cluster_fakes import write_self_signed
from tests.dqlite_nodes import DqliteCluster, dqlite_cli, free_port, start_cluster


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DqliteCluster]:
    cluster = asyncio.run(start_cluster(tmp_path_factory.mktemp("dqlite"), 3))
    yield cluster
    cluster.stop()


async def test_view_matches_the_dqlite_shell(three: DqliteCluster) -> None:
    shell_leader = (await dqlite_cli(three.addresses, ".leader")).strip()
    follower = next(a for a in three.addresses if a != shell_leader)
    view = await dqlite.DqliteClient(None, 2.0).view([follower, *three.addresses])
    assert view.leader is not None
    assert view.leader.address == shell_leader
    assert view.error is None
    shell = await dqlite_cli(three.addresses, ".cluster")
    rows = [line.split("|") for line in shell.split()]
    assert [(int(i, 16), a, r) for i, a, r in rows] == [
        (n.id, n.address, n.role) for n in view.members
    ]
    described = await dqlite_cli(three.addresses, f".describe {follower}")
    _, domain, weight = described.strip().split("|")
    assert view.metadata[follower] == dqlite_wire.Metadata(int(domain), int(weight))
    assert set(view.metadata) == set(three.addresses)


async def test_unknown_members_only_give_a_no_leader_error() -> None:
    host = "127.0.0.14"
    nobody = f"{host}:{free_port(host)}"
    view = await dqlite.DqliteClient(None, 0.5).view([nobody])
    assert view.leader is None
    assert not view.answered
    assert view.unusable is None
    assert view.error == f"{dqlite.NO_LEADER} ({nobody}: connection refused)"


# --- TLS -------------------------------------------------------------------------------------


def write_cluster_cert(backend: Path) -> Path:
    """A self-signed pair with MicroK8s' names and SANs, as cluster.crt/cluster.key."""
    backend.mkdir(parents=True, exist_ok=True)
    sans: list[x509.GeneralName] = [
        x509.DNSName("dqlite"),
        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
    ]
    write_self_signed(backend / dqlite.CERT_FILE, backend / dqlite.KEY_FILE, "k8s", sans=sans)
    return backend


def server_context(backend: Path) -> ssl.SSLContext:
    """go-dqlite's SimpleListenTLSConfig: the cluster certificate, and require it from clients."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(backend / dqlite.CERT_FILE, backend / dqlite.KEY_FILE)
    context.load_verify_locations(backend / dqlite.CERT_FILE)
    context.verify_mode = ssl.CERT_REQUIRED
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    return context


@contextlib.asynccontextmanager
async def tls_front(backend: Path, target: str) -> AsyncIterator[str]:
    """A TLS listener on 127.0.0.15 relaying every connection to `target` (a dqlite member)."""
    target_host, target_port = target.rsplit(":", 1)
    tasks: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(target_host, int(target_port))
        for task in (pipe(reader, up_writer), pipe(up_reader, writer)):
            tasks.add(asyncio.create_task(task))

    host = "127.0.0.15"
    server = await asyncio.start_server(
        relay, host, free_port(host), ssl=server_context(backend), ssl_handshake_timeout=5
    )
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"{host}:{port}"
    finally:
        server.close()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await server.wait_closed()


async def test_tls_with_the_cluster_certificate(three: DqliteCluster, tmp_path: Path) -> None:
    backend = write_cluster_cert(tmp_path / "backend")
    leader = (await dqlite_cli(three.addresses, ".leader")).strip()
    async with tls_front(backend, leader) as front:
        client = dqlite.DqliteClient(dqlite.TlsFiles(backend).context(), 2.0)
        named, members = await client.ask(front)
        metadata = await client.describe(front)
    assert named is not None
    assert named.address == leader
    assert [m.address for m in members] == three.addresses
    assert metadata == dqlite_wire.Metadata(0, 0)


async def test_a_foreign_certificate_makes_the_view_unusable_not_lost(
    three: DqliteCluster, tmp_path: Path
) -> None:
    backend = write_cluster_cert(tmp_path / "backend")
    other = write_cluster_cert(tmp_path / "other")
    async with tls_front(backend, three.addresses[0]) as front:
        client = dqlite.DqliteClient(dqlite.TlsFiles(other).context(), 2.0)
        view = await client.view([front])
    assert view.unusable is not None
    assert view.error is None
    assert not view.answered


def test_missing_certificate_files_are_a_tls_error(tmp_path: Path) -> None:
    with pytest.raises(dqlite.DqliteError, match=r"cannot read .*cluster\.crt") as caught:
        dqlite.TlsFiles(tmp_path).context()
    assert caught.value.tls
