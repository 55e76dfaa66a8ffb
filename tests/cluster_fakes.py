"""A MicroK8s control-plane node at the socket boundary, for the HA tests.

Each fake member binds its own loopback address (127.a.b.c; Linux routes all of 127/8 to lo) on
the real port numbers: a TCP listener standing in for dqlite's raft port (the agent only connects,
as an outsider without the cluster certificate would), one for the API server on 16443, and the
cluster agent's HTTPS `GET /health` on 25000 answering the recorded fixture with a self-signed
certificate. Also writes the backend dir (cluster.yaml, info.yaml) each agent reads.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import random
import ssl
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tests.paths import FIXTURES

HEALTH_JSON = (FIXTURES / "cluster-agent" / "health.json").read_text()
READYZ_OK = (FIXTURES / "kube" / "readyz-verbose.txt").read_text()
READYZ_FAILED = (FIXTURES / "kube" / "readyz-etcd-failed.txt").read_text()
NODES_JSON = FIXTURES / "kube" / "nodes.json"
DQLITE_PORT = 19001


def loopback_block() -> str:
    """A random 127.a.b prefix, so concurrent tests do not fight over 127.0.0.x:16443."""
    return f"127.{random.randint(100, 250)}.{random.randint(1, 250)}"


def write_self_signed(
    cert_path: Path,
    key_path: Path,
    common_name: str,
    *,
    sans: list[x509.GeneralName] | None = None,
    days: float = 3650,
) -> None:
    """A throwaway self-signed certificate and its key (PEM), valid from yesterday for `days`."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=days))
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    cert = builder.sign(key, hashes.SHA256())
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )


def self_signed(tmp: Path) -> ssl.SSLContext:
    """An HTTPS server context with a throwaway certificate (the cluster agent's is self-signed)."""
    cert_path, key_path = tmp / "server.crt", tmp / "server.key"
    write_self_signed(cert_path, key_path, "127.0.0.1")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_path, key_path)
    return context


async def _accept_and_close(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    writer.close()


class FakeMember:
    """One control-plane node's listeners on its own loopback address."""

    def __init__(self, host: str, tls: ssl.SSLContext, *, dqlite_port: int = DQLITE_PORT) -> None:
        self.host = host
        self.dqlite_port = dqlite_port
        self._tls = tls
        self._servers: dict[str, asyncio.Server] = {}
        self._runner: web.AppRunner | None = None
        self.readyz_ok = True
        self.node_list: dict[str, Any] = {"kind": "NodeList", "items": []}

    @property
    def address(self) -> str:
        return f"{self.host}:{self.dqlite_port}"

    async def start(self) -> FakeMember:
        await self.start_dqlite()
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/readyz", self._readyz)
        app.router.add_get("/api/v1/nodes", self._nodes)
        self._runner = web.AppRunner(app, handle_signals=False, access_log=None)
        await self._runner.setup()
        # One HTTPS app on both ports: the cluster agent's /health on 25000, the API server's
        # /readyz and node list on 16443 (it never checks the token: the agent's side is tested).
        for port in (25000, 16443):
            await web.TCPSite(self._runner, self.host, port, ssl_context=self._tls).start()
        return self

    async def start_dqlite(self) -> None:
        self._servers["dqlite"] = await asyncio.start_server(
            _accept_and_close, self.host, self.dqlite_port
        )

    async def stop_dqlite(self) -> None:
        server = self._servers.pop("dqlite")
        server.close()
        await server.wait_closed()
        await asyncio.sleep(0.05)

    async def stop(self) -> None:
        for server in self._servers.values():
            server.close()
            await server.wait_closed()
        self._servers.clear()
        if self._runner is not None:
            await self._runner.cleanup()
        # Transports of the last accepted connections close on the next loop iterations; let
        # them run before the test's loop ends, or their sockets leak (ResourceWarning).
        await asyncio.sleep(0.05)

    async def _health(self, _request: web.Request) -> web.Response:
        return web.Response(text=HEALTH_JSON, content_type="application/json")

    async def _readyz(self, _request: web.Request) -> web.Response:
        if self.readyz_ok:
            return web.Response(text=READYZ_OK)
        return web.Response(status=500, text=READYZ_FAILED)

    async def _nodes(self, _request: web.Request) -> web.Response:
        return web.json_response(self.node_list)


def cluster_yaml(members: list[tuple[str, int]]) -> str:
    """go-dqlite YamlNodeStore text for (address, role) pairs, IDs as big as real ones."""
    lines = []
    for index, (address, role) in enumerate(members):
        lines += [
            f"- ID: {10676789520824011173 - index}",
            f"  Address: {address}",
            f"  Role: {role}",
        ]
    return "\n".join(lines) + "\n"


def write_backend_dir(
    path: Path, members: list[tuple[str, int]], own: tuple[str, int] | None
) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "cluster.yaml").write_text(cluster_yaml(members))
    if own is not None:
        (path / "info.yaml").write_text(f"Address: {own[0]}\nRole: {own[1]}\nID: 1\n")
    return path


def node_list(ips: dict[str, str]) -> dict[str, Any]:
    """The recorded NodeList with each named node's InternalIP replaced (name -> new IP)."""
    doc = json.loads(NODES_JSON.read_text())
    items = [item for item in doc["items"] if item["metadata"]["name"] in ips]
    for item in items:
        for address in item["status"]["addresses"]:
            if address["type"] == "InternalIP":
                address["address"] = ips[item["metadata"]["name"]]
    return {**doc, "items": items}


def kubeconfig(path: Path, server: str) -> Path:
    """An admin kubeconfig like MicroK8s' client.config (token auth), trusting any certificate."""
    path.mkdir(parents=True, exist_ok=True)
    config = path / "client.config"
    config.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: microk8s\n"
        f"clusters:\n- name: microk8s-cluster\n  cluster:\n    server: {server}\n"
        "    insecure-skip-tls-verify: true\n"
        "contexts:\n- name: microk8s\n  context: {cluster: microk8s-cluster, user: admin}\n"
        "users:\n- name: admin\n  user: {token: not-a-real-token}\n"
    )
    return config
