"""InfluxDB 1.6 on 127.0.0.1: the strict line-protocol oracle (it answers 400 where VictoriaMetrics
quietly accepts), plus write/query helpers over its v1 HTTP API."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

from tests.harness.ports import LOOPBACK, free_port
from tests.harness.process import ManagedProcess, ServerHarness, make_workdir


def _toml_str(value: str) -> str:
    # Paths go into a TOML basic string: escape backslashes and quotes.
    escaped = value.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{escaped}"'


class InfluxDB1(ServerHarness):
    """One ``influxd`` 1.x process with meta/data/wal in a temp dir, auth off, HTTP at ``url``."""

    def __init__(self, binary: Path, *, port: int | None = None, rpc_port: int | None = None) -> None:
        """Write the config file; call ``start()`` to run the server."""
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        # influxd also binds a TCP "RPC" port for backup/restore (default 8088); it must be free too.
        self.rpc_port = rpc_port if rpc_port is not None else free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.workdir = make_workdir("influxdb1")
        self.config_path = self.workdir / "influxdb.conf"
        self.config_path.write_text(self._config(), encoding="utf-8")
        self.startup_seconds: float | None = None
        # influxd logs to stderr; ManagedProcess sends that to influxd.log in the temp dir.
        self.process = ManagedProcess(
            "influxd", [str(binary), "-config", str(self.config_path)], workdir=self.workdir
        )
        self._http = httpx.Client(base_url=self.url, timeout=10.0)

    def _config(self) -> str:
        w = self.workdir
        return f"""\
reporting-disabled = true
bind-address = {_toml_str(f"{self.host}:{self.rpc_port}")}

[meta]
  dir = {_toml_str(str(w / "meta"))}

[data]
  dir = {_toml_str(str(w / "data"))}
  wal-dir = {_toml_str(str(w / "wal"))}
  # Tests are not about durability across power loss; fsync only slows them down.
  wal-fsync-delay = "0s"
  query-log-enabled = false

[monitor]
  # The _internal database would write self-metrics every 10 s for nothing.
  store-enabled = false

[http]
  enabled = true
  bind-address = {_toml_str(f"{self.host}:{self.port}")}
  auth-enabled = false
  log-enabled = true
  pprof-enabled = false

[logging]
  format = "logfmt"
  level = "info"
"""

    # -- lifecycle --------------------------------------------------------------------------------
    ready_what = "answering /ping"

    def _ready(self) -> bool:
        try:
            return self._http.get("/ping").status_code == 204
        except httpx.TransportError:
            return False

    def close(self) -> None:
        """Stop the server, delete its temp dir and close the HTTP client."""
        super().close()
        self._http.close()

    # -- API helpers ------------------------------------------------------------------------------

    def create_database(self, name: str) -> None:
        """CREATE DATABASE (idempotent in 1.x)."""
        escaped = name.replace("\\", "\\\\").replace('"', '\\"')
        body = self._post_query(f'CREATE DATABASE "{escaped}"', db=None)
        _raise_on_statement_error(body, f"CREATE DATABASE {name}")

    def write(self, db: str, lines: str, precision: str = "ns") -> httpx.Response:
        """POST line protocol to /write and return the response unchecked.

        204 means every line was stored; 400 carries ``{"error": "unable to parse ..."}`` naming the
        first bad line, which is exactly what tests compare against.
        """
        return self._http.post(
            "/write", params={"db": db, "precision": precision}, content=lines.encode("utf-8")
        )

    def query(self, db: str, influxql: str, *, epoch: str = "ns") -> dict[str, Any]:
        """Run InfluxQL and return the JSON body. Times come back as integers in ``epoch`` units
        (default ns, so they compare exactly with what was written). Raises on an HTTP or statement
        error."""
        body = self._post_query(influxql, db=db, epoch=epoch)
        _raise_on_statement_error(body, influxql)
        return body

    def _post_query(self, influxql: str, *, db: str | None, epoch: str | None = None) -> dict[str, Any]:
        # POST for everything: 1.x refuses statements that change state over GET.
        params: dict[str, str] = {"q": influxql}
        if db is not None:
            params["db"] = db
        if epoch is not None:
            params["epoch"] = epoch
        response = self._http.post("/query", data=params)
        if response.status_code != 200:
            raise RuntimeError(f"InfluxDB query {influxql!r} -> HTTP {response.status_code}: {response.text}")
        body: dict[str, Any] = response.json()
        return body


def _raise_on_statement_error(body: dict[str, Any], what: str) -> None:
    errors = [r["error"] for r in body.get("results", []) if "error" in r]
    if "error" in body:
        errors.append(body["error"])
    if errors:
        raise RuntimeError(f"InfluxDB rejected {what!r}: {'; '.join(errors)}")
