"""Who may read the dashboard (pure): loopback by default, a bearer token elsewhere.

A token is accepted as `Authorization: Bearer <token>`, or once as `?token=<token>`: the server
then sets a cookie holding an HMAC of the token (never the token itself) and redirects to the same
path without the query, so the token leaves the address bar and the browser history.
"""

from __future__ import annotations

import dataclasses
import hashlib
import hmac
import ipaddress

COOKIE = "edge_dashboard"
MIN_TOKEN_CHARS = 16
_COOKIE_CONTEXT = b"edge-agent dashboard cookie v1"


def is_loopback(bind: str) -> bool:
    """True for 127.0.0.0/8, ::1 and the literal name `localhost` (no DNS is asked)."""
    if bind == "localhost":
        return True
    try:
        return ipaddress.ip_address(bind).is_loopback
    except ValueError:
        return False


def check_token(token: str) -> str | None:
    """Why a token from --token-file is unusable, or None."""
    if len(token) < MIN_TOKEN_CHARS:
        return f"the token must be at least {MIN_TOKEN_CHARS} characters"
    if not token.isascii() or not token.isprintable() or " " in token:
        return "the token must be printable ASCII without spaces"
    return None


def cookie_value(token: str) -> str:
    return hmac.new(token.encode(), _COOKIE_CONTEXT, hashlib.sha256).hexdigest()


@dataclasses.dataclass(frozen=True, slots=True)
class Decision:
    """`allowed`; when allowed by `?token=`, `set_cookie` asks for the cookie and a redirect."""

    allowed: bool
    set_cookie: bool = False


def decide(
    token: str | None, *, authorization: str | None, cookie: str | None, query_token: str | None
) -> Decision:
    """May this request read the page? Without a configured token, everyone who can connect may."""
    if token is None:
        return Decision(allowed=True)
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() == "bearer" and _same(credential.strip(), token):
        return Decision(allowed=True)
    if cookie is not None and _same(cookie, cookie_value(token)):
        return Decision(allowed=True)
    if query_token is not None and _same(query_token, token):
        return Decision(allowed=True, set_cookie=True)
    return Decision(allowed=False)


def _same(given: str, expected: str) -> bool:
    # Bytes: compare_digest refuses non-ASCII str, and a visitor chooses what it sends.
    return hmac.compare_digest(given.encode("utf-8", "replace"), expected.encode())
