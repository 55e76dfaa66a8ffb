"""Raspberry Pi readings: SoC temperature, firmware throttling flags, board model, memory cgroup.

The parsers are pure functions over file contents; `read_pi` is the only function that touches the
file system, and it takes a `root` so tests (and `health.sysfs_root`) can point it at a fake tree.
Nothing here runs `vcgencmd`: a strictly confined snap may not, and sysfs carries the same data.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

TEMPERATURE_FILE = "sys/class/thermal/thermal_zone0/temp"
THROTTLED_FILE = "sys/devices/platform/soc/soc:firmware/get_throttled"
MODEL_FILE = "proc/device-tree/model"
CGROUP_CONTROLLERS_FILE = "sys/fs/cgroup/cgroup.controllers"
PROC_CGROUPS_FILE = "proc/cgroups"
CMDLINE_FILE = "proc/cmdline"

# Bit positions of the firmware's get_throttled word; bit N + 16 is "has occurred since boot".
_THROTTLE_BITS: tuple[tuple[str, int], ...] = (
    ("under_voltage", 0),
    ("freq_capped", 1),
    ("throttled", 2),
    ("soft_temp_limit", 3),
)
_OCCURRED_SHIFT = 16
_U32_MAX = 0xFFFF_FFFF
_THROTTLED_PREFIX = "throttled="

ThrottledFlags = dict[str, str | bool]


@dataclasses.dataclass(frozen=True, slots=True)
class PiReadings:
    """What the board reported; every field is None when the source was missing or unreadable."""

    temperature_c: float | None = None
    throttled: ThrottledFlags | None = None
    model: str | None = None
    memory_cgroup: bool | None = None


def parse_temperature(text: str) -> float | None:
    """Convert the thermal zone's millidegrees (``"48312"``) to degrees Celsius, 1 decimal."""
    try:
        millidegrees = int(text.strip())
    except ValueError:
        return None
    return round(millidegrees / 1000, 1)


def parse_throttled(text: str) -> ThrottledFlags | None:
    """Decode the firmware throttling word into named now/occurred flags.

    Accepts the kernel's sysfs form (bare hex, ``50005``), the ``0x50005`` form and the
    ``vcgencmd get_throttled`` form (``throttled=0x50005``), so any source can feed it. The
    firmware word is a u32; anything outside that range is not a reading.
    """
    value_text = text.strip()
    if value_text.startswith(_THROTTLED_PREFIX):
        value_text = value_text[len(_THROTTLED_PREFIX) :]
    try:
        value = int(value_text, 16)
    except ValueError:
        return None
    if not 0 <= value <= _U32_MAX:
        return None
    flags: ThrottledFlags = {"raw": f"0x{value:x}"}
    for name, bit in _THROTTLE_BITS:
        flags[name] = bool(value >> bit & 1)
    for name, bit in _THROTTLE_BITS:
        flags[f"{name}_occurred"] = bool(value >> (bit + _OCCURRED_SHIFT) & 1)
    return flags


def parse_model(raw: bytes) -> str | None:
    """Decode the device-tree model string, which the kernel NUL-terminates."""
    model = raw.decode("utf-8", errors="replace").rstrip("\x00 \t\r\n")
    return model or None


def cmdline_has_memory_flags(cmdline: str | None) -> bool:
    """Whether the kernel command line asks for the memory cgroup the way a Pi needs it.

    Raspberry Pi kernels ship with the memory controller disabled; MicroK8s documents
    ``cgroup_enable=memory cgroup_memory=1`` as the fix. ``cgroup_enable`` takes a comma list.
    """
    if not cmdline:
        return False
    enabled: set[str] = set()
    memory_flag = False
    for token in cmdline.split():
        key, _, value = token.partition("=")
        if key == "cgroup_enable":
            enabled.update(value.split(","))
        elif key == "cgroup_memory":
            memory_flag = value == "1"
    return "memory" in enabled and memory_flag


def memory_cgroup_enabled(
    controllers_text: str | None, proc_cgroups_text: str | None, cmdline: str | None
) -> bool | None:
    """Whether the kernel offers the memory cgroup controller that kubelet needs.

    The kernel's own files are authoritative: cgroup v2's root ``cgroup.controllers`` and the
    ``/proc/cgroups`` table (which also covers v1 and hybrid layouts). The command line is only
    a hint, used when neither file could be read. None means there is no evidence either way.
    """
    if controllers_text is not None and "memory" in controllers_text.split():
        return True
    in_table = _proc_cgroups_memory(proc_cgroups_text)
    if in_table is not None:
        return in_table
    if controllers_text is not None:
        return False
    return _cmdline_memory_hint(cmdline)


def _proc_cgroups_memory(text: str | None) -> bool | None:
    """The ``enabled`` column of the ``memory`` row of /proc/cgroups, or None if absent."""
    if text is None:
        return None
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[0] == "memory":
            return fields[3] == "1"
    return None


def _cmdline_memory_hint(cmdline: str | None) -> bool | None:
    if cmdline is None:
        return None
    if cmdline_has_memory_flags(cmdline):
        return True
    for token in cmdline.split():
        key, _, value = token.partition("=")
        if key == "cgroup_disable" and "memory" in value.split(","):
            return False
    return None


def read_pi(root: Path = Path("/")) -> PiReadings:
    """Read every Pi source under `root`; never raises, a missing source just reads as None."""
    temp_text = _read_text(root / TEMPERATURE_FILE)
    throttled_text = _read_text(root / THROTTLED_FILE)
    model_raw = _read_bytes(root / MODEL_FILE)
    return PiReadings(
        temperature_c=None if temp_text is None else parse_temperature(temp_text),
        throttled=None if throttled_text is None else parse_throttled(throttled_text),
        model=None if model_raw is None else parse_model(model_raw),
        memory_cgroup=memory_cgroup_enabled(
            _read_text(root / CGROUP_CONTROLLERS_FILE),
            _read_text(root / PROC_CGROUPS_FILE),
            _read_text(root / CMDLINE_FILE),
        ),
    )


def _read_bytes(path: Path) -> bytes | None:
    # sysfs attributes can fail on read (EINVAL, ENODATA) even when the file exists.
    try:
        return path.read_bytes()
    except OSError:
        return None


def _read_text(path: Path) -> str | None:
    raw = _read_bytes(path)
    if raw is None:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
