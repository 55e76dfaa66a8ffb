"""The agent run in-process: HTTP endpoint over real TCP, MQTT 3.1.1, password and TLS brokers."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import aiohttp
import pytest

from agent import config as config_mod
from tests.conftest import Broker, agent_config, free_port, running_agent, watch

pytestmark = pytest.mark.broker

STATE = "microk8s/lab/nodes/test-node/state"
HEALTH = "microk8s/lab/nodes/test-node/health"


async def test_endpoint_over_tcp(tmp_path: Path, broker: Broker) -> None:
    port = free_port()
    async with (
        watch(broker, HEALTH) as w,
        running_agent(agent_config(tmp_path, broker, http_port=port)),
    ):
        await w.wait_for(lambda t, p: t == HEALTH)
        base = f"http://127.0.0.1:{port}"
        async with aiohttp.ClientSession() as http:
            await _until_ready(http, base)
            async with http.get(f"{base}/healthz") as response:
                assert response.status == 200
                assert (await response.json())["ok"] is True
            async with http.get(f"{base}/status") as response:
                body = await response.json()
            assert body["node"] == "test-node"
            assert body["connection"]["connected"] is True
            assert body["health"]["schema"] == 1
            assert body["health"]["agent"]["mqtt_dropped"] == 0
            async with http.get(f"{base}/metrics") as response:
                assert response.status == 200
                assert response.headers["Content-Type"].startswith("text/plain")
                text = await response.text()
            for name in (
                "edge_agent_mqtt_connected 1.0",
                "edge_agent_mqtt_messages_published_total",
                "edge_agent_mqtt_reconnects_total 0.0",
                "edge_agent_mqtt_messages_dropped_total 0.0",
                "edge_agent_health_collection_seconds_bucket",
                'edge_agent_health_status{status="',
                "edge_agent_memory_percent",
                "edge_agent_rss_bytes",
            ):
                assert name in text, name


async def _until_ready(http: aiohttp.ClientSession, base: str) -> None:
    for _ in range(400):
        with contextlib.suppress(aiohttp.ClientError):
            async with http.get(f"{base}/readyz") as response:
                if response.status == 200:
                    return
        await asyncio.sleep(0.05)
    raise AssertionError("never ready")


async def test_endpoint_bound_to_loopback_by_default(tmp_path: Path, broker: Broker) -> None:
    settings = config_mod.load(agent_config(tmp_path, broker), {})
    assert settings.http.bind == "127.0.0.1"


async def test_mqtt_311_option(tmp_path: Path, broker: Broker) -> None:
    path = agent_config(tmp_path, broker, mqtt={"protocol": 3})
    async with watch(broker, STATE, HEALTH) as w, running_agent(path):
        _, birth = await w.wait_for(lambda t, p: t == STATE and p["state"] == "online")
        _, sample = await w.wait_for(lambda t, p: t == HEALTH)
        assert sample["session"] == birth["session"]


async def test_password_file_authentication(tmp_path: Path, make_broker) -> None:
    passwd = tmp_path / "passwd"
    subprocess.run(["mosquitto_passwd", "-c", "-b", str(passwd), "pi", "s3cret"], check=True)
    broker = make_broker(f"allow_anonymous false\npassword_file {passwd}\n")
    secret = tmp_path / "mqtt-password"
    secret.write_text("s3cret\n")
    good = agent_config(tmp_path, broker, mqtt={"username": "pi", "password_file": str(secret)})
    async with (
        watch(broker, STATE, username="pi", password="s3cret") as w,
        running_agent(good) as agent,
    ):
        await w.wait_for(lambda t, p: t == STATE and p["state"] == "online")
        assert agent.link.connected
    secret.write_text("wrong\n")
    async with running_agent(good) as agent:
        await asyncio.sleep(1.0)
        assert not agent.link.connected
        assert agent.link.last_error


async def test_tls_with_client_certificate(tmp_path: Path, make_broker) -> None:
    pki = make_pki(tmp_path / "pki")
    broker = make_broker(
        f"cafile {pki / 'ca.crt'}\ncertfile {pki / 'server.crt'}\nkeyfile {pki / 'server.key'}\n"
        "require_certificate true\nuse_identity_as_username true\n"
    )
    path = agent_config(
        tmp_path,
        broker,
        mqtt={
            "tls": True,
            "ca_file": str(pki / "ca.crt"),
            "cert_file": str(pki / "client.crt"),
            "key_file": str(pki / "client.key"),
        },
    )
    async with running_agent(path) as agent:
        for _ in range(100):
            if agent.link.connected:
                break
            await asyncio.sleep(0.05)
        assert agent.link.connected, agent.link.last_error


def make_pki(directory: Path) -> Path:
    """A throwaway CA, a server certificate for 127.0.0.1 and a client certificate (EC keys)."""
    directory.mkdir()

    def run(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    ec = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")
    run(
        "req",
        "-x509",
        *ec,
        "-keyout",
        "ca.key",
        "-out",
        "ca.crt",
        "-days",
        "2",
        "-subj",
        "/CN=test CA",
    )
    (directory / "server.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    (directory / "client.ext").write_text("extendedKeyUsage=clientAuth\n")
    for name, subject in (("server", "/CN=localhost"), ("client", "/CN=test-node")):
        run("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject)
        run(
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            f"{name}.crt",
            "-days",
            "2",
            "-extfile",
            f"{name}.ext",
        )
    return directory
