"""The rules of the house, read from the imports (AST) of `agent/`.

A part is a subpackage of `agent` (link, health, commands, microk8s, ha, operator, platform). The
rules say which part may reach which, which modules must stay pure, and which adapter modules may
import each third-party library. Lazy imports inside functions count like any other: a rule that
only looked at the top of a file would miss exactly the imports that footprint work moves.
Kept apart from the test so that the test can also prove the check fails on a bad tree.
"""

from __future__ import annotations

import ast
import dataclasses
import fnmatch
import sys
from collections.abc import Iterator
from pathlib import Path

PARTS = frozenset({"link", "health", "commands", "microk8s", "ha", "operator", "platform"})

# part -> parts it must never import.
FORBIDDEN_PARTS: dict[str, frozenset[str]] = {
    "link": PARTS - {"link"},
    "microk8s": frozenset({"commands", "link", "ha", "health", "operator"}),
    "health": frozenset({"commands", "ha", "operator"}),
    "ha": frozenset({"commands", "operator"}),
    "commands": frozenset({"operator"}),
    "platform": frozenset({"commands", "ha", "health", "link", "operator"}),
}

# Top-level leaves every part may import; they import no part (the snap paths give defaults).
LEAVES = frozenset({"errors", "durable", "logs", "settings", "config_rules", "config"})
LEAF_MAY_IMPORT = frozenset({"agent.platform.snap_paths"})

# Pure logic: parsing, validation, verdicts. No network, process or system I/O libraries.
PURE_MODULES = (
    "agent.commands.wire",
    "agent.commands.verbs",
    "agent.commands.upgrade_policy",
    "agent.ha.quorum",
    "agent.ha.peers",
    "agent.ha.failover",
    "agent.ha.dqlite_wire",
    "agent.ha.readiness",
    "agent.ha.reconcile",
    "agent.health.verdict",
    "agent.microk8s.status",
    "agent.microk8s.kube_model",
    "agent.microk8s.snapd_model",
    "agent.microk8s.request_bodies",
    "agent.microk8s.redact",
    "agent.microk8s.yamldoc",
    "agent.link.presence",
    "agent.link.topics",
    "agent.config_rules",
    "agent.operator.roster",
    "agent.operator.rollout_plan",
    "agent.operator.dashboard.fleet_view",
    "agent.operator.dashboard.rows",
    "agent.operator.dashboard.access",
)
IMPURE_LIBRARIES = frozenset(
    {"aiohttp", "aiomqtt", "paho", "psutil", "asyncio", "socket", "ssl", "subprocess", "urllib"}
)

# Third-party library -> the adapter modules (fnmatch patterns) allowed to import it.
ADAPTERS: dict[str, tuple[str, ...]] = {
    "aiomqtt": ("agent.link.*",),
    "paho": ("agent.link.*",),
    # HTTP clients to MicroK8s' services, and the two HTTP servers (node endpoint, fleet page).
    "aiohttp": (
        "agent.microk8s.snapd",
        "agent.microk8s.clusteragent",
        "agent.microk8s.kubeapi",
        "agent.microk8s.drain",
        "agent.ha.probes",
        "agent.ha.dqlite",
        "agent.health.endpoint",
        "agent.operator.dashboard*",
    ),
    "psutil": ("agent.health.*", "agent.ha.probes"),
    "prometheus_client": ("agent.health.metrics", "agent.health.endpoint"),
    "cryptography": ("agent.commands.signing", "agent.health.certs*"),
    "nacl": ("agent.commands.signing",),
    "kubernetes_asyncio": ("agent.microk8s.drain",),
    "yaml": (
        "agent.ha.membership",
        "agent.microk8s.kube_model",
        "agent.microk8s.request_bodies",
        "agent.microk8s.status",
        "agent.microk8s.yamldoc",
    ),
    # Logging is cross-cutting: every module may take a structlog logger.
    "structlog": ("agent.*",),
}


@dataclasses.dataclass(frozen=True)
class Violation:
    module: str
    line: int
    imported: str
    rule: str

    def __str__(self) -> str:
        return f"{self.module}:{self.line} imports {self.imported}: {self.rule}"


def module_name(root: Path, path: Path) -> str:
    rel = path.relative_to(root.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports_of(tree: ast.AST) -> Iterator[tuple[int, str]]:
    """Every absolute module name an import statement names, lazy imports included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module
            for alias in node.names:
                yield node.lineno, f"{node.module}.{alias.name}"


def part_of(module: str) -> str | None:
    pieces = module.split(".")
    return pieces[1] if len(pieces) > 2 and pieces[1] in PARTS else None


def _part_rules(module: str, line: int, imported: str) -> Iterator[Violation]:
    own, theirs = part_of(module), part_of(imported + ".x")
    if own and theirs and theirs in FORBIDDEN_PARTS.get(own, frozenset()):
        yield Violation(module, line, imported, f"{own}/ must not import {theirs}/")
    leaf = module.rsplit(".", maxsplit=1)[-1] if module.count(".") == 1 else None
    allowed = any(imported.startswith(ok) for ok in LEAF_MAY_IMPORT)
    if leaf in LEAVES and theirs and not allowed:
        yield Violation(module, line, imported, f"top-level {leaf} must not import a part")


def _library_rules(module: str, line: int, imported: str) -> Iterator[Violation]:
    top = imported.split(".", maxsplit=1)[0]
    if top in sys.stdlib_module_names or top in {"agent", "__future__"}:
        if module in PURE_MODULES and top in IMPURE_LIBRARIES:
            yield Violation(module, line, imported, "a pure module must not do I/O")
        return
    if module in PURE_MODULES and top in IMPURE_LIBRARIES:
        yield Violation(module, line, imported, "a pure module must not do I/O")
    patterns = ADAPTERS.get(top)
    if patterns is None:
        yield Violation(module, line, imported, "a new library needs an entry in ADAPTERS")
    elif not any(fnmatch.fnmatchcase(module, pattern) for pattern in patterns):
        yield Violation(module, line, imported, f"{top} belongs to {', '.join(patterns)}")


def violations(root: Path) -> list[Violation]:
    """All rule breaks in the package at `root` (the `agent` directory)."""
    found: list[Violation] = []
    for path in sorted(root.rglob("*.py")):
        module = module_name(root, path)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for line, imported in imports_of(tree):
            found.extend(_part_rules(module, line, imported))
            found.extend(_library_rules(module, line, imported))
    return found
