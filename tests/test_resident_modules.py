"""What the running daemon keeps resident: each library only once the node's configuration or a
request needs it (docs/performance.md). A real `edge-agent run` process dumps sys.modules on
SIGUSR1 through bench/footprint.py's launcher, after its HTTP endpoint answers (wiring is done).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.commands import signing
from bench.footprint import LAUNCHER
from tests.conftest import Broker, agent_config, free_port
from tests.paths import REPO

NEVER = ("kubernetes_asyncio", "cryptography", "agent.operator", "agent.platform.snap_configure")


class Daemon:
    def __init__(self, config: Path, workdir: Path, http_port: int) -> None:
        self.dump = workdir / "modules.txt"
        self.base = f"http://127.0.0.1:{http_port}"
        argv = [sys.executable, "-c", LAUNCHER, str(self.dump), "run", "--config", str(config)]
        with (workdir / "agent.log").open("wb") as log:
            self.process = subprocess.Popen(argv, cwd=REPO, stdout=log, stderr=subprocess.STDOUT)

    def get(self, path: str, timeout_s: float = 60.0) -> bytes:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                with urllib.request.urlopen(self.base + path, timeout=5) as response:  # noqa: S310
                    body: bytes = response.read()
                    return body
            except OSError:
                if time.monotonic() > deadline or self.process.poll() is not None:
                    raise
                time.sleep(0.2)

    def modules(self) -> set[str]:
        self.dump.unlink(missing_ok=True)
        self.process.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while not (self.dump.exists() and self.dump.stat().st_size):
            assert time.monotonic() < deadline, "no module dump"
            time.sleep(0.1)
        time.sleep(0.1)  # the file is written in one call; let it land
        return set(self.dump.read_text().split())


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for one in started:
        one.process.kill()
        one.process.wait(10)


def loaded(modules: set[str], family: str) -> bool:
    return any(name == family or name.startswith(family + ".") for name in modules)


def test_a_minimal_node_loads_no_optional_library(
    tmp_path: Path, broker: Broker, daemon: list[Daemon]
) -> None:
    port = free_port()
    config = agent_config(tmp_path, broker, http_port=port)  # no MicroK8s, HA off, no keys
    daemon.append(agent := Daemon(config, tmp_path, port))
    assert json.loads(agent.get("/healthz"))["ok"] is True
    modules = agent.modules()
    optional = ("nacl", "prometheus_client", "agent.ha", "agent.microk8s.backends.snap")
    for family in (*NEVER, *optional, "agent.microk8s.backends.cli"):
        assert not loaded(modules, family), family
    # The first scrape brings prometheus_client in, and it stays for the next ones.
    assert b"edge_agent_mqtt_connected" in agent.get("/metrics")
    assert loaded(agent.modules(), "prometheus_client")


def test_an_ha_node_with_keys_loads_its_backend_and_ha_but_no_libsodium_before_a_signature(
    tmp_path: Path, broker: Broker, daemon: list[Daemon]
) -> None:
    _, public = signing.generate("ops-1", tmp_path)
    port = free_port()
    config = agent_config(
        tmp_path,
        broker,
        http_port=port,
        commands={"trusted_keys": [str(public)]},
        ha={"enabled": True},
        microk8s={"backend": "snap", "snapd_socket": str(tmp_path / "none.socket")},
    )
    daemon.append(agent := Daemon(config, tmp_path, port))
    agent.get("/healthz")
    modules = agent.modules()
    assert loaded(modules, "agent.ha.monitor")
    assert loaded(modules, "agent.microk8s.backends.snap")
    assert not loaded(modules, "agent.microk8s.backends.cli")
    for family in (*NEVER, "nacl", "prometheus_client"):
        assert not loaded(modules, family), family


def test_aiohttp_is_imported_without_the_system_ca_bundle(tmp_path: Path) -> None:
    # What `edge-agent run` does before wiring; then a context built later still trusts the
    # system CAs (the variable is restored), and aiohttp's own verifying one holds none.
    # Likewise aiohttp.web's import does not load /etc/mime.types (Debian's names .deb).
    code = (
        "import json, mimetypes, os, ssl, sys\n"
        "files = list(mimetypes.knownfiles)\n"
        "from agent import cli, config\n"
        f"settings = config.load(None, {{'EDGE_AGENT_STATE_DIR': {str(tmp_path)!r}}})\n"
        "before = os.environ.get('SSL_CERT_FILE')\n"
        "with cli._lean_imports():\n"
        "    from agent import app\n"
        "    app.preload(settings)\n"
        "import aiohttp.connector\n"
        "restored = before == os.environ.get('SSL_CERT_FILE') and files == mimetypes.knownfiles\n"
        "assert mimetypes.inited\n"  # aiohttp.web did initialise the tables, without the files
        "restored = restored and '.deb' not in mimetypes.types_map\n"
        "stores = [aiohttp.connector._SSL_CONTEXT_VERIFIED, ssl.create_default_context()]\n"
        "print(json.dumps([*(c.cert_store_stats() for c in stores), restored]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True
    )
    aiohttp_store, later_store, restored = json.loads(done.stdout)
    assert aiohttp_store["x509_ca"] == 0
    assert restored is True
    if Path("/etc/ssl/certs/ca-certificates.crt").exists():  # Debian/Ubuntu's bundle
        assert later_store["x509_ca"] > 0
