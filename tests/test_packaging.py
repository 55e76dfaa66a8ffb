"""CI checks of the packaging (snapcraft cannot run here, nor can systemd start units).

- snap/snapcraft.yaml against snapcraft's JSON schema (the `$defs` entry for its base);
- `snap pack --check-skeleton` (snapd's own validator) on a meta/snap.yaml generated from it;
- every pinned runtime dependency has an aarch64 CPython 3.12 wheel on PyPI (a Pi never compiles),
  hashed (pip's hash-checking mode), and the hashes are those of the files PyPI serves;
- systemd/edge-agent.service: exposure score <= 2.0 and a silent `systemd-analyze verify`.
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import stat
import subprocess
import sys
import warnings
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename
from pip._internal.network.session import PipSession
from pip._internal.req.constructors import install_req_from_parsed_requirement
from pip._internal.req.req_file import parse_requirements

from tests import pins
from tests.paths import FIXTURES, REPO

SNAPCRAFT = REPO / "snap" / "snapcraft.yaml"
REQUIREMENTS = REPO / "snap" / "requirements.txt"
UNIT = REPO / "systemd" / "edge-agent.service"
SCHEMA = FIXTURES / "schemas" / "snapcraft.json"
SCORE_LIMIT = 2.0
# snap.yaml keys an app or hook carries over from snapcraft.yaml unchanged.
APP_KEYS = (
    "command",
    "daemon",
    "install-mode",
    "restart-condition",
    "restart-delay",
    "stop-timeout",
    "environment",
    "plugs",
)


def tool(name: str) -> str:
    """A real system tool (never the fakes in tests/fakes); missing means the CI setup is broken."""
    for candidate in (f"/usr/bin/{name}", f"/usr/sbin/{name}", shutil.which(name)):
        if candidate and Path(candidate).is_file() and "fakes" not in candidate:
            return candidate
    pytest.fail(f"{name} is not installed: run `.ci/bootstrap.sh test` (it installs it)")


def run(argv: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False, **kwargs)


def snapcraft() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(SNAPCRAFT.read_text())
    return data


# -- snapcraft.yaml ---------------------------------------------------------------------------


def test_snapcraft_yaml_matches_the_schema_of_its_base() -> None:
    schema = json.loads(SCHEMA.read_text())
    project = snapcraft()
    assert project["base"] == "core24"
    definition = {"$defs": schema["$defs"], **schema["$defs"]["Core24Project"]}
    validator = jsonschema.Draft202012Validator(definition)
    errors = [f"{list(e.absolute_path)}: {e.message}" for e in validator.iter_errors(project)]
    assert errors == []
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(project))


def test_snapcraft_yaml_is_the_design() -> None:
    project = snapcraft()
    assert project["name"] == "microk8s-edge-agent"
    assert (project["confinement"], project["grade"]) == ("strict", "stable")
    assert set(project["platforms"]) == {"arm64", "amd64"}
    app = project["apps"]["daemon"]
    assert app["daemon"] == "simple"
    assert app["restart-condition"] == "on-failure"
    assert app["install-mode"] == "disable"
    assert app["command"].split()[0] == "bin/edge-agent"
    plugs = ("network", "network-bind", "snapd-control", "microk8s", "dqlite-backend")
    detectors = ("system-observe", "hardware-observe", "microk8s-certs", "timesync-state")
    for plug in plugs + detectors:
        assert plug in app["plugs"]
    content = project["plugs"]["microk8s"]
    assert (content["interface"], content["content"]) == ("content", "microk8s")
    assert content["target"] == "$SNAP_DATA/microk8s-credentials"
    assert project["plugs"]["dqlite-backend"]["read"] == [
        "/var/snap/microk8s/current/var/kubernetes/backend"
    ]
    # system-files grants a directory recursively; it must be the one the agent reads
    # cluster.yaml and the live view's cluster.crt/cluster.key from.
    from agent.settings import MicroK8sSettings

    defaults = MicroK8sSettings()
    assert project["plugs"]["dqlite-backend"]["read"] == [defaults.backend_dir]
    assert project["plugs"]["microk8s-certs"]["read"] == [
        defaults.certs_dir,
        defaults.kubelet_args,
    ]
    assert project["plugs"]["timesync-state"]["read"] == ["/run/systemd/timesync"]
    assert project["parts"]["agent"]["python-requirements"] == ["snap/requirements.txt"]


# -- snap pack --check-skeleton -----------------------------------------------------------------


def skeleton(project: dict[str, Any], root: Path) -> Path:
    """The prime directory snapcraft would produce, minus the venv: meta/snap.yaml, hooks, bin."""
    apps = {
        name: {key: app[key] for key in APP_KEYS if key in app}
        for name, app in project["apps"].items()
    }
    meta = {
        "name": project["name"],
        "version": project["version"],
        "summary": project["summary"],
        "description": project["description"],
        "base": project["base"],
        "grade": project["grade"],
        "confinement": project["confinement"],
        "license": project["license"],
        "architectures": ["arm64"],
        "plugs": project["plugs"],
        "apps": apps,
        "hooks": {name: hook or {} for name, hook in project.get("hooks", {}).items()},
    }
    (root / "meta" / "hooks").mkdir(parents=True)
    (root / "meta" / "snap.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))
    for hook in (REPO / "snap" / "hooks").iterdir():
        shutil.copy2(hook, root / "meta" / "hooks" / hook.name)
    for app in apps.values():
        command = root / app["command"].split()[0]
        command.parent.mkdir(parents=True, exist_ok=True)
        command.write_text("#!/bin/sh\nexit 0\n")
        command.chmod(0o755)
    return root


def check_skeleton(root: Path) -> subprocess.CompletedProcess[str]:
    return run([tool("snap"), "pack", "--check-skeleton", str(root)])


def test_snap_pack_accepts_the_skeleton(tmp_path: Path) -> None:
    result = check_skeleton(skeleton(snapcraft(), tmp_path / "prime"))
    output = result.stdout + result.stderr
    print(f"snap pack --check-skeleton: rc={result.returncode} output={output!r}")
    assert result.returncode == 0, output
    assert "bad plugs or slots" not in output
    assert output.strip() == ""


def test_the_skeleton_check_catches_a_bad_plug(tmp_path: Path) -> None:
    project = snapcraft()
    project["plugs"]["dqlite-backend"]["read"] = ["var/snap/microk8s"]
    result = check_skeleton(skeleton(project, tmp_path / "prime"))
    assert "bad plugs or slots" in result.stdout + result.stderr


def test_hooks_and_scripts_are_executable_shell() -> None:
    scripts = [
        REPO / "snap" / "hooks" / "configure",
        REPO / "systemd" / "install.sh",
        REPO / "configs" / "mosquitto" / "make-certs.sh",
        REPO / "configs" / "mosquitto" / "make-acl.sh",
        REPO / ".ci" / "bootstrap.sh",
    ]
    for script in scripts:
        assert script.stat().st_mode & stat.S_IXUSR, f"{script} is not executable"
        syntax = run(["sh", "-n", str(script)])
        assert syntax.returncode == 0, f"{script}: {syntax.stderr}"


# -- pinned requirements and wheels ---------------------------------------------------------------


@dataclass(frozen=True)
class Pin:
    version: str
    hashes: tuple[str, ...]
    files: dict[str, str]
    """sha256 prefix (12 hex) -> the file name in the comment after the pin's hashes."""


def hash_notes(text: str) -> dict[str, dict[str, str]]:
    """The comments naming each hash's file, per pin (pip ignores them)."""
    notes: dict[str, dict[str, str]] = {}
    current = ""
    for line in text.splitlines():
        if line and not line[0].isspace() and not line.startswith("#"):
            current = canonicalize_name(line.split("==")[0])
            notes[current] = {}
        elif match := pins.HASH_NOTE.match(line):
            notes[current][match["prefix"]] = match["filename"]
    return notes


def read_pins(path: Path) -> dict[str, Pin]:
    """The requirements file as pip reads it: pip's own parser, the one snapcraft runs."""
    with warnings.catch_warnings():
        # pip's user agent scans the installed distributions with its vendored pkg_resources.
        warnings.filterwarnings("ignore", "pkg_resources is deprecated", DeprecationWarning)
        session = PipSession()
    notes = hash_notes(path.read_text())
    found: dict[str, Pin] = {}
    for parsed in parse_requirements(str(path), session=session):
        requirement = install_req_from_parsed_requirement(parsed)
        assert requirement.req is not None and not requirement.editable, parsed.requirement
        assert requirement.is_pinned, f"not pinned: {parsed.requirement!r}"
        hashes = (parsed.options or {}).get("hashes", {})
        assert set(hashes) == {"sha256"}, f"{parsed.requirement}: sha256 hashes only, got {hashes}"
        name = canonicalize_name(requirement.req.name)
        (specifier,) = requirement.req.specifier
        found[name] = Pin(specifier.version, tuple(hashes["sha256"]), notes.get(name, {}))
    return found


def pinned() -> dict[str, str]:
    return {name: pin.version for name, pin in read_pins(REQUIREMENTS).items()}


def test_requirements_pin_every_runtime_dependency() -> None:
    pins_by_name = pinned()
    for name, requirement in pins.closure().items():
        assert name in pins_by_name, f"{name} missing from snap/requirements.txt"
        assert requirement.specifier.contains(pins_by_name[name], prereleases=True), (
            f"{name}=={pins_by_name[name]} does not satisfy {requirement}"
        )
    project = Requirement(f"{pins.PROJECT}[kube]")
    assert canonicalize_name(project.name) not in pins_by_name


def test_every_pin_is_hashed_for_an_aarch64_and_an_x86_64_wheel() -> None:
    # Issue 11: hashed pins. pip's parser reads the file (read_pins asserts pinned, sha256 only);
    # each hash is named by the comment after it, and those names say which platforms it serves.
    found = read_pins(REQUIREMENTS)
    assert found
    for name, pin in found.items():
        assert pin.hashes, f"{name}: no --hash, so pip would refuse the whole file"
        assert all(re.fullmatch(r"[0-9a-f]{64}", digest) for digest in pin.hashes), name
        assert sorted(pin.files) == sorted(digest[:12] for digest in pin.hashes), (
            f"{name}: every hash, and only those, needs the comment naming its file"
        )
        for filename in pin.files.values():
            wheel_name, wheel_version, _build, _tags = parse_wheel_filename(filename)
            assert (wheel_name, str(wheel_version)) == (name, pin.version), filename
        for arch in pins.SNAP_ARCHES:
            assert any(pins.serves(f, arch) for f in pin.files.values()), f"{name}: none for {arch}"


def test_the_snap_wheel_selection() -> None:
    aarch64 = "x-1.0-cp312-cp312-manylinux2014_aarch64.manylinux_2_17_aarch64.whl"
    x86_64 = "x-1.0-cp312-cp312-manylinux_2_28_x86_64.whl"
    cases = {
        aarch64: {"aarch64"},
        x86_64: {"x86_64"},
        "x-1.0-cp38-abi3-manylinux_2_34_aarch64.whl": {"aarch64"},
        "x-1.0-py3-none-any.whl": {"aarch64", "x86_64"},
        "x-1.0-py2.py3-none-any.whl": {"aarch64", "x86_64"},
        "x-1.0-cp311-cp311-manylinux2014_aarch64.whl": set(),  # another Python
        "x-1.0-cp312-cp312-musllinux_1_2_aarch64.whl": set(),  # core24 is glibc
        "x-1.0-cp312-cp312-manylinux_2_40_aarch64.whl": set(),  # newer than core24's glibc
        "x-1.0-cp312-cp312-linux_armv7l.whl": set(),
        "x-1.0.tar.gz": set(),
    }
    for filename, arches in cases.items():
        assert {arch for arch in pins.SNAP_ARCHES if pins.serves(filename, arch)} == arches, (
            filename
        )
    pure = "x-1.0-py3-none-any.whl"
    others = [
        "x-1.0-cp311-cp311-manylinux2014_aarch64.whl",
        "x-0.9-py3-none-any.whl",
        "x-1.0.tar.gz",
    ]

    def chosen(*names: str) -> list[str]:
        files = [pins.Wheel(name, f"{n:064x}") for n, name in enumerate((*names, *others))]
        return [wheel.filename for wheel in pins.wheels_for_snap("X", "1.0", files)]

    # The pure fallback only where no wheel is built for the platform.
    assert chosen(aarch64, x86_64, pure) == sorted([aarch64, x86_64])
    assert chosen(aarch64, pure) == sorted([aarch64, pure])
    assert chosen(pure) == [pure]
    assert chosen() == []


def test_render_refuses_a_pin_without_an_aarch64_wheel() -> None:
    def index(name: str) -> list[pins.Wheel]:
        version = metadata.version(name)
        stem = f"{name.replace('-', '_')}-{version}-cp312-cp312"
        return [pins.Wheel(f"{stem}-manylinux_2_17_x86_64.whl", "ab" * 32)]

    with pytest.raises(LookupError, match=r"no wheel for CPython 3.12 on aarch64"):
        pins.render(index)


def test_rendered_pins_read_back_through_pip(tmp_path: Path) -> None:
    wheels = [
        pins.Wheel("x-1.0-cp312-cp312-manylinux2014_aarch64.whl", "a" * 64),
        pins.Wheel("x-1.0-py3-none-any.whl", "b" * 64),
    ]
    path = tmp_path / "requirements.txt"
    path.write_text(pins.HEADER + pins.render_pin("x", "1.0", wheels) + "\n")
    pin = read_pins(path)["x"]
    assert pin.version == "1.0"
    assert pin.hashes == ("a" * 64, "b" * 64)
    assert pin.files == {"a" * 12: wheels[0].filename, "b" * 12: wheels[1].filename}


def test_install_sh_keeps_the_pinned_versions_without_the_hashes() -> None:
    # systemd/install.sh on a Python other than the snap's (Raspberry Pi OS bookworm: 3.11) drops
    # the hashes, which name cp312 wheels, and keeps the versions with this sed expression. pip
    # refuses a directory (`.`) in the same command as a hashed file, so they are two installs.
    script = (REPO / "systemd" / "install.sh").read_text()
    strip = re.search(r"^\s*(sed -n '[^']+') snap/requirements\.txt", script, re.M)
    assert strip, "install.sh no longer strips the hashes for other Pythons"
    result = run(["sh", "-c", f"{strip[1]} {REQUIREMENTS}"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == [
        f"{name}=={version}" for name, version in pinned().items()
    ]
    installs = [line for line in script.splitlines() if '/bin/pip" install' in line]
    assert len(installs) == 3, installs  # pip itself, the pins, the project
    assert not [line for line in installs if " -r " in line and line.endswith(" .")]


@pytest.mark.parametrize("arch", pins.SNAP_ARCHES)
def test_every_pin_downloads_as_the_hashed_wheel_for_python_312(tmp_path: Path, arch: str) -> None:
    # Network: PyPI must answer. Unreachable is a failure, not a skip: the snap build needs it.
    # The file's hashes put pip in hash-checking mode, so a mismatch already fails the download;
    # the digests are then checked again here, with the file each one is said to be.
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check"]
    target = ["--platform", f"manylinux2014_{arch}", "--python-version", "3.12"]
    files = ["-d", str(tmp_path), "-r", str(REQUIREMENTS)]
    result = run([*pip, "download", "--only-binary=:all:", "--no-deps", *target, *files])
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    found = read_pins(REQUIREMENTS)
    wheels = list(tmp_path.glob("*.whl"))
    assert {canonicalize_name(p.name.split("-")[0]) for p in wheels} == set(found)
    for wheel in wheels:
        pin = found[canonicalize_name(wheel.name.split("-")[0])]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        assert digest in pin.hashes, f"{wheel.name}: {digest} is not pinned"
        assert pin.files[digest[:12]] == wheel.name
        assert pins.serves(wheel.name, arch), wheel.name
        built = [f for f in pin.files.values() if pins.serves(f, arch) and not pins.is_pure(f)]
        assert not built or wheel.name in built, f"{wheel.name}: the pure fallback, not {built}"


# -- systemd -------------------------------------------------------------------------------------


def unit_for_this_machine(tmp_path: Path) -> Path:
    """The unit with ExecStart pointing at this venv's edge-agent (verify needs it to exist)."""
    text = UNIT.read_text()
    executable = Path(sys.executable).parent / "edge-agent"
    assert "ExecStart=/opt/edge-agent/bin/edge-agent " in text
    copy = tmp_path / "edge-agent.service"
    copy.write_text(
        text.replace("ExecStart=/opt/edge-agent/bin/edge-agent ", f"ExecStart={executable} ")
    )
    return copy


def exposure(unit: Path) -> float:
    result = run([tool("systemd-analyze"), "security", "--offline=yes", str(unit)])
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", result.stdout)
    assert match, result.stdout[-2000:] + result.stderr
    print(f"systemd exposure: {match[1]} {match[2]}")
    return float(match[1])


def test_unit_exposure_score_is_ok(tmp_path: Path) -> None:
    assert exposure(unit_for_this_machine(tmp_path)) <= SCORE_LIMIT


def test_unit_hardening_is_what_a_metrics_agent_tolerates() -> None:
    text = UNIT.read_text()
    assert not re.search(r"^(ProcSubset|ProtectProc)=", text, re.M)
    assert re.search(r"^RestrictAddressFamilies=.*AF_NETLINK", text, re.M)
    assert re.search(r"^Type=notify$", text, re.M)
    assert re.search(r"^WatchdogSec=", text, re.M)
    assert re.search(r"^StateDirectory=edge-agent$", text, re.M)


def test_unit_has_resource_ceilings() -> None:
    # Issue 11: no MemoryMax, TasksMax or LimitNOFILE; a flood or an fd leak took the host down.
    text = UNIT.read_text()
    for key in ("MemoryHigh", "MemoryMax", "TasksMax", "LimitNOFILE"):
        assert re.search(rf"^{key}=\S+$", text, re.M), key


def test_every_snap_plug_is_documented_and_none_unused() -> None:
    # Issue 11: `log-observe` was declared, and no code used it. Each plug the daemon declares
    # has a row in docs/packaging.md's plug table saying which capability needs it.
    plugs = set(snapcraft()["apps"]["daemon"]["plugs"])
    table = (REPO / "docs" / "packaging.md").read_text().split("## Plugs", 1)[1]
    documented = set(re.findall(r"^\| `([a-z0-9-]+)`", table, re.M))
    assert plugs == documented
    assert "log-observe" not in plugs


DRAIN_HELPER_PEAK_MIB = 75  # bench/upgrade_memory.py, docs/performance.md
CLI_CHILDREN_MIB = 96  # microk8s status/kubectl of the CLI backend, and page cache


def test_unit_memory_max_follows_the_agents_budget() -> None:
    from agent.settings import AgentSettings

    text = UNIT.read_text()
    high = re.search(r"^MemoryHigh=(\d+)M$", text, re.M)
    hard = re.search(r"^MemoryMax=(\d+)M$", text, re.M)
    assert high and hard, "the unit must bound its memory (MemoryHigh/MemoryMax=...M)"
    budget = AgentSettings().max_rss_mib
    assert budget > 0, "the memory budget is on by default"
    assert int(high[1]) >= budget + DRAIN_HELPER_PEAK_MIB  # no throttling during an upgrade
    assert int(hard[1]) >= budget + DRAIN_HELPER_PEAK_MIB + CLI_CHILDREN_MIB


def test_unit_verifies_silently(tmp_path: Path) -> None:
    result = run([tool("systemd-analyze"), "verify", str(unit_for_this_machine(tmp_path))])
    assert result.returncode == 0
    assert (result.stdout + result.stderr).strip() == ""


def test_verify_output_catches_a_typo(tmp_path: Path) -> None:
    unit = unit_for_this_machine(tmp_path)
    unit.write_text(unit.read_text().replace("ProtectHome=yes", "ProtectHom=yes"))
    result = run([tool("systemd-analyze"), "verify", str(unit)])
    assert "ProtectHom" in result.stdout + result.stderr
