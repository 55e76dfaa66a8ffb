"""agent.microk8s.status against every recorded CLI output, plus the variations MicroK8s allows."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent.microk8s.status import (
    NOT_INSTALLED,
    WORKER,
    MicroK8sFacts,
    parse_node_ready,
    parse_refresh,
    parse_snap_list,
    parse_status,
    parse_version,
    with_error,
)
from tests.paths import FIXTURES, MICROK8S_CLI

NOT_RUNNING_MESSAGE = "microk8s is not running. Use microk8s inspect for a deeper inspection."
HA_NODES = (
    ("127.0.0.11:19001", "voter"),
    ("127.0.0.12:19001", "voter"),
    ("127.0.0.13:19001", "voter"),
    ("127.0.0.14:19001", "standby"),
)
PRETTY_ENABLED = ("dns", "ha-cluster", "helm", "helm3")

# fixture file -> (exit code MicroK8s gives with it, expected facts)
STATUS_FIXTURES: dict[str, tuple[int, MicroK8sFacts]] = {
    "status-ha.yaml": (
        0,
        MicroK8sFacts(
            installed=True,
            running=True,
            ha=True,
            ha_nodes=HA_NODES,
            addons=("dns", "ha-cluster"),
            disabled_addons=("cert-manager", "metallb"),
        ),
    ),
    "status-not-running.yaml": (
        1,
        MicroK8sFacts(installed=True, running=False, ha=True, error=NOT_RUNNING_MESSAGE),
    ),
    "status-ha.txt": (
        0,
        MicroK8sFacts(
            installed=True,
            running=True,
            ha=True,
            ha_nodes=HA_NODES,
            addons=PRETTY_ENABLED,
            disabled_addons=(
                "cert-manager",
                "cis-hardening",
                "community",
                "hostpath-storage",
                "ingress",
                "metallb",
                "metrics-server",
                "rbac",
            ),
        ),
    ),
    "status-single.txt": (
        0,
        MicroK8sFacts(
            installed=True,
            running=True,
            ha=False,
            ha_nodes=(("127.0.0.1:19001", "voter"),),
            addons=PRETTY_ENABLED,
            disabled_addons=("cert-manager", "hostpath-storage", "ingress", "metallb"),
        ),
    ),
    "status-not-running.txt": (
        1,
        MicroK8sFacts(installed=True, running=False, error=NOT_RUNNING_MESSAGE),
    ),
    "status-worker.txt": (0, WORKER),
}


def fixture(name: str) -> str:
    return (MICROK8S_CLI / name).read_text()


def test_every_status_fixture_has_expectations() -> None:
    recorded = {p.name for p in MICROK8S_CLI.glob("status-*")}
    assert recorded == set(STATUS_FIXTURES)


@pytest.mark.parametrize("name", sorted(STATUS_FIXTURES))
def test_status_fixture(name: str) -> None:
    exit_code, expected = STATUS_FIXTURES[name]
    assert parse_status(fixture(name), exit_code) == expected


@pytest.mark.parametrize("path", sorted(MICROK8S_CLI.iterdir()), ids=lambda p: p.name)
@pytest.mark.parametrize("exit_code", [0, 1, 2, -9])
def test_any_fixture_file_parses_without_raising(path: Path, exit_code: int) -> None:
    facts = parse_status(path.read_text(), exit_code)
    assert facts.installed
    if not path.name.startswith("status-"):
        assert facts.running is None
        assert facts.error is not None and "unrecognised" in facts.error
    parse_version(path.read_text())
    parse_snap_list(path.read_text())


def test_worker_is_not_known_to_be_running() -> None:
    facts = parse_status(fixture("status-worker.txt"), 0)
    assert (facts.running, facts.role, facts.addons, facts.ha) == (None, "worker", None, None)
    assert facts.error is not None and "worker" in facts.error


def test_version_fixture() -> None:
    assert parse_version(fixture("version.txt")) == ("v1.32.3", "7964")


# --- variations ---------------------------------------------------------------------------

REORDERED_YAML = """\
addons:
  - status: disabled
    name: metallb
    repository: core
  - description: CoreDNS
    status: enabled
    version: 1.13.1
    name: dns
high-availability:
  nodes:
    - role: voter
      address: 127.0.0.11:19001
    - address: 127.0.0.14:19001
      role: spare
  enabled: False
microk8s:
  running: True
"""


def test_yaml_keys_reordered() -> None:
    facts = parse_status(REORDERED_YAML, 0)
    assert facts.running is True
    assert facts.ha is False
    assert facts.addons == ("dns",)
    assert facts.disabled_addons == ("metallb",)
    assert facts.ha_nodes == (("127.0.0.11:19001", "voter"), ("127.0.0.14:19001", "spare"))


def test_yaml_keys_reordered_with_colon_in_description() -> None:
    text = REORDERED_YAML.replace("description: CoreDNS", "description: DNS: the CoreDNS way")
    assert parse_status(text, 0) == parse_status(REORDERED_YAML, 0)


@pytest.mark.parametrize(
    "description",
    ["CoreDNS: cluster DNS", "a: b: c", "ends with colon:", "url http://x:1/ and # hash"],
)
def test_description_with_colon(description: str) -> None:
    text = fixture("status-ha.yaml").replace("description: CoreDNS", f"description: {description}")
    assert parse_status(text, 0) == STATUS_FIXTURES["status-ha.yaml"][1]


def test_colon_description_with_empty_version_before_next_item() -> None:
    # `version: ` (empty) right before the next `- name:` must not swallow the next items.
    text = fixture("status-ha.yaml").replace(
        "description: Configure high availability", "description: HA: configure it"
    )
    assert parse_status(text, 0).disabled_addons == ("cert-manager", "metallb")


def test_not_running_yaml_with_colon_in_message() -> None:
    text = fixture("status-not-running.yaml").replace("inspect for", "inspect: for")
    facts = parse_status(text, 1)
    assert (facts.running, facts.ha, facts.addons) == (False, True, None)
    assert facts.error == NOT_RUNNING_MESSAGE.replace("inspect for", "inspect: for")


@pytest.mark.parametrize("text", ["", "   \n\n  ", "\n"])
@pytest.mark.parametrize("exit_code", [0, 1])
def test_empty_output(text: str, exit_code: int) -> None:
    facts = parse_status(text, exit_code)
    assert facts.installed and facts.running is None
    assert facts.error == f"microk8s status printed nothing (exit code {exit_code})"


@pytest.mark.parametrize(
    "text",
    [
        bytes(range(256)).decode("utf-8", errors="replace"),
        "\x00\x01\x02\x7f",
        "microk8s:\n\x00\x01: [",
        "microk8s: [1, 2",
        "microk8s: running",
        "microk8s:\n  running: maybe\n",
        "- just\n- a list\n",
        "{{{{",
        "Traceback (most recent call last):\n  File x\nKeyError: 'x'",
        "Insufficient permissions to access MicroK8s.",
        "microk8s is confused",
        "&anchor *alias",
    ],
)
def test_garbage_is_unknown(text: str) -> None:
    facts = parse_status(text, 0)
    assert facts.installed and facts.running is None
    assert facts.addons is None
    assert facts.error is not None and facts.error.startswith("unrecognised microk8s status")
    assert len(facts.error) < 300


def test_permission_gate_message_is_quoted() -> None:
    facts = parse_status("Insufficient permissions to access MicroK8s.\nsudo usermod ...\n", 1)
    assert facts.error == (
        "unrecognised microk8s status output (exit code 1): "
        "Insufficient permissions to access MicroK8s."
    )


@pytest.mark.parametrize("cut", range(0, 800, 7))
def test_truncated_yaml_never_raises(cut: int) -> None:
    facts = parse_status(fixture("status-ha.yaml")[:cut], 0)
    assert facts.running in (True, None)
    if facts.running is None:
        assert facts.error is not None


def test_running_without_addon_list_says_so() -> None:
    facts = parse_status("microk8s:\n  running: True\nhigh-availability:\n  enabled: False\n", 0)
    assert (facts.running, facts.ha, facts.addons) == (True, False, None)
    assert facts.error == "microk8s status printed no addon list"


@pytest.mark.parametrize("name", ["status-ha.yaml", "status-ha.txt", "status-single.txt"])
def test_exit_code_1_means_not_ready(name: str) -> None:
    facts = parse_status(fixture(name), 1)
    assert facts.running is False
    assert facts.error == "microk8s status: not ready (exit 1)"


def test_stopped_exits_0_but_is_not_running() -> None:
    facts = parse_status("microk8s is not running, try microk8s start\n", 0)
    assert facts == MicroK8sFacts(
        installed=True, running=False, error="microk8s is not running, try microk8s start"
    )


@pytest.mark.parametrize(
    ("word", "expected"), [("True", True), ("true", True), ("False", False), ("no", False)]
)
def test_yaml_boolean_spellings(word: str, expected: bool) -> None:
    text = fixture("status-ha.yaml").replace("running: True", f"running: {word}")
    assert parse_status(text, 0).running is expected


def test_empty_nodes_are_unknown_not_none_exist() -> None:
    facts = parse_status(fixture("status-not-running.yaml"), 1)
    assert facts.ha_nodes is None


def test_pretty_after_a_warning_line() -> None:
    text = "WARNING: something odd\n" + fixture("status-single.txt")
    assert parse_status(text, 0) == STATUS_FIXTURES["status-single.txt"][1]


def test_pretty_long_addon_name_and_no_standbys() -> None:
    text = (
        "microk8s is running\n"
        "high-availability: no\n"
        "  datastore master nodes: 127.0.0.11:19001\n"
        "  datastore standby nodes: none\n"
        "addons:\n"
        "  enabled:\n"
        "    a-very-long-addon-name-indeed # (community) Something\n"
        "  disabled:\n"
    )
    facts = parse_status(text, 0)
    assert facts.addons == ("a-very-long-addon-name-indeed",)
    assert facts.disabled_addons == ()
    assert facts.ha_nodes == (("127.0.0.11:19001", "voter"),)


def test_pretty_external_etcd_has_no_dqlite_members() -> None:
    text = (
        "microk8s is running\n"
        "high-availability: no\n"
        "  datastore endpoints:\n"
        "    127.0.0.5:12379\n"
        "addons:\n"
        "  enabled:\n"
        "    dns                  # (core) CoreDNS\n"
    )
    facts = parse_status(text, 0)
    assert (facts.ha, facts.ha_nodes, facts.addons) == (False, None, ("dns",))


def test_short_format() -> None:
    text = (
        "microk8s is running\naddons:\ncore/dns: enabled\ncore/ha-cluster: enabled\n"
        "core/metallb: disabled\ncommunity/argocd: disabled\n"
    )
    facts = parse_status(text, 0)
    assert (facts.running, facts.ha, facts.ha_nodes) == (True, None, None)
    assert facts.addons == ("dns", "ha-cluster")
    assert facts.disabled_addons == ("metallb", "argocd")


def test_deprecated_yaml_flag_format() -> None:
    text = "microk8s:\n  running: True\naddons:\n  core/dns: enabled\n  core/rbac: disabled\n"
    facts = parse_status(text, 0)
    assert (facts.running, facts.addons, facts.disabled_addons) == (True, ("dns",), ("rbac",))


@given(st.text(max_size=400), st.integers(min_value=-20, max_value=255))
def test_parse_status_never_raises(text: str, exit_code: int) -> None:
    facts = parse_status(text, exit_code)
    assert facts.installed
    assert facts.running is not None or facts.error is not None


@given(st.lists(st.sampled_from(fixture("status-ha.yaml").splitlines()), max_size=40))
def test_shuffled_yaml_lines_never_raise(lines: list[str]) -> None:
    facts = parse_status("\n".join(["microk8s:", *lines]), 0)
    assert facts.running in (True, False, None)


# --- to_health ------------------------------------------------------------------------------


def test_to_health_running() -> None:
    facts = parse_status(fixture("status-ha.yaml"), 0)
    facts = dataclasses.replace(facts, version="v1.32.3", channel="1.32/stable")
    assert facts.to_health() == {
        "installed": True,
        "running": True,
        "version": "v1.32.3",
        "channel": "1.32/stable",
        "ha": True,
        "addons": ["dns", "ha-cluster"],
    }
    json.dumps(facts.to_health())


def test_to_health_worker_and_not_installed() -> None:
    assert WORKER.to_health() == {
        "installed": True,
        "running": None,
        "version": None,
        "channel": None,
        "ha": None,
        "addons": None,
        "role": "worker",
        "error": WORKER.error,
    }
    assert MicroK8sFacts.NOT_INSTALLED is NOT_INSTALLED
    assert NOT_INSTALLED.to_health()["installed"] is False


def test_with_error_accumulates() -> None:
    facts = with_error(with_error(MicroK8sFacts(installed=True), "a"), "b")
    assert facts.error == "a; b"


def test_facts_hashable_despite_services() -> None:
    facts = MicroK8sFacts(installed=True, services={"daemon-kubelite": True})
    assert hash(facts) == hash(MicroK8sFacts(installed=True, services={"x": False}))


# --- version, snap list, refresh, node -----------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("MicroK8s v1.32.3 revision 7964\n", ("v1.32.3", "7964")),
        ("MicroK8s v1.33.0-rc.1 revision 8001", ("v1.33.0-rc.1", "8001")),
        ("MicroK8s v1.32.3 revision x1", ("v1.32.3", "x1")),
        ("MicroK8s (unknown) revision 7964", (None, "7964")),
        ("MicroK8s (unknown) revision (unknown)", (None, None)),
        ("WARNING: x\nMicroK8s v1.30.1 revision 6876\n", ("v1.30.1", "6876")),
        ("", (None, None)),
        ("garbage", (None, None)),
        ("MicroK8s v1.32.3", (None, None)),
        ("\x00\xff", (None, None)),
    ],
)
def test_parse_version(text: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_version(text) == expected


SNAP_HEADER = "Name      Version  Rev   Tracking            Publisher   Notes\n"


@pytest.mark.parametrize(
    ("row", "expected"),
    [
        (
            "microk8s  v1.32.3  7964  1.32-strict/stable  canonical✓  -",
            ("v1.32.3", "7964", "1.32-strict/stable", "strict"),
        ),
        (
            "microk8s  v1.32.3  7964  1.32/stable         canonical✓  classic",
            ("v1.32.3", "7964", "1.32/stable", "classic"),
        ),
        (
            "microk8s  v1.32.3  7964  latest/edge         canonical**  disabled,classic",
            ("v1.32.3", "7964", "latest/edge", "classic"),
        ),
        (
            "microk8s  v1.32.3  x1    -                   -           -",
            ("v1.32.3", "x1", None, "strict"),
        ),
    ],
)
def test_parse_snap_list(row: str, expected: tuple[str, str, str | None, str]) -> None:
    info = parse_snap_list(SNAP_HEADER + row + "\n")
    assert info is not None
    assert (info["version"], info["revision"], info["channel"], info["confinement"]) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "error: no matching snaps installed\n",
        SNAP_HEADER,
        SNAP_HEADER + "core22  20240111  1122  latest/stable  canonical✓  base\n",
        SNAP_HEADER + "microk8s\n",
        SNAP_HEADER + "microk8s  v1  notanumber  x  y  z\n",
        "microk8s  v1.32.3  7964  1.32/stable  canonical✓  -\n",
    ],
)
def test_parse_snap_list_rejects(text: str) -> None:
    assert parse_snap_list(text) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("microk8s (1.33/stable) v1.33.0 from Canonical✓ refreshed\n", ("1.33/stable", "v1.33.0")),
        ("microk8s v1.33.0 from Canonical** refreshed", (None, "v1.33.0")),
        ('snap "microk8s" has no updates available', (None, None)),
        ("", (None, None)),
    ],
)
def test_parse_refresh(text: str, expected: tuple[str | None, str | None]) -> None:
    assert parse_refresh(text) == expected


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("pi-01", (True, "v1.32.3")),
        ("pi-03", (False, "v1.32.3")),
        ("pi-04", (True, "v1.32.3")),
    ],
)
def test_parse_node_ready(name: str, expected: tuple[bool, str]) -> None:
    nodes = json.loads((FIXTURES / "kube" / "nodes.json").read_text())["items"]
    node = next(n for n in nodes if n["metadata"]["name"] == name)
    assert parse_node_ready(json.dumps(node)) == expected


@pytest.mark.parametrize(
    "text",
    ["", "{", "[]", '{"status": 3}', '{"status": {"conditions": 5, "nodeInfo": []}}', "null"],
)
def test_parse_node_ready_unknown(text: str) -> None:
    assert parse_node_ready(text) == (None, None)
