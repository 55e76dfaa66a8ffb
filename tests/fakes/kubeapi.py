"""The Kubernetes API over HTTPS (a test CA; the server certificate is for 127.0.0.1).

Nodes come from fixtures/kube/nodes.json; `/readyz?verbose` answers readyz-verbose.txt (200) or
readyz-etcd-failed.txt (500). Pods are not in the fixtures: `PODS` follows the v1 Pod shape with
a ReplicaSet pod behind a PodDisruptionBudget (first eviction 429), a plain ReplicaSet pod, a
DaemonSet pod and a mirror pod on pi-01, and one pod on pi-02.
"""

from __future__ import annotations

import copy
from typing import Any

from aiohttp import web

from tests.fakes.base import Recorder, Server, fixture_json, fixture_text, json_response
from tests.fakes.tls import Tls, b64

FOLDER = "kube"
TOKEN = "admin-token-5f1e2d3c4b5a69788796a5b4c3d2e1f0"
PDB_MESSAGE = "Cannot evict pod as it would violate the pod's disruption budget."


def _pod(namespace: str, name: str, node: str, owner: str | None, **annotations: str) -> Any:
    metadata: dict[str, Any] = {"name": name, "namespace": namespace, "uid": f"uid-{name}"}
    if owner is not None:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": owner,
                "name": name.rsplit("-", 1)[0],
                "uid": f"uid-owner-{name}",
                "controller": True,
            }
        ]
    if annotations:
        metadata["annotations"] = annotations
    return {
        "metadata": metadata,
        "spec": {"nodeName": node, "containers": [{"name": "main", "image": "busybox"}]},
        "status": {"phase": "Running"},
    }


def pods() -> list[Any]:
    mirror = {"kubernetes.io/config.mirror": "0123456789abcdef"}
    return [
        _pod("default", "web-7d4b9c-1", "pi-01", "ReplicaSet"),
        _pod("default", "api-5f6c7d-2", "pi-01", "ReplicaSet"),
        _pod("kube-system", "calico-node-x7k2p", "pi-01", "DaemonSet"),
        _pod("kube-system", "static-web-pi-01", "pi-01", None, **mirror),
        _pod("default", "db-0", "pi-02", "StatefulSet"),
    ]


def status(code: int, reason: str, message: str, **extra: Any) -> dict[str, Any]:
    body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "code": code}
    body.update(status="Failure", reason=reason, message=message, **extra)
    return body


class FakeKubeApi:
    def __init__(self, tls: Tls, token: str = TOKEN) -> None:
        self.tls = tls
        self.token = token
        self.recorder = Recorder()
        self.nodes: list[Any] = fixture_json(FOLDER, "nodes.json")["items"]
        self.pods = pods()
        self.pending_nodes: list[tuple[int, Any]] = []
        """(node list GETs to wait, node): nodes that appear later (a join)."""
        self.pdb_blocks = {"default/web-7d4b9c-1": 1}
        """Pod -> how many evictions answer 429 before one succeeds."""
        self.etcd_failed = False
        self.down = False
        """Answer 503 to everything (an API server restarting)."""
        app = web.Application(middlewares=[self.recorder.middleware])
        app.router.add_get("/api/v1/nodes", self._list_nodes)
        app.router.add_get("/api/v1/nodes/{name}", self._get_node)
        app.router.add_patch("/api/v1/nodes/{name}", self._patch_node)
        app.router.add_get("/api/v1/pods", self._list_pods)
        app.router.add_post("/api/v1/namespaces/{ns}/pods/{name}/eviction", self._evict)
        app.router.add_get("/readyz", self._readyz)
        self.server = Server(app)

    async def start(self) -> FakeKubeApi:
        await self.server.start_tcp(self.tls.server_context(ask_client_cert=True))
        return self

    async def stop(self) -> None:
        await self.server.stop()

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    def kubeconfig(self, *, client_cert: bool = False) -> str:
        """An admin kubeconfig like MicroK8s' credentials/client.config."""
        if client_cert:
            user = (
                f"    client-certificate-data: {b64(self.tls.client_cert_pem)}\n"
                f"    client-key-data: {b64(self.tls.client_key_pem)}\n"
            )
        else:
            user = f"    token: {self.token}\n"
        return (
            "apiVersion: v1\nclusters:\n- cluster:\n"
            f"    certificate-authority-data: {b64(self.tls.ca_pem)}\n"
            f"    server: {self.url}\n  name: microk8s-cluster\n"
            "contexts:\n- context:\n    cluster: microk8s-cluster\n    user: admin\n"
            "  name: microk8s\ncurrent-context: microk8s\nkind: Config\npreferences: {}\n"
            f"users:\n- name: admin\n  user:\n{user}"
        )

    def node(self, name: str) -> Any:
        return next((n for n in self.nodes if n["metadata"]["name"] == name), None)

    def set_kubelet(self, name: str, version: str) -> None:
        node = self.node(name)
        assert node is not None
        node["status"]["nodeInfo"]["kubeletVersion"] = version

    def add_later(self, node: Any, after_lists: int) -> None:
        self.pending_nodes.append((after_lists, node))

    # --- handlers ----------------------------------------------------------------------

    def _refuse(self, request: web.Request) -> web.Response | None:
        if self.down:
            return json_response(status(503, "ServiceUnavailable", "apiserver restarting"), 503)
        bearer = request.headers.get("Authorization") == f"Bearer {self.token}"
        transport = request.transport
        client_cert = transport is not None and bool(transport.get_extra_info("peercert"))
        if not (bearer or client_cert):
            return json_response(status(401, "Unauthorized", "Unauthorized"), 401)
        return None

    async def _list_nodes(self, request: web.Request) -> web.Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        still: list[tuple[int, Any]] = []
        for wait, node in self.pending_nodes:
            if wait <= 0:
                self.nodes.append(node)
            else:
                still.append((wait - 1, node))
        self.pending_nodes = still
        return json_response({"kind": "NodeList", "apiVersion": "v1", "items": self.nodes})

    async def _get_node(self, request: web.Request) -> web.Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        name = request.match_info["name"]
        node = self.node(name)
        if node is None:
            return json_response(status(404, "NotFound", f'nodes "{name}" not found'), 404)
        return json_response(node)

    async def _patch_node(self, request: web.Request) -> web.Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        node = self.node(request.match_info["name"])
        if node is None:
            name = request.match_info["name"]
            return json_response(status(404, "NotFound", f'nodes "{name}" not found'), 404)
        patch = await request.json()
        node.setdefault("spec", {}).update(patch.get("spec", {}))
        return json_response(node)

    async def _list_pods(self, request: web.Request) -> web.Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        selector = request.query.get("fieldSelector", "")
        node = selector.removeprefix("spec.nodeName=") if selector else None
        items = [p for p in self.pods if node is None or p["spec"]["nodeName"] == node]
        return json_response({"kind": "PodList", "apiVersion": "v1", "items": copy.deepcopy(items)})

    async def _evict(self, request: web.Request) -> web.Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        ns, name = request.match_info["ns"], request.match_info["name"]
        key = f"{ns}/{name}"
        pod = next((p for p in self.pods if p["metadata"]["name"] == name), None)
        if pod is None:
            return json_response(status(404, "NotFound", f'pods "{name}" not found'), 404)
        if self.pdb_blocks.get(key, 0) != 0:
            self.pdb_blocks[key] -= 1
            cause = {"reason": "DisruptionBudget", "message": "The disruption budget web-pdb"}
            body = status(429, "TooManyRequests", PDB_MESSAGE, details={"causes": [cause]})
            return json_response(body, 429)
        self.pods.remove(pod)
        body = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}
        return json_response({**body, "code": 201}, 201)

    async def _readyz(self, request: web.Request) -> web.Response:
        if (refusal := self._refuse(request)) is not None:
            return refusal
        if self.etcd_failed:
            return web.Response(text=fixture_text(FOLDER, "readyz-etcd-failed.txt"), status=500)
        return web.Response(text=fixture_text(FOLDER, "readyz-verbose.txt"))


def kube_calls(fake: FakeKubeApi, *methods: str) -> list[tuple[str, str, Any]]:
    return [call for call in fake.recorder.calls() if not methods or call[0] in methods]
