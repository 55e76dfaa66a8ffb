"""Pure parsing of what the MicroK8s CLI prints: `status`, `version`, `snap list`/`refresh`, nodes.

No I/O here: the cli backend runs the commands and hands the text over, which keeps every quirk
of the formats (MICROK8S.md §1.1) testable against recorded outputs. Parsers never raise on bad
input; what cannot be read becomes None with a reason in `error`, because the health message must
keep flowing even when MicroK8s prints something new.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any, ClassVar, TypedDict

from agent.microk8s import yamldoc


@dataclasses.dataclass(frozen=True, slots=True)
class MicroK8sFacts:
    """What this node knows about its MicroK8s; None always means "unknown", never "no"."""

    installed: bool
    running: bool | None = None
    version: str | None = None
    """Upstream Kubernetes tag of the snap, e.g. "v1.32.3"."""
    revision: str | None = None
    """Snap revision, e.g. "7964" ("x1" for a locally installed snap)."""
    channel: str | None = None
    """Tracked snap channel, e.g. "1.32-strict/stable"."""
    confinement: str | None = None
    """"strict" or "classic"."""
    ha: bool | None = None
    """MicroK8s' own verdict: more than two dqlite voters (says nothing about their liveness)."""
    addons: tuple[str, ...] | None = None
    """Enabled addon names ("dns"), in MicroK8s' order."""
    role: str | None = None
    """"worker" when this node joined as a worker; None when MicroK8s does not say."""
    ha_nodes: tuple[tuple[str, str], ...] | None = None
    """(address, role) of the dqlite members; role is voter, standby or spare. The pretty format
    omits spares."""
    error: str | None = None
    """Why some fact above is unknown, in words a person can act on."""
    disabled_addons: tuple[str, ...] | None = None
    services: dict[str, bool] | None = dataclasses.field(default=None, hash=False)
    """Snap app name → active, for backends that ask snapd (the CLI cannot tell)."""

    NOT_INSTALLED: ClassVar[MicroK8sFacts]

    def to_health(self) -> dict[str, Any]:
        """The `microk8s` section of the health message (PROTOCOL.md, Health)."""
        health: dict[str, Any] = {
            "installed": self.installed,
            "running": self.running,
            "version": self.version,
            "channel": self.channel,
            "ha": self.ha,
            "addons": None if self.addons is None else list(self.addons),
        }
        if self.role is not None:
            health["role"] = self.role
        if self.confinement is not None:
            health["confinement"] = self.confinement
        if self.services is not None:
            health["services"] = dict(self.services)
        if self.error is not None:
            health["error"] = self.error
        return health


MicroK8sFacts.NOT_INSTALLED = MicroK8sFacts(
    installed=False, running=False, error="microk8s is not installed"
)
NOT_INSTALLED = MicroK8sFacts.NOT_INSTALLED


def with_error(facts: MicroK8sFacts, error: str) -> MicroK8sFacts:
    """Add a reason to `facts.error`, keeping the reasons already there."""
    combined = error if facts.error is None else f"{facts.error}; {error}"
    return dataclasses.replace(facts, error=combined)


# --- microk8s status ------------------------------------------------------------------------

_WORKER_MARK = "acting as a node in a cluster"
_STOPPED_MARK = "microk8s is not running, try microk8s start"
_NOT_READY_PREFIX = "microk8s is not running"
_RUNNING_LINE = "microk8s is running"
_BOOL_WORDS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
_PRETTY_ADDON = re.compile(r"^(?P<name>[\w.-]+)\s+#")
_SHORT_ADDON = re.compile(r"^(?:[\w.-]+/)?(?P<name>[\w.-]+):\s*(?P<state>enabled|disabled)$")
_ERROR_EXCERPT = 200

WORKER = MicroK8sFacts(
    installed=True,
    running=None,
    role="worker",
    error="this node is a worker: microk8s status only reports on control-plane nodes",
)
"""A worker's `status` is a fixed message printed from a lock file, without checking anything,
so `running` stays unknown; addons and HA are cluster facts only control-plane nodes report."""


def parse_status(text: str, exit_code: int) -> MicroK8sFacts:
    """Read `microk8s status --format yaml` output, falling back to the pretty format.

    Exit codes lie (MICROK8S.md §1.1): 0 also on a worker and on a stopped node, 1 when not ready
    (and for permission gates). So the text decides, and exit code 1 only ever turns a claimed
    `running` into False. Output that cannot be read gives `running=None` and a reason.
    """
    stripped = text.strip()
    if not stripped:
        return _unknown(f"microk8s status printed nothing (exit code {exit_code})")
    if _WORKER_MARK in stripped:
        return WORKER
    if _STOPPED_MARK in stripped:
        return MicroK8sFacts(installed=True, running=False, error=_STOPPED_MARK)
    if re.search(r"^microk8s:", stripped, re.MULTILINE):
        facts = _facts_from_doc(_load_yaml(stripped))
    else:
        facts = _parse_pretty(stripped)
    if facts is None:
        excerpt = _excerpt(stripped)
        return _unknown(f"unrecognised microk8s status output (exit code {exit_code}): {excerpt}")
    if exit_code == 1 and facts.running:
        return dataclasses.replace(
            facts, running=False, error="microk8s status: not ready (exit 1)"
        )
    return facts


def _unknown(error: str) -> MicroK8sFacts:
    return MicroK8sFacts(installed=True, running=None, error=error)


def _excerpt(text: str) -> str:
    first = text.splitlines()[0].strip() if text else ""
    printable = "".join(ch if ch.isprintable() else "?" for ch in first)
    return printable[:_ERROR_EXCERPT]


def _as_bool(value: object) -> bool | None:
    """YAML booleans, Python's `True`/`False` and the pretty format's yes/no."""
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _BOOL_WORDS.get(value.strip().lower())
    return None


def _load_yaml(text: str) -> Mapping[str, Any]:
    """PyYAML first; MicroK8s does not quote descriptions, so a ": " in one breaks it."""
    try:
        doc = yamldoc.safe_load(text)
    except (yamldoc.YAMLError, ValueError, RecursionError):
        doc = None
    if isinstance(doc, dict) and isinstance(doc.get("microk8s"), dict):
        return doc
    lines = _LineYaml()
    for line in text.splitlines():
        lines.feed(line)
    return lines.doc


class _LineYaml:
    """Rebuilds the two-level shape of `status --format yaml` line by line; scalars stay strings.

    Splitting each `key: value` at the first colon keeps a description with ": " intact, and
    items are matched by key, not position, so reordered keys are fine.
    """

    def __init__(self) -> None:
        self.doc: dict[str, Any] = {}
        self._top: str | None = None
        self._open: tuple[dict[str, Any], str] | None = None
        self._list: list[Any] | None = None
        self._list_indent = 0
        self._item: dict[str, Any] | None = None
        self._item_indent = 0

    def feed(self, line: str) -> None:
        body = line.strip()
        if not body or body.startswith("#"):
            return
        indent = len(line) - len(line.lstrip())
        if body.startswith("- ") or body == "-":
            self._start_item(body[1:].strip(), indent)
        elif self._item is not None and indent >= self._item_indent:
            self._set(self._item, body)
        else:
            self._item, self._list = None, None
            self._set_nested(indent, body)

    def _start_item(self, body: str, dash_indent: int) -> None:
        """A `- ` line: the next item of the current list, or the first of the last empty key."""
        if self._list is None or dash_indent != self._list_indent:
            if self._open is None:
                return
            owner, key = self._open
            self._list = owner[key] = []
            self._list_indent = dash_indent
        item: dict[str, Any] = {}
        self._list.append(item)
        self._item, self._item_indent = item, dash_indent + 2
        if body:
            self._set(item, body)

    def _set_nested(self, indent: int, body: str) -> None:
        if indent == 0:
            self._top = body.partition(":")[0].strip()
            self._set(self.doc, body)
            return
        if self._top is None:
            return
        section = self.doc.get(self._top)
        if not isinstance(section, dict):
            section = self.doc[self._top] = {}
        self._set(section, body)

    def _set(self, target: dict[str, Any], body: str) -> None:
        key, _, value = body.partition(":")
        value = value.strip()
        target[key.strip()] = value or None
        if not value:
            self._open = (target, key.strip())


def _facts_from_doc(doc: Mapping[str, Any]) -> MicroK8sFacts | None:
    """Interpret the yaml document (from PyYAML or _LineYaml); None if it is not a status."""
    node = doc.get("microk8s")
    if not isinstance(node, dict):
        return None
    running = _as_bool(node.get("running"))
    if running is None:
        return None
    ha_section = doc.get("high-availability")
    ha_section = ha_section if isinstance(ha_section, dict) else {}
    ha_nodes = _yaml_nodes(ha_section.get("nodes"))
    ha = _as_bool(ha_section.get("enabled"))
    if not running:
        message = ha_section.get("message") or node.get("message") or _NOT_READY_PREFIX
        return MicroK8sFacts(True, False, ha=ha, ha_nodes=ha_nodes, error=str(message))
    addons = _yaml_addons(doc.get("addons"))
    if addons is None:
        return MicroK8sFacts(True, True, ha=ha, ha_nodes=ha_nodes, error=_NO_ADDONS)
    enabled, disabled = addons
    return MicroK8sFacts(
        True, True, ha=ha, ha_nodes=ha_nodes, addons=enabled, disabled_addons=disabled
    )


_NO_ADDONS = "microk8s status printed no addon list"


def _yaml_nodes(nodes: object) -> tuple[tuple[str, str], ...] | None:
    """dqlite members; an empty list (dqlite unreachable) is unknown, not "no members"."""
    if not isinstance(nodes, list):
        return None
    pairs = tuple(
        (str(n["address"]), str(n.get("role") or "unknown"))
        for n in nodes
        if isinstance(n, dict) and n.get("address")
    )
    return pairs or None


def _yaml_addons(addons: object) -> tuple[tuple[str, ...], tuple[str, ...]] | None:
    """(enabled, disabled) names from the addon list, or from the deprecated `--yaml` mapping."""
    if isinstance(addons, dict):
        entries = [(str(name).rsplit("/", 1)[-1], state) for name, state in addons.items()]
    elif isinstance(addons, list):
        entries = [
            (str(a["name"]), a.get("status"))
            for a in addons
            if isinstance(a, dict) and a.get("name")
        ]
    else:
        return None
    enabled = tuple(name for name, state in entries if state == "enabled")
    disabled = tuple(name for name, state in entries if state == "disabled")
    return enabled, disabled


def _parse_pretty(text: str) -> MicroK8sFacts | None:
    """The default (and `short`) format; None unless it starts with the running/not-running line."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("microk8s is ")), None)
    if start is None:
        return None
    headline = lines[start].strip()
    if headline.startswith(_NOT_READY_PREFIX):
        return MicroK8sFacts(installed=True, running=False, error=headline)
    if headline != _RUNNING_LINE:
        return None
    pretty = _PrettyStatus()
    for line in lines[start + 1 :]:
        pretty.feed(line.strip())
    return pretty.facts()


class _PrettyStatus:
    """Accumulates the HA lines and addon groups of the pretty (or short) status format."""

    def __init__(self) -> None:
        self.ha: bool | None = None
        self.voters: list[str] | None = None
        self.standbys: list[str] = []
        self.addons: dict[str, list[str]] | None = None
        self._group: str | None = None

    def feed(self, body: str) -> None:
        key, _, value = body.partition(":")
        value = value.strip()
        if key == "high-availability":
            self.ha = _as_bool(value)
        elif key == "datastore master nodes":
            self.voters = _addresses(value)
        elif key == "datastore standby nodes":
            self.standbys = _addresses(value)
        elif key == "addons" and not value:
            self.addons = {"enabled": [], "disabled": []}
        elif self.addons is not None:
            self._feed_addon(self.addons, body)

    def _feed_addon(self, addons: dict[str, list[str]], body: str) -> None:
        if body in ("enabled:", "disabled:"):
            self._group = body[:-1]
        elif short := _SHORT_ADDON.match(body):
            addons[short["state"]].append(short["name"])
        elif (pretty := _PRETTY_ADDON.match(body)) and self._group is not None:
            addons[self._group].append(pretty["name"])

    def facts(self) -> MicroK8sFacts:
        ha_nodes = None
        if self.voters is not None:
            pairs = [(a, "voter") for a in self.voters] + [(a, "standby") for a in self.standbys]
            ha_nodes = tuple(pairs) or None
        if self.addons is None:
            return MicroK8sFacts(True, True, ha=self.ha, ha_nodes=ha_nodes, error=_NO_ADDONS)
        return MicroK8sFacts(
            installed=True,
            running=True,
            ha=self.ha,
            ha_nodes=ha_nodes,
            addons=tuple(self.addons["enabled"]),
            disabled_addons=tuple(self.addons["disabled"]),
        )


def _addresses(value: str) -> list[str]:
    return [] if value.strip() == "none" else value.split()


# --- microk8s version / snap list -----------------------------------------------------------

_VERSION_LINE = re.compile(
    r"^MicroK8s\s+(?P<version>\S+)\s+revision\s+(?P<revision>\S+)\s*$", re.MULTILINE
)
_KUBE_VERSION = re.compile(r"^v?\d+\.\d+(?:\.\d+)?(?:[-+][\w.+-]*)?$")
_SNAP_REVISION = re.compile(r"^x?\d+$")


def parse_version(text: str) -> tuple[str | None, str | None]:
    """`MicroK8s v1.32.3 revision 7964` → ("v1.32.3", "7964"); unreadable parts are None.

    MicroK8s prints `(unknown)` when the snap environment is missing; that is None too.
    """
    match = _VERSION_LINE.search(text)
    if match is None:
        return None, None
    version = match["version"] if _KUBE_VERSION.match(match["version"]) else None
    revision = match["revision"] if _SNAP_REVISION.match(match["revision"]) else None
    return version, revision


class SnapInfo(TypedDict):
    """The microk8s row of `snap list`."""

    version: str
    revision: str
    channel: str | None
    confinement: str


def parse_snap_list(text: str) -> SnapInfo | None:
    """Read the microk8s row of `snap list microk8s`; None when it is absent or unreadable.

    There is no recorded fixture for this; the format is snapd's long-stable table:
        Name      Version  Rev   Tracking            Publisher   Notes
        microk8s  v1.32.3  7964  1.32-strict/stable  canonical✓  -
    No cell contains spaces, so splitting on whitespace is exact. Tracking is "-" for a snap
    installed from a file; Notes is a comma list ("classic", "disabled,classic", "-").
    """
    lines = [line.split() for line in text.splitlines() if line.strip()]
    header = next((cells for cells in lines if cells[:3] == ["Name", "Version", "Rev"]), None)
    if header is None:
        return None
    row = next((cells for cells in lines if cells[0] == "microk8s"), None)
    if row is None or len(row) < 4 or not _SNAP_REVISION.match(row[2]):
        return None
    columns = dict(zip(header, row, strict=False))
    notes = columns.get("Notes", "-").split(",")
    tracking = columns.get("Tracking", "-")
    return SnapInfo(
        version=row[1],
        revision=row[2],
        channel=None if tracking == "-" else tracking,
        confinement="classic" if "classic" in notes else "strict",
    )


_REFRESHED = re.compile(
    r"^microk8s(?: \((?P<channel>[^)]+)\))? (?P<version>\S+) from .* refreshed$"
)


def parse_refresh(text: str) -> tuple[str | None, str | None]:
    """`microk8s (1.33/stable) v1.33.0 from Canonical✓ refreshed` → ("1.33/stable", "v1.33.0").

    (None, None) for anything else, e.g. `snap "microk8s" has no updates available`.
    """
    for line in text.splitlines():
        match = _REFRESHED.match(line.strip())
        if match:
            return match["channel"], match["version"]
    return None, None


def parse_node_ready(text: str) -> tuple[bool | None, str | None]:
    """(Ready, kubeletVersion) from `kubectl get node NAME -o json`; None for what is missing.

    A Ready condition of "Unknown" (the node stopped reporting) counts as not ready.
    """
    try:
        node = json.loads(text)
    except ValueError:
        return None, None
    status = node.get("status") if isinstance(node, dict) else None
    if not isinstance(status, dict):
        return None, None
    conditions = status.get("conditions")
    ready: bool | None = None
    for condition in conditions if isinstance(conditions, list) else ():
        if isinstance(condition, dict) and condition.get("type") == "Ready":
            ready = condition.get("status") == "True"
    info = status.get("nodeInfo")
    kubelet = info.get("kubeletVersion") if isinstance(info, dict) else None
    return ready, kubelet if isinstance(kubelet, str) else None
