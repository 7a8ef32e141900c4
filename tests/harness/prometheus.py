"""Prometheus on 127.0.0.1 with a throwaway TSDB: it scrapes targets the test names, then answers PromQL.

Targets are given through file-based service discovery: ``set_targets(name, groups)`` writes
``targets/<name>.json`` (atomically, by rename) and Prometheus picks the file up by itself (it
watches the directory), so targets whose ports are only known once they listen can be added while
the server runs. Every target group may carry labels (``job``, ``gateway``, ...); they become the
scraped series' labels, as in a production ``file_sd_configs`` or ``static_configs`` block.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from tests.harness.ports import LOOPBACK, free_port
from tests.harness.process import ManagedProcess, ServerHarness, make_workdir

#: How often Prometheus scrapes in tests; also its evaluation interval. One second is its practical floor.
SCRAPE_INTERVAL_S = 1.0


@dataclass(frozen=True, slots=True)
class TargetGroup:
    """``host:port`` addresses scraped at ``/metrics`` with the same extra labels."""

    targets: tuple[str, ...]
    labels: Mapping[str, str] = field(default_factory=dict)


class Prometheus(ServerHarness):
    """One ``prometheus`` process: config and TSDB in a temp dir, HTTP API at ``url``."""

    def __init__(
        self, binary: Path, *, port: int | None = None, scrape_interval_s: float = SCRAPE_INTERVAL_S
    ) -> None:
        """Write the config; call ``start()`` to run the server."""
        self.host = LOOPBACK
        self.port = port if port is not None else free_port()
        self.url = f"http://{self.host}:{self.port}"
        self.scrape_interval_s = scrape_interval_s
        self.workdir = make_workdir("prometheus")
        self.targets_dir = self.workdir / "targets"
        self.targets_dir.mkdir()
        self.config_path = self.workdir / "prometheus.yml"
        self.config_path.write_text(self._config(), encoding="utf-8")
        self.startup_seconds: float | None = None
        argv = [
            str(binary),
            f"--config.file={self.config_path}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={self.host}:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=info",
        ]
        self.process = ManagedProcess("prometheus", argv, workdir=self.workdir)
        self._http = httpx.Client(base_url=self.url, timeout=10.0)

    def _config(self) -> str:
        # JSON is YAML: no YAML library needed to write it.
        interval = f"{self.scrape_interval_s:g}s"
        config = {
            "global": {
                "scrape_interval": interval,
                "scrape_timeout": interval,
                "evaluation_interval": interval,
            },
            "scrape_configs": [
                {
                    # Overridden by each target group's own ``job`` label, when it has one.
                    "job_name": "harness",
                    "file_sd_configs": [
                        {"files": [str(self.targets_dir / "*.json")], "refresh_interval": interval}
                    ],
                }
            ],
        }
        return json.dumps(config, indent=2) + "\n"

    # -- lifecycle --------------------------------------------------------------------------------
    ready_what = "ready (/-/ready)"

    def _ready(self) -> bool:
        try:
            return self._http.get("/-/ready").status_code == 200
        except httpx.TransportError:
            return False

    def close(self) -> None:
        """Stop the server, delete its temp dir and close the HTTP client."""
        super().close()
        self._http.close()

    # -- targets ----------------------------------------------------------------------------------

    def set_targets(self, name: str, groups: Sequence[TargetGroup]) -> None:
        """Scrape ``groups`` (replacing what was set under ``name`` before; empty stops scraping)."""
        body = [{"targets": list(g.targets), "labels": dict(g.labels)} for g in groups]
        path = self.targets_dir / f"{name}.json"
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps(body), encoding="utf-8")
        # Prometheus re-reads the file on every change: it must never see half of it.
        partial.replace(path)

    def active_targets(self) -> list[dict[str, Any]]:
        """``/api/v1/targets`` active targets: ``labels``, ``health`` (up/down/unknown), ``lastScrape``."""
        response = self._http.get("/api/v1/targets", params={"state": "active"})
        response.raise_for_status()
        targets: list[dict[str, Any]] = response.json()["data"]["activeTargets"]
        return targets

    def wait_scraped(
        self, addresses: Sequence[str], *, after: float, timeout: float = 30.0
    ) -> dict[str, dict[str, Any]]:
        """Wait until every ``host:port`` in ``addresses`` was scraped successfully after Unix time ``after``.

        Returns the targets by address. Raises TimeoutError naming the targets still waiting (with
        their last error) when ``timeout`` passes first. Polling is the only signal Prometheus gives.
        """
        deadline = time.monotonic() + timeout
        interval = 0.05
        while True:
            found = {t["labels"].get("instance", ""): t for t in self.active_targets()}
            waiting = [a for a in addresses if not _scraped_after(found.get(a), after)]
            if not waiting:
                return {a: found[a] for a in addresses}
            if time.monotonic() >= deadline:
                states = {a: _describe(found.get(a)) for a in waiting}
                raise TimeoutError(f"Prometheus did not scrape {states} within {timeout:g} s")
            time.sleep(interval)
            interval = min(interval * 2, 0.25)

    # -- queries ----------------------------------------------------------------------------------

    def query(self, promql: str, *, at: float | None = None) -> dict[str, Any]:
        """One instant query; returns the ``data`` member (``resultType`` and ``result``).

        Raises RuntimeError when Prometheus refuses the query (bad syntax, unknown function).
        """
        params = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        return self._api("/api/v1/query", params, promql)

    def query_range(self, promql: str, *, start: float, end: float, step_s: float) -> dict[str, Any]:
        """One range query (``resultType`` matrix) from ``start`` to ``end`` (Unix seconds)."""
        params = {"query": promql, "start": f"{start:.3f}", "end": f"{end:.3f}", "step": f"{step_s:g}"}
        return self._api("/api/v1/query_range", params, promql)

    def wait_for(
        self, promql: str, until: Callable[[dict[str, Any]], bool], *, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Poll an instant query at "now" until ``until(data)`` holds; the last answer on timeout."""
        deadline = time.monotonic() + timeout
        interval = 0.05
        while True:
            data = self.query(promql)
            if until(data) or time.monotonic() >= deadline:
                return data
            time.sleep(interval)
            interval = min(interval * 2, 0.25)

    def _api(self, path: str, params: dict[str, str], promql: str) -> dict[str, Any]:
        # POST, as Grafana sends them by default: long queries do not hit URL length limits.
        response = self._http.post(path, data=params)
        body: dict[str, Any] = response.json()
        if response.status_code != 200 or body.get("status") != "success":
            raise RuntimeError(f"Prometheus refused {promql!r}: HTTP {response.status_code} {body}")
        data: dict[str, Any] = body["data"]
        return data


def _scraped_after(target: dict[str, Any] | None, after: float) -> bool:
    if target is None or target.get("health") != "up":
        return False
    # lastScrape is RFC 3339 with nanoseconds, e.g. 2026-11-23T23:05:10.123456789Z.
    return _rfc3339_seconds(str(target["lastScrape"])) > after


def _rfc3339_seconds(stamp: str) -> float:
    whole, _, fraction = stamp.rstrip("Z").partition(".")
    base = datetime.fromisoformat(whole).replace(tzinfo=UTC).timestamp()
    return base + (float(f"0.{fraction}") if fraction else 0.0)


def _describe(target: dict[str, Any] | None) -> str:
    if target is None:
        return "not discovered yet"
    return (
        f"{target.get('health')} (last scrape {target.get('lastScrape')}, error {target.get('lastError')!r})"
    )
