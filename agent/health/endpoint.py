"""Local HTTP endpoint: the only aiohttp.web importer.

Handlers read `AgentState` and do no I/O, so they answer quickly even while a command or a
MicroK8s call hangs. Connections are bounded (agent.health.conn_guard): a cap on open ones, and
idle or half-sent ones are closed, so a local flood of sockets cannot exhaust the agent's fds.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

from aiohttp import web

from agent.health.conn_guard import ConnectionGuard
from agent.health.metrics import Metrics
from agent.health.state import AgentState, readiness
from agent.logs import get_logger
from agent.settings import Settings

log = get_logger(__name__)

STATE_KEY = web.AppKey("state", AgentState)
SETTINGS_KEY = web.AppKey("settings", Settings)


async def healthz(request: web.Request) -> web.Response:
    dead = request.app[STATE_KEY].tasks_alive()
    if dead:
        return web.json_response({"ok": False, "dead_tasks": dead}, status=503)
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    interval = request.app[SETTINGS_KEY].health.interval_s
    reasons = readiness(state, interval_s=interval, now=time.monotonic())
    return web.json_response(
        {"ready": not reasons, "reasons": reasons}, status=503 if reasons else 200
    )


async def status(request: web.Request) -> web.Response:
    state = request.app[STATE_KEY]
    link = state.link()
    body: dict[str, Any] = {
        "node": request.app[SETTINGS_KEY].node.name,
        "started_at": round(state.started_at, 3),
        "connection": {
            "connected": link.connected,
            "session": link.session,
            "published_total": link.published_total,
            "reconnects_total": link.reconnects_total,
            "outbox_size": link.outbox_size,
            "last_error": link.last_error,
        },
        "health": state.last_health,
        "ha": state.last_ha,
        "recent_commands": list(state.recent_commands),
        "shed_collectors": state.shed_collectors,
    }
    return web.json_response(body)


def metrics_handler(metrics: Metrics) -> Any:
    """GET /metrics: Prometheus text or OpenMetrics as asked, gzip when accepted."""

    async def handler(request: web.Request) -> web.Response:
        body, content_type = metrics.exposition(request.headers.get("Accept"))
        response = web.Response(body=body, headers={"Content-Type": content_type})
        response.enable_compression()
        return response

    return handler


def build_app(settings: Settings, state: AgentState, metrics: Metrics) -> web.Application:
    app = web.Application()
    app[STATE_KEY] = state
    app[SETTINGS_KEY] = settings
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics_handler(metrics))
    return app


async def serve(settings: Settings, state: AgentState, metrics: Metrics) -> None:
    """Serve until cancelled; the runner is cleaned up even on cancellation."""
    runner = web.AppRunner(
        build_app(settings, state, metrics),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=1.0,
        # Request head bounds (aiohttp's defaults are 8 KiB lines, 32 KiB fields, 128 headers).
        max_line_size=4096,
        max_field_size=4096,
        keepalive_timeout=10.0,
    )
    await runner.setup()
    server: asyncio.Server | None = None
    try:
        # Our own listener instead of web.TCPSite, to put the guard in front of aiohttp's protocol.
        guard = ConnectionGuard(runner.server)  # type: ignore[arg-type]
        server = await asyncio.get_running_loop().create_server(
            guard, settings.http.bind, settings.http.port, reuse_address=True
        )
        log.info("http_listening", bind=settings.http.bind, port=settings.http.port)
        await asyncio.Event().wait()
    finally:
        if server is not None:
            server.close()
        await asyncio.shield(runner.cleanup())
