"""A small asyncio dqlite client: who leads, who is a member in which role, in which domain.

`cluster.yaml` is only what dqlite last wrote to disk (a node started by hand may list itself
alone), so each HA round asks the running cluster instead, as `dqlite … .leader / .cluster /
.describe` do: the local member first, then the other known members at once, for the leader and
its raft configuration; then every member for its own failure domain (a real round trip, so it
also says whether that member's dqlite answers). Every call (connect, TLS, handshake, request)
is bounded by `timeout_s`, so a round takes at most about four timeouts.

MicroK8s' dqlite speaks TLS with one certificate shared by all members (`cluster.crt`/
`cluster.key` in the backend dir; go-dqlite's `SimpleDialTLSConfig`: the certificate is both the
client's identity and the only trusted root). The encoding lives in `agent.ha.dqlite_wire`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import TypeVar

from agent.errors import AgentError
from agent.ha import dqlite_wire as wire
from agent.ha.membership import MembershipError, split_address

CERT_FILE = "cluster.crt"
KEY_FILE = "cluster.key"
NO_LEADER = "no available dqlite leader server found"
"""go-dqlite's own words (internal/protocol/errors.go), so operators can search for them."""

T = TypeVar("T")


class DqliteError(AgentError):
    """One call to one dqlite member failed; `tls` when the failure was the TLS layer's."""

    def __init__(self, message: str, *, tls: bool = False) -> None:
        super().__init__(message)
        self.tls = tls


class TlsFiles:
    """The client TLS context from cluster.crt/cluster.key, rebuilt when either file changes.

    A join replaces cluster.crt/cluster.key with the cluster's, so they are re-checked (stat)
    every round. Blocking: call `context()` through `asyncio.to_thread`.
    """

    def __init__(self, backend_dir: Path) -> None:
        self._cert = backend_dir / CERT_FILE
        self._key = backend_dir / KEY_FILE
        self._stamp: tuple[int, ...] | None = None
        self._context: ssl.SSLContext | None = None

    def context(self) -> ssl.SSLContext:
        """Raises DqliteError (tls) when the files cannot be read or do not match."""
        try:
            stats = [self._cert.stat(), self._key.stat()]
        except OSError as exc:
            raise DqliteError(f"cannot read {exc.filename}: {exc.strerror}", tls=True) from exc
        stamp = tuple(value for st in stats for value in (st.st_mtime_ns, st.st_size, st.st_ino))
        if self._context is None or stamp != self._stamp:
            self._context = client_context(self._cert, self._key)
            self._stamp = stamp
        return self._context


def client_context(cert: Path, key: Path) -> ssl.SSLContext:
    """go-dqlite's dial side: present the cluster certificate, trust only it.

    The host name is not checked (members are dialled by IP and the certificate names
    `dqlite`-style DNS names): holding a certificate signed by the cluster key is the identity.
    PARTIAL_CHAIN lets OpenSSL anchor on the self-signed leaf even without CA:TRUE.
    """
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.check_hostname = False
    context.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
    try:
        context.load_verify_locations(cafile=cert)
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise DqliteError(f"cannot use {cert} and {key}: {exc}", tls=True) from exc
    return context


class DqliteClient:
    """Read-only dqlite requests over plain TCP (`tls=None`) or TLS."""

    def __init__(self, tls: ssl.SSLContext | None, timeout_s: float) -> None:
        self._tls = tls
        self._timeout_s = timeout_s

    @contextlib.asynccontextmanager
    async def _session(self, address: str) -> AsyncIterator[_Session]:
        try:
            host, port = split_address(address)
        except MembershipError as exc:
            raise DqliteError(str(exc)) from exc
        try:
            async with asyncio.timeout(self._timeout_s):
                reader, writer = await asyncio.open_connection(host, port, ssl=self._tls)
                writer.write(wire.handshake())
        except ssl.SSLError as exc:
            raise DqliteError(f"TLS failed: {exc.reason or exc}", tls=True) from exc
        except TimeoutError as exc:
            raise DqliteError(f"no answer within {self._timeout_s:g} s") from exc
        except OSError as exc:
            raise DqliteError(_os_error(exc)) from exc
        try:
            yield _Session(reader, writer, self._timeout_s, tls=self._tls is not None)
        finally:
            writer.close()
            with contextlib.suppress(OSError, TimeoutError, ssl.SSLError):
                async with asyncio.timeout(self._timeout_s):
                    await writer.wait_closed()

    async def ask(self, address: str) -> tuple[wire.Node | None, tuple[wire.Node, ...]]:
        """(the leader this member knows, or None; its raft configuration)."""
        async with self._session(address) as session:
            leader = await session.call(wire.leader_request(), wire.decode_leader)
            members = await session.call(wire.cluster_request(), wire.decode_cluster)
        return leader, members

    async def describe(self, address: str) -> wire.Metadata:
        async with self._session(address) as session:
            return await session.call(wire.describe_request(), wire.decode_describe)

    async def view(self, candidates: Sequence[str]) -> wire.LiveView:
        """The leader and its configuration, asking `candidates` in order (local first)."""
        order = list(dict.fromkeys(candidates))
        errors: dict[str, str] = {}
        answers: dict[str, tuple[wire.Node | None, tuple[wire.Node, ...]]] = {}
        tls_failed: list[str] = []
        for batch in (order[:1], order[1:]):
            tls_failed += await self._ask_all(batch, answers, errors)
            found = await self._leader(answers, errors)
            if found is not None:
                leader, members = found
                metadata = await self._describe_all(members, errors)
                return wire.LiveView(leader, members, metadata, errors)
        if not answers and tls_failed:
            return wire.LiveView(errors=errors, unusable=errors[tls_failed[0]])
        for address, (named, _) in answers.items():
            cause = f"says {named.address} leads" if named is not None else "knows no leader"
            errors.setdefault(address, cause)
        members = next((m for _, m in answers.values() if m), ())
        metadata = await self._describe_all(members, errors)
        causes = "; ".join(f"{a}: {e}" for a, e in errors.items())
        return wire.LiveView(None, members, metadata, errors, f"{NO_LEADER} ({causes})")

    async def _ask_all(
        self,
        batch: Sequence[str],
        answers: dict[str, tuple[wire.Node | None, tuple[wire.Node, ...]]],
        errors: dict[str, str],
    ) -> list[str]:
        """Ask a batch at once; returns the addresses whose TLS layer failed."""
        results = await asyncio.gather(*(_try(self.ask(a)) for a in batch))
        tls_failed = []
        for address, result in zip(batch, results, strict=True):
            if isinstance(result, DqliteError):
                errors[address] = str(result)
                if result.tls:
                    tls_failed.append(address)
            else:
                answers[address] = result
        return tls_failed

    async def _leader(
        self,
        answers: dict[str, tuple[wire.Node | None, tuple[wire.Node, ...]]],
        errors: dict[str, str],
    ) -> tuple[wire.Node, tuple[wire.Node, ...]] | None:
        """The leader that confirms itself, asking the named ones not asked yet."""
        named = []
        for address, (leader, members) in answers.items():
            if leader is not None and leader.address == address:
                return leader, members
            if leader is not None:
                named.append(leader.address)
        for address in dict.fromkeys(named):
            if address in answers or address in errors:
                continue
            result = await _try(self.ask(address))
            if isinstance(result, DqliteError):
                errors[address] = f"named leader, but {result}"
                continue
            answers[address] = result
            if result[0] is not None and result[0].address == address:
                return result[0], result[1]
            errors[address] = "named leader, but it is not the leader"
        return None

    async def _describe_all(
        self, members: Sequence[wire.Node], errors: dict[str, str]
    ) -> dict[str, wire.Metadata]:
        addresses = [m.address for m in members]
        results = await asyncio.gather(*(_try(self.describe(a)) for a in addresses))
        metadata = {}
        for address, result in zip(addresses, results, strict=True):
            if isinstance(result, DqliteError):
                errors.setdefault(address, str(result))
            else:
                metadata[address] = result
        return metadata


def _os_error(exc: OSError) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return exc.strerror or str(exc) or type(exc).__name__


async def _try(call: Awaitable[T]) -> T | DqliteError:
    """The call's result, or its error as a value (one member's failure is an answer too)."""
    try:
        return await call
    except DqliteError as exc:
        return exc


class _Session:
    """One handshaken connection: requests one at a time (the server allows no pipelining)."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        timeout_s: float,
        *,
        tls: bool,
    ) -> None:
        self._tls = tls
        self._reader = reader
        self._writer = writer
        self._timeout_s = timeout_s

    async def call(self, request: bytes, decode: Callable[[int, bytes], T]) -> T:
        """Send one request and decode its answer. Raises DqliteError."""
        try:
            async with asyncio.timeout(self._timeout_s):
                self._writer.write(request)
                await self._writer.drain()
                size, mtype = wire.parse_header(await self._reader.readexactly(wire.HEADER_SIZE))
                return decode(mtype, await self._reader.readexactly(size))
        except TimeoutError as exc:
            raise DqliteError(f"no answer within {self._timeout_s:g} s") from exc
        except asyncio.IncompleteReadError as exc:
            # A TLS server that refuses our certificate closes the connection just like this.
            raise DqliteError("connection closed before the answer", tls=self._tls) from exc
        except ssl.SSLError as exc:
            raise DqliteError(f"TLS failed: {exc.reason or exc}", tls=True) from exc
        except OSError as exc:
            raise DqliteError(_os_error(exc)) from exc
        except (wire.WireError, wire.DqliteFailure) as exc:
            raise DqliteError(str(exc)) from exc
