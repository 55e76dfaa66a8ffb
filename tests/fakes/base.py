"""What every fake server shares: a request recorder and start/stop helpers."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.paths import FIXTURES

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def fixture_text(folder: str, name: str) -> str:
    return (FIXTURES / folder / name).read_text()


def fixture_json(folder: str, name: str) -> Any:
    return json.loads(fixture_text(folder, name))


@dataclasses.dataclass(frozen=True)
class Seen:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    body: Any
    """Parsed JSON body, None without a body."""
    headers: dict[str, str]


class Recorder:
    """Keeps every request, in order; `calls()` gives (method, path, body) triples."""

    def __init__(self) -> None:
        self.requests: list[Seen] = []

    @web.middleware
    async def middleware(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        raw = await request.read()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = raw.decode(errors="replace")
        self.requests.append(
            Seen(request.method, request.path, dict(request.query), body, dict(request.headers))
        )
        return await handler(request)

    def calls(self, *, method: str | None = None) -> list[tuple[str, str, Any]]:
        return [
            (seen.method, seen.path, seen.body)
            for seen in self.requests
            if method is None or seen.method == method
        ]


class Server:
    """An aiohttp application on a unix socket or a loopback TCP port (optionally TLS)."""

    def __init__(self, app: web.Application) -> None:
        self.app = app
        self.runner = web.AppRunner(app, handle_signals=False, access_log=None)
        self.port = 0

    async def start_unix(self, path: Path) -> None:
        await self.runner.setup()
        await web.UnixSite(self.runner, str(path)).start()

    async def start_tcp(self, ssl_context: ssl.SSLContext | None = None) -> int:
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0, ssl_context=ssl_context)
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server)
        self.port = int(server.sockets[0].getsockname()[1])
        return self.port

    async def stop(self) -> None:
        await self.runner.cleanup()
        # Let the transports of the last connections close inside this loop (no ResourceWarning).
        await asyncio.sleep(0.05)


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(body), status=status, content_type="application/json")
