"""Probes against real listeners on loopback addresses (real ports 16443/25000, as root)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from aiohttp import web

from agent.ha import probes
from agent.ha.membership import Member
from agent.ha.quorum import MemberProbe
from tests.cluster_fakes import FakeMember, loopback_block, self_signed


@pytest.fixture
def block() -> str:
    return loopback_block()


async def test_probe_all_sees_each_listener(tmp_path: Path, block: str) -> None:
    tls = self_signed(tmp_path)
    full = await FakeMember(f"{block}.2", tls).start()
    only_dqlite = FakeMember(f"{block}.3", tls)
    await only_dqlite.start_dqlite()
    try:
        members = [
            Member(full.address, "voter"),
            Member(only_dqlite.address, "voter"),
            Member(f"{block}.4:19001", "voter"),
        ]
        found = await probes.probe_all(members, timeout_s=1.0)
    finally:
        await full.stop()
        await only_dqlite.stop()
    assert found == {
        full.address: MemberProbe(dqlite=True, apiserver=True, cluster_agent=True),
        only_dqlite.address: MemberProbe(dqlite=True, apiserver=False, cluster_agent=False),
        f"{block}.4:19001": MemberProbe(dqlite=False, apiserver=False, cluster_agent=False),
    }


async def test_the_live_view_answers_for_the_raft_port(tmp_path: Path, block: str) -> None:
    """With the live view's answer the raft port is not dialled; the other probes still run."""
    full = await FakeMember(f"{block}.2", self_signed(tmp_path)).start()
    silent = f"{block}.4:19001"  # nothing listens there
    try:
        members = [Member(full.address, "voter"), Member(silent, "voter")]
        found = await probes.probe_all(members, 1.0, live={silent})
    finally:
        await full.stop()
    assert found == {
        full.address: MemberProbe(dqlite=False, apiserver=True, cluster_agent=True),
        silent: MemberProbe(dqlite=True, apiserver=False, cluster_agent=False),
    }


async def test_a_closed_dqlite_listener_is_seen_at_once(tmp_path: Path, block: str) -> None:
    member = await FakeMember(f"{block}.5", self_signed(tmp_path)).start()
    try:
        assert await probes.tcp_open(member.host, member.dqlite_port, 1.0)
        await member.stop_dqlite()
        assert not await probes.tcp_open(member.host, member.dqlite_port, 1.0)
    finally:
        await member.stop()


async def test_listed_port_is_the_one_dialled(tmp_path: Path, block: str) -> None:
    member = FakeMember(f"{block}.6", self_signed(tmp_path), dqlite_port=19011)
    await member.start_dqlite()
    try:
        found = await probes.probe_all(
            [Member(f"{block}.6:19011", "voter"), Member(f"{block}.6:19001", "voter")], 1.0
        )
    finally:
        await member.stop()
    assert found[f"{block}.6:19011"].dqlite is True
    assert found[f"{block}.6:19001"].dqlite is False


@pytest.mark.parametrize(
    ("status", "body"),
    [(200, '{"status":"BROKEN"}'), (500, '{"error":"x"}'), (200, "not json")],
)
async def test_cluster_agent_must_say_ok(
    tmp_path: Path, block: str, status: int, body: str
) -> None:
    async def health(_request: web.Request) -> web.Response:
        return web.Response(status=status, text=body)

    app = web.Application()
    app.router.add_get("/health", health)
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    await web.TCPSite(runner, f"{block}.7", 25000, ssl_context=self_signed(tmp_path)).start()
    try:
        found = await probes.probe_all([Member(f"{block}.7:19001", "voter")], 1.0)
    finally:
        await runner.cleanup()
    assert found[f"{block}.7:19001"].cluster_agent is False


async def test_a_silent_port_25000_times_out(block: str) -> None:
    # Accepts and never answers the TLS handshake: the probe must give up at its timeout.
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, f"{block}.8", 25000)
    try:
        found = await probes.probe_all([Member(f"{block}.8:19001", "voter")], 0.5)
    finally:
        for writer in held:
            writer.close()
        server.close()
        await server.wait_closed()
    assert held
    assert found[f"{block}.8:19001"].cluster_agent is False


def test_local_hosts_include_loopback() -> None:
    assert "127.0.0.1" in probes.local_hosts()
