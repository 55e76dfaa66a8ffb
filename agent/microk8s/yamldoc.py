"""The YAML reader of every parser (status, kubeconfig, dqlite membership): libyaml when present.

PyYAML's pure-Python SafeLoader takes ~2 ms for a `microk8s status --format yaml` document; the
C loader over libyaml (in PyYAML's wheels and Debian's python3-yaml) ~0.2 ms, with the same
safe subset. Pure: no I/O.
"""

from __future__ import annotations

from typing import Any

import yaml

YAMLError = yaml.YAMLError
SafeLoader: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def safe_load(text: str) -> Any:
    """`yaml.safe_load`, through libyaml when PyYAML was built with it.

    Raises:
        yaml.YAMLError: the text is not YAML.
    """
    return yaml.load(text, Loader=SafeLoader)  # noqa: S506 (a safe loader, C or Python)
