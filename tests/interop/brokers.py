"""Real brokers for the interop suite, each on free loopback ports under its own temp dir.

Mosquitto is the conftest `Broker`; RabbitMQ 3.10 (MQTT plugin) and NATS 2.9 (MQTT listener) are
the Debian packages, started with the configurations that docs/brokers.md prints. Each broker is
started once per test module and restarted in place by the reconnect test.

RabbitMQ runs as a private Erlang node: its own node name, cookie (HOME), config, enabled-plugins
file, mnesia and log dirs, and its own `epmd` on a free port, so neither the machine's RabbitMQ
(5672, epmd 4369) nor another test's node can collide with it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

import pytest

from tests.conftest import Broker, free_port, wait_port

RABBITMQ_SERVER = Path("/usr/lib/rabbitmq/bin/rabbitmq-server")
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
EPMD = shutil.which("epmd") or "/usr/bin/epmd"
# Boot takes 5-10 s on an idle machine and much longer on a loaded CI runner.
RABBITMQ_BOOT_S = 120.0
STOP_S = 30.0


class InteropBroker(Protocol):
    name: str
    host: str
    port: int

    def start(self) -> object: ...

    def stop(self) -> None: ...

    def close(self) -> None: ...


def rabbitmq_conf(port: int) -> str:
    return (
        "listeners.tcp = none\n"
        f"mqtt.listeners.tcp.default = 127.0.0.1:{port}\n"
        "mqtt.allow_anonymous = true\n"
        "loopback_users = none\n"
        "log.console = true\n"
        "log.console.level = warning\n"
        "log.file = false\n"
    )


def nats_conf(name: str, client_port: int, mqtt_port: int, store: Path) -> str:
    return (
        f'server_name: "{name}"\n'
        f'listen: "127.0.0.1:{client_port}"\n'
        f'jetstream {{ store_dir: "{store}" }}\n'
        f'mqtt {{ listen: "127.0.0.1:{mqtt_port}" }}\n'
    )


def _stop_group(process: subprocess.Popen[bytes] | None) -> None:
    """SIGTERM the process group (a broker's children with it), SIGKILL after STOP_S."""
    if process is None or process.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=STOP_S)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=5)


def _wait_up(process: subprocess.Popen[bytes], port: int, timeout_s: float, log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            break
        with contextlib.suppress(TimeoutError):
            wait_port("127.0.0.1", port, timeout_s=0.5)
            return
    tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
    _stop_group(process)
    pytest.fail(f"broker on port {port} did not start (exit {process.poll()}):\n{tail}")


class MosquittoBroker:
    name: str = "mosquitto"

    def __init__(self, workdir: Path) -> None:
        self._broker = Broker(workdir)
        self.host, self.port = self._broker.host, self._broker.port

    def start(self) -> MosquittoBroker:
        self._broker.start()
        return self

    def stop(self) -> None:
        self._broker.stop()

    def close(self) -> None:
        self._broker.kill()


class _ServerBroker:
    """A broker process of our own: its process group is started, stopped and restarted here."""

    def __init__(self, workdir: Path, log_name: str) -> None:
        self.host = "127.0.0.1"
        self.port = free_port()
        self.workdir = workdir
        self.log_path = workdir / log_name
        self._server: subprocess.Popen[bytes] | None = None

    def _launch(self, argv: list[str], boot_s: float, env: dict[str, str] | None = None) -> None:
        with self.log_path.open("ab") as log:
            self._server = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        _wait_up(self._server, self.port, boot_s, self.log_path)

    def stop(self) -> None:
        _stop_group(self._server)
        self._server = None
        wait_port(self.host, self.port, timeout_s=STOP_S, up=False)


class RabbitBroker(_ServerBroker):
    name: str = "rabbitmq"

    def __init__(self, workdir: Path) -> None:
        if not RABBITMQ_SERVER.exists():
            pytest.fail("rabbitmq-server is not installed: run `.ci/bootstrap.sh test`")
        super().__init__(workdir, "rabbitmq.log")
        self.epmd_port = free_port()
        self.node = f"edgetest{os.getpid()}p{self.port}@localhost"
        (workdir / "rabbitmq.conf").write_text(rabbitmq_conf(self.port))
        (workdir / "enabled_plugins").write_text("[rabbitmq_mqtt].\n")
        (workdir / "rabbitmq-env.conf").write_text("")
        self._epmd: subprocess.Popen[bytes] | None = None

    def _env(self) -> dict[str, str]:
        w = self.workdir
        return {
            **os.environ,
            "HOME": str(w),  # the Erlang cookie lives here
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_CONF_ENV_FILE": str(w / "rabbitmq-env.conf"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_DIST_PORT": str(free_port()),
            "RABBITMQ_CONFIG_FILE": str(w / "rabbitmq.conf"),
            "RABBITMQ_ADVANCED_CONFIG_FILE": str(w / "advanced.config"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(w / "enabled_plugins"),
            "RABBITMQ_MNESIA_BASE": str(w / "mnesia"),
            "RABBITMQ_LOG_BASE": str(w / "log"),
            "RABBITMQ_PID_FILE": str(w / "rabbitmq.pid"),
            "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS": "-kernel inet_dist_use_interface {127,0,0,1}",
        }

    def start(self) -> RabbitBroker:
        env = self._env()
        if self._epmd is None:
            self._epmd = subprocess.Popen(
                [EPMD, "-port", str(self.epmd_port), "-address", "127.0.0.1"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            wait_port("127.0.0.1", self.epmd_port)
        try:
            self._launch([str(RABBITMQ_SERVER)], RABBITMQ_BOOT_S, env)
        except BaseException:  # pytest.fail included: leave no epmd behind
            self.close()
            raise
        return self

    def close(self) -> None:
        _stop_group(self._server)
        _stop_group(self._epmd)
        self._server = self._epmd = None


class NatsBroker(_ServerBroker):
    name: str = "nats"

    def __init__(self, workdir: Path) -> None:
        if not Path(NATS_SERVER).exists():
            pytest.fail("nats-server is not installed: run `.ci/bootstrap.sh test`")
        super().__init__(workdir, "nats.log")
        self.conf = workdir / "nats.conf"
        name = f"edgetest-{os.getpid()}-{self.port}"
        self.conf.write_text(nats_conf(name, free_port(), self.port, workdir / "jetstream"))

    def start(self) -> NatsBroker:
        self._launch([NATS_SERVER, "-c", str(self.conf)], 30.0)
        return self

    def close(self) -> None:
        self.stop()


PROTOCOLS = {"mosquitto": (5, 3), "rabbitmq": (3,), "nats": (3,)}
"""MQTT versions each broker accepts (3 = 3.1.1), as packaged in Debian bookworm."""
KINDS: dict[str, Callable[[Path], InteropBroker]] = {
    "mosquitto": MosquittoBroker,
    "rabbitmq": RabbitBroker,
    "nats": NatsBroker,
}
