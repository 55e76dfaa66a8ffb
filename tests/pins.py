"""The snap's runtime dependency closure, pinned to what this virtualenv has installed, with hashes.

snap/requirements.txt is generated from it (`.venv/bin/python -m tests.pins`, output redirected
there) and tests/test_packaging.py checks that the file still covers the closure. Markers are
evaluated for the snap's interpreter (core24: CPython 3.12 on aarch64), not for this machine's,
because that is where the wheels get installed.

Each pin carries the sha256 of every wheel the snap build may install for it: the manylinux
wheels for CPython 3.12 on aarch64 (the Pis) and x86_64 (the amd64 snap), or the pure-python
wheel where that is what exists. The digests come from PyPI's simple index (PEP 691 JSON), the
index snapcraft's pip uses; with them pip runs in hash-checking mode, so a wheel re-uploaded or
swapped on the way fails the build instead of landing in the snap. Each hash is followed by a
comment naming its file, which lets the tests check offline that an aarch64 wheel is among them.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import cache
from importlib import metadata

from packaging import tags
from packaging.requirements import Requirement
from packaging.utils import (
    InvalidWheelFilename,
    NormalizedName,
    canonicalize_name,
    parse_wheel_filename,
)
from packaging.version import Version

PROJECT = "microk8s-edge-agent"
EXTRAS = ("kube",)
"""`kube` is optional for pip users, but the snap ships the drain helper, so it is included."""

SNAP_PYTHON_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_machine": "aarch64",
    "platform_system": "Linux",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
}
SNAP_PYTHON = (3, 12)
SNAP_GLIBC_MINOR = 39
"""core24 is Ubuntu 24.04: glibc 2.39, so manylinux_2_39 and older wheels install there."""
SNAP_ARCHES = ("aarch64", "x86_64")
"""The snap's platforms (snapcraft.yaml: arm64, amd64) as wheel platform tags."""

INDEX = "https://pypi.org/simple"
HASH_NOTE = re.compile(r"^    # (?P<prefix>[0-9a-f]{12}) (?P<filename>\S+\.whl)$")
"""The comment after a pin's hashes that names the file each hash belongs to."""

HEADER = """\
# Runtime dependencies of the snap (the project plus its `kube` extra), pinned and hashed.
# Generated: .venv/bin/python -m tests.pins > snap/requirements.txt (reads PyPI's index)
# Every pin has a manylinux aarch64 wheel for CPython 3.12 (tests/test_packaging.py checks it),
# so building the snap for a Pi never compiles anything. The hashes are those of the CPython 3.12
# wheels for aarch64 and x86_64 (or the pure-python wheel), each named in the comment below it:
# pip installs nothing else (hash-checking mode), see docs/packaging.md.
"""


@dataclass(frozen=True)
class Wheel:
    """A file on the index, as the index lists it."""

    filename: str
    sha256: str


def _applies(requirement: Requirement, extras: Iterable[str]) -> bool:
    if requirement.marker is None:
        return True
    return any(
        requirement.marker.evaluate({**SNAP_PYTHON_ENV, "extra": extra}) for extra in (*extras, "")
    )


def _installed(name: str) -> bool:
    try:
        metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return False
    return True


def closure(
    project: str = PROJECT, extras: Iterable[str] = EXTRAS
) -> dict[NormalizedName, Requirement]:
    """Every distribution the project needs at run time, with the requirement that pulled it in.

    A dependency that is not installed here (the `kube` extra in a plain test venv) is listed,
    but its own dependencies cannot be read, so the walk stops there.
    """
    found: dict[NormalizedName, Requirement] = {}
    pending: list[tuple[str, tuple[str, ...]]] = [(project, tuple(extras))]
    while pending:
        name, wanted = pending.pop()
        for raw in metadata.requires(name) or []:
            requirement = Requirement(raw)
            key = canonicalize_name(requirement.name)
            if key in found or not _applies(requirement, wanted):
                continue
            found[key] = requirement
            if _installed(requirement.name):
                pending.append((requirement.name, tuple(requirement.extras)))
    return found


# -- which wheels the snap may install ------------------------------------------------------------


@cache
def snap_tags(arch: str) -> frozenset[tags.Tag]:
    """The wheel tags core24's pip accepts on `arch`: CPython 3.12, glibc 2.39 (no musllinux)."""
    oldest = 17 if arch == "aarch64" else 5
    platforms = [f"manylinux_2_{minor}_{arch}" for minor in range(SNAP_GLIBC_MINOR, oldest - 1, -1)]
    legacy = {17: "manylinux2014", 12: "manylinux2010", 5: "manylinux1"}
    platforms += [f"{alias}_{arch}" for minor, alias in legacy.items() if minor >= oldest]
    interpreter = f"cp{SNAP_PYTHON[0]}{SNAP_PYTHON[1]}"
    return frozenset(
        (
            *tags.cpython_tags(SNAP_PYTHON, abis=[interpreter], platforms=platforms),
            *tags.compatible_tags(SNAP_PYTHON, interpreter, platforms),
        )
    )


def serves(filename: str, arch: str) -> bool:
    """Whether core24's pip on `arch` may install this file (a wheel with a matching tag)."""
    try:
        _name, _version, _build, wheel_tags = parse_wheel_filename(filename)
    except InvalidWheelFilename:
        return False
    return bool(wheel_tags & snap_tags(arch))


def is_pure(filename: str) -> bool:
    """A wheel for any platform (pure python), as opposed to one built for a machine."""
    _name, _version, _build, wheel_tags = parse_wheel_filename(filename)
    return all(tag.platform == "any" for tag in wheel_tags)


def wheels_for_snap(name: str, version: str, files: Iterable[Wheel]) -> list[Wheel]:
    """The files of `name==version` the snap build may install, sorted by file name.

    Per platform: its built wheels, or the pure-python one only when none is built for it. A
    pure fallback beside built wheels (aiohttp, yarl, multidict ship one) stays out: pip prefers
    a file whose hash is allowed, so a tampered built wheel would silently become the slower
    pure one instead of failing the build.
    """
    candidates = []
    for file in files:
        try:
            wheel_name, wheel_version, _build, _tags = parse_wheel_filename(file.filename)
        except InvalidWheelFilename:
            continue  # an sdist, or a name pip would not consider either
        if wheel_name == canonicalize_name(name) and wheel_version == Version(version):
            candidates.append(file)
    chosen: set[Wheel] = set()
    for arch in SNAP_ARCHES:
        serving = [file for file in candidates if serves(file.filename, arch)]
        chosen.update([file for file in serving if not is_pure(file.filename)] or serving)
    return sorted(chosen, key=lambda wheel: wheel.filename)


# -- the index and the file -----------------------------------------------------------------------


def index_files(name: str) -> list[Wheel]:
    """Every file of `name` on PyPI with its sha256, from the simple index's JSON form."""
    # INDEX is a constant https URL (S310 warns about file: and custom schemes).
    request = urllib.request.Request(  # noqa: S310
        f"{INDEX}/{canonicalize_name(name)}/",
        headers={"Accept": "application/vnd.pypi.simple.v1+json"},
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310
        listing = json.load(response)
    return [
        Wheel(entry["filename"], entry["hashes"]["sha256"])
        for entry in listing["files"]
        if "sha256" in entry.get("hashes", {})
    ]


def render_pin(name: str, version: str, wheels: list[Wheel]) -> str:
    """One pin, its hashes as continuation lines, then one comment per hash naming its file.

    The comments come after the last hash: a comment line ends pip's continuation.
    """
    hashes = [f"    --hash=sha256:{wheel.sha256}" for wheel in wheels]
    lines = [f"{name}=={version} \\", *(f"{line} \\" for line in hashes[:-1]), hashes[-1]]
    lines += [f"    # {wheel.sha256[:12]} {wheel.filename}" for wheel in wheels]
    return "\n".join(lines)


def render(fetch: Callable[[str], list[Wheel]] = index_files) -> str:
    """The whole snap/requirements.txt; fails when a pin lacks a wheel for one snap platform."""
    blocks = []
    for key in sorted(closure()):
        version = metadata.version(key)
        wheels = wheels_for_snap(key, version, fetch(key))
        for arch in SNAP_ARCHES:
            if not any(serves(wheel.filename, arch) for wheel in wheels):
                raise LookupError(f"{key}=={version}: no wheel for CPython 3.12 on {arch}")
        blocks.append(render_pin(key, version, wheels))
    return HEADER + "\n".join(blocks) + "\n"


if __name__ == "__main__":
    try:
        text = render()
    except LookupError as missing:
        sys.exit(f"tests.pins: {missing}")
    print(text, end="")
