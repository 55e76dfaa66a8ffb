"""`python -m agent.health.certs_probe DIR [FILE...]`: print every certificate's expiry as JSON.

A short-lived child of the agent (see agent.health.certs): importing `cryptography` costs about
8 MiB of PSS for good, so the daemon never does; this process exits as soon as it has printed.
Output, one line: `{"certs": {"<name>": <not-after, unix seconds>}, "errors": {"<name>": "why"}}`,
where a name is relative to DIR (`front-proxy-client.crt`) or the FILE path as given.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from cryptography import x509

PATTERNS = ("*.crt", "*.pem")
MAX_BYTES = 1 << 20


def expiry(path: Path) -> float:
    """The earliest not-after of the PEM certificates in `path` (a bundle has several)."""
    data = path.read_bytes()[:MAX_BYTES]
    certs = x509.load_pem_x509_certificates(data)
    return min(cert.not_valid_after_utc.timestamp() for cert in certs)


def probe(directory: Path, files: list[Path]) -> dict[str, dict[str, object]]:
    found: dict[str, object] = {}
    errors: dict[str, object] = {}
    candidates = [(p.name, p) for pattern in PATTERNS for p in sorted(directory.glob(pattern))]
    candidates += [(str(p), p) for p in files if p.exists()]
    seen: set[Path] = set()
    for name, path in candidates:
        if path.resolve() in seen:
            continue  # the kubelet's certificate is usually in the certs directory already
        seen.add(path.resolve())
        try:
            found[name] = round(expiry(path))
        except (OSError, ValueError) as exc:
            errors[name] = f"{type(exc).__name__}: {exc}"[:200]
    return {"certs": found, "errors": errors}


def main(argv: list[str]) -> int:
    if not argv:
        sys.stderr.write("usage: python -m agent.health.certs_probe DIR [FILE...]\n")
        return 2
    sys.stdout.write(json.dumps(probe(Path(argv[0]), [Path(a) for a in argv[1:]])) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
