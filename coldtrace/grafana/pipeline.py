"""Ingest pipeline: device messages into the gateways, batches into the cloud, telemetry out of the
spool - rates, rejects by reason, duplicates, lag and spool depth."""

# ruff: noqa: S608 - Grafana query templates: Grafana fills in time ranges and selected variable values.

from __future__ import annotations

from coldtrace.grafana.common import AGENT, GATEWAY, IN_GATEWAY, SITE, in_range, timestamp
from coldtrace.grafana.model import SQL, Dashboard, InfluxQL, Panel, PromQL, Row, Step


def _rate(metric: str, by: str, labels: str = "") -> str:
    return f"sum by ({by}) (rate({metric}{{{labels}}}[$__rate_interval]))"


def _quantiles(metric: str, by: str, labels: str = "") -> tuple[PromQL, ...]:
    group = f"{by}, le" if by else "le"
    prefix = "{{" + by + "}} " if by else ""
    return tuple(
        PromQL(
            expr=f"histogram_quantile({q}, sum by ({group}) (rate({metric}{{{labels}}}[$__rate_interval])))",
            legend=f"{prefix}p{round(q * 100)}",
        )
        for q in (0.5, 0.99)
    )


_gateways = Row(
    "Gateways (edge agents)",
    (
        Panel(
            title="Device messages received",
            description="Device messages per second into each gateway's agent "
            "(coldtrace_agent_messages_received_total).",
            kind="timeseries",
            targets=(
                PromQL(
                    expr=_rate("coldtrace_agent_messages_received_total", "gateway", AGENT),
                    legend="{{gateway}}",
                ),
            ),
            unit="cps",
            width=8,
        ),
        Panel(
            title="Device messages refused, by reason",
            description="Messages the agents refused and dead-lettered (malformed, oversized, identity "
            "mismatch, unregistered ...), per interval (coldtrace_agent_messages_rejected_total).",
            kind="timeseries",
            targets=(
                PromQL(
                    expr="sum by (gateway, reason) (increase(coldtrace_agent_messages_rejected_total"
                    f"{{{AGENT}}}[$__rate_interval]))",
                    legend="{{gateway}} {{reason}}",
                ),
            ),
            width=8,
        ),
        Panel(
            title="Readings through the outbox",
            description="Readings per second committed to the outbox, acknowledged by the cloud broker, "
            "dropped as duplicates (already stored or sent) and thinned under the disk budget.",
            kind="timeseries",
            targets=(
                PromQL(
                    expr=_rate("coldtrace_agent_readings_ingested_total", "gateway", AGENT),
                    legend="{{gateway}} committed",
                ),
                PromQL(
                    expr=_rate("coldtrace_agent_readings_sent_total", "gateway", AGENT),
                    legend="{{gateway}} sent",
                ),
                PromQL(
                    expr=_rate("coldtrace_agent_readings_duplicate_total", "gateway", AGENT),
                    legend="{{gateway}} duplicate",
                ),
                PromQL(
                    expr=_rate("coldtrace_agent_readings_thinned_total", "gateway", AGENT),
                    legend="{{gateway}} thinned",
                ),
            ),
            unit="cps",
            width=8,
        ),
        Panel(
            title="Gateway ingest latency",
            description="Device message received to durably committed in the outbox (p50, p99; "
            "coldtrace_agent_ingest_seconds).",
            kind="timeseries",
            targets=_quantiles("coldtrace_agent_ingest_seconds_bucket", "gateway", AGENT),
            unit="s",
        ),
        Panel(
            title="Batches acknowledged by the cloud broker",
            description="Signed batches per second each gateway got PUBACKs for "
            "(coldtrace_agent_batches_sent_total).",
            kind="timeseries",
            targets=(
                PromQL(
                    expr=_rate("coldtrace_agent_batches_sent_total", "gateway", AGENT), legend="{{gateway}}"
                ),
            ),
            unit="cps",
        ),
    ),
)

_workers = Row(
    "Cloud workers",
    (
        Panel(
            title="Batches by outcome",
            description="Batches per second the workers handled: accepted, duplicate (a byte-identical "
            "resend or redelivery, no effect) or rejected (coldtrace_cloud_batches_total).",
            kind="timeseries",
            targets=(PromQL(expr=_rate("coldtrace_cloud_batches_total", "outcome"), legend="{{outcome}}"),),
            unit="cps",
            width=8,
        ),
        Panel(
            title="Readings stored and duplicates",
            description="Readings per second stored for the first time (accepted) or already stored "
            "under their device and sequence (duplicate) (coldtrace_cloud_readings_total).",
            kind="timeseries",
            targets=(PromQL(expr=_rate("coldtrace_cloud_readings_total", "result"), legend="{{result}}"),),
            unit="cps",
            width=8,
        ),
        Panel(
            title="Batches rejected, by reason",
            description="Refused batches per interval by reason code (coldtrace_cloud_rejects_total); "
            "each one is dead-lettered in the rejects table below.",
            kind="timeseries",
            targets=(
                PromQL(
                    expr="sum by (reason) (increase(coldtrace_cloud_rejects_total[$__rate_interval]))",
                    legend="{{reason}}",
                ),
            ),
            width=8,
        ),
        Panel(
            title="Lag, device time to stored",
            description="How late readings reach the cloud, from their device timestamp to the commit "
            "(p50, p99; coldtrace_cloud_lag_seconds). Hours after an outage backfill; seconds otherwise.",
            kind="timeseries",
            targets=_quantiles("coldtrace_cloud_lag_seconds_bucket", ""),
            unit="s",
            width=8,
        ),
        Panel(
            title="Batch verify and commit time",
            description="Time to verify and commit one batch (p50, p99; coldtrace_cloud_store_seconds).",
            kind="timeseries",
            targets=_quantiles("coldtrace_cloud_store_seconds_bucket", ""),
            unit="s",
            width=8,
        ),
        Panel(
            title="Telemetry spool depth",
            description="Telemetry waiting in the SQL spool for the time-series server: chunks and points "
            "(coldtrace_cloud_spool_rows, coldtrace_cloud_spool_points). Grows while it is down; "
            "nothing is lost.",
            kind="timeseries",
            targets=(
                PromQL(expr="max(coldtrace_cloud_spool_rows)", legend="chunks"),
                PromQL(expr="max(coldtrace_cloud_spool_points)", legend="points"),
            ),
            width=8,
        ),
        Panel(
            title="Telemetry points written",
            description="Points per second the time-series server confirmed "
            "(coldtrace_cloud_telemetry_points_written_total).",
            kind="timeseries",
            targets=(
                PromQL(
                    expr="sum(rate(coldtrace_cloud_telemetry_points_written_total[$__rate_interval]))",
                    legend="points",
                ),
            ),
            unit="cps",
            width=8,
        ),
        Panel(
            title="Dependencies up",
            description="1 when every worker's last write to the time-series server succeeded and its SQL "
            "database answered (coldtrace_cloud_telemetry_up, coldtrace_cloud_store_up).",
            kind="stat",
            targets=(
                PromQL(expr="min(coldtrace_cloud_telemetry_up)", instant=True, legend="time-series server"),
                PromQL(expr="min(coldtrace_cloud_store_up)", instant=True, legend="SQL database"),
            ),
            width=8,
            steps=(Step("red"), Step("green", 1)),
        ),
        Panel(
            title="Rejected and chain gaps since the workers started",
            description="Totals since each worker started, by reject reason, and gaps seen in gateways' "
            "batch chains (coldtrace_cloud_rejects_total, coldtrace_cloud_chain_gaps_total).",
            kind="stat",
            targets=(
                PromQL(
                    # Every reason is exported from 0; show those that happened.
                    expr="sum by (reason) (coldtrace_cloud_rejects_total) > 0",
                    instant=True,
                    legend="{{reason}}",
                ),
                PromQL(expr="sum(coldtrace_cloud_chain_gaps_total)", instant=True, legend="chain gaps"),
            ),
            width=8,
            steps=(Step("green"), Step("orange", 1)),
        ),
    ),
)

_batches = Row(
    "Per batch (InfluxDB)",
    (
        Panel(
            title="Batch lag by gateway",
            description="Largest receive-minus-creation delay of a gateway's batches per interval "
            "(ingest_batch.lag_ms): how long batches waited in the outbox and on the way.",
            kind="timeseries",
            targets=(
                InfluxQL(
                    query='SELECT max("lag_ms") / 1000 FROM "ingest_batch" '
                    f'WHERE {IN_GATEWAY} AND $timeFilter GROUP BY time($__interval), "gateway" fill(none)',
                    alias="$tag_gateway",
                ),
            ),
            unit="s",
            width=8,
        ),
        Panel(
            title="Readings received by gateway",
            description="Readings in the batches the cloud received per interval (ingest_batch.readings).",
            kind="timeseries",
            targets=(
                InfluxQL(
                    query=f'SELECT sum("readings") FROM "ingest_batch" WHERE {IN_GATEWAY} AND $timeFilter '
                    'GROUP BY time($__interval), "gateway" fill(none)',
                    alias="$tag_gateway",
                ),
            ),
            width=8,
        ),
        Panel(
            title="Readings that will never arrive",
            description="Gap markers by kind (gap.count, at the gap's device time): thinned under the "
            "gateway's disk budget, dropped on the device, or missing.",
            kind="timeseries",
            targets=(
                InfluxQL(
                    query=f'SELECT sum("count") FROM "gap" WHERE {IN_GATEWAY} AND $timeFilter '
                    'GROUP BY time($__interval), "gateway", "kind" fill(none)',
                    alias="$tag_gateway $tag_kind",
                ),
            ),
            width=8,
        ),
    ),
)

_dead_letters = Row(
    "Dead letters (PostgreSQL)",
    (
        Panel(
            title="Rejected batches",
            description="Refused frames in the time range with reason, sender and detail (rejects). Not "
            "filtered by gateway: a frame from an unknown or revoked sender belongs here too.",
            kind="table",
            targets=(
                SQL(
                    sql=f"SELECT {timestamp('received_ms')} AS received, reason, identity, topic, transport, "
                    f"size, frame_sha256, detail FROM rejects WHERE {in_range('received_ms')} "
                    "ORDER BY received_ms DESC, id DESC LIMIT 500"
                ),
            ),
            width=16,
        ),
        Panel(
            title="Rejected batches by reason",
            description="Dead letters in the time range by reason code.",
            kind="bargauge",
            targets=(
                SQL(
                    sql=f"SELECT reason, count(*) AS batches FROM rejects WHERE {in_range('received_ms')} "
                    "GROUP BY reason ORDER BY 2 DESC, 1"
                ),
            ),
            width=8,
            steps=(Step("orange"),),
        ),
    ),
)

INGEST_PIPELINE = Dashboard(
    uid="coldtrace-ingest-pipeline",
    title="coldtrace / Ingest pipeline",
    description="Gateway and cloud ingest rates, rejects by reason, duplicates, lag and the telemetry spool.",
    variables=(SITE, GATEWAY),
    rows=(_gateways, _workers, _batches, _dead_letters),
)
