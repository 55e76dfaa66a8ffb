"""The dashboard's HTTP side (aiohttp.web): one page, a JSON snapshot, Server-Sent Events.

`GET /` is a single self-contained document (the package's CSS and JS inlined at start-up, with a
Content-Security-Policy that allows exactly those two blobs by hash and nothing from elsewhere),
`GET /api/fleet` the snapshot (`rows.snapshot` plus the broker link), `GET /events` the same
snapshot pushed as `fleet` events whenever it changes (at most one per `MIN_PUSH_INTERVAL_S`, and
every `HEARTBEAT_S` regardless so ages and proxies stay alive). Nothing here writes to MQTT: the
page is read-only by construction. The feed comes from `agent.link.watcher`, run by `serve`.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import dataclasses
import hashlib
import json
import time
from importlib import resources
from typing import Any

from aiohttp import web

from agent import __version__
from agent.link import watcher
from agent.link.mqtt import Inbound
from agent.logs import get_logger
from agent.operator.dashboard import access, rows
from agent.operator.dashboard.fleet_view import FleetView
from agent.settings import MqttSettings

log = get_logger(__name__)

MIN_PUSH_INTERVAL_S = 1.0
HEARTBEAT_S = 10.0
MAX_EVENT_CLIENTS = 32


@dataclasses.dataclass(frozen=True, slots=True)
class DashboardOptions:
    """Where the page is served and who may read it."""

    bind: str = "127.0.0.1"
    port: int = 9881
    # None: no token asked (only allowed on loopback, see access.is_loopback).
    token: str | None = None
    stale_after_s: float = 90.0


class Hub:
    """The fleet view, the broker link's state, and a wake-up for the event streams."""

    def __init__(self, view: FleetView) -> None:
        self.view = view
        self.link = watcher.LinkStatus(connected=False, error="connecting")
        self.clients = 0
        self._changed = asyncio.Event()

    def on_message(self, inbound: Inbound) -> None:
        # The view is written never to raise on input (fuzzed in tests); should a bug slip
        # through, one message is lost and logged, and the page stays up.
        try:
            changed = self.view.apply(inbound.topic, inbound.payload, time.time())
        except Exception:
            self.view.ignored += 1
            log.exception("dashboard_message_failed", topic=inbound.topic[:200])
            return
        if changed:
            self._wake()

    def on_status(self, status: watcher.LinkStatus) -> None:
        self.link = status
        self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def changed(self, timeout_s: float) -> None:
        """Return at the next change, or after `timeout_s`."""
        event = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(event.wait(), timeout_s)

    def snapshot(self) -> dict[str, Any]:
        body = rows.snapshot(self.view, time.time())
        body["broker"] = {"connected": self.link.connected, "error": self.link.error}
        body["dashboard_version"] = __version__
        return body


def _csp_hash(text: str) -> str:
    digest = base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()
    return f"'sha256-{digest}'"


@dataclasses.dataclass(frozen=True, slots=True)
class Page:
    html: bytes
    csp: str


def load_page() -> Page:
    """The HTML with the package's CSS and JS inlined, and the policy that allows only them."""
    static = resources.files("agent.operator.dashboard") / "static"
    style = (static / "dashboard.css").read_text(encoding="utf-8")
    script = (static / "dashboard.js").read_text(encoding="utf-8")
    html = (static / "dashboard.html").read_text(encoding="utf-8")
    html = html.replace("/*STYLE*/", style).replace("/*SCRIPT*/", script)
    csp = (
        f"default-src 'none'; script-src {_csp_hash(script)}; style-src {_csp_hash(style)}; "
        "connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
        "frame-ancestors 'none'"
    )
    return Page(html=html.encode(), csp=csp)


HUB_KEY = web.AppKey("hub", Hub)
PAGE_KEY = web.AppKey("page", Page)
OPTIONS_KEY = web.AppKey("options", DashboardOptions)

_SECURITY_HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


@web.middleware
async def guard(request: web.Request, handler: Any) -> web.StreamResponse:
    """Token check (when configured) and the headers every answer carries."""
    options = request.app[OPTIONS_KEY]
    decision = access.decide(
        options.token,
        authorization=request.headers.get("Authorization"),
        cookie=request.cookies.get(access.COOKIE),
        query_token=request.query.get("token"),
    )
    if not decision.allowed:
        return web.Response(
            status=401,
            text="token required: open the page once with ?token=... or send a Bearer token\n",
            headers={
                "WWW-Authenticate": 'Bearer realm="edge-agent dashboard"',
                **_SECURITY_HEADERS,
            },
        )
    if decision.set_cookie:
        # Drop the token from the address bar (and history) once the cookie holds its proof.
        # A relative Location, so a reverse proxy that serves the page under a prefix still works.
        last = request.rel_url.path.rsplit("/", 1)[-1]
        response: web.StreamResponse = web.Response(status=303, headers={"Location": last or "./"})
        assert options.token is not None  # noqa: S101 - set_cookie implies a token
        response.set_cookie(
            access.COOKIE, access.cookie_value(options.token), httponly=True, samesite="Strict"
        )
    else:
        response = await handler(request)
    if not response.prepared:
        response.headers.update(_SECURITY_HEADERS)
    return response


async def page(request: web.Request) -> web.Response:
    content = request.app[PAGE_KEY]
    return web.Response(
        body=content.html,
        content_type="text/html",
        charset="utf-8",
        headers={"Content-Security-Policy": content.csp},
    )


async def fleet(request: web.Request) -> web.Response:
    return web.json_response(request.app[HUB_KEY].snapshot(), dumps=_dumps)


def _dumps(body: Any) -> str:
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


async def events(request: web.Request) -> web.StreamResponse:
    """Server-Sent Events: a `fleet` event with the whole snapshot after every change."""
    hub = request.app[HUB_KEY]
    if hub.clients >= MAX_EVENT_CLIENTS:
        return web.Response(status=503, text="too many live pages; the page polls instead\n")
    response = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream",
            "X-Accel-Buffering": "no",
            **_SECURITY_HEADERS,
        }
    )
    await response.prepare(request)
    hub.clients += 1
    try:
        await response.write(b"retry: 3000\n\n")
        while True:
            sent_at = time.monotonic()
            data = _dumps(hub.snapshot())
            await response.write(f"event: fleet\ndata: {data}\n\n".encode())
            await hub.changed(HEARTBEAT_S)
            # Coalesce bursts (a fleet's health messages arrive together after a reconnect).
            await asyncio.sleep(max(0.0, MIN_PUSH_INTERVAL_S - (time.monotonic() - sent_at)))
    except ConnectionError:
        pass
    finally:
        hub.clients -= 1
    return response


def build_app(hub: Hub, options: DashboardOptions, content: Page) -> web.Application:
    app = web.Application(middlewares=[guard], client_max_size=4096)
    app[HUB_KEY] = hub
    app[PAGE_KEY] = content
    app[OPTIONS_KEY] = options
    app.router.add_get("/", page)
    app.router.add_get("/api/fleet", fleet)
    app.router.add_get("/events", events)
    return app


async def serve(
    mqtt: MqttSettings, cluster: str, options: DashboardOptions, client_id: str
) -> None:
    """Watch the cluster and serve the page until cancelled."""
    view = FleetView(mqtt.prefix, cluster, stale_after_s=options.stale_after_s)
    hub = Hub(view)
    runner = web.AppRunner(
        build_app(hub, options, load_page()),
        handle_signals=False,
        access_log=None,
        shutdown_timeout=1.0,
    )
    await runner.setup()
    try:
        site = web.TCPSite(runner, options.bind, options.port, reuse_address=True)
        await site.start()
        log.info("dashboard_listening", bind=options.bind, port=options.port, cluster=cluster)
        await watcher.watch(
            mqtt,
            client_id,
            view.filters(),
            hub.on_message,
            hub.on_status,
            replay=lambda inbound: view.replay_topics(inbound.topic),
        )
    finally:
        await asyncio.shield(runner.cleanup())
