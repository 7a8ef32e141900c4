"""A coldtrace command run as a child process that drills can SIGKILL and start again."""

from __future__ import annotations

import os
import signal
import subprocess


class KillableChild:
    """Holds ``proc`` (set by the subclass's ``start``) and counts the SIGKILLs it took."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.kills = 0

    def kill9(self) -> None:
        """SIGKILL: no cleanup, no DISCONNECT."""
        assert self.proc is not None
        os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
        self.kills += 1

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM and wait; the exit status (None if never started)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        return self.proc.wait()
