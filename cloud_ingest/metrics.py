"""Prometheus metrics of the cloud workers and API, in one registry per process role."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence

import numpy as np
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import HistogramMetricFamily
from prometheus_client.registry import Collector

from cloud_ingest.verify import IngestReject

#: Seconds buckets from a millisecond to a day: lag after an outage backfill is hours, not seconds.
LAG_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 4 * 3600, 86_400)


class BulkHistogram(Collector):
    """A histogram fed a whole array of observations at once.

    ``prometheus_client.Histogram.observe`` takes one value and a lock per call: 0.8 us for each of a
    worker's readings. Binning a group's values with NumPy costs a few nanoseconds each. Exposed
    exactly as a ``Histogram`` with the same buckets would be.
    """

    def __init__(
        self, name: str, documentation: str, *, buckets: Sequence[float], registry: CollectorRegistry
    ) -> None:
        self._name, self._documentation = name, documentation
        self._bounds = np.array(sorted(buckets), dtype=np.float64)
        self._counts = np.zeros(len(self._bounds) + 1, dtype=np.int64)  # the last: above every bound
        self._sum = 0.0
        self._lock = threading.Lock()
        registry.register(self)

    def observe_many(self, values: np.typing.ArrayLike) -> None:
        """Count each value in the first bucket whose bound is at least the value (Prometheus' ``le``)."""
        array = np.asarray(values, dtype=np.float64)
        if array.size == 0:
            return
        counts = np.bincount(np.searchsorted(self._bounds, array, side="left"), minlength=len(self._counts))
        total = float(array.sum())
        with self._lock:
            self._counts += counts
            self._sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        """The cumulative buckets, as Prometheus expects them."""
        with self._lock:
            cumulative = np.cumsum(self._counts).tolist()
            total = self._sum
        edges = [*(_bound_text(b) for b in self._bounds.tolist()), "+Inf"]
        family = HistogramMetricFamily(self._name, self._documentation)
        family.add_metric([], list(zip(edges, cumulative, strict=True)), sum_value=total)
        yield family


def _bound_text(bound: float) -> str:
    # The text prometheus_client writes for a bucket's ``le`` (1.0, not 1).
    return repr(float(bound))


class CloudMetrics:
    """Every number a cloud worker exposes (its own registry: tests run several in one process)."""

    def __init__(self) -> None:
        self.registry = r = CollectorRegistry()
        self.batches = Counter(
            "coldtrace_cloud_batches", "Batches handled, by outcome", ["outcome"], registry=r
        )
        self.rejects = Counter(
            "coldtrace_cloud_rejects", "Batches refused, by reason code", ["reason"], registry=r
        )
        # Every reason exists at 0 from the start: a series first scraped at 1 shows no rate.
        for reason in IngestReject:
            self.rejects.labels(reason.value)
        self.readings = Counter(
            "coldtrace_cloud_readings", "Readings stored (accepted) or dropped as duplicates", ["result"],
            registry=r,
        )  # fmt: skip
        self.store_seconds = Histogram(
            "coldtrace_cloud_store_seconds",
            "Time to verify and commit one group of batches (one transaction)",
            registry=r,
        )
        self.lag_seconds = BulkHistogram(
            "coldtrace_cloud_lag_seconds", "Device time to stored, per reading", buckets=LAG_BUCKETS,
            registry=r,
        )  # fmt: skip
        self.alerts_raised = Counter("coldtrace_cloud_alerts_raised", "Alerts raised by rules", registry=r)
        self.holds_placed = Counter("coldtrace_cloud_holds_placed", "Holds placed by rules", registry=r)
        self.glitches = Counter(
            "coldtrace_cloud_glitches_flagged", "Isolated glitch-scored breaches flagged, not alerted",
            registry=r,
        )  # fmt: skip
        self.replayed = Counter(
            "coldtrace_cloud_rules_replayed_readings",
            "Stored readings the rules re-read to place late (backfilled) readings in context",
            registry=r,
        )
        self.chain_gaps = Counter(
            "coldtrace_cloud_chain_gaps", "Gaps detected in gateways' batch chains", registry=r
        )
        self.spool_rows = Gauge(
            "coldtrace_cloud_spool_rows", "Telemetry chunks waiting in the spool", registry=r
        )
        self.spool_points = Gauge(
            "coldtrace_cloud_spool_points", "Telemetry points waiting in the spool", registry=r
        )
        self.telemetry_points = Counter(
            "coldtrace_cloud_telemetry_points_written",
            "Points confirmed by the time-series server",
            registry=r,
        )
        self.telemetry_write_seconds = Histogram(
            "coldtrace_cloud_telemetry_write_seconds",
            "One write request to the time-series server",
            registry=r,
        )
        self.telemetry_up = Gauge(
            "coldtrace_cloud_telemetry_up",
            "1 when the last write to the time-series server succeeded",
            registry=r,
        )
        self.open_alerts = Gauge(
            "coldtrace_cloud_open_alerts", "Alerts not closed, by condition", ["condition"], registry=r
        )
        self.active_holds = Gauge("coldtrace_cloud_active_holds", "Active holds", registry=r)
        self.store_up = Gauge("coldtrace_cloud_store_up", "1 when the SQL database answers", registry=r)

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
