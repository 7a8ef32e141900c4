"""A single-node VictoriaMetrics on 127.0.0.1 with a throwaway data dir, plus read-back helpers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import httpx

from tests.harness.ports import LOOPBACK, free_port
from tests.harness.process import ManagedProcess, ServerHarness, make_workdir

Series = dict[str, Any]
T = TypeVar("T")


class VictoriaMetrics(ServerHarness):
    """One VictoriaMetrics process. ``url`` is its HTTP base (InfluxDB line protocol at ``/write``)."""

    def __init__(self, binary: Path, *, port: int | None = None, extra_args: Sequence[str] = ()) -> None:
        """Prepare a temp dir and the command line; call ``start()`` to run it."""
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.workdir = make_workdir("vm")
        self.data_dir = self.workdir / "data"
        self.startup_seconds: float | None = None
        argv = [
            str(binary),
            f"-httpListenAddr={self.host}:{self.port}",
            f"-storageDataPath={self.data_dir}",
            # Tests write fixed timestamps that may be far in the past; the default 1-month retention
            # would silently drop them.
            "-retentionPeriod=100y",
            # Queries hide samples newer than now-30s by default; tests read back what they just wrote.
            "-search.latencyOffset=0s",
            # A cached empty answer would otherwise be served to the read-back poll.
            "-search.disableCache",
            *extra_args,
        ]
        self.process = ManagedProcess("victoria-metrics", argv, workdir=self.workdir)
        self._http = httpx.Client(base_url=self.url, timeout=5.0)

    # -- lifecycle --------------------------------------------------------------------------------
    ready_what = "healthy (/health)"

    def _ready(self) -> bool:
        try:
            return self._http.get("/health").status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        """Stop the server, delete its temp dir and close the HTTP client."""
        super().close()
        self._http.close()

    # -- write / read-back helpers ----------------------------------------------------------------

    def write_lines(self, lines: str, precision: str = "ns") -> httpx.Response:
        """POST InfluxDB line protocol to /write and return the response unchecked.

        Beware: VictoriaMetrics answers 204 even for lines it cannot parse (it logs and skips them),
        so a 2xx here does not validate the lines; use InfluxDB 1.6 for that.
        """
        return self._http.post("/write", params={"precision": precision}, content=lines.encode("utf-8"))

    # -- read-back helpers ------------------------------------------------------------------------

    def force_flush(self) -> None:
        """Make recently ingested samples searchable now instead of after the ~1 s in-memory buffer."""
        self._http.get("/internal/force_flush").raise_for_status()

    def export_now(self, match: str, *, start: float = 0.0, end: float | None = None) -> list[Series]:
        """One /api/v1/export call: every series matching the selector ``match`` with its samples.

        Each item is ``{"metric": {"__name__": ..., label: value}, "values": [...], "timestamps": [ms]}``.
        ``start``/``end`` are Unix seconds; ``end`` defaults to a day ahead because VictoriaMetrics'
        default end is "now" cut to whole seconds, which hides a sample stamped in the current second
        for up to a second (and hides samples from a fast device clock altogether).
        """
        end = time.time() + 86_400 if end is None else end
        params = {"match[]": match, "start": f"{start:.3f}", "end": f"{end:.3f}"}
        response = self._http.get("/api/v1/export", params=params)
        response.raise_for_status()
        return [json.loads(line) for line in response.text.splitlines() if line.strip()]

    def export(
        self,
        match: str,
        *,
        timeout: float = 10.0,
        until: Callable[[list[Series]], bool] = bool,
    ) -> list[Series]:
        """Poll ``export_now(match)`` until ``until(series)`` holds (default: anything came back).

        A fresh write is not visible at once, so every read-back waits; on timeout the last answer is
        returned and the test's own assertion reports the difference.
        """
        return _poll(lambda: self.export_now(match), until, timeout, self.force_flush)

    def query_now(self, promql: str, *, at: float | None = None) -> dict[str, Any]:
        """One instant query; returns the ``data`` member (``resultType`` and ``result``)."""
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        response = self._http.get("/api/v1/query", params=params)
        response.raise_for_status()
        body: dict[str, Any] = response.json()
        if body.get("status") != "success":
            raise RuntimeError(f"VictoriaMetrics query {promql!r} failed: {body}")
        data: dict[str, Any] = body["data"]
        return data

    def query(
        self,
        promql: str,
        *,
        at: float | None = None,
        timeout: float = 10.0,
        until: Callable[[dict[str, Any]], bool] = lambda data: bool(data["result"]),
    ) -> dict[str, Any]:
        """Poll an instant query until ``until(data)`` holds (default: a non-empty result).

        Measured on 1.79: a sample stamped "now" shows up in an instant query about 1 s after the
        write even with force_flush, while ``export()`` sees it at once; prefer ``export()`` for
        exact read-back and keep ``query()`` for PromQL semantics (rates, aggregations).
        """
        return _poll(lambda: self.query_now(promql, at=at), until, timeout, self.force_flush)

    def delete_series(self, match: str) -> None:
        """Delete every series matching ``match`` so tests sharing the session server stay independent."""
        self._http.post("/api/v1/admin/tsdb/delete_series", params={"match[]": match}).raise_for_status()


def _poll(
    fetch: Callable[[], T], until: Callable[[T], bool], timeout: float, before: Callable[[], None]
) -> T:
    deadline = time.monotonic() + timeout
    interval = 0.02
    while True:
        before()
        result = fetch()
        if until(result) or time.monotonic() >= deadline:
            return result
        time.sleep(interval)
        interval = min(interval * 2, 0.25)
