"""The benchmark's bare writer writes what a worker writes for the same readings (its baseline's fairness)."""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from hypothesis import given, settings

from cloud_ingest.telemetry.lineproto import reading_lines
from coldtrace.contract import Batch
from coldtrace.contract.batch import sign_batch
from coldtrace.demo.lineproto import FieldValue, parse_line
from scripts.bare_writer import frame_lines
from tests.coldtrace.contract.strategies import batches

KEY = Ed25519PrivateKey.generate()
Point = tuple[dict[str, str], dict[str, FieldValue], int | None]


def _point(line: str, measurement: str) -> Point:
    """Tags, fields and timestamp of one line (parsed as strictly as InfluxDB does)."""
    point = parse_line(line)
    assert point.measurement == measurement
    return dict(point.tags), dict(point.fields), point.time


def _worker_points(batch: Batch) -> list[Point]:
    text = reading_lines(batch.readings, gateway_id=batch.gateway_id)
    return [_point(line, "reading") for line in text.splitlines()]


@settings(max_examples=200)
@given(batches(max_markers=0))
def test_bare_writer_writes_the_workers_reading_lines(batch: Batch) -> None:
    bare = [
        _point(line, "bare_reading")
        for line in frame_lines(sign_batch(batch, KEY), batch.gateway_id, fields="worker")
    ]
    assert bare == _worker_points(batch)


@given(batches(max_markers=0))
def test_measured_values_only_leaves_out_the_derived_fields(batch: Batch) -> None:
    frame = sign_batch(batch, KEY)
    measured = [
        _point(line, "bare_measured_reading")
        for line in frame_lines(frame, batch.gateway_id, fields="measured")
    ]
    for (tags, fields, timestamp), (worker_tags, worker_fields, _), r in zip(
        measured, _worker_points(batch), batch.readings, strict=True
    ):
        assert tags == worker_tags
        assert fields == {
            k: v for k, v in worker_fields.items() if k not in {"skew_ms", "glitch", "backfill"}
        }
        assert timestamp == r.t_device_ms
