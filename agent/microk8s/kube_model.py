"""Pure Kubernetes logic: kubeconfig, node facts, `/readyz?verbose`, drain selection, verdicts.

Shared by the read-only client (`agent.microk8s.kubeapi`, in the agent), the drain helper process
(`agent.microk8s.drain`, the only kubernetes_asyncio importer) and its parent
(`agent.microk8s.drain_helper`). Nothing here does I/O or imports a Kubernetes client, so the agent
can use it without paying for one.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import enum
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from agent.errors import AgentError
from agent.microk8s import yamldoc

WORKER_LABEL = "node.kubernetes.io/microk8s-worker"
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
_STATUS = {"True": True, "False": False}
DATASTORE_CHECKS = ("etcd", "etcd-readiness")
"""readyz checks that reflect the datastore: kine in front of k8s-dqlite on MicroK8s."""


class KubeconfigError(AgentError):
    """The kubeconfig is missing, unreadable or lacks what the agent needs."""


class HelperExit(enum.IntEnum):
    """Exit codes of `python -m agent.microk8s.drain` (its outcome, for the parent)."""

    OK = 0
    FAILED = 1
    USAGE = 2
    TIMED_OUT = 3
    UNREACHABLE = 4


@dataclasses.dataclass(frozen=True, slots=True)
class Kubeconfig:
    """What a client needs from a kubeconfig: where, whom to trust, who we are."""

    server: str
    ca_pem: str | None
    token: str | None = dataclasses.field(default=None, repr=False)
    cert_pem: str | None = None
    key_pem: str | None = dataclasses.field(default=None, repr=False)
    insecure: bool = False


@dataclasses.dataclass(frozen=True, slots=True)
class NodeFacts:
    name: str
    ready: bool | None
    kubelet_version: str | None
    conditions: dict[str, bool | None]
    """Condition type -> True/False; None for "Unknown" (the kubelet stopped reporting)."""
    worker: bool
    unschedulable: bool
    addresses: tuple[str, ...]
    """InternalIP addresses."""


@dataclasses.dataclass(frozen=True, slots=True)
class Readyz:
    ready: bool
    failed_checks: tuple[str, ...]
    datastore_ok: bool | None
    """False when an etcd check failed, None when the answer lists no etcd check."""


@dataclasses.dataclass(frozen=True, slots=True)
class PodRef:
    namespace: str
    name: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name}"


# --- kubeconfig ---------------------------------------------------------------------------


def parse_kubeconfig(text: str) -> Kubeconfig:
    """The current context's server, CA and credentials (token or client certificate).

    Raises:
        KubeconfigError: not YAML, no server, or no credentials the agent can use.
    """
    try:
        doc = yamldoc.safe_load(text)
    except yamldoc.YAMLError as exc:
        raise KubeconfigError(f"not valid YAML: {exc}") from exc
    if not isinstance(doc, Mapping):
        raise KubeconfigError("not a kubeconfig (expected a mapping)")
    context = _named(doc.get("contexts"), doc.get("current-context"), "context")
    cluster = _named(doc.get("clusters"), context.get("cluster"), "cluster")
    user = _named(doc.get("users"), context.get("user"), "user")
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith("https://"):
        raise KubeconfigError("the cluster has no https server")
    config = Kubeconfig(
        server=server.rstrip("/"),
        ca_pem=_pem(cluster, "certificate-authority-data"),
        token=user.get("token") if isinstance(user.get("token"), str) else None,
        cert_pem=_pem(user, "client-certificate-data"),
        key_pem=_pem(user, "client-key-data"),
        insecure=cluster.get("insecure-skip-tls-verify") is True,
    )
    if config.token is None and (config.cert_pem is None or config.key_pem is None):
        raise KubeconfigError("the user has neither a token nor client certificate data")
    return config


def _named(items: object, wanted: object, what: str) -> Mapping[str, Any]:
    """The `what` section of the entry named `wanted` (or of the only/first entry)."""
    entries = [i for i in items if isinstance(i, Mapping)] if isinstance(items, list) else []
    chosen = next((e for e in entries if e.get("name") == wanted), None)
    if chosen is None and entries and (wanted is None or len(entries) == 1):
        chosen = entries[0]
    body = chosen.get(what) if chosen is not None else None
    if not isinstance(body, Mapping):
        raise KubeconfigError(f"no {what} named {wanted!r}")
    return body


def _pem(section: Mapping[str, Any], key: str) -> str | None:
    value = section.get(key)
    if not isinstance(value, str):
        return None
    try:
        return base64.b64decode(value, validate=True).decode("ascii")
    except (binascii.Error, UnicodeDecodeError) as exc:
        raise KubeconfigError(f"{key} is not base64 PEM") from exc


# --- nodes and readyz -----------------------------------------------------------------------


def parse_node(obj: object) -> NodeFacts | None:
    """A v1 Node object as NodeFacts; None when it is not one."""
    if not isinstance(obj, Mapping):
        return None
    meta, spec, status = (_section(obj, key) for key in ("metadata", "spec", "status"))
    name = meta.get("name")
    if not isinstance(name, str):
        return None
    conditions: dict[str, bool | None] = {}
    for cond in status.get("conditions") or ():
        if isinstance(cond, Mapping) and isinstance(cond.get("type"), str):
            conditions[cond["type"]] = _STATUS.get(str(cond.get("status")))
    kubelet = _section(status, "nodeInfo").get("kubeletVersion")
    addresses = tuple(
        str(a["address"])
        for a in status.get("addresses") or ()
        if isinstance(a, Mapping) and a.get("type") == "InternalIP" and a.get("address")
    )
    return NodeFacts(
        name=name,
        # "Unknown" (the kubelet stopped posting) is NotReady, as kubectl shows it.
        ready=conditions.get("Ready") is True if "Ready" in conditions else None,
        kubelet_version=kubelet if isinstance(kubelet, str) else None,
        conditions=conditions,
        worker=WORKER_LABEL in _section(meta, "labels"),
        unschedulable=spec.get("unschedulable") is True,
        addresses=addresses,
    )


def parse_node_list(obj: object) -> list[NodeFacts]:
    items = obj.get("items") if isinstance(obj, Mapping) else None
    nodes = (parse_node(item) for item in items or ())
    return [node for node in nodes if node is not None]


def parse_readyz(text: str, http_status: int) -> Readyz:
    """`/readyz?verbose`: `[+]name ok` / `[-]name failed: reason` lines, then a verdict line."""
    failed: list[str] = []
    seen: dict[str, bool] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith(("[+]", "[-]")):
            name = line[3:].split(" ", 1)[0]
            seen[name] = line.startswith("[+]")
            if not seen[name]:
                failed.append(name)
    datastore = [seen[c] for c in DATASTORE_CHECKS if c in seen]
    return Readyz(
        ready=http_status == 200 and not failed,
        failed_checks=tuple(failed),
        datastore_ok=all(datastore) if datastore else None,
    )


def kube_section(
    node: NodeFacts | None, readyz: Readyz | None, errors: Sequence[str] = ()
) -> dict[str, Any]:
    """The `kube` section of the health message; None for everything that could not be read."""
    section: dict[str, Any] = {
        "node_ready": node.ready if node else None,
        "kubelet_version": node.kubelet_version if node else None,
        "conditions": dict(node.conditions) if node else {},
        "apiserver_ready": readyz.ready if readyz else None,
        "datastore_ok": readyz.datastore_ok if readyz else None,
        "failed_checks": list(readyz.failed_checks) if readyz else [],
    }
    if node is not None:
        section["unschedulable"] = node.unschedulable
    if errors:
        section["error"] = "; ".join(errors)
    return section


def join_verdict(nodes: Iterable[NodeFacts], node: str, peer: str) -> tuple[bool, str]:
    """Whether the API lists this node in the cluster reached through `peer` (an IP).

    A standalone node already lists itself, so "this node exists" alone proves nothing; the
    node we joined through appearing next to it does.
    """
    known = list(nodes)
    names = sorted(n.name for n in known)
    has_self = node in names
    has_peer = any(peer in n.addresses for n in known if n.name != node)
    seen = f"the Kubernetes API lists {', '.join(names) or 'no nodes'}"
    if has_self and has_peer:
        return True, seen
    missing = [
        *([] if has_self else [f"no node {node!r}"]),
        *([] if has_peer else [f"no other node with address {peer}"]),
    ]
    return False, f"{seen} ({'; '.join(missing)})"


def _section(obj: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = obj.get(key)
    return value if isinstance(value, Mapping) else {}


# --- drain ----------------------------------------------------------------------------------


def pods_to_evict(pods: Iterable[Mapping[str, Any]]) -> tuple[list[PodRef], list[tuple[str, str]]]:
    """(pods to evict, [(pod, why skipped)]) like `kubectl drain --ignore-daemonsets`.

    DaemonSet pods would be recreated on the node at once, and mirror pods are the kubelet's
    view of static manifests that the API cannot delete; both stay.
    """
    evict: list[PodRef] = []
    skipped: list[tuple[str, str]] = []
    for pod in pods:
        meta = _section(pod, "metadata")
        ref = PodRef(str(meta.get("namespace", "default")), str(meta.get("name", "")))
        if MIRROR_ANNOTATION in _section(meta, "annotations"):
            skipped.append((str(ref), "mirror pod"))
        elif any(
            isinstance(owner, Mapping) and owner.get("kind") == "DaemonSet"
            for owner in meta.get("ownerReferences") or ()
        ):
            skipped.append((str(ref), "DaemonSet"))
        else:
            evict.append(ref)
    return evict, skipped


def describe_event(event: Mapping[str, Any]) -> str | None:
    """A progress detail for one JSON line of the helper; None for lines not worth publishing."""
    kind = event.get("event")
    pod = event.get("pod")
    if kind == "cordoned":
        return f"cordoned {event.get('node')}"
    if kind == "uncordoned":
        return f"uncordoned {event.get('node')}"
    if kind == "pods":
        evict, skipped = event.get("evict") or [], event.get("skipped") or []
        return f"draining: {len(evict)} pods to evict, {len(skipped)} left in place"
    if kind == "evicted":
        return f"draining: evicted {pod}"
    if kind == "blocked":
        wait = event.get("retry_in_s")
        return f"draining: eviction of {pod} blocked ({event.get('reason')}), retry in {wait} s"
    if kind == "waiting":
        return f"draining: waiting for {len(event.get('pods') or [])} pods to terminate"
    return None
