"""The MicroK8s cluster agent adapter: `POST {url}/cluster/api/v1.0/configure` (MICROK8S.md §3.4).

The cluster agent runs addon scripts synchronously under its own 240 s deadline and answers
`{"result":"ok"}` or HTTP 500 `{"error": ...}`; the scripts' output goes to its journal, not to
us. It authenticates by the callback token, which only exists on nodes that have been clustered.
"""

from __future__ import annotations

import json
import ssl
from pathlib import Path
from typing import Any

import aiohttp

from agent.errors import BackendError

CONFIGURE_PATH = "/cluster/api/v1.0/configure"
DEADLINE_S = 240.0
"""The cluster agent's own request deadline (`--timeout 240`); it kills the addon script then."""
MARGIN_S = 10.0
TOKEN_FILE = "callback-token.txt"  # noqa: S105 (a file name, not a secret)


class ClusterAgentError(BackendError):
    """The cluster agent refused (`status` set) or could not be reached (`status` None)."""

    def __init__(self, message: str, *, status: int | None = None, kind: str = "") -> None:
        super().__init__(message, kind=kind)
        self.status = status


def _unverified_tls() -> ssl.SSLContext:
    # The cluster agent serves MicroK8s' self-signed API server certificate; MicroK8s' own
    # clients (distributed_op.py) skip verification too. The callback token, not the
    # certificate, is what authenticates, and the connection stays on this node (127.0.0.1).
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


class ClusterAgent:
    def __init__(
        self, url: str, credentials_dir: Path, *, timeout_s: float = DEADLINE_S + MARGIN_S
    ) -> None:
        self.url = url.rstrip("/")
        self.token_path = credentials_dir / TOKEN_FILE
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)
        self._ssl: ssl.SSLContext | None = None  # built at the first request, not at start-up

    def token(self) -> str | None:
        """The callback token; None when this node has none (never clustered) or it is empty.

        Raises:
            ClusterAgentError: the file exists but cannot be read (permissions, interface).
        """
        try:
            token = self.token_path.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise ClusterAgentError(
                f"cannot read {self.token_path}: {exc.strerror or exc}", kind="token"
            ) from exc
        return token or None

    async def configure(self, body: dict[str, Any]) -> None:
        """Send one configure request; returns when the cluster agent says ok.

        Raises:
            ClusterAgentError: refused (its `error` text), timed out (kind "timeout"),
                or unreachable (kind "unreachable").
        """
        url = f"{self.url}{CONFIGURE_PATH}"
        if self._ssl is None:
            self._ssl = _unverified_tls()
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as session,
                session.post(url, json=body, ssl=self._ssl) as response,
            ):
                status = response.status
                text = await response.text()
        except TimeoutError as exc:
            limit = self._timeout.total or 0.0
            raise ClusterAgentError(
                f"the cluster agent did not answer within {limit:g} s", kind="timeout"
            ) from exc
        except (aiohttp.ClientError, OSError) as exc:
            raise ClusterAgentError(
                f"cluster agent at {self.url} unreachable: {exc}", kind="unreachable"
            ) from exc
        if status != 200:
            raise ClusterAgentError(
                f"cluster agent: {_error_text(text, status)}", status=status, kind="refused"
            )


def _error_text(text: str, status: int) -> str:
    """The `error` of `{"error": ...}` (every failure's shape), else the raw start of the body."""
    try:
        body = json.loads(text)
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return f"{body['error']} (HTTP {status})"
    return f"HTTP {status} {text.strip()[:200]}".strip()
