"""snapd's REST API on a unix socket, answering with the recorded bodies of fixtures/snapd.

Changes progress one step per poll (`change-doing.json` ... `change-done.json` or
`change-error.json`); a finished refresh changes what `GET /v2/snaps/microk8s` reports.
`hang` holds every request without an answer (a stuck snapd), until it is set back to False.
"""

from __future__ import annotations

import asyncio
import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from tests.fakes.base import Handler, Recorder, Server, fixture_json, json_response

FOLDER = "snapd"
SNAP = "microk8s"
REFUSALS = {
    "no-update": "error-no-update.json",
    "channel-not-available": "error-channel-not-available.json",
    "change-conflict": "error-change-conflict.json",
}
"""Scenario name -> recorded error body, for refresh_refusal / conf_refusal."""
NOT_FOUND = {
    "type": "error",
    "status-code": 404,
    "status": "Not Found",
    "result": {"message": "snap not installed", "kind": "snap-not-found", "value": SNAP},
}
"""snapd's SnapNotFound (daemon/errors.go: 404, kind snap-not-found, value = snap name)."""


def _accepted(change_id: str) -> dict[str, Any]:
    body = fixture_json(FOLDER, "refresh-accepted.json")
    body["change"] = change_id
    return dict(body)


def _change(name: str, change_id: str, kind: str, summary: str) -> dict[str, Any]:
    body = fixture_json(FOLDER, name)
    result = body["result"]
    result["id"], result["kind"], result["summary"] = change_id, kind, summary
    return dict(body)


class FakeSnapd:
    """Scenario knobs are plain attributes; `recorder.requests` holds what was sent."""

    def __init__(self, socket_path: Path) -> None:
        self.socket_path = socket_path
        self.recorder = Recorder()
        self.snap: dict[str, Any] | None = fixture_json(FOLDER, "snap-microk8s.json")
        self.refresh_refusal: str | None = None
        """A REFUSALS key: POST refresh answers that error body."""
        self.conf_refusal: str | None = None
        self.refresh_fails = False
        """The refresh change ends as change-error.json."""
        self.conf_fails = False
        self.polls_before_done = 2
        """GETs of a change that answer Doing before the final state."""
        self.refresh_to = {"version": "v1.33.0", "revision": "8012"}
        self.on_refreshed: Callable[[str], None] | None = None
        """Called with the new version when a refresh change completes."""
        self.configs: list[str] = []
        self.hang = False
        """While True, every request is held without an answer (a stuck snapd); set it back to
        False to let the held ones through."""
        self._changes: dict[str, list[dict[str, Any]]] = {}
        self._after: dict[str, Callable[[], None]] = {}
        self._next_id = 60
        app = web.Application(middlewares=[self.recorder.middleware, self._hold])
        app.router.add_get("/v2/snaps/{name}", self._get_snap)
        app.router.add_post("/v2/snaps/{name}", self._post_snap)
        app.router.add_put("/v2/snaps/{name}/conf", self._put_conf)
        app.router.add_get("/v2/changes/{id}", self._get_change)
        self.server = Server(app)

    async def start(self) -> FakeSnapd:
        await self.server.start_unix(self.socket_path)
        return self

    async def stop(self) -> None:
        self.hang = False  # held requests end now, not at aiohttp's 60 s shutdown timeout
        await self.server.stop()

    @web.middleware
    async def _hold(self, request: web.Request, handler: Handler) -> web.StreamResponse:
        while self.hang:
            await asyncio.sleep(0.05)
        return await handler(request)

    def set_version(self, version: str, revision: str, channel: str) -> None:
        assert self.snap is not None
        result = self.snap["result"]
        result["version"], result["revision"] = version, revision
        result["channel"] = result["tracking-channel"] = channel

    # --- handlers ----------------------------------------------------------------------

    async def _get_snap(self, request: web.Request) -> web.Response:
        if self.snap is None or request.match_info["name"] != SNAP:
            return json_response(NOT_FOUND, 404)
        return json_response(self.snap)

    async def _post_snap(self, request: web.Request) -> web.Response:
        body = await request.json()
        action = body.get("action")
        if action == "refresh":
            return self._refresh(str(body.get("channel", "")))
        if action in ("hold", "unhold"):
            change_id = self._new_id()
            done = _change("change-done.json", change_id, f"{action}-snap", f"{action} microk8s")
            done["result"]["tasks"] = []
            self._changes[change_id] = [done]
            return json_response(_accepted(change_id), 202)
        error = {"message": f"unknown action {action}", "kind": ""}
        return json_response({"type": "error", "status-code": 400, "result": error}, 400)

    def _refresh(self, channel: str) -> web.Response:
        if self.refresh_refusal is not None:
            body = fixture_json(FOLDER, REFUSALS[self.refresh_refusal])
            return json_response(body, body["status-code"])
        accepted = fixture_json(FOLDER, "refresh-accepted.json")
        change_id = "58" if self.refresh_fails else str(accepted["change"])
        summary = f'Refresh "microk8s" snap from "{channel}" channel'
        doing = _change("change-doing.json", change_id, "refresh-snap", summary)
        final = "change-error.json" if self.refresh_fails else "change-done.json"
        self._changes[change_id] = [doing] * self.polls_before_done + [
            _change(final, change_id, "refresh-snap", summary)
        ]
        if not self.refresh_fails:
            self._after[change_id] = lambda: self._refreshed(channel)
        return json_response(_accepted(change_id), 202)

    def _refreshed(self, channel: str) -> None:
        self.set_version(self.refresh_to["version"], self.refresh_to["revision"], channel)
        if self.on_refreshed is not None:
            self.on_refreshed(self.refresh_to["version"])

    async def _put_conf(self, request: web.Request) -> web.Response:
        body = await request.json()
        if self.conf_refusal is not None:
            refusal = fixture_json(FOLDER, REFUSALS[self.conf_refusal])
            return json_response(refusal, refusal["status-code"])
        self.configs.append(str(body.get("config")))
        accepted = fixture_json(FOLDER, "conf-accepted.json")
        change_id = self._new_id()
        accepted["change"] = change_id
        summary = 'Change configuration of "microk8s" snap'
        final = "change-error.json" if self.conf_fails else "change-done.json"
        doing = _change("change-doing.json", change_id, "configure-snap", summary)
        self._changes[change_id] = [doing] * self.polls_before_done + [
            _change(final, change_id, "configure-snap", summary)
        ]
        return json_response(accepted, 202)

    async def _get_change(self, request: web.Request) -> web.Response:
        steps = self._changes.get(request.match_info["id"])
        if not steps:
            error = {"message": "cannot find change", "kind": ""}
            return json_response({"type": "error", "status-code": 404, "result": error}, 404)
        body = steps.pop(0) if len(steps) > 1 else steps[0]
        if body["result"]["ready"] and (after := self._after.pop(body["result"]["id"], None)):
            after()
        return json_response(copy.deepcopy(body))

    def _new_id(self) -> str:
        self._next_id += 1
        return str(self._next_id)


def snapd_calls(fake: FakeSnapd) -> list[tuple[str, str, Any]]:
    """(method, path, body) of every request except the polls of changes and snap info."""
    return [
        call
        for call in fake.recorder.calls()
        if not (call[0] == "GET" and call[1].startswith(("/v2/changes/", "/v2/snaps/")))
    ]
