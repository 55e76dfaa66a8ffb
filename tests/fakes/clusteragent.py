"""The MicroK8s cluster agent over HTTPS (self-signed), answering with fixtures/cluster-agent.

`POST /cluster/api/v1.0/configure`: a wrong callback token gets 500 `{"error":"Invalid token"}`,
a non-boolean `enable`/`disable` gets 400 (Go's encoding/json refuses a string for a bool), a
failing addon gets the recorded 500, anything else `{"result":"ok"}`.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from tests.fakes.base import Recorder, Server, fixture_json, json_response
from tests.fakes.tls import Tls

FOLDER = "cluster-agent"
TOKEN = "0c2a8d5fd3c84b1b9c5bd0f2e7a1f39e6c1d8a4b7e2f90c3d5a6b8e1f2c4d7a9"


def _bool_error(entry: Any) -> str | None:
    if not isinstance(entry, dict):
        return "json: cannot unmarshal into Go value of type v1.AddonConfiguration"
    for key in ("enable", "disable"):
        if key in entry and not isinstance(entry[key], bool):
            kind = type(entry[key]).__name__.replace("str", "string")
            return (
                f"json: cannot unmarshal {kind} into Go struct field "
                f"AddonConfiguration.addon.{key} of type bool"
            )
    return None


class FakeClusterAgent:
    def __init__(self, tls: Tls, token: str = TOKEN) -> None:
        self.token = token
        self.recorder = Recorder()
        self.addon_fails = False
        self.delay_s = 0.0
        app = web.Application(middlewares=[self.recorder.middleware])
        app.router.add_post("/cluster/api/v1.0/configure", self._configure)
        app.router.add_get("/health", self._health)
        self.server = Server(app)
        self._tls = tls

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.server.port}"

    async def start(self) -> FakeClusterAgent:
        await self.server.start_tcp(self._tls.server_context())
        return self

    async def stop(self) -> None:
        await self.server.stop()

    async def _health(self, _request: web.Request) -> web.Response:
        return json_response(fixture_json(FOLDER, "health.json"))

    async def _configure(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return json_response({"error": "invalid JSON"}, 400)
        for entry in body.get("addon") or ():
            if (problem := _bool_error(entry)) is not None:
                return json_response({"error": problem}, 400)
        if body.get("callback") != self.token:
            return json_response(fixture_json(FOLDER, "configure-invalid-token.json"), 500)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.addon_fails:
            return json_response(fixture_json(FOLDER, "configure-addon-failed.json"), 500)
        return json_response(fixture_json(FOLDER, "configure-ok.json"))
