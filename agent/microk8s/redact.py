"""Pure masking of secrets in text that leaves the node (command output, logs, status details).

A MicroK8s join URL carries a cluster token that admits any holder into the cluster (and, for a
control-plane join, hands it the CA key), and MicroK8s echoes it in some messages (the low-memory
guard prints the whole `microk8s join <url> --worker` line). Output is masked before it is
published or logged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

MASK = "****"

# <IPv4>:<port>/<token>[/<fingerprint>]; a token is >= 32 alphanumerics for MicroK8s, but anything
# from 16 up is masked so that a shortened or mistyped token does not leak either.
_JOIN_URL = re.compile(
    r"(?P<endpoint>(?<![\w.])\d{1,3}(?:\.\d{1,3}){3}:\d{1,5})"
    r"/(?P<token>[A-Za-z0-9]{16,})(?![A-Za-z0-9])"
)


def mask_secrets(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each non-empty secret in `text` with MASK.

    Longer secrets are replaced first, so a secret that contains another is masked whole.
    """
    for secret in sorted({s for s in secrets if s}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    return text


def mask_join_urls(text: str) -> str:
    """Mask the token of every join URL: `<ip>:<port>/<token>/<fp>` → `<ip>:<port>/****/<fp>`.

    The fingerprint stays: it only identifies the server certificate and helps debugging.
    """
    return _JOIN_URL.sub(lambda m: f"{m['endpoint']}/{MASK}", text)


def join_url_secrets(url: str) -> tuple[str, ...]:
    """The secret parts of a join URL (its token), for mask_secrets on output that splits it."""
    parts = url.split("/")
    return (parts[1],) if len(parts) > 1 and parts[1] else ()
