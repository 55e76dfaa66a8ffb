"""The side-by-side bench rewrites only its own section of docs/performance.md."""

from __future__ import annotations

from pathlib import Path

from bench.peers_measure import publish_packet_bytes
from bench.peers_report import BEGIN, END, Figures, replace_section, table, write_section


def test_missing_file_gets_a_title_and_the_section(tmp_path: Path) -> None:
    path = tmp_path / "docs" / "performance.md"
    write_section(path, "## Side-by-side footprint\n\nfirst")
    text = path.read_text()
    assert text.startswith("# Performance\n")
    assert f"{BEGIN}\n## Side-by-side footprint\n\nfirst\n{END}\n" in text


def test_rerun_replaces_only_its_section() -> None:
    others = "# Performance\n\n## Start-up\n\nkeep me\n\n"
    first = replace_section(others + "## Tail\n\nkeep me too\n", "old figures")
    moved = first.replace("## Tail\n\nkeep me too\n", "") + "\n## Tail\n\nkeep me too\n"
    second = replace_section(moved, "new figures")
    assert "old figures" not in second
    assert second.count(BEGIN) == 1
    assert second.count(END) == 1
    assert "new figures" in second
    assert "keep me\n" in second
    assert second.rstrip().endswith("keep me too")


def test_ratios_are_agent_over_row_and_missing_rows_say_why() -> None:
    agent = Figures("agent", pss_mib=30.0, cpu_percent=0.1, payload_per_sample=800)
    peer = Figures("peer", pss_mib=20.0, cpu_percent=0.2, payload_per_sample=1600)
    gone = Figures("gone", missing="apt-get install: no such package")
    lines = table([agent, peer, gone], agent, "agent").splitlines()
    assert lines[3].endswith("| 1.50 | 0.50 | 0.50 |")
    assert "not available: apt-get install: no such package" in lines[4]


def test_publish_packet_size_follows_mqtt_framing() -> None:
    # 1 fixed header + 1 length + 2 topic length + 3 topic + 2 packet id + 4 payload
    assert publish_packet_bytes("a/b", 4, qos=1, properties=0) == 13
    # remaining length 128 needs a two-byte varint
    assert publish_packet_bytes("t", 125, qos=0, properties=0) == 1 + 2 + 128
