"""The settings schema (pure): sections, keys, types and defaults, as frozen dataclasses.

Declared once, apart from reading (agent.config) and validation (agent.config_rules), so both of
those import the schema and neither imports the other.
"""

from __future__ import annotations

import dataclasses
import socket

from agent.platform.snap_paths import default_credentials_dir, default_state_dir


def default_node_name() -> str:
    """The host name, lowercased, first label only (a FQDN is not a valid node name)."""
    return socket.gethostname().split(".")[0].lower()


@dataclasses.dataclass(frozen=True, slots=True)
class NodeSettings:
    name: str = dataclasses.field(default_factory=default_node_name)
    cluster: str = "default"


@dataclasses.dataclass(frozen=True, slots=True)
class MqttSettings:
    host: str = "127.0.0.1"
    port: int = 1883
    prefix: str = "microk8s"
    keepalive_s: int = 30
    username: str = ""
    password_file: str = ""
    tls: bool = False
    ca_file: str = ""
    cert_file: str = ""
    key_file: str = ""
    protocol: int = 5


@dataclasses.dataclass(frozen=True, slots=True)
class HealthSettings:
    interval_s: float = 10.0
    qos: int = 1
    temperature_warn_c: float = 75.0
    temperature_crit_c: float = 85.0
    disk_warn_percent: float = 85.0
    disk_crit_percent: float = 95.0
    memory_warn_percent: float = 90.0
    memory_crit_percent: float = 97.0
    disk_paths: tuple[str, ...] = ("/",)
    # Where the Raspberry Pi files live; tests point it at a fixture tree.
    sysfs_root: str = "/"
    # The detectors of MicroK8s' own failure modes (agent.health.detectors); their readings are
    # slow or wear the card, so they run on their own loop and the health cycle reuses the last.
    detectors_enabled: bool = True
    detectors_interval_s: float = 30.0
    proc_root: str = "/proc"
    cert_warn_days: float = 30.0
    cert_crit_days: float = 7.0
    certs_interval_s: float = 21600.0
    clock_offset_warn_s: float = 2.0
    clock_offset_crit_s: float = 60.0
    clock_window_s: float = 300.0
    process_restarts_crit: int = 3
    process_restart_window_s: float = 600.0
    process_cpu_warn_percent: float = 90.0
    process_cpu_window_s: float = 300.0
    process_rss_growth_warn_mib_h: float = 100.0
    fsync_warn_ms: float = 100.0
    fsync_crit_ms: float = 1000.0
    fsync_interval_s: float = 60.0
    fsync_window_s: float = 3600.0
    # Where to time fsync when the state dir is not on dqlite's filesystem ("" = nowhere).
    fsync_path: str = ""
    eviction_margin_percent: float = 5.0
    not_ready_warn_s: float = 300.0


@dataclasses.dataclass(frozen=True, slots=True)
class HttpSettings:
    enabled: bool = True
    bind: str = "127.0.0.1"
    port: int = 9880


@dataclasses.dataclass(frozen=True, slots=True)
class CommandSettings:
    allow_unsigned: bool = False
    trusted_keys: tuple[str, ...] = ()
    max_age_s: int = 300
    clock_skew_s: int = 60
    queue_size: int = 8
    journal_max_bytes: int = 1_048_576


@dataclasses.dataclass(frozen=True, slots=True)
class MicroK8sSettings:
    backend: str = "auto"
    cli: str = "microk8s"
    snap_cli: str = "snap"
    snapd_socket: str = "/run/snapd.socket"
    credentials_dir: str = dataclasses.field(default_factory=default_credentials_dir)
    cluster_agent_url: str = "https://127.0.0.1:25000"
    backend_dir: str = "/var/snap/microk8s/current/var/kubernetes/backend"
    command_timeout_s: float = 600.0
    # How often MicroK8s facts are refreshed for the health message; `microk8s status` is costly.
    status_interval_s: float = 30.0
    status_timeout_s: float = 30.0
    hold_refresh: bool = True
    drain_timeout_s: float = 300.0
    join_timeout_s: float = 300.0
    certs_dir: str = "/var/snap/microk8s/current/certs"
    kubelet_args: str = "/var/snap/microk8s/current/args/kubelet"
    # nodefs and imagefs of MicroK8s' kubelet, for the eviction headroom.
    kubelet_dir: str = "/var/snap/microk8s/common/var/lib/kubelet"
    containerd_dir: str = "/var/snap/microk8s/common/var/lib/containerd"


@dataclasses.dataclass(frozen=True, slots=True)
class HaSettings:
    enabled: bool = True
    interval_s: float = 30.0
    probe_timeout_s: float = 2.0
    auto_remove_after_s: float = 0.0
    # Speak TLS to dqlite with microk8s.backend_dir's cluster.crt/cluster.key (false: plain TCP).
    dqlite_tls: bool = True


@dataclasses.dataclass(frozen=True, slots=True)
class StateSettings:
    dir: str = dataclasses.field(default_factory=default_state_dir)


@dataclasses.dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: str = "auto"


@dataclasses.dataclass(frozen=True, slots=True)
class AgentSettings:
    # The memory budget (RSS, MiB); 0 disables it. The default is the pi profile's steady RSS
    # (46 MiB, bench/footprint.py, docs/performance.md) with 1.75x headroom, rounded up to 8 MiB:
    # room for Python 3.12 on aarch64, many HA members and a full outbox, while an agent that
    # grew by a resident Kubernetes client (+36 MiB) is caught. systemd/edge-agent.service's
    # MemoryMax is derived from it.
    max_rss_mib: float = 80.0


@dataclasses.dataclass(frozen=True, slots=True)
class Settings:
    node: NodeSettings = dataclasses.field(default_factory=NodeSettings)
    mqtt: MqttSettings = dataclasses.field(default_factory=MqttSettings)
    health: HealthSettings = dataclasses.field(default_factory=HealthSettings)
    http: HttpSettings = dataclasses.field(default_factory=HttpSettings)
    commands: CommandSettings = dataclasses.field(default_factory=CommandSettings)
    microk8s: MicroK8sSettings = dataclasses.field(default_factory=MicroK8sSettings)
    ha: HaSettings = dataclasses.field(default_factory=HaSettings)
    state: StateSettings = dataclasses.field(default_factory=StateSettings)
    log: LogSettings = dataclasses.field(default_factory=LogSettings)
    agent: AgentSettings = dataclasses.field(default_factory=AgentSettings)

    @property
    def root_topic(self) -> str:
        """`R` of PROTOCOL.md: `{prefix}/{cluster}/nodes/{node}`."""
        return f"{self.mqtt.prefix}/{self.node.cluster}/nodes/{self.node.name}"
