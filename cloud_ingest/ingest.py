"""Store a verified batch exactly once: chain, readings, devices, rules, telemetry spool - one transaction.

Exactly-once effect rests on two unique keys: (gateway, batch sequence) for batches and (device,
sequence) for readings. A redelivered or resent frame finds its batch row and changes nothing; a
reading already stored through another batch (a device heard by two gateways) is skipped. Batches of
one gateway serialise on its row lock (``SELECT … FOR UPDATE``; SQLite takes the database write lock
at BEGIN), so any number of workers may share the load.

Chain continuity: a batch must agree with its stored neighbours (``prev_hash`` of batch *n* is the
frame hash of *n - 1*). A sequence above the head opens a gap, which a later batch may fill: with
shared subscriptions, batches of one gateway can arrive on different workers out of order. A gap
still open after ``chain_gap_grace_s`` raises a gateway alert (see :mod:`cloud_ingest.gaps`).

The time-series points go into ``telemetry_spool`` in the same transaction: committed readings are
always eventually written to InfluxDB, by whichever worker drains the spool.
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import (
    Connection,
    Engine,
    case,
    delete,
    insert,
    select,
    update,
)
from sqlalchemy.exc import DBAPIError, OperationalError

from cloud_ingest.db.tables import (
    batches,
    chain_gaps,
    devices,
    gateway_keys,
    gateways,
    lots,
    markers,
    readings,
    rejects,
    shipments,
    telemetry_spool,
)
from cloud_ingest.db.upsert import BulkUpsert, insert_from_json, insert_ignoring, json_rows
from cloud_ingest.gaps import clear_gap_alert
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.rules.engine import RuleEngine, RuleOutcome, subject_key
from cloud_ingest.rules.runs import Sample
from cloud_ingest.settings import CloudSettings
from cloud_ingest.telemetry.lineproto import batch_line, marker_lines, reading_lines
from cloud_ingest.verify import IngestReject, KeyRing, Rejected, Verified, verify
from coldtrace.clock import wall_ms
from coldtrace.contract import Reading
from coldtrace.contract.batch import GENESIS_HASH
from coldtrace.contract.limits import Limits
from coldtrace.profiles import ProfileName

logger = logging.getLogger(__name__)


class Outcome(enum.StrEnum):
    """What became of a batch."""

    ACCEPTED = "accepted"
    DUPLICATE = "duplicate"
    """Byte-identical to a stored batch: a redelivery or a replay of the same frame. No effect."""
    REJECTED = "rejected"


@dataclass(frozen=True, slots=True)
class IngestResult:
    """The answer for one frame; transports map it to an acknowledgement or an HTTP status."""

    outcome: Outcome
    gateway_id: str | None
    batch_seq: int | None = None
    readings_new: int = 0
    readings_duplicate: int = 0
    alerts_raised: int = 0
    holds_placed: int = 0
    reason: IngestReject | None = None
    detail: str = ""


class StoreUnavailable(Exception):
    """The SQL database cannot be reached: do not acknowledge; the frame must be offered again."""


# PostgreSQL: the batch's readings in one statement (see insert_from_json), new keys returned.
_INSERT_READINGS_PG = (
    insert_from_json(readings, [c.name for c in readings.columns])
    .on_conflict_do_nothing(index_elements=["device_id", "seq"])
    .returning(readings.c.device_id, readings.c.seq)
)


def _newer(ex: Any, name: str) -> Any:
    # Keep the newest reading's values: batches of one device may arrive out of order.
    return case((ex.last_seen_ms >= devices.c.last_seen_ms, ex[name]), else_=devices.c[name])


_UPSERT_DEVICES = BulkUpsert(
    devices,
    names=("device_id", "gateway_id", "site_id", "last_seen_ms", "last_t_device_ms", "last_seq", "battery_v",
           "temperature_c", "clock", "clock_skew_ms", "readings_total"),
    keys=("device_id",),
    update=lambda ex: {
        **{c: _newer(ex, c) for c in ("gateway_id", "site_id", "last_seen_ms", "last_t_device_ms",
                                       "last_seq", "clock", "clock_skew_ms")},
        "battery_v": _newer(ex, "battery_v"), "temperature_c": _newer(ex, "temperature_c"),
        "readings_total": devices.c.readings_total + ex.readings_total,
    },
)  # fmt: skip


class Ingestor:
    """Verifies and stores frames; safe to call from several threads and processes at once."""

    def __init__(
        self,
        engine: Engine,
        settings: CloudSettings,
        *,
        metrics: CloudMetrics | None = None,
        clock: Callable[[], int] = wall_ms,
    ) -> None:
        self.engine = engine
        self.settings = settings
        self.metrics = metrics or CloudMetrics()
        self.keys = KeyRing(engine)
        self.rules = RuleEngine(settings.rules)
        self.limits = Limits(max_batch_bytes=settings.max_batch_bytes)
        self._clock = clock
        self._profiles: dict[str, ProfileName] = {}

    def now_ms(self) -> int:
        """The ingestor's clock (UTC milliseconds)."""
        return self._clock()

    # -- entry point -------------------------------------------------------------------------------
    def ingest(self, frame: bytes, *, topic_gateway: str, identity: str, transport: str) -> IngestResult:
        """Verify and store one frame. Raises StoreUnavailable only; every refusal is a result."""
        started = time.perf_counter()
        received_ms = self._clock()
        try:
            verified = verify(
                frame, topic_gateway=topic_gateway, identity=identity, keys=self.keys, limits=self.limits
            )
            result = self._store(verified, received_ms=received_ms, transport=transport)
        except Rejected as exc:
            result = self.reject(
                frame, exc, identity=identity, topic_gateway=topic_gateway, transport=transport,
                received_ms=received_ms,
            )  # fmt: skip
        except (OperationalError, DBAPIError) as exc:
            self.metrics.store_up.set(0)
            raise StoreUnavailable(f"the database is unavailable: {exc.orig or exc}") from exc
        self.metrics.store_up.set(1)
        self.metrics.batches.labels(result.outcome.value).inc()
        self.metrics.store_seconds.observe(time.perf_counter() - started)
        return result

    def reject(
        self, frame: bytes, exc: Rejected, *, identity: str | None, topic_gateway: str | None, transport: str,
        received_ms: int,
    ) -> IngestResult:  # fmt: skip
        """Dead-letter a refused frame (raw bytes up to the cap, always its hash) and count it."""
        keep = len(frame) <= self.settings.deadletter_max_raw_bytes
        try:
            with self.engine.begin() as conn:
                conn.execute(
                    insert(rejects).values(
                        received_ms=received_ms, reason=exc.code.value, detail=exc.detail[:2000],
                        identity=identity, topic=topic_gateway, transport=transport,
                        frame_sha256=hashlib.sha256(frame).hexdigest(), raw=frame if keep else None,
                        size=len(frame),
                    )
                )  # fmt: skip
        except DBAPIError as db_exc:
            # Not acknowledged: the frame is offered again once its reject can be recorded.
            self.metrics.store_up.set(0)
            raise StoreUnavailable(f"the database is unavailable: {db_exc.orig or db_exc}") from db_exc
        self.metrics.rejects.labels(exc.code.value).inc()
        logger.warning("refused a batch from %s: %s", identity or "?", exc)
        return IngestResult(
            Outcome.REJECTED, exc.gateway_id or topic_gateway, reason=exc.code, detail=exc.detail
        )

    # -- the transaction ---------------------------------------------------------------------------
    def _store(self, v: Verified, *, received_ms: int, transport: str) -> IngestResult:
        batch = v.batch
        gw = batch.gateway_id
        seq = batch.batch_seq
        with self.engine.begin() as conn:
            gateway = conn.execute(
                select(gateways).where(gateways.c.gateway_id == gw).with_for_update()
            ).one_or_none()
            key_revoked = conn.execute(
                select(gateway_keys.c.revoked_ms).where(gateway_keys.c.key_id == v.key_id.hex())
            ).scalar_one_or_none()
            if gateway is None or gateway.status != "active" or key_revoked is not None:
                raise Rejected(
                    IngestReject.REVOKED if gateway is not None else IngestReject.UNKNOWN_GATEWAY,
                    f"gateway {gw!r} or its key {v.key_id.hex()} is revoked: batches are refused",
                    gateway_id=gw,
                )
            duplicate = self._check_chain(conn, v, head_seq=gateway.head_seq, received_ms=received_ms)
            if duplicate:
                self.metrics.readings.labels("duplicate").inc(len(batch.readings))
                return IngestResult(Outcome.DUPLICATE, gw, seq, readings_duplicate=len(batch.readings))
            new = self._store_readings(conn, v, received_ms=received_ms, transport=transport)
            self.resolve_profiles(conn, new)
            outcome = self.rules.apply(conn, [self._sample(r) for r in new], now_ms=received_ms)
            self._spool(conn, v, new, received_ms=received_ms)
            head = seq > gateway.head_seq
            conn.execute(
                update(gateways).where(gateways.c.gateway_id == gw).values(
                    last_seen_ms=received_ms,
                    head_seq=seq if head else gateway.head_seq,
                    head_hash=v.frame_hash if head else gateway.head_hash,
                    batches_accepted=gateways.c.batches_accepted + 1,
                    readings_accepted=gateways.c.readings_accepted + len(new),
                )
            )  # fmt: skip
        self._count(batch.readings, new, outcome, received_ms)
        return IngestResult(
            Outcome.ACCEPTED, gw, seq, readings_new=len(new),
            readings_duplicate=len(batch.readings) - len(new), alerts_raised=outcome.alerts_raised,
            holds_placed=outcome.holds_placed,
        )  # fmt: skip

    def _check_chain(self, conn: Connection, v: Verified, *, head_seq: int, received_ms: int) -> bool:
        """True for a byte-identical resend; Rejected for a conflicting one; records gaps."""
        gw, seq = v.batch.gateway_id, v.batch.batch_seq
        stored = {
            row.batch_seq: row
            for row in conn.execute(
                select(batches.c.batch_seq, batches.c.frame_hash, batches.c.prev_hash).where(
                    batches.c.gateway_id == gw, batches.c.batch_seq.in_((seq - 1, seq, seq + 1))
                )
            )
        }
        if seq in stored:
            if stored[seq].frame_hash == v.frame_hash:
                return True
            raise Rejected(
                IngestReject.REPLAYED_SEQUENCE,
                f"batch {seq} of {gw!r} was already accepted with different content (hash "
                f"{stored[seq].frame_hash[:16]}…, this one {v.frame_hash[:16]}…)",
                gateway_id=gw,
            )
        before = stored.get(seq - 1)
        if before is not None and before.frame_hash != v.batch.prev_hash:
            raise Rejected(
                IngestReject.CHAIN_MISMATCH,
                f"batch {seq} of {gw!r} chains to {v.batch.prev_hash[:16]}…, but batch {seq - 1} "
                f"has hash {before.frame_hash[:16]}…",
                gateway_id=gw,
            )
        after = stored.get(seq + 1)
        if after is not None and after.prev_hash != v.frame_hash:
            raise Rejected(
                IngestReject.CHAIN_MISMATCH,
                f"batch {seq + 1} of {gw!r} does not chain to this batch {seq}",
                gateway_id=gw,
            )
        if seq > head_seq + 1:
            conn.execute(
                insert(chain_gaps).values(
                    gateway_id=gw, seq_from=head_seq + 1, seq_to=seq - 1, detected_ms=received_ms
                )
            )
            self.metrics.chain_gaps.inc()
        elif seq <= head_seq:
            self._fill_gap(conn, gw, seq, received_ms)
        elif seq == 1 and v.batch.prev_hash != GENESIS_HASH:  # pragma: no cover - the contract refuses it
            raise Rejected(IngestReject.CHAIN_MISMATCH, "batch 1 must chain to genesis", gateway_id=gw)
        return False

    def _fill_gap(self, conn: Connection, gw: str, seq: int, received_ms: int) -> None:
        """A late batch fills (part of) a recorded gap; a fully filled gap clears its alert."""
        gap = conn.execute(
            select(chain_gaps).where(
                chain_gaps.c.gateway_id == gw, chain_gaps.c.filled_ms.is_(None),
                chain_gaps.c.seq_from <= seq, chain_gaps.c.seq_to >= seq,
            ).with_for_update()
        ).one_or_none()  # fmt: skip
        if gap is None:
            return
        conn.execute(
            delete(chain_gaps).where(chain_gaps.c.gateway_id == gw, chain_gaps.c.seq_from == gap.seq_from)
        )
        pieces = [(gap.seq_from, seq - 1), (seq + 1, gap.seq_to)]
        remaining = [(a, b) for a, b in pieces if a <= b]
        for a, b in remaining:
            conn.execute(
                insert(chain_gaps).values(
                    gateway_id=gw, seq_from=a, seq_to=b, detected_ms=gap.detected_ms, alert_id=gap.alert_id
                )
            )
        if not remaining:
            conn.execute(
                insert(chain_gaps).values(
                    gateway_id=gw, seq_from=gap.seq_from, seq_to=gap.seq_to, detected_ms=gap.detected_ms,
                    filled_ms=received_ms, alert_id=gap.alert_id,
                )
            )  # fmt: skip
            clear_gap_alert(conn, gw, now_ms=received_ms)

    def _store_readings(
        self, conn: Connection, v: Verified, *, received_ms: int, transport: str
    ) -> list[Reading]:
        batch = v.batch
        gw, seq = batch.gateway_id, batch.batch_seq
        rows = [
            {
                "device_id": r.device_id, "seq": r.seq, "gateway_id": gw, "batch_seq": seq,
                "site_id": r.site_id, "t_device_ms": r.t_device_ms, "t_gateway_ms": r.t_gateway_ms,
                "received_ms": received_ms, "clock": r.clock.value, "temperature_c": r.temperature_c,
                "humidity_pct": r.humidity_pct, "shock_g": r.shock_g, "battery_v": r.battery_v,
                "anomaly_score": r.anomaly_score, "flags": ",".join(r.flags), "shipment_id": r.shipment_id,
                "lot_ids": ",".join(r.lot_ids),
            }
            for r in batch.readings
        ]  # fmt: skip
        new_keys: set[tuple[str, int]] = set()
        if rows and conn.dialect.name == "postgresql":
            result = conn.execute(_INSERT_READINGS_PG, json_rows(rows))
            new_keys = {(row.device_id, row.seq) for row in result}
        elif rows:
            stmt = insert_ignoring(conn, readings, keys=("device_id", "seq")).returning(
                readings.c.device_id, readings.c.seq
            )
            # One statement per chunk; SQLAlchemy batches executemany + RETURNING ("insertmanyvalues").
            result = conn.execute(stmt, rows)
            new_keys = {(row.device_id, row.seq) for row in result}
        new = [r for r in batch.readings if (r.device_id, r.seq) in new_keys]
        conn.execute(
            insert(batches).values(
                gateway_id=gw, batch_seq=seq, frame_hash=v.frame_hash, prev_hash=batch.prev_hash,
                created_ms=batch.created_ms, received_ms=received_ms, readings=len(batch.readings),
                accepted=len(new), markers=len(batch.markers), transport=transport,
            )
        )  # fmt: skip
        if batch.markers:
            conn.execute(
                insert(markers),
                [
                    {"gateway_id": gw, "batch_seq": seq, "device_id": m.device_id, "kind": m.kind.value,
                     "seq_from": m.seq_from, "seq_to": m.seq_to, "count": m.count, "t_from_ms": m.t_from_ms,
                     "t_to_ms": m.t_to_ms}
                    for m in batch.markers
                ],
            )  # fmt: skip
        self._update_devices(conn, gw, new)
        return new

    def _update_devices(self, conn: Connection, gw: str, new: list[Reading]) -> None:
        newest: dict[str, Reading] = {}
        counts: dict[str, int] = {}
        for r in new:
            counts[r.device_id] = counts.get(r.device_id, 0) + 1
            best = newest.get(r.device_id)
            if best is None or (r.t_gateway_ms, r.seq) > (best.t_gateway_ms, best.seq):
                newest[r.device_id] = r
        rows = [
            {
                "device_id": d, "gateway_id": gw, "site_id": r.site_id, "last_seen_ms": r.t_gateway_ms,
                "last_t_device_ms": r.t_device_ms, "last_seq": r.seq, "battery_v": r.battery_v,
                "temperature_c": r.temperature_c, "clock": r.clock.value, "clock_skew_ms": r.skew_ms,
                "readings_total": counts[d],
            }
            for d, r in newest.items()
        ]  # fmt: skip
        _UPSERT_DEVICES(conn, rows)

    # -- rules and telemetry -------------------------------------------------------------------------
    def resolve_profiles(self, conn: Connection, new: list[Reading]) -> None:
        """Cache the product profile each reading's subject protects (unregistered subjects: none)."""
        for r in new:
            key = subject_key(r.shipment_id, r.lot_ids)
            if key is None or key in self._profiles:
                continue
            if r.shipment_id is not None:
                query = select(shipments.c.profile).where(shipments.c.shipment_id == r.shipment_id)
            else:
                query = select(lots.c.profile).where(lots.c.lot_id == r.lot_ids[0])
            profile = conn.execute(query).scalar_one_or_none()
            if profile is not None:
                self._profiles[key] = ProfileName(profile)

    def _sample(self, r: Reading) -> Sample:
        subject = subject_key(r.shipment_id, r.lot_ids)
        return Sample(
            r.device_id, r.seq, r.t_device_ms, r.temperature_c, r.humidity_pct, r.shock_g,
            self.rules.is_glitch(r.flags, r.anomaly_score), subject,
            None if subject is None else self._profiles.get(subject),
        )  # fmt: skip

    def _profile_cached(self, r: Reading) -> ProfileName | None:
        subject = subject_key(r.shipment_id, r.lot_ids)
        return None if subject is None else self._profiles.get(subject)

    def _spool(self, conn: Connection, v: Verified, new: list[Reading], *, received_ms: int) -> None:
        batch = v.batch
        site = batch.readings[0].site_id if batch.readings else None
        parts = [
            reading_lines(new, gateway_id=batch.gateway_id, profile_of=self._profile_cached),
            marker_lines(batch.markers, gateway_id=batch.gateway_id, site_id=site),
            batch_line(
                gateway_id=batch.gateway_id, site_id=site, batch_seq=batch.batch_seq,
                readings=len(batch.readings), markers=len(batch.markers),
                lag_ms=max(0, received_ms - batch.created_ms), received_ms=received_ms,
            ),
        ]  # fmt: skip
        lines = "\n".join(p for p in parts if p)
        conn.execute(
            insert(telemetry_spool).values(
                created_ms=received_ms, lines=lines, points=len(new) + len(batch.markers) + 1,
                next_attempt_ms=0,
            )
        )  # fmt: skip

    def _count(
        self, all_readings: tuple[Reading, ...], new: list[Reading], outcome: RuleOutcome, now_ms: int
    ) -> None:
        m = self.metrics
        m.readings.labels("accepted").inc(len(new))
        m.readings.labels("duplicate").inc(len(all_readings) - len(new))
        for r in new:
            m.lag_seconds.observe(max(0, now_ms - r.t_device_ms) / 1000)
        m.alerts_raised.inc(outcome.alerts_raised)
        m.holds_placed.inc(outcome.holds_placed)
        m.glitches.inc(outcome.glitches_flagged)
