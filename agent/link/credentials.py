"""MQTT credentials and TLS material, read from files at each connect (so rotation just works)."""

from __future__ import annotations

import ssl
from pathlib import Path

from agent.errors import TransportError
from agent.settings import MqttSettings


def read_password(settings: MqttSettings) -> str | None:
    """The password from `mqtt.password_file` (trailing newline stripped), or None."""
    if not settings.password_file:
        return None
    try:
        return Path(settings.password_file).read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise TransportError(f"cannot read mqtt.password_file: {exc.strerror}") from exc


def tls_context(settings: MqttSettings) -> ssl.SSLContext:
    """A verifying client context with the configured CA and, if set, the client certificate."""
    try:
        context = ssl.create_default_context(cafile=settings.ca_file or None)
        if settings.cert_file:
            context.load_cert_chain(settings.cert_file, settings.key_file)
    except (OSError, ssl.SSLError) as exc:
        raise TransportError(f"cannot load TLS material: {exc}") from exc
    return context
