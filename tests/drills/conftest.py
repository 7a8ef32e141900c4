"""Fixtures of the fault drills: each drill gets its own servers, PKI, seed and stack.

Own servers, because a drill breaks them (restarts a broker, stops the time-series server, kills a
database) and revokes certificates. Mosquitto keeps sessions on disk so a restart loses nothing
queued; VictoriaMetrics deduplicates rewritten samples (``-dedup.minScrapeInterval=1ms``), as the
telemetry spool writes at least once (see ``tests/cloud_ingest/test_drills.py``).

The seed is ``$COLDTRACE_DRILL_SEED`` when set, otherwise derived from the drill's name (stable
across runs); it drives the simulator and every random choice of the drill, and every failure
message starts with it.
"""

from __future__ import annotations

import contextlib
import os
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from certs.pki import Pki, Role
from tests.cloud_ingest.conftest import fresh_postgres_url
from tests.drills.runner import Drill
from tests.drills.scenario import GATEWAYS
from tests.drills.stack import Servers
from tests.harness.mosquitto import DEFAULT_SERVICE_ACL, Mosquitto, MosquittoTlsFiles, agent_acl
from tests.harness.postgres import Postgres
from tests.harness.services import require_binary
from tests.harness.victoriametrics import VictoriaMetrics

SEED_ENV = "COLDTRACE_DRILL_SEED"


@pytest.fixture
def seed(request: pytest.FixtureRequest) -> int:
    """This drill's seed (see the module docstring), shown with the report of a failing drill."""
    explicit = os.environ.get(SEED_ENV, "").strip()
    value = int(explicit) if explicit else zlib.crc32(request.node.name.encode()) % 100_000
    request.node.add_report_section("setup", "drill seed", f"{SEED_ENV}={value}")
    return value


@contextlib.contextmanager
def _servers(tmp_path: Path, postgres: Postgres) -> Iterator[Servers]:
    mosquitto = require_binary("Mosquitto", "mosquitto", package="mosquitto", extra_dirs=[Path("/usr/sbin")])
    vm_binary = require_binary("VictoriaMetrics", "victoria-metrics", package="victoria-metrics")
    pki = Pki.init(tmp_path / "pki")
    server = pki.issue(Role.SERVER, "localhost", dns_names=["localhost"], ip_addresses=["127.0.0.1"])
    tls = MosquittoTlsFiles(cafile=pki.ca_bundle_path, certfile=server.chain_path, keyfile=server.key_path,
                            crlfile=pki.crl_path)  # fmt: skip
    with contextlib.ExitStack() as stack:
        brokers = {}
        for i in range(GATEWAYS):
            g = f"gw-{i}"
            broker = Mosquitto(
                mosquitto, tls, service_acl={**DEFAULT_SERVICE_ACL, **agent_acl(g)}, persistence=True
            )
            stack.callback(broker.close)
            broker.start()
            brokers[g] = broker
        cloud = Mosquitto(mosquitto, tls, service_acl=DEFAULT_SERVICE_ACL, persistence=True)
        stack.callback(cloud.close)
        cloud.start()
        vm = VictoriaMetrics(vm_binary, extra_args=("-dedup.minScrapeInterval=1ms",))
        stack.callback(vm.close)
        vm.start()
        workdir = tmp_path / "stack"
        workdir.mkdir()
        yield Servers(pki=pki, gateway_brokers=brokers, cloud_broker=cloud, vm=vm, postgres=postgres,
                      database_url=fresh_postgres_url(postgres), workdir=workdir)  # fmt: skip


@pytest.fixture
def servers(tmp_path: Path, postgres: Postgres) -> Iterator[Servers]:
    """Brokers, VictoriaMetrics and a fresh database on the session's PostgreSQL."""
    with _servers(tmp_path, postgres) as s:
        yield s


@pytest.fixture
def servers_own_postgres(tmp_path: Path, postgres: Postgres) -> Iterator[Servers]:
    """As ``servers``, on a PostgreSQL of the drill's own (the session server's binaries), to kill."""
    own = Postgres(postgres.bindir)
    try:
        own.start()
        with _servers(tmp_path, own) as s:
            yield s
    finally:
        own.close()


def _drill(request: pytest.FixtureRequest, servers: Servers, seed: int) -> Iterator[Drill]:
    drill = Drill(servers, seed=seed, name=request.node.name)
    try:
        yield drill
    finally:
        drill.close(request)


@pytest.fixture
def drill(request: pytest.FixtureRequest, servers: Servers, seed: int) -> Iterator[Drill]:
    """A drill over :func:`servers`."""
    yield from _drill(request, servers, seed)


@pytest.fixture
def drill_own_postgres(
    request: pytest.FixtureRequest, servers_own_postgres: Servers, seed: int
) -> Iterator[Drill]:
    """A drill over :func:`servers_own_postgres`."""
    yield from _drill(request, servers_own_postgres, seed)
