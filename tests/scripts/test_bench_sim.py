"""``scripts/bench.py sim --quick`` over a real Mosquitto: the simulator and its bare-publisher baseline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from scripts import bench_all
from scripts.benchdoc import section_commands, write_section
from tests.harness.services import require_binary

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.services


def test_quick_run_measures_the_simulator_beside_a_bare_publisher(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    require_binary("Mosquitto", "mosquitto", package="mosquitto", extra_dirs=[Path("/usr/sbin")])
    benchmarks = ROOT / "BENCHMARKS.md"
    before = benchmarks.read_bytes() if benchmarks.exists() else None

    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench.py"), "sim", "--quick"],
        capture_output=True, text=True, timeout=180, check=False, cwd=ROOT,
    )  # fmt: skip

    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    section = done.stdout
    rows = [line.split(" | ") for line in section.splitlines() if line.startswith("| multiplexed | 200 |")]
    assert [r[2] for r in rows[:2]] == ["simulator", "bare publisher"]
    assert len(rows) == 3  # the two steps, then their ratios (simulator / bare)
    assert float(rows[2][2]) > 0
    for step in rows[:2]:
        published, acked = int(step[4]), int(step[5])
        assert published == acked > 0  # both sent the same fleet's messages, all acknowledged
    assert rows[0][4] == rows[1][4]
    assert "Largest passing fleet, simulator / bare publisher" in section
    assert "multiplexed: simulator 200 / bare publisher 200 = 1.00" in section
    # --quick writes nothing.
    assert (benchmarks.read_bytes() if benchmarks.exists() else None) == before
    # The section, once written, passes bench_all's check (command named, baseline stated).
    path = tmp_path / "BENCHMARKS.md"
    write_section("sim", section, path=path)
    monkeypatch.setattr(bench_all, "BENCHMARKS", path)
    monkeypatch.setattr(bench_all, "read_commands", lambda: section_commands(path=path))
    sim = tuple(b for b in bench_all.SUITE if b.section == "sim")
    assert bench_all.check(sim) == []
