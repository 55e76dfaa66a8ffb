"""Rendering of the side-by-side footprint bench (pure, apart from reading the machine's facts).

The docs section is delimited by HTML comments so re-running the bench replaces only its own
section of docs/performance.md; other sections there belong to other benches.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import platform
from pathlib import Path

BEGIN = "<!-- BEGIN side-by-side-footprint (bench/peers.py) -->"
END = "<!-- END side-by-side-footprint -->"
TITLE = "# Performance\n"


@dataclasses.dataclass
class Figures:
    """One row: steady memory (max of the 5 s samples), CPU over the window, bytes per sample."""

    name: str
    version: str = ""
    missing: str = ""
    rss_mib: float = 0.0
    pss_mib: float = 0.0
    pss_median_mib: float = 0.0
    cpu_percent: float = 0.0
    payload_per_sample: float = 0.0
    wire_per_sample: float = 0.0
    units_per_sample: float = 0.0


def _ratio(mine: float, theirs: float) -> str:
    return f"{mine / theirs:.2f}" if theirs > 0 else "n/a"


def _ratios(agent: Figures | None, row: Figures) -> list[str]:
    if agent is None or agent.missing or row.missing:
        return ["n/a"] * 3
    return [
        _ratio(agent.pss_mib, row.pss_mib),
        _ratio(agent.cpu_percent, row.cpu_percent),
        _ratio(agent.payload_per_sample, row.payload_per_sample),
    ]


def table(rows: list[Figures], agent: Figures | None, label: str) -> str:
    """Markdown table; the ratio columns are `agent ÷ row` for the agent named `label`."""
    head = (
        "| process | RSS MiB | PSS MiB | CPU % of one core | bytes/sample (payload) "
        f"| bytes/sample (wire) | msgs/sample | {label} PSS ÷ row | {label} CPU ÷ row "
        f"| {label} bytes ÷ row |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    )
    lines = []
    for row in rows:
        if row.missing:
            lines.append(f"| {row.name} | not available: {row.missing} |||||||||")
            continue
        ratios = ["—"] * 3 if row is agent else _ratios(agent, row)
        lines.append(
            f"| {row.name} | {row.rss_mib:.1f} | {row.pss_mib:.1f} | {row.cpu_percent:.3f} "
            f"| {row.payload_per_sample:,.0f} | {row.wire_per_sample:,.0f} "
            f"| {row.units_per_sample:.1f} | {' | '.join(ratios)} |"
        )
    return head + "\n".join(lines) + "\n"


def ratio_table(rows: list[Figures], agent: Figures) -> str:
    """The second agent variant's ratios to every other row, in a compact table."""
    out = f"| {agent.name} ÷ row | PSS | CPU | bytes |\n|---|---:|---:|---:|\n"
    for row in rows:
        if row is not agent and not row.missing:
            out += f"| {row.name} | {' | '.join(_ratios(agent, row))} |\n"
    return out


def cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith(("model name", "Model", "Hardware")):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine(extra: dict[str, str]) -> str:
    """Date (as `date -u` prints it), machine and versions, one bullet each."""
    now = datetime.datetime.now(datetime.UTC).strftime("%a %b %d %H:%M:%S UTC %Y")
    facts = {
        "date": now,
        "machine": f"{platform.machine()}, {cpu_model()}, {os.cpu_count()} cores, "
        f"Linux {platform.release()}",
        "python": platform.python_version(),
        **extra,
    }
    return "".join(f"- {key}: {value}\n" for key, value in facts.items())


def replace_section(document: str, section: str) -> str:
    """Put `section` between the markers, replacing an earlier one or appending at the end."""
    block = f"{BEGIN}\n{section.rstrip()}\n{END}\n"
    if not document.strip():
        document = TITLE
    start = document.find(BEGIN)
    end = document.find(END, start + 1) if start >= 0 else -1
    if start >= 0 and end >= 0:
        rest = document[end + len(END) :]
        return document[:start] + block + (rest[1:] if rest.startswith("\n") else rest)
    return document.rstrip("\n") + "\n\n" + block


def write_section(path: Path, section: str) -> None:
    text = path.read_text() if path.exists() else ""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(replace_section(text, section))
