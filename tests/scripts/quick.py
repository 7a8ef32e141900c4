"""What every benchmark script's ``--quick`` test does: run it over the real servers, check it left
BENCHMARKS.md alone, and that its section would pass ``bench_all``'s check once written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts import bench_all
from scripts.benchdoc import section_commands, write_section
from tests.harness.services import require_binary

ROOT = Path(__file__).resolve().parents[2]
BENCHMARKS = ROOT / "BENCHMARKS.md"


def require_mosquitto() -> None:
    """Mosquitto, which every benchmark runs on."""
    require_binary("Mosquitto", "mosquitto", package="mosquitto", extra_dirs=[Path("/usr/sbin")])


def require_cloud_servers() -> None:
    """Mosquitto, PostgreSQL and VictoriaMetrics: the cloud benchmarks' servers."""
    require_mosquitto()
    require_binary("PostgreSQL 15", "postgres", package="postgresql-15",
                   extra_dirs=[Path("/usr/lib/postgresql/15/bin")])  # fmt: skip
    require_binary("VictoriaMetrics", "victoria-metrics", package="victoria-metrics")


def quick_run(*argv: str, timeout_s: float) -> subprocess.CompletedProcess[str]:
    """``python scripts/<argv> --quick`` from the repository root; it must succeed and write nothing."""
    before = BENCHMARKS.read_bytes() if BENCHMARKS.exists() else None
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / argv[0]), *argv[1:], "--quick"],
        capture_output=True, text=True, timeout=timeout_s, check=False, cwd=ROOT,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert (BENCHMARKS.read_bytes() if BENCHMARKS.exists() else None) == before  # --quick writes nothing
    return done


def assert_passes_bench_all_check(
    name: str, section: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Section ``name``, once written, names its command and states its baseline (``bench_all.check``)."""
    path = tmp_path / "BENCHMARKS.md"
    write_section(name, section, path=path)
    monkeypatch.setattr(bench_all, "BENCHMARKS", path)
    monkeypatch.setattr(bench_all, "read_commands", lambda: section_commands(path=path))
    assert bench_all.check(tuple(b for b in bench_all.SUITE if b.section == name)) == []
