"""The snap's runtime dependency closure, pinned to what this virtualenv has installed.

snap/requirements.txt is generated from it (`.venv/bin/python -m tests.pins`, output redirected
there) and tests/test_packaging.py checks that the file still covers the closure. Markers are
evaluated for the snap's interpreter (core24: CPython 3.12 on aarch64), not for this machine's,
because that is where the wheels get installed.
"""

from __future__ import annotations

from collections.abc import Iterable
from importlib import metadata

from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name

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

HEADER = """\
# Runtime dependencies of the snap (the project plus its `kube` extra), pinned.
# Generated: .venv/bin/python -m tests.pins > snap/requirements.txt
# Every pin has a manylinux aarch64 wheel for CPython 3.12 (tests/test_packaging.py checks it),
# so building the snap for a Pi never compiles anything.
"""


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


def render() -> str:
    pins = sorted(f"{key}=={metadata.version(key)}" for key in closure())
    return HEADER + "\n".join(pins) + "\n"


if __name__ == "__main__":
    print(render(), end="")
