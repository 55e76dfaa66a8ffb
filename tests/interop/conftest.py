"""Interop fixtures: each broker kind started once per test module (lazily), closed at its end."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.interop.brokers import KINDS, InteropBroker

BrokerFor = Callable[[str], InteropBroker]


@pytest.fixture(scope="module")
def broker_for(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerFor]:
    """`broker_for("rabbitmq")`: that broker, started on first use and shared by the module."""
    started: dict[str, InteropBroker] = {}

    def get(kind: str) -> InteropBroker:
        if kind not in started:
            broker: InteropBroker = KINDS[kind](tmp_path_factory.mktemp(kind))
            broker.start()
            started[kind] = broker
        return started[kind]

    yield get
    for broker in started.values():
        broker.close()
