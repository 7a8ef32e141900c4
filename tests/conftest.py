"""Session fixtures that start REAL servers on 127.0.0.1 (free ports, temp dirs) for integration tests.

Each server starts lazily, the first time a test asks for its fixture, and is stopped at the end of
the session. A missing server binary skips the test locally and fails it under ``CI=true`` (see
``tests/harness/services.py``); a server that is installed but will not start is an error.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.harness.enrolled import EnrolledGateway, enroll_offline
from tests.harness.influxdb1 import InfluxDB1
from tests.harness.mosquitto import DEFAULT_SERVICE_ACL, Mosquitto, MosquittoTlsFiles
from tests.harness.postgres import Postgres
from tests.harness.prometheus import Prometheus
from tests.harness.services import require_binary
from tests.harness.victoriametrics import VictoriaMetrics

if TYPE_CHECKING:
    from certs.pki import IssuedIdentity, Pki, Role

#: PostgreSQL major version the project targets (Debian 12's).
PG_MAJOR = 15

# Startup times of the servers this session started, printed in the terminal summary.
_startup_seconds: dict[str, float] = {}


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Report how long each server took to become ready (only when some were started)."""
    if _startup_seconds:
        timings = ", ".join(f"{name} {seconds:.2f}s" for name, seconds in _startup_seconds.items())
        terminalreporter.write_line(f"test services started: {timings}")


@pytest.fixture(scope="session")
def victoriametrics() -> Iterator[VictoriaMetrics]:
    """A running VictoriaMetrics: ``.url``, ``.export(match)``, ``.query(promql)``, ``.process``."""
    binary = require_binary("VictoriaMetrics", "victoria-metrics", package="victoria-metrics")
    server = VictoriaMetrics(binary)
    try:
        _startup_seconds["victoria-metrics"] = server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def influxdb1() -> Iterator[InfluxDB1]:
    """A running InfluxDB 1.x: ``.url``, ``.create_database``, ``.write``, ``.query``, ``.process``."""
    binary = require_binary("InfluxDB 1.x", "influxd", package="influxdb")
    server = InfluxDB1(binary)
    try:
        _startup_seconds["influxdb1"] = server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(autouse=True)
def _logging_restored() -> Iterator[None]:
    """CLI commands point logging at the runner's stream, closed once they return: restore it."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.fixture(scope="session", autouse=True)
def _shared_kernel_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Agents the tests start (in process or as children) share one ahead-of-time feature loop.

    Each agent would otherwise build it into its own fresh state directory (about 10 s of CPU each).
    """
    kernels = tmp_path_factory.mktemp("kernels")
    kernels.chmod(0o700)
    with pytest.MonkeyPatch.context() as env:
        env.setenv("COLDTRACE_AGENT_KERNEL_DIR", str(kernels))
        yield


@pytest.fixture(scope="session")
def enrolled_gateway(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> EnrolledGateway:
    """Gateway ``gw-0`` enrolled offline against the session PKI (keys made locally, CSR signed)."""
    return enroll_offline(pki, "gw-0", tmp_path_factory.mktemp("gw-0-enrollment") / "tls")


@pytest.fixture(scope="session")
def prometheus() -> Iterator[Prometheus]:
    """A running Prometheus scraping every second: ``.url``, ``.set_targets``, ``.wait_scraped``, ``.query``,
    ``.query_range``, ``.process``."""
    binary = require_binary(
        "Prometheus", "prometheus", package="prometheus", env_override="COLDTRACE_PROMETHEUS"
    )
    server = Prometheus(binary)
    try:
        _startup_seconds["prometheus"] = server.start()
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def postgres() -> Iterator[Postgres]:
    """A running PostgreSQL 15 with database ``coldtrace_test``.

    Attributes: ``.dsn``, ``.host``, ``.port``, ``.database``, ``.process`` (``kill()``/``restart()``).
    """
    postmaster = require_binary(
        f"PostgreSQL {PG_MAJOR}",
        "postgres",
        package=f"postgresql-{PG_MAJOR}",
        # Debian keeps the server binaries off PATH, one directory per major version.
        extra_dirs=[Path(f"/usr/lib/postgresql/{PG_MAJOR}/bin")],
        env_override="COLDTRACE_POSTGRES",
    )
    # resolve(): PATH may hold a symlink (e.g. /usr/local/bin/postgres); initdb etc. sit beside the target.
    server = Postgres(postmaster.resolve().parent)
    try:
        server.start()
        _startup_seconds["postgres"] = server.startup_seconds or 0.0
        if server.initdb_seconds is not None:
            _startup_seconds["postgres initdb"] = server.initdb_seconds
        yield server
    finally:
        server.close()


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """A fresh two-level test PKI (``certs.pki.Pki``) for the session: CA bundle, CRL, issuing."""
    # Imported here, not at module level: a broken certs package must not break unrelated tests.
    from certs.pki import Pki  # noqa: PLC0415 - see above

    return Pki.init(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def identity(pki: Pki) -> Callable[[Role, str], IssuedIdentity]:
    """``identity(role, name)``: the session PKI's identity, issued on first use.

    Session-scoped tests share one PKI, and the PKI refuses to issue a second live certificate for a
    name, so tests ask through this instead of calling ``pki.issue`` themselves.
    """
    from certs.errors import UnknownIdentity  # noqa: PLC0415 - lazy like the pki fixture

    def get(role: Role, name: str) -> IssuedIdentity:
        """The current identity of role/name, issued now if it never was."""
        try:
            return pki.identity(role, name)
        except UnknownIdentity:
            return pki.issue(role, name)

    return get


@pytest.fixture(scope="session")
def server_identity(pki: Pki) -> IssuedIdentity:
    """The brokers' server certificate: CN localhost, SANs localhost and 127.0.0.1."""
    from certs.pki import Role  # noqa: PLC0415 - lazy like the pki fixture

    return pki.issue(Role.SERVER, "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])


@pytest.fixture(scope="session")
def mosquitto_tls(pki: Pki, server_identity: IssuedIdentity) -> Iterator[Mosquitto]:
    """A running Mosquitto with a mutual-TLS listener trusting ``pki``.

    Yields the ``Mosquitto`` harness object: ``.host``, ``.port``, ``.cafile``, ``.update_crl(path)``,
    ``.reload()``, ``.restart()``, ``.kill()``, ``.log_text()``. Service identities and their ACL grants
    are ``DEFAULT_SERVICE_ACL``; every other identity is confined to its own topics.
    """

    binary = require_binary(
        "Mosquitto",
        "mosquitto",
        package="mosquitto",
        extra_dirs=[Path("/usr/sbin")],
        env_override="COLDTRACE_MOSQUITTO",
    )
    server_id = server_identity
    tls = MosquittoTlsFiles(
        cafile=pki.ca_bundle_path,
        certfile=server_id.chain_path,
        keyfile=server_id.key_path,
        crlfile=pki.crl_path,
    )
    broker = Mosquitto(binary, tls, service_acl=DEFAULT_SERVICE_ACL)
    try:
        _startup_seconds["mosquitto"] = broker.start()
        yield broker
    finally:
        broker.close()
