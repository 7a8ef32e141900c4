"""The cloud's time-series output: line-protocol encoding of verified batches and the writer.

``reading_lines``/``marker_lines``/``batch_line`` turn a verified batch into line protocol (the schema
is in :mod:`cloud_ingest.telemetry.lineproto`); the spool stores that text and its drain hands it to
``TelemetryWriter.write``, retrying with ``Backoff`` while the server is unavailable.
"""

from cloud_ingest.telemetry.backoff import Backoff
from cloud_ingest.telemetry.errors import (
    TelemetryError,
    TelemetryMisconfigured,
    TelemetryRejected,
    TelemetryUnavailable,
)
from cloud_ingest.telemetry.lineproto import batch_line, escape_tag, marker_lines, reading_lines
from cloud_ingest.telemetry.writer import TelemetryWriter

__all__ = [
    "Backoff",
    "TelemetryError",
    "TelemetryMisconfigured",
    "TelemetryRejected",
    "TelemetryUnavailable",
    "TelemetryWriter",
    "batch_line",
    "escape_tag",
    "marker_lines",
    "reading_lines",
]
