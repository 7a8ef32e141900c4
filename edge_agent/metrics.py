"""Prometheus metrics and a health endpoint for the edge agent, served by an asyncio task.

``GET /metrics`` is the Prometheus text format; ``GET /health`` is JSON that says what state the
agent is in (uplink connected, backlog, drain ETA, model in use), which ``coldtrace gateway status``
prints. No thread: a small asyncio server answers both.
"""

from __future__ import annotations

import logging

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from coldtrace.metrics_server import serve

__all__ = ["AgentMetrics", "serve"]

logger = logging.getLogger(__name__)


class AgentMetrics:
    """Every number the agent exposes, in its own registry (tests run several agents in one process)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.ingested = Counter(
            "coldtrace_agent_readings_ingested", "Readings committed to the outbox", registry=r
        )
        self.messages = Counter("coldtrace_agent_messages_received", "Device messages received", registry=r)
        self.rejected = Counter(
            "coldtrace_agent_messages_rejected", "Device messages refused, by reason", ["reason"], registry=r
        )
        self.duplicates = Counter(
            "coldtrace_agent_readings_duplicate", "Readings already stored or sent (dropped)", registry=r
        )
        self.outbox_readings = Gauge("coldtrace_agent_outbox_readings", "Readings in the outbox", registry=r)
        self.outbox_bytes = Gauge("coldtrace_agent_outbox_bytes", "Outbox size on disk", registry=r)
        self.outbox_oldest_age = Gauge(
            "coldtrace_agent_outbox_oldest_age_seconds",
            "Age of the oldest reading not yet acknowledged",
            registry=r,
        )
        self.thinned = Counter(
            "coldtrace_agent_readings_thinned", "Readings thinned under the disk budget", registry=r
        )
        self.uplink_connected = Gauge(
            "coldtrace_agent_uplink_connected", "1 when the cloud link is up", registry=r
        )
        self.batches_sent = Counter(
            "coldtrace_agent_batches_sent", "Batches acknowledged by the cloud broker", registry=r
        )
        self.readings_sent = Counter(
            "coldtrace_agent_readings_sent", "Readings acknowledged by the cloud broker", registry=r
        )
        self.drain_eta = Gauge(
            "coldtrace_agent_drain_eta_seconds", "Estimated time to drain the backlog", registry=r
        )
        self.local_alerts = Counter(
            "coldtrace_agent_local_alerts", "Local fallback alerts raised", registry=r
        )
        self.scores = Histogram(
            "coldtrace_agent_anomaly_score", "Anomaly scores stamped on readings",
            buckets=(0.1, 0.25, 0.5, 0.75, 0.9, 1.0), registry=r,
        )  # fmt: skip
        self.model = Gauge(
            "coldtrace_agent_model_info", "The anomaly model in use", ["model", "rules_only"], registry=r
        )
        self.ingest_latency = Histogram(
            "coldtrace_agent_ingest_seconds", "Device message receipt to durable commit", registry=r,
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0),
        )  # fmt: skip

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)
