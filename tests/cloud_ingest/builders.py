"""Build signed gateway batches the way an edge agent does, and count what the cloud stored."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, func, insert, select

from cloud_ingest.db.tables import lots, shipments
from cloud_ingest.registry import register_gateway
from coldtrace.contract import Reading
from coldtrace.contract.batch import GENESIS_HASH, Batch, frame_hash, sign_batch
from coldtrace.contract.reading import ClockQuality, Flag, SourceFormat

T0 = 1_790_000_000_000  # 2026-09-21, a fixed event-time origin
MINUTE = 60_000


@dataclass
class GatewaySim:
    """A gateway that signs and chains batches; ``frames()`` yields them in order."""

    gateway_id: str = "gw-1"
    site_id: str = "site-1"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)
    seq: int = 0
    prev: str = GENESIS_HASH

    def register(self, engine: Engine) -> None:
        """Register this gateway's key with the cloud."""
        with engine.begin() as conn:
            register_gateway(conn, self.gateway_id, self.key.public_key(), site_id=self.site_id, now_ms=T0)

    def frame(self, readings: list[Reading], *, created_ms: int | None = None) -> bytes:
        """The next signed frame of the chain."""
        self.seq += 1
        batch = Batch(
            batch_seq=self.seq, created_ms=created_ms or T0, gateway_id=self.gateway_id,
            prev_hash=self.prev, readings=tuple(readings), schema_version=1,
        )  # fmt: skip
        frame = sign_batch(batch, self.key)
        self.prev = frame_hash(frame)
        return frame


def reading(
    device_id: str, seq: int, t_ms: int, temperature_c: float, *, shipment_id: str | None = "SHP-1",
    lot_ids: tuple[str, ...] = ("LOT-1",), score: float | None = None, flags: tuple[Flag, ...] = (),
    site_id: str = "site-1",
) -> Reading:  # fmt: skip
    """A bound, clock-ok reading of one temperature."""
    bound = shipment_id is not None or bool(lot_ids)
    return Reading(
        anomaly_score=score, model=None if score is None else "iforest-v1@0123456789abcdef", bound=bound,
        clock=ClockQuality.OK, device_id=device_id, flags=tuple(sorted(flags)), lot_ids=lot_ids,
        seq=seq, shipment_id=shipment_id, site_id=site_id, source_format=SourceFormat.NATIVE,
        t_device_ms=t_ms, t_gateway_ms=max(t_ms, 1_600_000_000_000), temperature_c=temperature_c,
    )  # fmt: skip


def series(
    device_id: str,
    temps: list[float],
    *,
    start_ms: int = T0,
    step_ms: int = MINUTE,
    first_seq: int = 1,
    **kw: object,
) -> Iterator[Reading]:
    """Readings of ``temps`` one ``step_ms`` apart."""
    for i, t in enumerate(temps):
        yield reading(device_id, first_seq + i, start_ms + i * step_ms, t, **kw)  # type: ignore[arg-type]


def add_shipment(engine: Engine, shipment_id: str = "SHP-1", lot_ids: tuple[str, ...] = ("LOT-1",),
                 profile: str = "vaccines", quantity: float = 100.0) -> None:  # fmt: skip
    """Register a shipment and its lots as a manifest would."""
    with engine.begin() as conn:
        conn.execute(insert(shipments).values(shipment_id=shipment_id, profile=profile, created_ms=T0))
        for lot in lot_ids:
            conn.execute(
                insert(lots).values(
                    lot_id=lot, shipment_id=shipment_id, profile=profile, quantity=quantity, created_ms=T0
                )
            )


def count_rows(engine: Engine, table: object, *where: object) -> int:
    """Rows of ``table`` (matching ``where``) as another connection sees them."""
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table).where(*where)).scalar_one())  # type: ignore[arg-type]
