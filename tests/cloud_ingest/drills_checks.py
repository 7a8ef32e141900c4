"""What every drill asserts at the end: the fleet's batches stored exactly once, with exact effects."""

from __future__ import annotations

from collections import Counter

from sqlalchemy import Engine, func, select

from cloud_ingest.db.tables import (
    alerts,
    batches,
    chain_gaps,
    devices,
    gateways,
    holds,
    readings,
    telemetry_spool,
)
from tests.cloud_ingest.drills_fleet import Fleet
from tests.harness.victoriametrics import VictoriaMetrics


def stored(engine: Engine, table: object) -> int:
    """Rows in ``table``."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())  # type: ignore[arg-type]


def assert_stored_exactly_once(engine: Engine, fleet: Fleet) -> None:
    """Batches, readings, chains, per-gateway and per-device counters, alerts and holds: exact."""
    per_gateway_readings = 2 * fleet.plan.per_device * fleet.plan.batches
    with engine.connect() as conn:
        keys = [(r.device_id, r.seq) for r in conn.execute(select(readings.c.device_id, readings.c.seq))]
        assert len(keys) == fleet.readings
        assert set(keys) == fleet.expected_keys()
        batch_rows = conn.execute(select(batches.c.gateway_id, batches.c.batch_seq, batches.c.accepted)).all()
        assert len(batch_rows) == fleet.batches
        assert {(b.gateway_id, b.batch_seq) for b in batch_rows} == {
            (load.gateway_id, seq) for load in fleet.loads for seq in range(1, fleet.plan.batches + 1)
        }
        # Each reading was new in exactly one batch: no batch stored twice under another guise.
        assert sum(b.accepted for b in batch_rows) == fleet.readings
        heads = {
            g.gateway_id: (g.head_seq, g.batches_accepted, g.readings_accepted)
            for g in conn.execute(select(gateways))
        }
        assert heads == {
            load.gateway_id: (fleet.plan.batches, fleet.plan.batches, per_gateway_readings)
            for load in fleet.loads
        }
        totals = {
            r.device_id: r.readings_total
            for r in conn.execute(select(devices.c.device_id, devices.c.readings_total))
        }
        assert totals == {
            d: fleet.plan.batches * fleet.plan.per_device for load in fleet.loads for d in load.devices
        }
        open_gaps = conn.execute(
            select(chain_gaps.c.gateway_id, chain_gaps.c.seq_from, chain_gaps.c.seq_to).where(
                chain_gaps.c.filled_ms.is_(None)
            )
        ).all()
        assert open_gaps == []
        raised = Counter(
            (a.kind, a.rule_id, a.subject_type, a.subject_id)
            for a in conn.execute(
                select(alerts.c.kind, alerts.c.rule_id, alerts.c.subject_type, alerts.c.subject_id)
            )
        )
        assert raised == Counter(
            {("excursion", "temp_high", "shipment", s): 1 for s in fleet.breaching_shipments}
        )
        held = Counter(
            (h.source, h.status, h.subject_type, h.subject_id)
            for h in conn.execute(
                select(holds.c.source, holds.c.status, holds.c.subject_type, holds.c.subject_id)
            )
        )
        assert held == Counter({("rule", "active", "shipment", s): 1 for s in fleet.breaching_shipments})


def spool_rows(engine: Engine) -> int:
    """Chunks waiting in the telemetry spool."""
    return stored(engine, telemetry_spool)


def spool_points(engine: Engine) -> int:
    """Points waiting in the telemetry spool."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.coalesce(func.sum(telemetry_spool.c.points), 0))).scalar_one())


def temperature_samples(vm: VictoriaMetrics, fleet: Fleet) -> int:
    """The fleet's ``reading_temperature_c`` samples in ``vm`` (waits until the expected count shows)."""
    exported = vm.export(
        fleet.device_selector(),
        timeout=15.0,
        until=lambda s: sum(len(x["values"]) for x in s) >= fleet.points,
    )
    return sum(len(x["values"]) for x in exported)
