"""A small read-only Kubernetes API client on aiohttp, with the admin kubeconfig's credentials.

The periodic reads (this node, the node list, `/readyz?verbose`) happen every few seconds for the
life of the agent; kubernetes_asyncio would cost ~38 MiB of resident memory for three GETs, so
it is only ever loaded by the short-lived drain helper (`agent.microk8s.drain`). aiohttp's
exceptions stop here and become KubeApiError.

One kept-alive HTTP session per kubeconfig, shared by every reader of it (the snap backend's
facts and the HA loop): a TLS handshake with a client certificate costs more CPU than the reads
themselves, so it is paid once, not once per GET.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import ssl
import tempfile
from pathlib import Path
from typing import Any

import aiohttp

from agent.errors import BackendError
from agent.microk8s.kube_model import Kubeconfig, KubeconfigError, parse_kubeconfig

DEFAULT_TIMEOUT_S = 5.0
KEEPALIVE_S = 60.0
"""Idle connections are kept this long: longer than the 10-30 s between the periodic reads."""


class KubeApiError(BackendError):
    """The API server could not be reached or answered with an error status."""

    def __init__(self, message: str, *, status: int | None = None, kind: str = "") -> None:
        super().__init__(message, kind=kind)
        self.status = status


def load_kubeconfig(path: Path) -> Kubeconfig:
    """Read and parse a kubeconfig file.

    Raises:
        KubeApiError: the file is missing or unreadable (kind "kubeconfig").
    """
    try:
        return parse_kubeconfig(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise KubeApiError(f"cannot read {path}: {exc.strerror or exc}", kind="kubeconfig") from exc
    except KubeconfigError as exc:
        raise KubeApiError(f"{path}: {exc}", kind="kubeconfig") from exc


def ssl_context(config: Kubeconfig) -> ssl.SSLContext:
    """Trust the kubeconfig's CA (not the system's) and present its client certificate.

    ssl can only load a certificate chain from files, so the client key is written to a
    private temporary directory for the duration of the call.
    """
    if config.insecure:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    elif config.ca_pem:
        context = ssl.create_default_context(cadata=config.ca_pem)
    else:
        context = ssl.create_default_context()
    if config.cert_pem and config.key_pem:
        with tempfile.TemporaryDirectory(prefix="edge-agent-kube-") as folder:
            cert, key = Path(folder) / "client.crt", Path(folder) / "client.key"
            for path, text in ((cert, config.cert_pem), (key, config.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w", encoding="ascii") as handle:
                    handle.write(text)
            context.load_cert_chain(cert, key)
    return context


class _Pool:
    """The kept-alive session of one kubeconfig, opened at the first GET."""

    def __init__(self, config: Kubeconfig) -> None:
        try:
            self.ssl = ssl_context(config)
        except (ssl.SSLError, ValueError, OSError) as exc:
            raise KubeApiError(f"bad kubeconfig certificates: {exc}", kind="kubeconfig") from exc
        self.headers = {"Authorization": f"Bearer {config.token}"} if config.token else {}
        self._session: aiohttp.ClientSession | None = None

    def session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(limit=4, keepalive_timeout=KEEPALIVE_S)
            self._session = aiohttp.ClientSession(connector=connector, headers=self.headers)
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class KubeApi:
    """GETs against one API server over a kept-alive session (shared with `with_timeout` views)."""

    def __init__(
        self,
        config: Kubeconfig,
        *,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        pool: _Pool | None = None,
    ) -> None:
        """Raises:
        KubeApiError: the kubeconfig's certificates cannot be loaded (kind "kubeconfig").
        """
        self.config = config
        self.server = config.server
        self._pool = pool or _Pool(config)
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    def with_timeout(self, timeout_s: float) -> KubeApi:
        """The same API server and session, with another per-request deadline."""
        return KubeApi(self.config, timeout_s=timeout_s, pool=self._pool)

    async def close(self) -> None:
        """Close the kept-alive connections (the views made by `with_timeout` share them)."""
        await self._pool.close()

    async def node(self, name: str) -> dict[str, Any] | None:
        """`GET /api/v1/nodes/{name}`; None when there is no such node."""
        status, body = await self._get(f"/api/v1/nodes/{name}", allow=(404,))
        return None if status == 404 else _object(body)

    async def nodes(self) -> dict[str, Any]:
        """`GET /api/v1/nodes` (a NodeList)."""
        _, body = await self._get("/api/v1/nodes")
        return _object(body)

    async def readyz(self) -> tuple[int, str]:
        """`GET /readyz?verbose`: (HTTP status, text); 500 lists the failed checks too."""
        return await self._get("/readyz?verbose", allow=(500,), text=True)

    async def _get(
        self, path: str, *, allow: tuple[int, ...] = (), text: bool = False
    ) -> tuple[int, Any]:
        url = f"{self.server}{path}"
        try:
            session = self._pool.session()
            async with session.get(url, ssl=self._pool.ssl, timeout=self._timeout) as response:
                status = response.status
                if status >= 400 and status not in allow:
                    reason = (await response.text())[:200]
                    raise KubeApiError(f"GET {path}: HTTP {status} {reason}", status=status)
                body = await response.text() if text else await response.json(content_type=None)
                return status, body
        except (aiohttp.ClientError, TimeoutError, ValueError, OSError) as exc:
            why = str(exc) or type(exc).__name__
            raise KubeApiError(
                f"Kubernetes API at {self.server} unreachable: {why}", kind="unreachable"
            ) from exc


def _object(body: Any) -> dict[str, Any]:
    if not isinstance(body, dict):
        raise KubeApiError("the Kubernetes API answered something that is not an object")
    return body


_SHARED: dict[Path, tuple[tuple[int, int], KubeApi]] = {}
"""One client (one kept-alive session) per kubeconfig file, whichever watch asks first."""
_CLOSING: set[asyncio.Task[None]] = set()


def _shared_api(path: Path, key: tuple[int, int]) -> KubeApi:
    """The process-wide client for `path` as it is now (`key`: mtime, size); the one for an
    older version of the file is closed in the background."""
    cached = _SHARED.get(path)
    if cached is not None and cached[0] == key:
        return cached[1]
    api = KubeApi(load_kubeconfig(path))
    _SHARED[path] = (key, api)
    if cached is not None:
        with contextlib.suppress(RuntimeError):  # no running loop: nothing was opened
            task = asyncio.get_running_loop().create_task(cached[1].close())
            _CLOSING.add(task)
            task.add_done_callback(_CLOSING.discard)
    return api


async def close_shared() -> None:
    """Close every kept-alive session this process opened (the agent's bounded shutdown)."""
    apis = [api for _, api in _SHARED.values()]
    _SHARED.clear()
    for api in apis:
        await api.close()


class KubeconfigWatch:
    """The API client for a kubeconfig file, rebuilt when the file changes (a join replaces
    the CA and the credentials; the content interface may be connected after start).
    Watches of the same file share one client and so one kept-alive session."""

    def __init__(self, path: Path, *, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.path = path
        self._timeout_s = timeout_s
        self._cached: tuple[tuple[int, int], KubeApi] | None = None

    def get(self) -> KubeApi:
        """Raises:
        KubeApiError: no readable, usable kubeconfig (kind "kubeconfig").
        """
        try:
            stat = self.path.stat()
        except OSError as exc:
            raise KubeApiError(
                f"no kubeconfig at {self.path} ({exc.strerror}): is the microk8s content "
                "interface connected?",
                kind="kubeconfig",
            ) from exc
        key = (stat.st_mtime_ns, stat.st_size)
        if self._cached is None or self._cached[0] != key:
            api = _shared_api(self.path, key).with_timeout(self._timeout_s)
            self._cached = (key, api)
        return self._cached[1]
