"""Peers of the side-by-side footprint bench: install them when missing, write their configs.

Kept apart from bench/peers.py so the orchestration reads top to bottom; nothing here measures.
Every peer is configured to publish (or be scraped) on loopback only, at the same 10 s interval
the agent uses, so the comparison is about the programs and not about their settings.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import subprocess
import sys
from pathlib import Path

APT_ENV = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
GLANCES_PACKAGES = ("glances==4.5.8", "paho-mqtt>=2.1", "certifi")
KUBE_PACKAGE = "kubernetes-asyncio>=31"
COLLECTD_PLUGINS = ("cpu", "memory", "load", "df", "interface")


@dataclasses.dataclass
class Peer:
    """One process to measure: how to start it and how to recognise its traffic."""

    name: str
    argv: list[str] = dataclasses.field(default_factory=list)
    env: dict[str, str] | None = None
    version: str = ""
    missing: str = ""  # non-empty: the reason this peer is not available
    topic_prefix: str = ""  # MQTT topics of this peer start with this
    command: tuple[str, bytes, str] | None = None  # (topic, payload, status topic) sent once
    silent: bool = False  # publishes nothing (the floor): no first sample to wait for


class Installer:
    """apt-get update at most once per run, then installs; failures become reasons, not raises."""

    def __init__(self, *, apt_allowed: bool = True) -> None:
        self.updated = False
        self.apt_allowed = apt_allowed

    def apt(self, packages: list[str]) -> str:
        if not self.apt_allowed:
            return f"not installed ({' '.join(packages)}) and --no-apt given"
        if shutil.which("apt-get") is None:
            return "apt-get not found"
        if not self.updated:
            self.updated = True
            print("peers: apt-get update", flush=True)
            reason = _run(["apt-get", "update", "-q"], APT_ENV, 600)
            if reason:
                return reason
        print(f"peers: apt-get install {' '.join(packages)}", flush=True)
        cmd = ["apt-get", "install", "-y", "-q", "--no-install-recommends", *packages]
        return _run(cmd, APT_ENV, 900)


def _run(argv: list[str], env: dict[str, str] | None, timeout: float) -> str:
    """Run an install step; the empty string on success, else the last line of its complaint."""
    try:
        done = subprocess.run(
            argv, env=env, capture_output=True, text=True, timeout=timeout, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{argv[0]}: {exc}"
    if done.returncode == 0:
        return ""
    lines = (done.stderr or done.stdout).strip().splitlines() or [f"exit {done.returncode}"]
    return f"{' '.join(argv[:2])}: {lines[-1]}"


def dpkg_version(*packages: str) -> str:
    dpkg_query = shutil.which("dpkg-query")
    for package in packages if dpkg_query else ():
        done = subprocess.run(
            [str(dpkg_query), "-W", "-f", "${Version}", package],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode == 0 and done.stdout.strip():
            return f"{package} {done.stdout.strip()}"
    return "unknown"


def collectd(installer: Installer, workdir: Path, port: int) -> Peer:
    peer = Peer("collectd (mqtt plugin)", topic_prefix="collectd/")
    binary = shutil.which("collectd") or "/usr/sbin/collectd"
    plugin = Path("/usr/lib/collectd/mqtt.so")
    if not (Path(binary).exists() and plugin.exists()):
        peer.missing = installer.apt(["collectd-core", "libmosquitto1"])
    if not peer.missing and not plugin.exists():
        peer.missing = f"{plugin} missing after install"
    if peer.missing:
        return peer
    conf = workdir / "collectd.conf"
    conf.write_text(collectd_conf(workdir, port))
    peer.argv = [binary, "-f", "-C", str(conf)]
    peer.version = dpkg_version("collectd-core", "collectd")
    return peer


def collectd_conf(workdir: Path, port: int) -> str:
    """cpu, memory, load, df, interface every 10 s, each value list one MQTT message."""
    plugins = "".join(f"LoadPlugin {name}\n" for name in COLLECTD_PLUGINS)
    return (
        f'Hostname "bench"\nFQDNLookup false\nBaseDir "{workdir / "collectd"}"\n'
        f'PIDFile "{workdir / "collectd.pid"}"\nPluginDir "/usr/lib/collectd"\n'
        'TypesDB "/usr/share/collectd/types.db"\nInterval 10\n'
        f'LoadPlugin logfile\n<Plugin logfile>\n  LogLevel "warning"\n'
        f'  File "{workdir / "collectd.log"}"\n</Plugin>\n{plugins}LoadPlugin mqtt\n'
        '<Plugin mqtt>\n  <Publish "bench">\n    Host "127.0.0.1"\n'
        f'    Port "{port}"\n    ClientId "collectd-bench"\n    Prefix "collectd"\n'
        "    QoS 0\n  </Publish>\n</Plugin>\n"
    )


def node_exporter(installer: Installer, http_port: int) -> Peer:
    peer = Peer("prometheus-node-exporter (scraped /10 s)")
    binary = shutil.which("prometheus-node-exporter")
    if binary is None:
        peer.missing = installer.apt(["prometheus-node-exporter"])
        binary = shutil.which("prometheus-node-exporter")
    if binary is None:
        peer.missing = peer.missing or "prometheus-node-exporter not on PATH after install"
        return peer
    peer.argv = [binary, f"--web.listen-address=127.0.0.1:{http_port}"]
    peer.version = dpkg_version("prometheus-node-exporter")
    return peer


def glances(cache: Path, workdir: Path, port: int) -> Peer:
    """glances in its own venv (it pins its own psutil); its MQTT export needs paho and certifi."""
    peer = Peer("glances --export mqtt", topic_prefix="glances/")
    venv = cache / "glances-venv"
    python = venv / "bin" / "python"
    probe = [str(python), "-c", "import glances, paho.mqtt.client, certifi"]
    if not python.exists() or subprocess.run(probe, capture_output=True, check=False).returncode:
        print(f"peers: creating {venv} and pip installing glances", flush=True)
        peer.missing = _run([sys.executable, "-m", "venv", "--clear", str(venv)], None, 300)
        if not peer.missing:
            pip = [str(python), "-m", "pip", "install", "-q", *GLANCES_PACKAGES]
            peer.missing = _run(pip, None, 900)
    if peer.missing:
        return peer
    conf = workdir / "glances.conf"
    conf.write_text(
        f"[mqtt]\nhost=127.0.0.1\nport={port}\ntls=false\nuser=bench\npassword=bench\n"
        "topic=glances\ndevicename=bench\ntopic_structure=per-metric\ncallback_api_version=2\n"
    )
    peer.argv = [str(venv / "bin" / "glances"), "-C", str(conf), "--export", "mqtt"]
    peer.argv += ["--quiet", "-t", "10"]
    peer.env = {**os.environ, "HOME": str(workdir)}
    peer.version = _venv_versions(python, ("glances", "paho-mqtt", "psutil"))
    return peer


def _venv_versions(python: Path, names: tuple[str, ...]) -> str:
    code = (
        "import importlib.metadata as m, sys; "
        "print(' '.join(n + ' ' + m.version(n) for n in sys.argv[1:]))"
    )
    done = subprocess.run(
        [str(python), "-c", code, *names], capture_output=True, text=True, check=False
    )
    return done.stdout.strip() or "unknown"


def ensure_kube_client() -> str:
    """kubernetes_asyncio in the agent's interpreter (the `kube` extra); '' when importable."""
    probe = [sys.executable, "-c", "import kubernetes_asyncio.client"]
    if subprocess.run(probe, capture_output=True, check=False).returncode == 0:
        return ""
    print(f"peers: pip installing {KUBE_PACKAGE} into {sys.prefix}", flush=True)
    return _run([sys.executable, "-m", "pip", "install", "-q", KUBE_PACKAGE], None, 900)
