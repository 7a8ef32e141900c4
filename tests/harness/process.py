"""A server process the harness owns: start, wait until ready, stop, kill, restart.

The process is always a direct child of the test session (never a daemon started through a wrapper
such as ``pg_ctl start`` or ``runuser``), so that its PID is the server's PID: signals reach the
server itself, ``kill()`` is a real crash, and the exit code is the server's.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

ReadinessCheck = Callable[[], bool]

#: How many log lines an error message carries.
LOG_TAIL_LINES = 40

_PR_SET_PDEATHSIG = 1


class ServiceError(RuntimeError):
    """A server the harness manages failed to start, exited early or could not be stopped."""


def _load_prctl() -> Callable[[int, int], int] | None:
    """Resolve ``prctl`` once in the parent: the forked child must not import or look anything up."""
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name, use_errno=True)
    except OSError:
        return None
    prctl: Callable[[int, int], int] = libc.prctl
    return prctl


_PRCTL = _load_prctl()


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL the server if the test session dies.

    Without this a pytest killed by a CI timeout leaves servers listening and temp dirs in use. The
    kernel sends the signal when the *thread* that forked exits, which is why it is only requested when
    the server is started from the main thread (see ``ManagedProcess.start``).
    """
    if _PRCTL is not None:
        _PRCTL(_PR_SET_PDEATHSIG, signal.SIGKILL)


def user_ids(user: str | None) -> tuple[int, int] | None:
    """Return (uid, gid) to switch to for ``user``, or None when no switch is needed or possible.

    Only root can switch users; an unprivileged developer runs every server as themselves, which
    servers such as PostgreSQL and Mosquitto accept.
    """
    if user is None or os.geteuid() != 0:
        return None
    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def chown_for(path: Path, user: str | None) -> None:
    """Give ``path`` to ``user`` when running as root (no-op otherwise)."""
    ids = user_ids(user)
    if ids is not None:
        os.chown(path, ids[0], ids[1])


def tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """Return the last ``lines`` lines of a text file, or a note when it does not exist."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return f"<{path} does not exist>"
    return "\n".join(text.splitlines()[-lines:])


class ManagedProcess:
    """One server process: argv, environment, optional user, output appended to ``log_path``."""

    def __init__(
        self,
        name: str,
        argv: Sequence[str],
        *,
        workdir: Path,
        log_path: Path | None = None,
        env: Mapping[str, str] | None = None,
        user: str | None = None,
        stop_signal: signal.Signals = signal.SIGTERM,
        stop_grace: float = 15.0,
        extra_logs: Sequence[Path] = (),
    ) -> None:
        """Describe the process; nothing runs until ``start()``.

        ``stop_signal`` is the server's graceful-shutdown signal (PostgreSQL uses SIGINT for its "fast"
        mode); ``extra_logs`` are files the server writes itself whose tails belong in error messages.
        """
        self.name = name
        self.argv = list(argv)
        self.workdir = workdir
        self.log_path = log_path if log_path is not None else workdir / f"{name}.log"
        self.env = dict(env) if env is not None else {}
        self.user = user
        self.stop_signal = stop_signal
        self.stop_grace = stop_grace
        self.extra_logs = list(extra_logs)
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_at = 0.0
        self._lock = threading.Lock()

    # -- state ------------------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        """PID of the running (or last) server process."""
        if self._proc is None:
            raise ServiceError(f"{self.name} was never started")
        return self._proc.pid

    @property
    def running(self) -> bool:
        """True while the server process has not exited."""
        return self._proc is not None and self._proc.poll() is None

    @property
    def returncode(self) -> int | None:
        """Exit status of the last run (negative signal number when killed), None while running."""
        return None if self._proc is None else self._proc.poll()

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """Tail of the process output and of every extra log, for error messages."""
        parts = [f"--- {self.log_path} ---", tail(self.log_path, lines)]
        for extra in self.extra_logs:
            parts += [f"--- {extra} ---", tail(extra, lines)]
        return "\n".join(parts)

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server; returns at once (use ``wait_ready``)."""
        with self._lock:
            if self.running:
                raise ServiceError(f"{self.name} is already running (pid {self.pid})")
            ids = user_ids(self.user)
            env = {**os.environ, **self.env}
            if ids is not None and self.user is not None:
                # The invoking user's HOME is usually not readable by the service user.
                env.update(HOME=str(self.workdir), USER=self.user, LOGNAME=self.user)
            main_thread = threading.current_thread() is threading.main_thread()
            with self.log_path.open("ab") as log:
                stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
                log.write(f"=== harness {stamp}: starting {' '.join(self.argv)}\n".encode())
                log.flush()
                self._proc = subprocess.Popen(
                    self.argv,
                    cwd=self.workdir,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    # Switch user in the child before exec (what ``runuser`` would do) so that the PID
                    # we hold is the server's own and our signals reach it: runuser does not forward
                    # SIGINT or SIGHUP to its child.
                    user=ids[0] if ids else None,
                    group=ids[1] if ids else None,
                    extra_groups=[] if ids else None,
                    preexec_fn=_die_with_parent if main_thread else None,  # noqa: PLW1509 - see _die_with_parent
                    # Own process group: kill() takes down the server's helper processes too (e.g.
                    # PostgreSQL backends), and a Ctrl-C in the terminal does not hit the servers
                    # before pytest's teardown stops them in order.
                    start_new_session=True,
                )
            self._started_at = time.monotonic()

    def wait_ready(self, check: ReadinessCheck, timeout: float, *, what: str = "ready") -> float:
        """Poll ``check`` until it returns True; return seconds since ``start()``.

        Raises ``ServiceError`` with the log tail when the server exits first or ``timeout`` passes.
        Polling is the only readiness signal these servers give; the interval grows from 10 ms to
        100 ms so fast servers are seen fast without spinning.
        """
        deadline = time.monotonic() + timeout
        interval = 0.01
        while True:
            if self._proc is None:
                raise ServiceError(f"{self.name} was never started")
            code = self._proc.poll()
            if code is not None:
                raise ServiceError(
                    f"{self.name} exited with status {code} before it was {what}\n{self.log_tail()}"
                )
            if check():
                return time.monotonic() - self._started_at
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ServiceError(
                    f"{self.name} (pid {self._proc.pid}) not {what} within {timeout:.1f}s\n{self.log_tail()}"
                )
            time.sleep(min(interval, remaining))
            interval = min(interval * 2, 0.1)

    def send_signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the running server."""
        if not self.running or self._proc is None:
            raise ServiceError(f"{self.name} is not running; cannot send {sig.name}\n{self.log_tail()}")
        self._proc.send_signal(sig)

    def stop(self, grace: float | None = None) -> int | None:
        """Graceful stop: the stop signal, wait up to ``grace`` seconds, then SIGKILL. Returns exit status."""
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(self.stop_signal)
            try:
                proc.wait(timeout=self.stop_grace if grace is None else grace)
            except subprocess.TimeoutExpired:
                self._kill_group(proc)
                proc.wait()
        return proc.returncode

    def kill(self) -> int | None:
        """SIGKILL the server's whole process group and reap it: a crash, for recovery drills.

        The group, not just the PID, so that no orphaned helper keeps ports, shared memory or locks
        and the next ``start()`` sees what a crashed service leaves behind on disk, nothing more.
        Returns the exit status (-9).
        """
        proc = self._proc
        if proc is None:
            return None
        if proc.poll() is None:
            self._kill_group(proc)
        proc.wait()
        return proc.returncode

    @staticmethod
    def _kill_group(proc: subprocess.Popen[bytes]) -> None:
        # start_new_session made the server its group's leader, so its PID is the group ID.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def restart(self, check: ReadinessCheck | None = None, timeout: float = 30.0) -> float | None:
        """Stop gracefully, start again and, given a readiness ``check``, wait for it."""
        self.stop()
        self.start()
        return None if check is None else self.wait_ready(check, timeout)


#: Set to 1 to keep servers' temp dirs (data, config, logs) after the session for post-mortems.
KEEP_DIRS_ENV = "COLDTRACE_KEEP_SERVICE_DIRS"


def make_workdir(prefix: str, user: str | None = None) -> Path:
    """Create a private temp dir for one server, owned by ``user`` when running as root.

    It is made directly under the system temp dir rather than under pytest's ``tmp_path``: pytest's
    base dir is mode 0700 for the invoking user, so a server that runs as ``postgres`` or
    ``mosquitto`` could not even traverse to it.
    """
    path = Path(tempfile.mkdtemp(prefix=f"coldtrace-{prefix}-"))
    chown_for(path, user)
    return path


def remove_workdir(path: Path) -> None:
    """Delete a server's temp dir unless $COLDTRACE_KEEP_SERVICE_DIRS is set."""
    if os.environ.get(KEEP_DIRS_ENV, "").strip() not in ("", "0"):
        return
    shutil.rmtree(path, ignore_errors=True)


class ServerHarness:
    """The lifecycle every harness server shares; a subclass supplies its process and readiness probe."""

    process: ManagedProcess
    workdir: Path
    startup_seconds: float | None = None
    #: How readiness reads in a timeout message ("answering /ping").
    ready_what = "ready"

    def _ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 30.0) -> float:
        """Start and wait until the readiness probe passes; return the startup time in seconds."""
        self.process.start()
        self.startup_seconds = self.process.wait_ready(self._ready, timeout, what=self.ready_what)
        return self.startup_seconds

    def restart(self, timeout: float = 30.0) -> float | None:
        """Stop gracefully and start again on the same port and data."""
        return self.process.restart(self._ready, timeout)

    def stop(self) -> None:
        """Stop the server; the temp dir stays until ``close()``."""
        self.process.stop()

    def kill(self) -> None:
        """SIGKILL the server (crash drill); ``restart()`` brings it back on the same data."""
        self.process.kill()

    def close(self) -> None:
        """Stop the server and delete its temp dir."""
        self.stop()
        remove_workdir(self.workdir)
