"""What every benchmark script writes into BENCHMARKS.md: the machine and versions, and its own section.

Each script (``bench.py sim``, ``bench_agent.py``, ``bench_cloud.py``, ``bench_e2e.py``) renders one
section and replaces it between its markers (``<!-- bench:NAME -->`` … ``<!-- /bench:NAME -->``), so a
rerun of one benchmark leaves the others' figures alone. ``bench_all.py`` runs them all and then
checks the file's header and that every section names the command that produced it.
"""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from coldtrace import __version__  # noqa: E402

BENCHMARKS = ROOT / "BENCHMARKS.md"
TITLE = "# coldtrace benchmarks"
HEADER = f"""{TITLE}

Figures measured and written by the benchmark scripts in `scripts/`; never edited by hand. Reproduce
every section with one command, `python scripts/bench_all.py` (it runs each script below in turn on
an otherwise idle machine); each section names the command that produced it, the machine and the
versions. Every figure is shown beside a baseline measured in the same run, with their ratio, or the
section says that it has none.
"""
#: The opening of a section's marker; the name follows.
MARK = "<!-- bench:"
#: What a section's first paragraph says before the command that produced it.
COMMAND_RE = re.compile(r"Measured [^`]* with `(python scripts/[^`]+)`")
#: Iterations of the reference loop (about 0.1 s) and how many times it runs (the fastest counts).
SPEED_LOOP = 200_000
SPEED_REPEATS = 5


def _reference_loop(n: int) -> int:
    # What the hot paths measured here mostly do: read a dict, format a line, keep a total.
    row = {"device_id": "dev-0001", "seq": 0, "t_ms": 1_767_225_600_000, "temperature_c": 4.25}
    total = 0
    for i in range(n):
        row["seq"] = i
        line = (
            f"reading,device={row['device_id']} temperature_c={row['temperature_c']!r},"
            f"seq={row['seq']}i {row['t_ms'] + i}"
        )
        total += len(line)
    return total


def python_speed() -> str:
    """ns per iteration of a fixed pure-Python loop, fastest of a few runs: how fast Python ran here.

    Two machines of this kind ran the same code at speeds about 2x apart (the cloud worker at 74k-76k
    readings per CPU second on one, 27k-38k on the next, both on 2026-11-25), so absolute figures of
    different runs compare only through a reference measured beside them. A ratio to a baseline
    measured in the same run needs none.
    """
    best = float("inf")
    for _ in range(SPEED_REPEATS):
        started = time.process_time()
        _reference_loop(SPEED_LOOP)
        best = min(best, time.process_time() - started)
    return f"{best / SPEED_LOOP * 1e9:.0f} ns per iteration of benchdoc's reference loop (lower is faster)"


def machine() -> dict[str, str]:
    """CPU and core count, memory, Python's speed here, OS, Python, paho-mqtt, Mosquitto and this
    checkout's version."""
    cpu = "unknown"
    with Path("/proc/cpuinfo").open(encoding="utf-8") as handle:
        for line in handle:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = next(
        int(line.split()[1])
        for line in Path("/proc/meminfo").read_text().splitlines()
        if line.startswith("MemTotal")
    )
    mosquitto = subprocess.run(["/usr/sbin/mosquitto", "-h"], capture_output=True, text=True, check=False)
    import paho.mqtt  # noqa: PLC0415 - only for its version

    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    dirty = subprocess.run(
        ["git", "status", "--porcelain"], capture_output=True, text=True, cwd=ROOT, check=False
    )
    coldtrace = f"{__version__} ({commit.stdout.strip() or 'no git'})"
    if dirty.stdout.strip():
        coldtrace += " + uncommitted changes in the working tree"
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores",
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "python speed": python_speed(),
        "os": platform.platform(),
        "python": platform.python_version(),
        "paho-mqtt": paho.mqtt.__version__,
        "mosquitto": mosquitto.stdout.splitlines()[0] if mosquitto.stdout else "unknown",
        "coldtrace": coldtrace,
    }


def machine_lines(versions: dict[str, str]) -> list[str]:
    """The "Machine and versions" block every section ends with."""
    return ["Machine and versions:", "", *(f"- {k}: {v}" for k, v in versions.items())]


def write_section(name: str, body: str, *, path: Path = BENCHMARKS) -> None:
    """Replace section ``name`` of BENCHMARKS.md with ``body`` (appended if it is new)."""
    start, end = f"{MARK}{name} -->", f"<!-- /bench:{name} -->"
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    block = f"{start}\n{body.rstrip()}\n{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def ensure_header(*, path: Path = BENCHMARKS) -> None:
    """Make everything before the first section the standard header (the sections stay as they are)."""
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    body = text[text.index(MARK) :] if MARK in text else ""
    path.write_text(HEADER.rstrip() + "\n\n" + body, encoding="utf-8")


def section_commands(*, path: Path = BENCHMARKS) -> dict[str, str | None]:
    """Each section's name and the command its text says produced it (None: it names none)."""
    text = path.read_text(encoding="utf-8") if path.exists() else ""
    found: dict[str, str | None] = {}
    for match in re.finditer(r"<!-- bench:([\w-]+) -->(.*?)<!-- /bench:\1 -->", text, re.DOTALL):
        command = COMMAND_RE.search(match.group(2))
        found[match.group(1)] = command.group(1) if command else None
    return found
