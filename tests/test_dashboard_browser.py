"""The dashboard in a real browser: headless Chromium (CDP) on a lab of three agent processes.

One lab per test module would save a few seconds, but each test kills or changes an agent, so
each gets its own (broker, agents, fake control planes, dashboard, browser), all on free ports
and private loopback blocks, safe under pytest -n.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from tests import cdp
from tests.dashboard_lab import NODES, Lab, lab, wait_fleet

pytestmark = [pytest.mark.broker, pytest.mark.slow, pytest.mark.timeout(300)]

ROWS = """
[...document.querySelectorAll('#rows tr')].map(tr => ({
  node: tr.dataset.node, presence: tr.dataset.presence, severity: tr.dataset.severity,
  stale: tr.dataset.stale === '1', cls: tr.className,
  staleBadge: (tr.querySelector('.stale-badge') || {}).textContent || null,
  health: tr.querySelector('.c-health .pill') ? tr.querySelector('.c-health .pill').textContent
    : null,
  reasons: [...tr.querySelectorAll('.c-health li')].map(li => li.textContent),
  temp: tr.querySelector('.c-temp').textContent,
  power: tr.querySelector('.c-power').textContent,
  microk8s: tr.querySelector('.c-microk8s').textContent,
  skew: !!tr.querySelector('.c-microk8s .skew'),
  agent: tr.querySelector('.c-agent').textContent,
  role: tr.querySelector('.c-node .role').textContent,
  greyed: getComputedStyle(tr.querySelector('.c-temp .v')).color,
  normal: getComputedStyle(tr.querySelector('.c-agent')).color,
}))
"""
BANNER = """({
  verdict: document.getElementById('verdict').textContent,
  voters: document.getElementById('voters').textContent,
  needed: document.getElementById('needed').textContent,
  margin: document.getElementById('margin').textContent,
  counts: document.getElementById('counts').textContent,
  notes: [...document.querySelectorAll('#banner-notes li')].map(li => li.textContent),
  mode: document.body.dataset.mode,
})"""


def healthy(snapshot: dict[str, Any]) -> bool:
    rows = snapshot.get("nodes", [])
    return (
        len(rows) == len(NODES)
        and all(r["health"] and r["role"] == "voter" and r["presence"] == "online" for r in rows)
        and snapshot["banner"]["verdict"] == "healthy"
    )


@pytest.fixture
async def fleet(tmp_path: Path) -> AsyncIterator[Lab]:
    async with lab(tmp_path) as running:
        await wait_fleet(running, healthy, 120)
        yield running


async def rows_by_node(page: cdp.Page) -> dict[str, dict[str, Any]]:
    return {row["node"]: row for row in await page.evaluate(ROWS)}


async def until_row(page: cdp.Page, node: str, inside: str, prop: str, expected: str) -> None:
    """Wait until `prop` of the element `inside` the node's row ("" = the row) is `expected`."""
    element = f"document.querySelector('#rows tr[data-node=\"{node}\"]{inside}')"
    await page.wait_for(
        f"(({element}) || {{}}).{prop.replace('.', '?.')}",
        check=lambda value: value == expected,
        timeout_s=45,
    )


async def test_rows_and_banner_then_kill_and_health_change_live(fleet: Lab, tmp_path: Path) -> None:
    async with cdp.browser(tmp_path) as new_page, new_page() as page:
        await page.navigate(fleet.url)
        await page.wait_for("document.body.dataset.mode === 'live'")
        await page.wait_for(
            "document.querySelectorAll('#rows tr').length", check=lambda n: n == len(NODES)
        )
        # Marks this document: a reload or navigation would lose it.
        await page.evaluate("window.__sameDocument = 'yes'")

        banner = await page.evaluate(BANNER)
        assert banner["verdict"] == "healthy"
        assert banner["voters"] == "3 / 3"
        assert (banner["needed"], banner["margin"]) == ("2", "1")
        assert banner["counts"].startswith("3/3 online")
        assert any("v1.33.0 on pi-03" in note for note in banner["notes"]), banner["notes"]

        rows = await rows_by_node(page)
        assert set(rows) == set(NODES)
        for name in NODES:
            assert rows[name]["presence"] == "online"
            assert not rows[name]["stale"]
            assert rows[name]["agent"] == "0.1.0"
            assert rows[name]["role"].endswith("voter")
        assert rows["pi-01"]["temp"] == "48.3 °C"
        assert rows["pi-02"]["power"].startswith("ok")
        assert "under-voltage since boot" in rows["pi-02"]["power"]
        assert "v1.32.3" in rows["pi-01"]["microk8s"]
        assert "1.32-strict/stable" in rows["pi-01"]["microk8s"]
        assert rows["pi-03"]["microk8s"].startswith("v1.33.0")
        # pi-03 alone runs 1.33: its cell is the one highlighted.
        assert rows["pi-03"]["skew"]
        assert not rows["pi-01"]["skew"]

        # kill -9: no clean offline, the broker publishes the will -> lost, values STALE.
        fleet.nodes["pi-01"].agent.stop()
        await until_row(page, "pi-01", "", "dataset.presence", "lost")
        rows = await rows_by_node(page)
        lost = rows["pi-01"]
        assert lost["stale"]
        assert lost["staleBadge"] is not None
        assert lost["staleBadge"].startswith("STALE")
        assert lost["severity"] == "critical"
        # Its values are still there, greyed.
        assert lost["temp"] == "48.3 °C"
        assert "v1.32.3" in lost["microk8s"]
        assert lost["greyed"] != lost["normal"]
        first = await page.evaluate("document.querySelector('#rows tr').dataset.node")
        assert first == "pi-01"  # critical rows first

        # A health change reaches the open page through the event stream, without a reload.
        fleet.nodes["pi-02"].set_temperature(90500)
        await until_row(page, "pi-02", " .c-health .pill", "textContent", "critical")
        rows = await rows_by_node(page)
        assert rows["pi-02"]["temp"] == "90.5 °C"
        assert any("temperature 90.5 C" in reason for reason in rows["pi-02"]["reasons"])
        assert await page.evaluate("window.__sameDocument") == "yes"
        assert await page.evaluate("document.body.dataset.mode") == "live"


async def test_phone_width_and_polling_fallback(fleet: Lab, tmp_path: Path) -> None:
    """On a phone the rows become labelled cards; without EventSource the page polls."""
    async with cdp.browser(tmp_path) as new_page, new_page() as page:
        await page.viewport(390, 844, 2, mobile=True)
        # No EventSource (an old browser, or a proxy that breaks streams): the page must poll.
        await page.send(
            "Page.addScriptToEvaluateOnNewDocument", source="delete window.EventSource;"
        )
        await page.navigate(fleet.url)
        await page.wait_for(
            "document.querySelectorAll('#rows tr').length", check=lambda n: n == len(NODES)
        )
        assert await page.evaluate("document.body.dataset.mode") == "poll"
        layout = await page.evaluate(
            """({
              scroll: document.documentElement.scrollWidth,
              width: window.innerWidth,
              display: getComputedStyle(document.querySelector('#rows tr')).display,
              label: getComputedStyle(document.querySelector('#rows td'), '::before').content,
            })"""
        )
        assert layout["scroll"] <= layout["width"], layout  # no sideways scrolling
        assert layout["display"] == "block"
        assert json.loads(layout["label"]) == "node"
        # Polling still follows changes: a rollout report appears in the banner.
        rollout: dict[str, Any] = {"rollout": "r-1", "channel": "1.33/stable", "node": "pi-02"}
        rollout.update(step="soak", done=2, total=5, failures=0, max_failures=1, state="running")
        async with aiomqtt.Client(fleet.broker.host, fleet.broker.port) as client:
            await client.publish("microk8s/lab/rollout", json.dumps(rollout), qos=1, retain=True)
        text = await page.wait_for(
            "document.getElementById('rollout').hidden ? null"
            " : document.getElementById('rollout').textContent",
            timeout_s=20,
        )
        assert "r-1 → 1.33/stable" in text
        assert "2 of 5 nodes · now pi-02 (soak) · failures 0 / 1 · running" in text
        assert await page.evaluate("document.getElementById('rollout-bar').style.width") == "40%"
