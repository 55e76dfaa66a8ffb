"""MicroK8s' kubelet arguments file (`$SNAP_DATA/args/kubelet`), parsed (pure).

One `--flag=value` per line, values sometimes quoted, `${SNAP_DATA}`/`${SNAP_COMMON}` unexpanded
(the snap's wrapper expands them), `#` comments. Both the certificate reading (the kubelet's
`--tls-cert-file`) and the eviction headroom (`--eviction-hard`) read it.
"""

from __future__ import annotations

SNAP_DATA = "/var/snap/microk8s/current"
SNAP_COMMON = "/var/snap/microk8s/common"


def parse(text: str) -> dict[str, str]:
    """Flags by name without dashes (`eviction-hard`); a bare flag maps to "true"."""
    flags: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line.startswith("--"):
            continue
        name, sep, value = line[2:].partition("=")
        if not sep:
            name, _, value = name.partition(" ")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        flags[name.strip()] = expand(value) if value else "true"
    return flags


def expand(value: str) -> str:
    """Expand the two snap variables MicroK8s writes into its args files."""
    for name, path in (("SNAP_DATA", SNAP_DATA), ("SNAP_COMMON", SNAP_COMMON)):
        value = value.replace("${" + name + "}", path).replace("$" + name, path)
    return value
