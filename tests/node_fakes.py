"""A MicroK8s node's files, faked at the file boundary for the health detectors.

Certificates (real X.509, generated), `/proc/<pid>/stat` entries in the kernel's format, MMC wear
attributes in sysfs, and MicroK8s' kubelet args file (tests/fixtures/microk8s-args).
"""

from __future__ import annotations

import shutil
from pathlib import Path

from tests.cluster_fakes import write_self_signed
from tests.paths import FIXTURES

KUBELET_ARGS = FIXTURES / "microk8s-args" / "kubelet"


def certs_dir(directory: Path, days_by_name: dict[str, float]) -> Path:
    """MicroK8s' certs directory: `<name>.crt` + `<name>.key` per entry."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, days in days_by_name.items():
        write_self_signed(directory / f"{name}.crt", directory / f"{name}.key", name, days=days)
    return directory


def proc_entry(
    proc_root: Path, pid: int, comm: str, *, start: int, cpu: int = 0, rss_pages: int = 1000
) -> None:
    """`/proc/<pid>/stat` as Linux writes it (52 fields; utime, starttime and rss placed)."""
    fields = ["S", "1", str(pid), str(pid), "0", "-1", "4194560", "0", "0", "0", "0"]
    fields += [str(cpu), "0", "0", "0", "20", "0", "8", "0", str(start), "1000000", str(rss_pages)]
    fields += ["0"] * (50 - len(fields))
    (proc_root / str(pid)).mkdir(parents=True, exist_ok=True)
    (proc_root / str(pid) / "stat").write_text(f"{pid} ({comm}) {' '.join(fields)}\n")


def gone(proc_root: Path, pid: int) -> None:
    shutil.rmtree(proc_root / str(pid))


def wear(sysfs_root: Path, device: str, life_time: str, pre_eol: str) -> None:
    """The eMMC attributes of /sys/block/<device>/device (hex, as the mmc driver prints them)."""
    where = sysfs_root / "sys" / "block" / device / "device"
    where.mkdir(parents=True, exist_ok=True)
    (where / "life_time").write_text(f"{life_time}\n")
    (where / "pre_eol_info").write_text(f"{pre_eol}\n")
