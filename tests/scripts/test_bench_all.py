"""``scripts/bench_all.py``: its help names every benchmark (running it is a job for a quiet machine)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_help_names_every_benchmark_script() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_all.py"), "--help"],
        capture_output=True, text=True, timeout=60, check=False, cwd=ROOT,
    )  # fmt: skip

    assert done.returncode == 0, done.stderr
    for script in (
        "bench.py sim",
        "bench_agent.py",
        "bench_drain.py",
        "bench_cloud.py",
        "bench_e2e.py",
        "--quick",
    ):
        assert script in done.stdout
