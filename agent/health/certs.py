"""Certificate expiry (MicroK8s' certs directory and the kubelet's serving certificate).

MicroK8s issues one-year certificates and does not rotate the front-proxy and kubelet ones, so a
cluster stops answering on the anniversary of its install. Reading them needs `cryptography`,
which would stay resident in the daemon, so `read` runs `agent.health.certs_probe` as a
short-lived child through agent.microk8s.process (its own process group, a deadline, bounded
output) on a slow interval; `assess` is the pure verdict over its answer.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from agent.errors import CommandTimedOut, ProcessError
from agent.health.verdict import CRITICAL, DEGRADED, OK, Finding
from agent.logs import get_logger
from agent.microk8s import process

log = get_logger(__name__)

PROBE_TIMEOUT_S = 60.0
DAY_S = 86400.0


def kubelet_cert(flags: Mapping[str, str], kubelet_dir: Path) -> Path:
    """The kubelet's serving certificate: `--tls-cert-file`, else `kubelet.crt` in `--cert-dir`
    (where MicroK8s' kubelet writes its self-signed one), else under the kubelet's root dir."""
    if named := flags.get("tls-cert-file"):
        return Path(named)
    if cert_dir := flags.get("cert-dir"):
        return Path(cert_dir) / "kubelet.crt"
    return kubelet_dir / "pki" / "kubelet.crt"


def anything_to_read(certs_dir: Path, kubelet: Path) -> bool:
    """False without MicroK8s: then no child process is started for nothing."""
    return certs_dir.is_dir() or kubelet.is_file()


async def read(certs_dir: Path, extra: list[Path], python: str = sys.executable) -> dict[str, Any]:
    """Expiry (unix seconds) by certificate name; empty when nothing could be read.

    Raises:
        ProcessError: the probe could not run or answered something else than its JSON line.
    """
    argv = [python, "-m", "agent.health.certs_probe", str(certs_dir), *map(str, extra)]
    try:
        done = await process.run(argv, timeout_s=PROBE_TIMEOUT_S, output_limit=262_144)
    except CommandTimedOut as exc:
        raise ProcessError(f"certs probe timed out after {PROBE_TIMEOUT_S:g} s") from exc
    if done.exit_code != 0:
        raise ProcessError(f"certs probe exited {done.exit_code}: {process.tail(done.output, 300)}")
    try:
        answer = json.loads(done.output.strip().splitlines()[-1])
    except (ValueError, IndexError) as exc:
        raise ProcessError("certs probe answered no JSON") from exc
    for name, why in (answer.get("errors") or {}).items():
        log.warning("certificate_unreadable", certificate=name, error=why)
    certs = answer.get("certs")
    return dict(certs) if isinstance(certs, dict) else {}


def assess(
    expiries: Mapping[str, object] | None, now: float, warn_days: float, crit_days: float
) -> tuple[dict[str, Any] | None, list[Finding]]:
    """The `certs` block and its finding: the earliest certificate decides.

    No certificate read (MicroK8s absent, directory not readable) is unknown: `None`.
    """
    numbers = {
        name: float(when)
        for name, when in (expiries or {}).items()
        if isinstance(when, int | float) and not isinstance(when, bool)
    }
    if not numbers:
        return None, []
    earliest = min(numbers, key=numbers.__getitem__)
    days = (numbers[earliest] - now) / DAY_S
    block: dict[str, Any] = {
        "status": OK,
        "earliest": earliest,
        "days": round(days, 1),
        "count": len(numbers),
    }
    if days < 0:
        reason = f"certificate {earliest} expired {-days:.1f} days ago"
    else:
        reason = f"certificate {earliest} expires in {days:.1f} days"
    if days <= crit_days:
        block["status"] = CRITICAL
        return block, [(CRITICAL, f"{reason} (<= {crit_days:g})")]
    if days <= warn_days:
        block["status"] = DEGRADED
        return block, [(DEGRADED, f"{reason} (<= {warn_days:g})")]
    return block, []
