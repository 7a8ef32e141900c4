"""A private Mosquitto 2.x for ``coldtrace demo --services``: the installed binary, the demo's PKI and ACL.

An operator's Mosquitto trusts the operator's CA, not a throwaway one, and a demo must not touch a
production broker's configuration; so each demo broker is its own ``mosquitto`` process on a free
loopback port, with the configuration production uses (README): client certificates required and
checked against the CRL, the certificate's CN as the user name, the demo's topic ACL rendered from
:class:`~coldtrace.demo.broker.acl.Acl` (one source for the embedded broker and this one), and
``set_tcp_nodelay``. Stopped with SIGTERM (then SIGKILL) when the ``async with`` block ends.

Run as root, Mosquitto drops to its own ``mosquitto`` user before it reads certificates; its files then
live in a temporary directory owned by that user (removed at exit) rather than in the work directory.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import pwd
import shutil
import socket
import tempfile
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from coldtrace.demo.broker.acl import Access, Acl
from coldtrace.demo.errors import StackFailed

logger = logging.getLogger(__name__)

#: Mosquitto's own account (Debian package), which it switches to when started as root.
SERVICE_USER = "mosquitto"
#: Where Debian puts daemons; not on an ordinary user's PATH.
SBIN = ("/usr/sbin", "/usr/local/sbin")
START_S = 15.0
STOP_S = 10.0
#: A free port is found by binding port 0 and closing it; another program may take it before
#: Mosquitto binds, so a start that fails on the port is retried on another.
PORT_ATTEMPTS = 3
_ACCESS = {Access.READ: "read", Access.WRITE: "write", Access.READWRITE: "readwrite"}


@dataclass(frozen=True, slots=True)
class BrokerTls:
    """The broker's TLS files: CA bundle for client certificates, server chain and key, the CRL."""

    ca_file: Path
    cert_file: Path
    key_file: Path
    crl_file: Path


def find_mosquitto(name_or_path: str) -> Path:
    """The Mosquitto binary; StackFailed saying how to install it when there is none."""
    if os.sep in name_or_path:
        path = Path(name_or_path)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        raise StackFailed(f"{path} is not an executable file: set COLDTRACE_DEMO_SERVICES__MOSQUITTO")
    found = shutil.which(name_or_path) or shutil.which(name_or_path, path=os.pathsep.join(SBIN))
    if found is None:
        raise StackFailed(
            f"`{name_or_path}` not found on PATH or in {', '.join(SBIN)}: install Mosquitto 2.x "
            "(apt-get install mosquitto) or set COLDTRACE_DEMO_SERVICES__MOSQUITTO to its path"
        )
    return Path(found)


def render_acl(acl: Acl) -> str:
    """The Mosquitto ACL file for ``acl``: its ``pattern`` lines, then one ``user`` block per identity."""
    lines = ["# Written by coldtrace demo --services (coldtrace/demo/broker/acl.py is the source)"]
    lines += [f"pattern {_ACCESS[rule.access]} {rule.pattern}" for rule in acl.patterns]
    for user, rules in acl.users.items():
        if not user or any(c.isspace() for c in user):
            raise ValueError(f"identity {user!r} cannot be a Mosquitto ACL user name")
        lines += ["", f"user {user}", *(f"topic {_ACCESS[rule.access]} {rule.pattern}" for rule in rules)]
    return "\n".join(lines) + "\n"


def _free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((host, 0))
        return int(probe.getsockname()[1])


class MosquittoBroker:
    """``async with MosquittoBroker(...) as broker:`` runs one Mosquitto at ``broker.url`` until exit."""

    def __init__(
        self, *, name: str, binary: Path, directory: Path, tls: BrokerTls, acl: Acl, host: str = "127.0.0.1"
    ) -> None:  # fmt: skip
        """``directory`` receives the configuration, ACL, TLS copies and log (unless run as root)."""
        self.name = name
        self.host = host
        self.port = 0
        self.version = ""
        self._binary = binary
        self._directory = directory
        self._tls = tls
        self._acl = acl
        self._process: asyncio.subprocess.Process | None = None
        self._log: IO[bytes] | None = None
        self._private: Path | None = None

    @property
    def url(self) -> str:
        """``mqtts://host:port``."""
        return f"mqtts://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        """Mosquitto's log (connections, refusals)."""
        return self._home / "mosquitto.log"

    @property
    def _home(self) -> Path:
        return self._private or self._directory

    def describe(self) -> str:
        """One line for the summary."""
        return f"{self.name}: Mosquitto {self.version} at {self.url} (log {self.log_path})"

    async def __aenter__(self) -> Self:
        self.version = await _version(self._binary)
        owner = _service_account()
        if owner is not None:
            self._private = Path(tempfile.mkdtemp(prefix=f"coldtrace-demo-mosquitto-{self.name}-"))
        home = self._home
        home.mkdir(mode=0o700, parents=True, exist_ok=True)
        files = {
            "ca.pem": self._tls.ca_file, "server-chain.pem": self._tls.cert_file,
            "server.key": self._tls.key_file, "crl.pem": self._tls.crl_file,
        }  # fmt: skip
        for name, source in files.items():
            shutil.copyfile(source, home / name)
            (home / name).chmod(0o600)
        (home / "acl").write_text(render_acl(self._acl), encoding="utf-8")
        if owner is not None:
            for path in [home, *home.iterdir()]:
                os.chown(path, owner.pw_uid, owner.pw_gid)
        try:
            await self._start_on_a_free_port()
        except BaseException:
            await self._stop()
            self._remove_private()
            raise
        logger.info("%s: Mosquitto %s listening on %s (mutual TLS)", self.name, self.version, self.url)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._stop()
        self._remove_private()

    def _config(self) -> str:
        home = self._home
        return f"""\
# Written by coldtrace demo --services: the production settings of README "Mosquitto", on loopback.
per_listener_settings false
allow_anonymous false
acl_file {home / "acl"}
persistence false
log_dest stderr
log_type error
log_type warning
log_type notice
log_type information
connection_messages true
max_queued_messages 1000000
set_tcp_nodelay true

listener {self.port} {self.host}
cafile {home / "ca.pem"}
certfile {home / "server-chain.pem"}
keyfile {home / "server.key"}
crlfile {home / "crl.pem"}
require_certificate true
use_identity_as_username true
tls_version tlsv1.2
"""

    async def _start_on_a_free_port(self) -> None:
        for _ in range(PORT_ATTEMPTS):
            self.port = _free_port(self.host)
            if await self._start():
                return
        raise StackFailed(f"Mosquitto {self.name} did not start:\n{self._log_tail()}")

    async def _start(self) -> bool:
        """Start Mosquitto on ``self.port``; False when it exited during start-up (port taken?)."""
        config = self._home / "mosquitto.conf"
        config.write_text(self._config(), encoding="utf-8")
        if self._log is None:
            self._log = self.log_path.open("ab")
        self._process = await asyncio.create_subprocess_exec(
            str(self._binary), "-c", str(config),
            stdin=asyncio.subprocess.DEVNULL, stdout=self._log, stderr=self._log,
        )  # fmt: skip
        loop = asyncio.get_running_loop()
        deadline = loop.time() + START_S
        while loop.time() < deadline:
            if self._process.returncode is not None:
                logger.warning("%s: Mosquitto exited (%s) on port %d", self.name, self._process.returncode,
                               self.port)  # fmt: skip
                return False
            with contextlib.suppress(OSError):
                _, writer = await asyncio.open_connection(self.host, self.port)
                writer.close()
                await writer.wait_closed()
                return True
            await asyncio.sleep(0.05)
        raise StackFailed(f"Mosquitto {self.name} did not listen within {START_S:g} s:\n{self._log_tail()}")

    async def _stop(self) -> None:
        process, self._process = self._process, None
        if process is not None and process.returncode is None:
            process.terminate()
            try:
                async with asyncio.timeout(STOP_S):
                    await process.wait()
            except TimeoutError:
                process.kill()
                await process.wait()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text.splitlines()[-lines:])

    def _remove_private(self) -> None:
        if self._private is not None:
            shutil.rmtree(self._private, ignore_errors=True)


def _service_account() -> pwd.struct_passwd | None:
    """Mosquitto's account when this process is root (Mosquitto then switches to it), else None."""
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        return None


async def _version(binary: Path) -> str:
    """``mosquitto -h`` prints "mosquitto version 2.0.11" first (and exits 3)."""
    process = await asyncio.create_subprocess_exec(
        str(binary), "-h", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    out, _ = await process.communicate()
    first = out.decode("utf-8", errors="replace").splitlines()[:1]
    words = first[0].split() if first else []
    if len(words) < 3 or words[:2] != ["mosquitto", "version"]:
        raise StackFailed(f"{binary} does not look like Mosquitto (`-h` printed {first!r})")
    if not words[2].startswith("2."):
        raise StackFailed(f"{binary} is Mosquitto {words[2]}; the demo needs 2.x")
    return words[2]
