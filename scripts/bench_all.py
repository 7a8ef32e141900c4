"""Run every coldtrace benchmark in turn, then check BENCHMARKS.md.

    python scripts/bench_all.py [--quick] [--only sim,agent,agent-drain,cloud,e2e] [--logs DIR]

Runs, one after the other and each as its own process (so no benchmark shares the machine with
another), the scripts below with their default parameters; each writes its own section of
BENCHMARKS.md with its same-run baseline, the machine, the versions and its command line:

    python scripts/bench.py sim         fleet simulator: devices one process sustains
    python scripts/bench_agent.py       edge agent backlog drain, against a bare relay; live latency
    python scripts/bench_drain.py       a 1,000,000-reading outbox drained, against a bare publisher
    python scripts/bench_cloud.py       cloud worker throughput against a bare writer; hold latency
    python scripts/bench_e2e.py         device reading → hold visible, against bare transport

Prints one progress line per benchmark; a benchmark's own output goes to ``<logs>/<name>.log``.
Afterwards it gives BENCHMARKS.md its standard header (the command to reproduce everything) and
checks that every section names the command that produced it and states its baseline; it exits
non-zero if a benchmark failed or a section falls short. Run it on an otherwise idle machine: the
figures are only as good as the quiet they were measured in.

``--quick`` passes ``--quick`` to each script (a smoke run of seconds each that writes nothing) and
leaves BENCHMARKS.md alone.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from scripts.benchdoc import BENCHMARKS, ensure_header  # noqa: E402
from scripts.benchdoc import section_commands as read_commands  # noqa: E402


@dataclass(frozen=True, slots=True)
class Benchmark:
    """One script and the BENCHMARKS.md section it writes."""

    section: str
    argv: tuple[str, ...]
    what: str

    @property
    def command(self) -> str:
        """How to run it by hand."""
        return "python " + " ".join(self.argv)


SUITE: tuple[Benchmark, ...] = (
    Benchmark("sim", ("scripts/bench.py", "sim"), "fleet simulator"),
    Benchmark("agent", ("scripts/bench_agent.py",), "edge agent drain vs bare relay, live latency"),
    Benchmark("agent-drain", ("scripts/bench_drain.py",), "1M-reading outbox drain vs bare publisher"),
    Benchmark("cloud", ("scripts/bench_cloud.py",), "cloud worker vs bare writer, hold latency"),
    Benchmark("e2e", ("scripts/bench_e2e.py",), "end to end vs bare transport"),
)


def run(bench: Benchmark, *, quick: bool, logs: Path, index: int, total: int) -> bool:
    """Run one benchmark with its output in ``logs``; print its progress line; True if it succeeded."""
    argv = [sys.executable, *bench.argv, *(["--quick"] if quick else [])]
    log = logs / f"{bench.section}.log"
    print(f"[{index}/{total}] {bench.section}: {bench.what} — {' '.join(argv[1:])} …", flush=True)
    started = time.monotonic()
    with log.open("wb") as out:
        code = subprocess.run(argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    elapsed = time.monotonic() - started
    if code == 0:
        print(f"[{index}/{total}] {bench.section}: done in {elapsed:.0f} s (log: {log})", flush=True)
        return True
    last = log.read_text(encoding="utf-8", errors="replace").splitlines()[-15:]
    print(f"[{index}/{total}] {bench.section}: FAILED with status {code} after {elapsed:.0f} s (log: {log})")
    print("\n".join(f"    {line}" for line in last), flush=True)
    return False


def check(suite: tuple[Benchmark, ...]) -> list[str]:
    """What BENCHMARKS.md lacks: a section, the command that produced it, or a word on its baseline."""
    problems = []
    commands = read_commands()
    text = BENCHMARKS.read_text(encoding="utf-8") if BENCHMARKS.exists() else ""
    for bench in suite:
        if bench.section not in commands:
            problems.append(f"section {bench.section!r} is missing")
            continue
        command = commands[bench.section]
        if command is None or not command.startswith(bench.command):
            problems.append(f"section {bench.section!r} does not name its command ({bench.command} …)")
        body = text[
            text.index(f"<!-- bench:{bench.section} -->") : text.index(f"<!-- /bench:{bench.section} -->")
        ]
        if "baseline" not in body.lower():
            problems.append(f"section {bench.section!r} does not state its baseline")
    return problems


def main() -> None:
    """Entry point."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="Smoke-run each benchmark; write nothing.")
    parser.add_argument(
        "--only", help=f"Comma-separated sections to run (of {', '.join(b.section for b in SUITE)})."
    )
    parser.add_argument(
        "--logs", type=Path, help="Directory for each benchmark's output (default: a new one)."
    )
    args = parser.parse_args()
    suite = SUITE
    if args.only:
        wanted = set(args.only.split(","))
        unknown = wanted - {b.section for b in SUITE}
        if unknown:
            parser.error(f"unknown sections: {', '.join(sorted(unknown))}")
        suite = tuple(b for b in SUITE if b.section in wanted)
    logs = args.logs or Path(tempfile.mkdtemp(prefix="coldtrace-bench-"))
    logs.mkdir(parents=True, exist_ok=True)
    failed = [
        b.section
        for i, b in enumerate(suite, 1)
        if not run(b, quick=args.quick, logs=logs, index=i, total=len(suite))
    ]
    problems = []
    if not args.quick:
        ensure_header()
        problems = check(SUITE)
        for problem in problems:
            print(f"BENCHMARKS.md: {problem}")
        if not problems:
            print(f"BENCHMARKS.md: every section names its command and its baseline ({BENCHMARKS})")
    if failed:
        print(f"failed: {', '.join(failed)}")
    if failed or problems:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
