"""The dashboard's watcher on every broker of the interop matrix.

RabbitMQ replays retained messages to exact subscriptions only (docs/brokers.md): a node heard
from live must still show its retained presence, fetched through the watcher's exact replay.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.conftest import watch
from tests.interop.conftest import BrokerFor
from tests.interop.test_brokers import PAIR_IDS, PAIRS, _as_broker, _version
from tests.test_dashboard_server import dashboard, fleet_when

pytestmark = [pytest.mark.broker, pytest.mark.slow]


@pytest.mark.parametrize(("kind", "protocol"), PAIRS, ids=PAIR_IDS)
async def test_retained_presence_of_a_node_heard_live(
    kind: str, protocol: int, broker_for: BrokerFor
) -> None:
    broker = broker_for(kind)
    cluster = f"dash{protocol}"
    base = f"microk8s/{cluster}/nodes/pi-02"
    birth = {"state": "online", "session": 4, "ts": time.time(), "agent_version": "9.9.9"}
    async with watch(_as_broker(broker), protocol=_version(protocol), identifier="pub") as w:
        await w.publish(f"{base}/state", json.dumps(birth), qos=1, retain=True)
        async with dashboard(_as_broker(broker), protocol=protocol, cluster=cluster) as url:
            # Connected means subscribed (the watcher reports it after the SUBACKs).
            await fleet_when(url, lambda body: body["broker"]["connected"])
            health = {"status": "ok", "ts": time.time(), "reasons": []}
            await w.publish(f"{base}/health", json.dumps(health), qos=1)
            body = await fleet_when(
                url, lambda b: bool(b["nodes"]) and b["nodes"][0]["presence"] == "online"
            )
    rows = body["nodes"]
    assert [(r["name"], r["presence"], r["agent_version"]) for r in rows] == [
        ("pi-02", "online", "9.9.9")
    ]
