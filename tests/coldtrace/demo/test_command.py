"""``coldtrace demo`` refuses clearly, before starting anything, when it cannot run."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

from coldtrace.exitcodes import ExitCode


def _demo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "coldtrace", "demo", "--exit", *args],
        capture_output=True, text=True, timeout=60, check=False, env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip


def test_a_taken_port_is_reported_with_what_to_do(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = _demo("--port", str(port), "--workdir", str(workdir))
    assert result.returncode == ExitCode.USAGE, result.stderr
    assert f"127.0.0.1:{port}" in result.stderr
    assert "address already in use" in result.stderr
    assert "--port" in result.stderr
    assert not workdir.exists()  # refused before anything was made or started
    assert "✓" not in result.stdout


def test_a_work_directory_that_cannot_be_created_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory\n")
    result = _demo("--port", "0", "--workdir", str(blocker / "demo"))
    assert result.returncode == ExitCode.IO, result.stderr
    assert str(blocker / "demo") in result.stderr.replace("\n", "")
    assert "--workdir" in result.stderr


def test_a_directory_the_demo_did_not_make_is_never_cleared(tmp_path: Path) -> None:
    precious = tmp_path / "precious.txt"
    precious.write_text("keep me\n")
    result = _demo("--port", "0", "--workdir", str(tmp_path))
    assert result.returncode == ExitCode.IO, result.stderr
    assert "not empty" in result.stderr
    assert precious.read_text() == "keep me\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["precious.txt"]


def test_invalid_options_name_the_option() -> None:
    result = _demo("--devices", "20")
    assert result.returncode == ExitCode.USAGE
    assert "--devices" in result.stderr
    assert "multiple of 8" in result.stderr
