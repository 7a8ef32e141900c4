"""``scripts/bench_cloud.py --quick`` over the real stack: hold latency beside its bare-transport baseline."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from scripts import bench_all
from scripts.benchdoc import section_commands, write_section
from tests.harness.services import require_binary

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.services


def test_quick_run_times_every_marker_on_both_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    require_binary("Mosquitto", "mosquitto", package="mosquitto", extra_dirs=[Path("/usr/sbin")])
    require_binary("PostgreSQL 15", "postgres", package="postgresql-15",
                   extra_dirs=[Path("/usr/lib/postgresql/15/bin")])  # fmt: skip
    require_binary("VictoriaMetrics", "victoria-metrics", package="victoria-metrics")
    benchmarks = ROOT / "BENCHMARKS.md"
    before = benchmarks.read_bytes() if benchmarks.exists() else None

    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_cloud.py"), "--quick"],
        capture_output=True, text=True, timeout=300, check=False, cwd=ROOT,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    section = done.stdout[done.stdout.index("## Cloud ingest") :]
    paths = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 12 and cells[2] in {"worker → hold in API", "bare subscriber → received"}:
            paths[cells[2]] = cells
    assert set(paths) == {"worker → hold in API", "bare subscriber → received"}
    for cells in paths.values():
        assert cells[1] == "125"  # same batch size on both paths
        assert cells[6] == cells[7] == "5"  # every marker seen
        assert 0 < float(cells[8]) <= float(cells[9])  # p50 <= p99, in ms
    ratio = re.search(
        r"Hold latency / transport latency \(same run[^)]*\): at 2000/s p50 ([\d.]+), p99", section
    )
    assert ratio is not None, section
    # --quick writes nothing.
    assert (benchmarks.read_bytes() if benchmarks.exists() else None) == before
    # The section, once written, passes bench_all's check (command named, baseline stated).
    path = tmp_path / "BENCHMARKS.md"
    write_section("cloud", section, path=path)
    monkeypatch.setattr(bench_all, "BENCHMARKS", path)
    monkeypatch.setattr(bench_all, "read_commands", lambda: section_commands(path=path))
    assert bench_all.check(tuple(b for b in bench_all.SUITE if b.section == "cloud")) == []
