"""Liveness probes of dqlite members: TCP to raft and API server ports, the cluster agent's /health.

The member list says who should be there, not who is (MICROK8S.md §2.4), so every round dials
each member concurrently, each attempt bounded by `ha.probe_timeout_s`: the dqlite address as
listed (raft speaks TLS with a client certificate, so a TCP connect is all an outsider can check),
the API server port 16443 on the member's IP, and the cluster agent's unauthenticated
`GET https://<ip>:25000/health` (MicroK8s' self-signed certificate, so unverified). The only
module besides the Kubernetes client that speaks HTTP to MicroK8s; aiohttp stays in here.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Collection, Iterable

import aiohttp
import psutil

from agent.ha.membership import Member
from agent.ha.quorum import MemberProbe

APISERVER_PORT = 16443
CLUSTER_AGENT_PORT = 25000


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


async def tcp_open(host: str, port: int, timeout_s: float) -> bool:
    """True when a TCP connection to host:port completes within timeout_s."""
    try:
        async with asyncio.timeout(timeout_s):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(timeout_s):
            await writer.wait_closed()
    return True


async def cluster_agent_ok(session: aiohttp.ClientSession, host: str, timeout_s: float) -> bool:
    """True when the cluster agent on host answers /health with `{"status": "OK"}`."""
    url = f"https://{_url_host(host)}:{CLUSTER_AGENT_PORT}/health"
    try:
        async with (
            asyncio.timeout(timeout_s),
            session.get(url, ssl=False, allow_redirects=False) as response,
        ):
            if response.status != 200:
                return False
            body = await response.json(content_type=None)
    except (aiohttp.ClientError, TimeoutError, ValueError):
        return False
    return isinstance(body, dict) and str(body.get("status", "")).upper() == "OK"


async def probe_member(
    session: aiohttp.ClientSession, member: Member, timeout_s: float, dqlite: bool | None = None
) -> MemberProbe:
    """The three probes; `dqlite` given (the live view's answer) replaces the raft port's."""
    raft = tcp_open(member.host, member.port, timeout_s) if dqlite is None else _known(dqlite)
    dqlite_ok, apiserver, agent = await asyncio.gather(
        raft,
        tcp_open(member.host, APISERVER_PORT, timeout_s),
        cluster_agent_ok(session, member.host, timeout_s),
    )
    return MemberProbe(dqlite=dqlite_ok, apiserver=apiserver, cluster_agent=agent)


async def _known(value: bool) -> bool:
    return value


async def probe_all(
    members: Iterable[Member], timeout_s: float, live: Collection[str] | None = None
) -> dict[str, MemberProbe]:
    """Probe every member at once; the round takes about timeout_s at worst. Never raises.

    `live`: the addresses that answered over the dqlite wire protocol this round, when the live
    view answered. A dqlite round trip beats a TCP connect (a hung dqlite still accepts
    connections), so then the raft port is not dialled: one connection less per member a round.
    """
    listed = list(members)
    if not listed:
        return {}
    connector = aiohttp.TCPConnector(ssl=False, force_close=True, limit=0)
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        results = await asyncio.gather(
            *(
                probe_member(session, m, timeout_s, None if live is None else m.address in live)
                for m in listed
            )
        )
    return {m.address: r for m, r in zip(listed, results, strict=True)}


def local_hosts() -> set[str]:
    """This host's IP addresses (to find itself among members when info.yaml is unreadable).

    Blocking (reads the interface table): call it through `asyncio.to_thread`.
    """
    try:
        interfaces = psutil.net_if_addrs()
    except OSError:
        return set()
    return {
        address.address.split("%")[0]
        for entries in interfaces.values()
        for address in entries
        if address.family in (socket.AF_INET, socket.AF_INET6)
    }
