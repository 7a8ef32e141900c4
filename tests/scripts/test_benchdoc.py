"""``scripts/benchdoc.py``: sections replaced in place, the standard header, each section's command."""

from __future__ import annotations

import re
from pathlib import Path

from scripts.benchdoc import HEADER, ensure_header, machine, section_commands, write_section


def test_write_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    write_section("a", "## A\n\nMeasured 2026-01-01 00:00 UTC with `python scripts/a.py --n 1`.", path=path)
    write_section("b", "## B\n\nMeasured 2026-01-01 00:00 UTC with `python scripts/b.py`.", path=path)
    write_section("a", "## A\n\nMeasured 2026-01-02 00:00 UTC with `python scripts/a.py --n 2`.", path=path)

    text = path.read_text(encoding="utf-8")
    assert text.startswith(HEADER)
    assert text.index("<!-- bench:a -->") < text.index("<!-- bench:b -->")
    assert section_commands(path=path) == {"a": "python scripts/a.py --n 2", "b": "python scripts/b.py"}


def test_ensure_header_rewrites_the_preamble_and_keeps_the_sections(tmp_path: Path) -> None:
    path = tmp_path / "BENCHMARKS.md"
    section = "<!-- bench:a -->\n## A\n\nNo command here.\n<!-- /bench:a -->\n"
    path.write_text(f"# old title\n\nWritten by something else.\n\n{section}", encoding="utf-8")

    ensure_header(path=path)

    text = path.read_text(encoding="utf-8")
    assert text == HEADER.rstrip() + "\n\n" + section
    assert "python scripts/bench_all.py" in text
    assert section_commands(path=path) == {"a": None}


def test_machine_reports_how_fast_python_ran() -> None:
    speed = machine()["python speed"]
    match = re.fullmatch(r"(\d+) ns per iteration of benchdoc's reference loop \(lower is faster\)", speed)
    assert match is not None, speed
    assert int(match.group(1)) > 0
