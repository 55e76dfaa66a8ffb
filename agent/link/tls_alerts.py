"""Why a TLS connection failed, when the MQTT library only says "Operation timed out".

A broker that rejects the client certificate (unknown CA, none sent, expired) answers the TLS
handshake with an alert; paho logs it ("failed to receive on socket: [SSL: …ALERT_UNKNOWN_CA]")
and aiomqtt then reports the CONNACK wait as a timeout (issue 11). This handler, on the logger
the client is given, keeps the last such alert so the link can say what really happened.
"""

from __future__ import annotations

import logging
import re

_ALERT = re.compile(r"\[SSL: (?P<name>[A-Z0-9_]+)\][^\n]*|EOF occurred in violation of protocol")
_HINTS = {
    "UNKNOWN_CA": "the broker does not trust this certificate's CA",
    "CERTIFICATE_REQUIRED": "the broker requires a client certificate (mqtt.cert_file/key_file)",
    "BAD_CERTIFICATE": "the broker rejected the client certificate",
    "CERTIFICATE_EXPIRED": "the client certificate has expired",
    "CERTIFICATE_REVOKED": "the client certificate was revoked",
    "CERTIFICATE_UNKNOWN": "the broker rejected the client certificate",
}


class TlsAlerts(logging.Handler):
    """Remembers the last TLS alert logged by paho."""

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.last: str | None = None

    def emit(self, record: logging.LogRecord) -> None:
        match = _ALERT.search(record.getMessage())
        if match is not None:
            self.last = match.group(0)[:200]

    def explain(self, error: str) -> str:
        """`error`, with the TLS alert (and what it means) when one was seen; then forget it."""
        alert, self.last = self.last, None
        if alert is None:
            return error
        name = _ALERT.search(alert)
        named = name.group("name") if name and name.group("name") else ""
        hint = next((h for key, h in _HINTS.items() if key in named), None)
        if hint is None:
            hint = "the broker closed the TLS connection (a rejected client certificate?)"
        return (
            f"TLS handshake refused by the broker: {hint} ({alert}); the client reported: {error}"
        )


def logger_for(name: str) -> tuple[logging.Logger, TlsAlerts]:
    """A logger for one client, with a TlsAlerts handler, that propagates to "mqtt".

    Not registered with logging's manager (which keeps loggers forever): it goes away with its
    client, and two clients never share handlers.
    """
    logger = logging.Logger(f"mqtt.{name}")  # noqa: LOG001 - deliberately unregistered
    logger.parent = logging.getLogger("mqtt")
    alerts = TlsAlerts()
    logger.addHandler(alerts)
    return logger, alerts
