"""Lab convenience for `edge-agent run --private-broker`: a private mosquitto when none listens.

Only the quick start uses this; production points `mqtt.host` at a real broker. It is
synchronous on purpose: it runs before the event loop starts.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from agent.errors import AgentError
from agent.settings import Settings

START_TIMEOUT_S = 5.0


class BrokerHandle:
    def __init__(
        self, process: subprocess.Popen[bytes], workdir: tempfile.TemporaryDirectory[str]
    ) -> None:
        self._process = process
        self._workdir = workdir

    def stop(self) -> None:
        self._process.terminate()
        try:
            self._process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._process.kill()
        self._workdir.cleanup()


def listening(host: str, port: int, timeout_s: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def _find_or_install_mosquitto() -> str:
    for candidate in (shutil.which("mosquitto"), "/usr/sbin/mosquitto"):
        if candidate and Path(candidate).is_file():
            return candidate
    apt = shutil.which("apt-get")
    if apt and os.geteuid() == 0:
        print("edge-agent: installing mosquitto with apt-get ...", file=sys.stderr)
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        subprocess.run([apt, "update", "-qq"], check=False, env=env)
        subprocess.run([apt, "install", "-y", "-qq", "mosquitto"], check=True, env=env)
        return "/usr/sbin/mosquitto"
    raise AgentError(
        "no broker listens and mosquitto is not installed: install it (apt-get install mosquitto)"
        " or point mqtt.host at a broker"
    )


def ensure(host: str, port: int) -> BrokerHandle | None:
    """Start a private mosquitto on host:port unless something already listens there."""
    if listening(host, port):
        return None
    binary = _find_or_install_mosquitto()
    workdir = tempfile.TemporaryDirectory(prefix="edge-agent-broker-")
    conf = Path(workdir.name) / "mosquitto.conf"
    conf.write_text(f"listener {port} {host}\nallow_anonymous true\npersistence false\n")
    process = subprocess.Popen(
        [binary, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if listening(host, port, 0.2):
            print(f"edge-agent: started a private mosquitto on {host}:{port}", file=sys.stderr)
            return BrokerHandle(process, workdir)
        time.sleep(0.05)
    process.kill()
    workdir.cleanup()
    raise AgentError(f"private mosquitto did not start on {host}:{port}")


def print_hints(settings: Settings) -> None:
    m, h = settings.mqtt, settings.http
    print(
        f"edge-agent: node {settings.node.name!r} reports to {m.host}:{m.port}\n"
        f"  watch it:   mosquitto_sub -h {m.host} -p {m.port} -v -t '{m.prefix}/#'\n"
        f"  health URL: http://{h.bind}:{h.port}/status  (also /healthz /readyz /metrics)\n"
        "  stop:       Ctrl-C",
        file=sys.stderr,
    )
