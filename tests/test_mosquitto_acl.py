"""The fleet broker of configs/mosquitto, for real: mosquitto with that config and an ACL made by
make-acl.sh on a free port, certificates made by configs/mosquitto/make-certs.sh.

Denials are shown by delivery to an operator subscribed to everything: a denied publish is sent
first and an allowed one after it on the same connection, so when the allowed one has arrived the
denied one would have too (Mosquitto keeps a client's QoS 1 messages in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests.conftest import Broker, agent_config, watch
from tests.paths import REPO

pytestmark = pytest.mark.broker

MOSQUITTO_DIR = REPO / "configs" / "mosquitto"
R1 = "microk8s/lab/nodes/pi-01"
R2 = "microk8s/lab/nodes/pi-02"
R7 = "microk8s/other/nodes/pi-07"
ACL_ARGS = ("cluster=lab", "pi-01", "pi-02", "cluster=other", "pi-07", "--operator", "admin")


def make_certs(directory: Path, *names: str) -> Path:
    subprocess.run(
        [str(MOSQUITTO_DIR / "make-certs.sh"), str(directory), "localhost", *names],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return directory


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_certs(
        tmp_path_factory.mktemp("pki"), "pi-01", "pi-02", "pi-07", "--operator", "admin", "observer"
    )


def make_acl(*args: str) -> str:
    return subprocess.run(
        [str(MOSQUITTO_DIR / "make-acl.sh"), *args],
        check=True,
        capture_output=True,
        text=True,
        timeout=30,
    ).stdout


def test_the_shipped_acl_is_what_make_acl_prints() -> None:
    shipped = (MOSQUITTO_DIR / "edge-agent.acl").read_text()
    made = make_acl("cluster=lab", "pi-01", "pi-02", "pi-03", "--operator", "admin")
    rules = [line for line in shipped.splitlines() if line and not line.startswith("#")]
    assert rules == [line for line in made.splitlines() if line and not line.startswith("#")]


class FleetBroker(Broker):
    """Mosquitto running configs/mosquitto/edge-agent.conf, with paths and port for this test."""

    def __init__(self, workdir: Path, pki: Path) -> None:
        super().__init__(workdir)
        self.pki = pki

    def config_text(self) -> str:
        text = (MOSQUITTO_DIR / "edge-agent.conf").read_text()
        acl = self.workdir / f"edge-agent-{self.port}.acl"
        # Two clusters, and an `observer` operator so a test can watch while `admin` acts
        # (use_username_as_clientid: one session per certificate).
        acl.write_text(make_acl(*ACL_ARGS, "observer"))
        replacements = {
            "listener 8883": f"listener {self.port} {self.host}",
            "/etc/mosquitto/certs": str(self.pki),
            "acl_file /etc/mosquitto/edge-agent.acl": f"acl_file {acl}",
        }
        for old, new in replacements.items():
            assert old in text, old
            text = text.replace(old, new)
        # Tests only: no disk persistence, and stay root to read the tmp files.
        return text + "persistence false\nuser root\n"


@pytest.fixture
def fleet(tmp_path: Path, pki: Path) -> Iterator[FleetBroker]:
    broker = FleetBroker(tmp_path, pki)
    broker.start()
    yield broker
    broker.kill()


def tls(pki: Path, cert: str | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki / "ca.crt"))
    if cert is not None:
        context.load_cert_chain(pki / f"{cert}.crt", pki / f"{cert}.key")
    return context


def as_client(pki: Path, cert: str | None, name: str) -> dict[str, Any]:
    return {
        "identifier": name,
        "protocol": aiomqtt.ProtocolVersion.V5,
        "tls_context": tls(pki, cert),
    }


@contextlib.asynccontextmanager
async def client(broker: Broker, pki: Path, cert: str | None) -> AsyncIterator[aiomqtt.Client]:
    async with aiomqtt.Client(
        broker.host, broker.port, **as_client(pki, cert, f"test-{cert}")
    ) as connected:
        yield connected


async def test_a_node_publishes_only_under_its_own_name(fleet: FleetBroker, pki: Path) -> None:
    operator = as_client(pki, "operators/observer", "observer")
    async with (
        watch(fleet, "microk8s/#", **operator) as ops,
        client(fleet, pki, "nodes/pi-01") as n1,
    ):
        await n1.publish(f"{R2}/state", b'{"state":"online"}', qos=1)
        await n1.publish(f"{R1}/cmd", b"self-command", qos=1)
        await n1.publish(f"{R1}/state", b'{"state":"online"}', qos=1)
        await ops.wait_for(lambda t, p: t == f"{R1}/state")
    topics = [topic for topic, _, _ in ops.messages]
    assert f"{R2}/state" not in topics
    assert topics.count(f"{R1}/state") == 1


async def test_an_operator_cannot_impersonate_a_node(fleet: FleetBroker, pki: Path) -> None:
    operator = as_client(pki, "operators/observer", "observer")
    async with (
        watch(fleet, "microk8s/#", **operator) as ops,
        client(fleet, pki, "operators/admin") as op,
    ):
        await op.publish(f"{R1}/state", b'{"state":"offline"}', qos=1)
        await op.publish("microk8s/lab/rollout", b'{"state":"running"}', qos=1)
        await op.publish(f"{R1}/cmd", b"barrier", qos=1)
        await ops.wait_for(lambda t, p: t == f"{R1}/cmd")
    # An operator writes commands and the rollout report (fleet upgrade), never a node's topics.
    assert [t for t, _, _ in ops.messages] == ["microk8s/lab/rollout", f"{R1}/cmd"]


async def test_a_node_reads_its_own_commands_and_its_peers_reports(
    fleet: FleetBroker, pki: Path
) -> None:
    async with client(fleet, pki, "nodes/pi-02") as n2:
        await n2.publish(f"{R2}/state", b'{"state":"online","session":3}', qos=1, retain=True)
        await n2.publish(f"{R2}/health", b'{"status":"ok"}', qos=1, retain=True)
    node = as_client(pki, "nodes/pi-01", "pi-01")
    filters = (f"{R2}/cmd", f"{R1}/cmd", f"{R2}/state", f"{R2}/health")
    async with watch(fleet, *filters, **node) as n1, client(fleet, pki, "operators/admin") as op:
        await n1.wait_for(lambda t, p: t == f"{R2}/state")
        await op.publish(f"{R2}/cmd", b"for-pi-02", qos=1)
        await op.publish(f"{R1}/cmd", b"for-pi-01", qos=1)
        await n1.wait_for(lambda t, p: t == f"{R1}/cmd")
    received = {topic: payload for topic, payload, _ in n1.messages}
    assert received[f"{R1}/cmd"] == b"for-pi-01"
    assert f"{R2}/cmd" not in received
    # Peers' health feeds failover readiness (voters' risk flags) and the clock offset.
    assert received[f"{R2}/health"] == {"status": "ok"}


async def test_a_node_is_pinned_to_its_own_cluster(fleet: FleetBroker, pki: Path) -> None:
    # Issue 11, finding 4: the `+` cluster level let a node write (and read) under every cluster.
    async with client(fleet, pki, "nodes/pi-07") as n7:
        await n7.publish(f"{R7}/state", b'{"state":"online","session":1}', qos=1, retain=True)
    observer = as_client(pki, "operators/observer", "observer")
    node = as_client(pki, "nodes/pi-01", "pi-01")
    async with (
        watch(fleet, "microk8s/#", **observer) as ops,
        watch(fleet, "microk8s/+/nodes/+/state", **node) as n1,
    ):
        await ops.wait_for(lambda t, p: t == f"{R7}/state")
        # One connection (one session per certificate): it writes and watches.
        await n1.publish("microk8s/other/nodes/pi-01/state", b"forged", qos=1)
        await n1.publish(f"{R1}/state", b'{"state":"online"}', qos=1)
        await ops.wait_for(lambda t, p: t == f"{R1}/state")
        await n1.wait_for(lambda t, p: t == f"{R1}/state")
    assert "microk8s/other/nodes/pi-01/state" not in [t for t, _, _ in ops.messages]
    assert f"{R7}/state" not in [t for t, _, _ in n1.messages]  # another cluster's presence


async def test_a_node_cannot_take_over_another_nodes_session(fleet: FleetBroker, pki: Path) -> None:
    # Issue 11, finding 4: connecting with pi-01's client id kicked pi-01 off the broker.
    observer = as_client(pki, "operators/observer", "observer")
    async with (
        watch(fleet, f"{R1}/#", **observer) as ops,
        aiomqtt.Client(
            fleet.host, fleet.port, **as_client(pki, "nodes/pi-01", "edge-agent-lab-pi-01")
        ) as n1,
    ):
        for attempt in range(3):
            async with aiomqtt.Client(
                fleet.host, fleet.port, **as_client(pki, "nodes/pi-02", "edge-agent-lab-pi-01")
            ):
                pass
            await n1.publish(f"{R1}/health", f"still-here-{attempt}".encode(), qos=1)
        await ops.wait_for(lambda t, p: p == b"still-here-2")


async def test_the_broker_refuses_oversized_packets(fleet: FleetBroker, pki: Path) -> None:
    observer = as_client(pki, "operators/observer", "observer")
    async with watch(fleet, f"{R1}/#", **observer) as ops:
        with pytest.raises(aiomqtt.MqttError):
            async with client(fleet, pki, "nodes/pi-01") as n1:
                await n1.publish(f"{R1}/health", b"x" * (1 << 20), qos=1, timeout=5)
                await n1.publish(f"{R1}/health", b"after", qos=1, timeout=5)
        async with client(fleet, pki, "nodes/pi-01") as n1:
            await n1.publish(f"{R1}/health", b"small", qos=1)
        await ops.wait_for(lambda t, p: p == b"small")
    assert all(len(p) < 1 << 20 for _, p, _ in ops.messages)


class Recorder(logging.Handler):
    """Collects paho's log lines: they carry the TLS alert that aiomqtt reports as a timeout."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


# What Mosquitto logs for each refusal (OpenSSL 3's reason strings).
BROKER_SAYS = {
    "CERTIFICATE_REQUIRED": "peer did not return a certificate",
    "UNKNOWN_CA": "certificate verify failed",
    "Connection reset": "wrong version number",
}


@pytest.mark.parametrize(
    ("how", "reason"),
    [
        ("no certificate", "CERTIFICATE_REQUIRED"),
        ("foreign CA", "UNKNOWN_CA"),
        ("plain TCP", "Connection reset"),
    ],
)
async def test_a_client_without_a_fleet_certificate_cannot_connect(
    fleet: FleetBroker, pki: Path, tmp_path: Path, how: str, reason: str
) -> None:
    recorder = Recorder()
    logger = logging.getLogger(f"test-intruder-{how}")
    logger.addHandler(recorder)
    logger.propagate = False
    kwargs: dict[str, Any] = {"identifier": "intruder", "protocol": aiomqtt.ProtocolVersion.V5}
    if how == "no certificate":
        kwargs["tls_context"] = tls(pki, None)
    elif how == "foreign CA":
        rogue = make_certs(tmp_path / "rogue", "pi-01")
        context = tls(pki, None)
        context.load_cert_chain(rogue / "nodes" / "pi-01.crt", rogue / "nodes" / "pi-01.key")
        kwargs["tls_context"] = context
    logged_before = fleet.log_path.stat().st_size
    with pytest.raises(aiomqtt.MqttError):
        async with aiomqtt.Client(fleet.host, fleet.port, timeout=2, logger=logger, **kwargs):
            pass
    # Under TLS 1.3 the broker checks a client certificate after the client's side of the
    # handshake is done, so the client sees the alert or, when the broker closes first, only a
    # reset; the broker's log says why every time.
    with fleet.log_path.open("rb") as log:
        log.seek(logged_before)
        broker_log = log.read().decode(errors="replace")
    client_saw = any(reason in line for line in recorder.lines)
    assert client_saw or BROKER_SAYS[reason] in broker_log, (recorder.lines, broker_log[-2000:])
    # The broker is up and takes fleet certificates: the refusal was about the certificate.
    async with client(fleet, pki, "nodes/pi-01"):
        pass


def pi01_config(tmp_path: Path, fleet: FleetBroker, certs: Path) -> Path:
    """Agent pi-01 of cluster lab over TLS, with the fleet CA and the certificate in `certs`."""
    return agent_config(
        tmp_path,
        fleet,
        node={"name": "pi-01", "cluster": "lab"},
        mqtt={
            "tls": True,
            "ca_file": str(fleet.pki / "ca.crt"),
            "cert_file": str(certs / "nodes" / "pi-01.crt"),
            "key_file": str(certs / "nodes" / "pi-01.key"),
        },
    )


async def test_the_agent_works_under_the_acl_and_answers_an_operator(
    tmp_path: Path, fleet: FleetBroker, pki: Path, spawn_agent
) -> None:
    config = pi01_config(tmp_path, fleet, pki)
    operator = as_client(pki, "operators/observer", "observer")
    async with watch(fleet, "microk8s/#", **operator) as ops:
        spawn_agent(config)
        await ops.wait_for(lambda t, p: t == f"{R1}/state" and p["state"] == "online", timeout_s=30)
        await ops.wait_for(lambda t, p: t == f"{R1}/health", timeout_s=30)
        operator_cli = [
            *("--broker", f"{fleet.host}:{fleet.port}", "--cluster", "lab"),
            *("--ca-file", str(pki / "ca.crt")),
            *("--cert-file", str(pki / "operators" / "admin.crt")),
            *("--key-file", str(pki / "operators" / "admin.key")),
        ]
        sent = subprocess.run(
            [
                sys.executable,
                "-m",
                "agent",
                "send",
                *operator_cli,
                "--timeout",
                "30",
                "pi-01",
                "status",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            cwd=REPO,
            check=False,
        )
        assert sent.returncode == 0, sent.stdout + sent.stderr
        assert "succeeded" in sent.stdout
        await ops.wait_for(
            lambda t, p: t.startswith(f"{R1}/cmd/") and p["status"] == "succeeded", timeout_s=30
        )


async def test_a_rejected_client_certificate_is_reported_as_such(
    tmp_path: Path, fleet: FleetBroker, spawn_agent: Any
) -> None:
    # Issue 11: the agent said "Operation timed out" when the broker refused its certificate.
    rogue = make_certs(tmp_path / "rogue", "pi-01")
    config = pi01_config(tmp_path, fleet, rogue)
    agent = spawn_agent(config)
    deadline = asyncio.get_running_loop().time() + 45
    errors: list[str] = []
    while not any("UNKNOWN_CA" in e for e in errors):
        assert asyncio.get_running_loop().time() < deadline, errors
        await asyncio.sleep(0.5)
        lines = agent.log_lines()
        errors = [e["error"] for e in lines if e.get("event") == "mqtt_connect_failed"]
    # Every failure says it was the TLS handshake; once the alert arrives in time, which one.
    assert all(e.startswith("TLS handshake refused by the broker") for e in errors), errors
