"""The dashboard server over real TCP against a real mosquitto: page, snapshot, events, tokens."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import aiomqtt
import pytest

from agent import cli
from agent.operator.dashboard import server
from agent.settings import MqttSettings
from tests.conftest import Broker, free_port, wait_port

pytestmark = pytest.mark.broker

BASE = "microk8s/lab/nodes"
TOKEN = "s3cret-token-for-tests"


@contextlib.asynccontextmanager
async def dashboard(
    broker: Broker, token: str | None = None, protocol: int = 5, cluster: str = "lab"
) -> AsyncIterator[str]:
    """The dashboard in-process on a free port; yields its base URL."""
    options = server.DashboardOptions(port=free_port(), token=token)
    mqtt = MqttSettings(host=broker.host, port=broker.port, keepalive_s=5, protocol=protocol)
    task = asyncio.create_task(server.serve(mqtt, cluster, options, "dashboard-test"))
    try:
        await asyncio.to_thread(wait_port, "127.0.0.1", options.port, 10)
        yield f"http://127.0.0.1:{options.port}"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def retain(broker: Broker, *messages: tuple[str, bytes]) -> None:
    async with aiomqtt.Client(broker.host, broker.port) as client:
        for topic, payload in messages:
            await client.publish(topic, payload, qos=1, retain=True)


async def fleet_when(base: str, check: Any, timeout_s: float = 10) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session:
        deadline = asyncio.get_running_loop().time() + timeout_s
        while True:
            async with session.get(f"{base}/api/fleet") as answer:
                body: dict[str, Any] = await answer.json()
            if check(body) or asyncio.get_running_loop().time() > deadline:
                return body
            await asyncio.sleep(0.1)


def state(session: int = 1) -> bytes:
    return json.dumps(
        {"state": "online", "session": session, "ts": 1, "agent_version": "0.1.0"}
    ).encode()


async def test_untrusted_retained_messages_never_break_the_view(broker: Broker) -> None:
    """MQTT 5 by default (p5 in mosquitto's log), so the broker enforces our packet size."""
    await retain(
        broker,
        (f"{BASE}/pi-01/state", state()),
        (f"{BASE}/pi-01/health", json.dumps({"status": "degraded", "reasons": ["hot"]}).encode()),
        (f"{BASE}/pi-02/state", b"{not json"),
        (f"{BASE}/pi-02/health", b"\x00\xff" * 10),
        (f"{BASE}/pi-03/health", json.dumps({"status": "ok", "pad": "x" * 300_000}).encode()),
        (f"{BASE}/<img src=x>/state", state()),
    )
    async with dashboard(broker) as base:
        body = await fleet_when(base, lambda b: b["broker"]["connected"] and b["nodes"])
        await asyncio.sleep(0.5)  # let every retained message arrive
        body = await fleet_when(base, lambda b: True)
    assert [row["name"] for row in body["nodes"]] == ["pi-01"]
    assert body["nodes"][0]["health"]["status"] == "degraded"
    # The bad JSON, the binary and the hostile name are counted; the 300 kB message never
    # reaches us at all (MQTT 5 Maximum Packet Size: the broker drops it).
    assert body["ignored_messages"] == 3
    assert "as dashboard-test (p5," in broker.log_path.read_text()


async def test_mqtt_311_broker(broker: Broker) -> None:
    """`--protocol 3`: the watcher speaks MQTT 3.1.1 (no packet size to ask; the view bounds)."""
    await retain(broker, (f"{BASE}/pi-01/state", state()))
    async with dashboard(broker, protocol=3) as base:
        body = await fleet_when(base, lambda b: b["nodes"])
    assert body["nodes"][0]["presence"] == "online"
    # mosquitto logs the protocol of each client: p2 is MQTT 3.1.1, p5 is MQTT 5.
    assert "as dashboard-test (p2," in broker.log_path.read_text()


async def test_page_is_self_contained_with_a_strict_policy(broker: Broker) -> None:
    async with dashboard(broker) as base, aiohttp.ClientSession() as session:
        async with session.get(f"{base}/") as answer:
            assert answer.status == 200
            html = await answer.text()
            policy = answer.headers["Content-Security-Policy"]
            assert answer.headers["X-Content-Type-Options"] == "nosniff"
        async with session.post(f"{base}/api/fleet") as answer:
            assert answer.status == 405  # read-only: nothing but GET
    assert "default-src 'none'" in policy
    assert "unsafe-inline" not in policy
    assert len(re.findall(r"'sha256-[A-Za-z0-9+/=]+'", policy)) == 2
    assert "/*SCRIPT*/" not in html
    assert "/*STYLE*/" not in html
    assert "new EventSource" in html
    # Nothing is fetched from elsewhere: no external URL, no src/href to another origin.
    assert not re.search(r"https?://", html)
    assert not re.search(r"<(script|link|img)[^>]+(src|href)=", html)


async def read_event(stream: aiohttp.StreamReader) -> dict[str, Any]:
    """The next `fleet` event's JSON."""
    event = None
    while True:
        line = (await stream.readline()).decode().rstrip("\n")
        if line.startswith("event: "):
            event = line[7:]
        elif line.startswith("data: ") and event == "fleet":
            return dict(json.loads(line[6:]))


async def test_events_push_changes(broker: Broker) -> None:
    await retain(broker, (f"{BASE}/pi-01/state", state()))
    async with dashboard(broker) as base, aiohttp.ClientSession() as session:
        await fleet_when(base, lambda b: b["nodes"])
        async with session.get(f"{base}/events") as answer:
            assert answer.headers["Content-Type"] == "text/event-stream"
            first = await asyncio.wait_for(read_event(answer.content), 10)
            assert [row["presence"] for row in first["nodes"]] == ["online"]
            await retain(broker, (f"{BASE}/pi-01/state", b'{"state":"offline","session":1}'))

            async def lost() -> dict[str, Any]:
                while True:
                    body = await read_event(answer.content)
                    if body["nodes"][0]["presence"] == "lost":
                        return body

            body = await asyncio.wait_for(lost(), 10)
    assert body["nodes"][0]["stale"]


async def test_token_then_cookie(broker: Broker) -> None:
    async with dashboard(broker, token=TOKEN) as base:
        jar = aiohttp.CookieJar(unsafe=True)  # cookies for a bare IP address
        async with aiohttp.ClientSession(cookie_jar=jar) as session:
            async with session.get(f"{base}/api/fleet") as answer:
                assert answer.status == 401
                assert "token" in await answer.text()
            async with session.get(f"{base}/?token={TOKEN}", allow_redirects=False) as answer:
                assert answer.status == 303
                assert answer.headers["Location"] == "./"
                assert TOKEN not in answer.headers["Set-Cookie"]
                assert "HttpOnly" in answer.headers["Set-Cookie"]
            async with session.get(f"{base}/") as answer:
                assert answer.status == 200  # the cookie now
            async with session.get(f"{base}/events") as answer:
                assert answer.status == 200
        async with aiohttp.ClientSession() as session:
            bearer = {"Authorization": f"Bearer {TOKEN}"}
            async with session.get(f"{base}/api/fleet", headers=bearer) as answer:
                assert answer.status == 200
            async with session.get(f"{base}/?token=wrong-token-wrong", allow_redirects=False) as a:
                assert a.status == 401
            async with session.get(f"{base}/api/fleet?token={TOKEN}", allow_redirects=False) as a:
                assert a.status == 303
                assert a.headers["Location"] == "fleet"  # relative: works behind a path prefix


async def test_broker_outage_is_shown_and_healed(make_broker: Any) -> None:
    broker = make_broker()
    async with dashboard(broker) as base:
        await fleet_when(base, lambda b: b["broker"]["connected"])
        broker.kill()
        down = await fleet_when(base, lambda b: not b["broker"]["connected"])
        assert not down["broker"]["connected"]
        assert down["broker"]["error"]
        make_broker(port=broker.port)
        await retain(broker, (f"{BASE}/pi-09/state", state()))
        healed = await fleet_when(base, lambda b: b["broker"]["connected"] and b["nodes"], 30)
    assert [row["name"] for row in healed["nodes"]] == ["pi-09"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--bind", "0.0.0.0"], "give --token-file"),
        (["--bind", "192.168.1.5", "--token-file", "{weak}"], "at least 16 characters"),
        (["--token-file", "{missing}"], "cannot read"),
        (["--port", "70000"], "not a TCP port"),
        (["--cluster", "Bad Name"], "cluster"),
    ],
)
def test_unsafe_or_bad_options_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    weak = tmp_path / "weak"
    weak.write_text("short\n")
    argv = [a.format(weak=weak, missing=tmp_path / "missing") for a in args]
    env = {"EDGE_AGENT_OPERATOR_CONFIG": "", "XDG_CONFIG_HOME": str(tmp_path)}
    with pytest.MonkeyPatch.context() as patch:
        for key, value in env.items():
            patch.setenv(key, value)
        assert cli.main(["dashboard", *argv]) == 2
    assert message in capsys.readouterr().err
