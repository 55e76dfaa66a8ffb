"""Headless Chromium driven over the DevTools protocol (CDP), with aiohttp's websocket client.

Enough for the dashboard's browser tests and screenshot: open a page, evaluate JavaScript (to
read the DOM the page drew), set the viewport, capture a PNG. No Selenium/Playwright: Debian's
`chromium` plus one websocket. The browser gets its own profile directory and a DevTools port
chosen by itself (`--remote-debugging-port=0`, read back from `DevToolsActivePort`), so tests
can run in parallel; it never dials out (every background service is switched off, and the
pages it opens are on 127.0.0.1).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
    "--disable-default-apps",
    "--disable-domain-reliability",
    "--metrics-recording-only",
    "--mute-audio",
    "--remote-debugging-address=127.0.0.1",
    "--remote-debugging-port=0",
)


class CdpError(RuntimeError):
    pass


class Page:
    """One tab: `evaluate` returns the JSON value of an expression (promises awaited)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self._ws = ws
        self._ids = itertools.count(1)

    async def send(self, method: str, **params: Any) -> dict[str, Any]:
        call_id = next(self._ids)
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        async for message in self._ws:
            body = json.loads(message.data)
            if body.get("id") == call_id:
                if "error" in body:
                    raise CdpError(f"{method}: {body['error']}")
                return dict(body.get("result", {}))
        raise CdpError(f"{method}: the browser closed the connection")

    async def evaluate(self, expression: str) -> Any:
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise CdpError(f"{expression[:80]}: {result['exceptionDetails']}")
        return result["result"].get("value")

    async def navigate(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def wait_for(
        self, expression: str, timeout_s: float = 20.0, check: Callable[[Any], bool] = bool
    ) -> Any:
        """Evaluate `expression` until `check(value)` holds; the last value on timeout."""
        deadline = time.monotonic() + timeout_s
        value: Any = None
        while time.monotonic() < deadline:
            with contextlib.suppress(CdpError):
                value = await self.evaluate(expression)
                if check(value):
                    return value
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{expression[:120]!r} still {value!r} after {timeout_s} s")

    async def viewport(self, width: int, height: int, scale: float = 1.0, *, mobile: bool = False):
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=scale,
            mobile=mobile,
        )

    async def screenshot(self, path: Path) -> None:
        # The whole document, not just the viewport.
        size = await self.evaluate(
            "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
        )
        result = await self.send(
            "Page.captureScreenshot",
            format="png",
            captureBeyondViewport=True,
            clip={"x": 0, "y": 0, "width": size[0], "height": size[1], "scale": 1},
        )
        path.write_bytes(base64.b64decode(result["data"]))


async def _devtools_port(profile: Path, process: subprocess.Popen[bytes]) -> int:
    marker = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise CdpError(f"chromium exited with {process.returncode}")
        if marker.exists():
            first = marker.read_text().splitlines()[:1]
            if first and first[0].isdigit():
                return int(first[0])
        await asyncio.sleep(0.1)
    raise CdpError("chromium did not open its DevTools port within 30 s")


@contextlib.asynccontextmanager
async def browser(workdir: Path) -> AsyncIterator[Callable[[], Any]]:
    """Start chromium; yields `new_page()` (an async context manager for a blank tab)."""
    if not Path(CHROMIUM).exists():
        raise CdpError("chromium is not installed: run .ci/bootstrap.sh test")
    profile = workdir / "chromium-profile"
    profile.mkdir(parents=True, exist_ok=True)
    log = (workdir / "chromium.log").open("ab")
    process = subprocess.Popen(
        [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "about:blank"],
        stdout=log,
        stderr=log,
        start_new_session=True,
    )
    try:
        port = await _devtools_port(profile, process)
        async with aiohttp.ClientSession() as session:

            @contextlib.asynccontextmanager
            async def new_page() -> AsyncIterator[Page]:
                async with session.put(f"http://127.0.0.1:{port}/json/new?about:blank") as answer:
                    target = await answer.json()
                async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
                    page = Page(ws)
                    await page.send("Page.enable")
                    yield page

            yield new_page
    finally:
        # Its own session: the group is the browser and its helpers, nothing else.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=5)
        log.close()
