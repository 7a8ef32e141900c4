"""A throwaway PostgreSQL cluster on 127.0.0.1: initdb into a temp dir, trust auth, one test database."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

from tests.harness.ports import LOOPBACK, free_port
from tests.harness.process import (
    ManagedProcess,
    ServerHarness,
    ServiceError,
    chown_for,
    make_workdir,
    user_ids,
)

#: PostgreSQL refuses to run as root; when the harness is root it runs the cluster as this user.
SERVICE_USER = "postgres"


class Postgres(ServerHarness):
    """One postmaster. ``dsn`` is ``postgresql://postgres@127.0.0.1:PORT/coldtrace_test``.

    The postmaster runs in the foreground as the harness's child rather than through ``pg_ctl start``
    (which daemonizes it): the harness then holds the server's PID, so ``kill()`` is a real crash for
    recovery drills and a dying test session takes the server with it. ``stop()`` sends SIGINT, which
    is exactly what ``pg_ctl stop -m fast`` sends.
    """

    def __init__(
        self,
        bindir: Path,
        *,
        port: int | None = None,
        database: str = "coldtrace_test",
        durable: bool = False,
    ) -> None:
        """Prepare directories; call ``start()`` to initdb (first time), start and create ``database``.

        ``durable=False`` turns fsync off: a killed postmaster still recovers every committed
        transaction (the OS keeps the written WAL); only a machine crash could lose data, which tests
        do not simulate.
        """
        self.bindir = bindir
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.user = "postgres"
        self.database = database
        self.dsn = f"postgresql://{self.user}@{self.host}:{self.port}/{database}"
        self.workdir = make_workdir("pg", SERVICE_USER)
        self.data_dir = self.workdir / "data"
        # Unix socket in our dir: the default /var/run/postgresql may not exist or belong to the
        # machine's own cluster.
        self.socket_dir = self.workdir / "sock"
        self.socket_dir.mkdir()
        chown_for(self.socket_dir, SERVICE_USER)
        self.startup_seconds: float | None = None
        self.initdb_seconds: float | None = None
        settings = {"listen_addresses": self.host, "unix_socket_directories": str(self.socket_dir)}
        if not durable:
            # Only fsync: a SIGKILLed postmaster still recovers everything committed, because the WAL
            # was written to the OS. synchronous_commit=off would NOT be safe here: it leaves commits in
            # shared-memory WAL buffers, and a crash drill would then lose acknowledged transactions.
            settings["fsync"] = "off"
        argv = [str(bindir / "postgres"), "-D", str(self.data_dir), "-p", str(self.port)]
        for key, value in settings.items():
            argv += ["-c", f"{key}={value}"]
        self.process = ManagedProcess(
            "postgres",
            argv,
            workdir=self.workdir,
            user=SERVICE_USER,
            # SIGINT = "fast" shutdown: roll back open transactions, checkpoint, exit.
            stop_signal=signal.SIGINT,
            # And do not wait for clients a test forgot to close (SIGTERM = "smart" would).
        )

    def _run_tool(self, *argv: str, as_service_user: bool = False) -> subprocess.CompletedProcess[str]:
        ids = user_ids(SERVICE_USER) if as_service_user else None
        return subprocess.run(
            argv,
            cwd=self.workdir,
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
            user=ids[0] if ids else None,
            group=ids[1] if ids else None,
            extra_groups=[] if ids else None,
        )

    def _initdb(self) -> None:
        begin = time.monotonic()
        result = self._run_tool(
            str(self.bindir / "initdb"),
            "-D",
            str(self.data_dir),
            "-U",
            self.user,
            "--auth=trust",
            "--encoding=UTF8",
            # C.UTF-8 is built into glibc >= 2.35: no dependency on the machine's generated locales.
            "--locale=C.UTF-8",
            # No fsync of the fresh cluster: it is thrown away after the session.
            "--no-sync",
            as_service_user=True,
        )
        if result.returncode != 0:
            raise ServiceError(f"initdb failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
        self.initdb_seconds = time.monotonic() - begin

    def _accepting(self) -> bool:
        result = self._run_tool(
            str(self.bindir / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port), "-t", "1"
        )
        return result.returncode == 0

    # -- lifecycle --------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> float:
        """initdb on first start, start the postmaster, wait for pg_isready, create the database.

        Returns seconds from postmaster start to accepting connections (initdb time is in
        ``initdb_seconds``).
        """
        first = not (self.data_dir / "PG_VERSION").exists()
        if first:
            self._initdb()
        self.process.start()
        self.startup_seconds = self.process.wait_ready(self._accepting, timeout, what="accepting connections")
        if first:
            result = self._run_tool(
                str(self.bindir / "createdb"),
                "-h",
                self.host,
                "-p",
                str(self.port),
                "-U",
                self.user,
                self.database,
            )
            if result.returncode != 0:
                raise ServiceError(
                    f"createdb {self.database} failed:\n{result.stderr}\n{self.process.log_tail()}"
                )
        return self.startup_seconds

    def restart(self, timeout: float = 60.0) -> float | None:
        """Fast shutdown and start again on the same data dir (crash recovery runs after ``kill()``)."""
        return self.process.restart(self._accepting, timeout)
