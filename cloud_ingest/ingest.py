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
always eventually written to InfluxDB, by whichever worker drains the spool (a worker's own drainer
is handed them in memory as they commit, :class:`~cloud_ingest.spool.Handoff`).
"""

from __future__ import annotations

import enum
import hashlib
import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import psycopg
from sqlalchemy import (
    Connection,
    Engine,
    bindparam,
    case,
    delete,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.exc import DBAPIError

from cloud_ingest.db.listparam import DIALECTS, one_of
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
from cloud_ingest.db.upsert import BinaryCopy, BulkUpsert, insert_from_json, insert_ignoring, json_rows
from cloud_ingest.gaps import clear_gap_alert
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.rules.engine import RuleEngine, RuleOutcome, subject_key
from cloud_ingest.rules.runs import Sample
from cloud_ingest.settings import CloudSettings
from cloud_ingest.spool import Chunk, Handoff
from cloud_ingest.telemetry.lineproto import PrefixKey, batch_line, marker_lines, reading_lines
from cloud_ingest.verify import IngestReject, KeyRing, Rejected, Verified, verify
from coldtrace.clock import wall_ms
from coldtrace.contract import Reading
from coldtrace.contract.batch import GENESIS_HASH
from coldtrace.contract.limits import Limits
from coldtrace.profiles import ProfileName

logger = logging.getLogger(__name__)

#: Line-protocol tag prefixes a worker keeps (one per device, shipment and profile it hears; a few
#: hundred bytes each, so 25 MB at most): cleared when exceeded.
LINE_PREFIXES_MAX = 50_000


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
    reason: IngestReject | None = None
    detail: str = ""


class StoreUnavailable(Exception):
    """The SQL database cannot be reached: do not acknowledge; the frame must be offered again."""


@dataclass(frozen=True, slots=True)
class Inbound:
    """A frame as a transport received it: the topic's gateway and the sender's verified identity."""

    frame: bytes
    topic_gateway: str | None
    identity: str | None
    refused: Rejected | None = None
    """Set when the transport already refused the frame (an unparsable topic): only dead-lettered."""


@dataclass(frozen=True, slots=True)
class Prepared:
    """What storing a verified frame needs that depends on the frame alone, per reading in batch
    order. Built with the verification, while the worker's previous group commits, so the storing
    transaction only selects what turned out new (all of it, but for duplicates)."""

    rows: list[tuple[Any, ...]]
    """``readings`` rows, as ``READING_COLUMNS`` tuples."""
    samples: list[Sample]
    lines: str
    """The readings' line protocol (see :func:`reading_lines`)."""


@dataclass(slots=True)
class Checked:
    """Frames after verification, which needs no transaction: what :meth:`Ingestor.store` takes."""

    frames: Sequence[Inbound]
    good: list[tuple[int, Verified]]
    refused: list[tuple[int, Rejected]]
    received_ms: int
    started: float
    prepared: dict[int, Prepared] = field(default_factory=dict)
    """By frame index, for the good ones."""


@dataclass(slots=True)
class _Fresh:
    """One accepted frame's readings stored by this transaction (not duplicates)."""

    frame: Verified
    prepared: Prepared
    indexes: list[int] | None
    """Positions of the new readings in the batch; None when all are new (the common case)."""

    @property
    def readings(self) -> Sequence[Reading]:
        """The new readings."""
        all_readings = self.frame.batch.readings
        return all_readings if self.indexes is None else [all_readings[j] for j in self.indexes]

    @property
    def samples(self) -> list[Sample]:
        """The new readings as the rules see them."""
        samples = self.prepared.samples
        return samples if self.indexes is None else [samples[j] for j in self.indexes]

    def __len__(self) -> int:
        return len(self.frame.batch.readings) if self.indexes is None else len(self.indexes)


@dataclass(frozen=True, slots=True)
class _Link:
    frame_hash: str
    prev_hash: str


@dataclass(slots=True)
class _Chain:
    """One transaction's view of its gateways' chains: the locked rows, the stored neighbours of each
    frame, and the frames accepted so far in the transaction."""

    gateways: dict[str, Any]
    revoked_keys: set[str]
    links: dict[tuple[str, int], _Link]
    head_seq: dict[str, int]
    head_hash: dict[str, str]

    @classmethod
    def load(cls, conn: Connection, frames: list[Verified]) -> _Chain:
        """Lock the frames' gateway rows (in id order, so two workers cannot deadlock) and read."""
        ids = sorted({v.batch.gateway_id for v in frames})
        key_ids = sorted({v.key_id.hex() for v in frames})
        near = sorted({(v.batch.gateway_id, v.batch.batch_seq + d) for v in frames for d in (-1, 0, 1)})
        statements = _CHAIN_STATEMENTS[conn.dialect.name]
        rows = {row.gateway_id: row for row in conn.execute(statements.gateways, {"ids": ids})}
        revoked = set(conn.execute(statements.revoked, {"key_ids": key_ids}).scalars())
        near_params = (
            {"gws": [g for g, _ in near], "seqs": [q for _, q in near]}
            if conn.dialect.name == "postgresql"
            else {"near": near}
        )
        links = {
            (gw, seq): _Link(frame_hash, prev_hash)
            for gw, seq, frame_hash, prev_hash in conn.execute(statements.links, near_params)
        }
        return cls(
            gateways=rows, revoked_keys=revoked, links=links,
            head_seq={gw: row.head_seq for gw, row in rows.items()},
            head_hash={gw: row.head_hash for gw, row in rows.items()},
        )  # fmt: skip

    def accept(self, v: Verified) -> None:
        """``v`` is stored in this transaction: later frames chain against it."""
        gw, seq = v.batch.gateway_id, v.batch.batch_seq
        self.links[(gw, seq)] = _Link(v.frame_hash, v.batch.prev_hash)
        if seq > self.head_seq[gw]:
            self.head_seq[gw], self.head_hash[gw] = seq, v.frame_hash

    def save(self, conn: Connection, *, accepted: list[tuple[Verified, int]], received_ms: int) -> None:
        """Move each gateway's head and counters for the frames accepted (with their new readings)."""
        per_gateway: dict[str, list[int]] = {}
        for v, new in accepted:
            totals = per_gateway.setdefault(v.batch.gateway_id, [0, 0])
            totals[0] += 1
            totals[1] += new
        # One executemany: psycopg pipelines it, one round trip for all the group's gateways.
        conn.execute(
            _SAVE_HEAD,
            [
                {"gw": gw, "seen": received_ms, "seq": self.head_seq[gw], "hash": self.head_hash[gw],
                 "frames": frames, "new": new}
                for gw, (frames, new) in per_gateway.items()
            ],
        )  # fmt: skip


@dataclass(frozen=True, slots=True)
class _ChainStatements:
    gateways: Any
    revoked: Any
    links: Any


_LINK_COLUMNS = (batches.c.gateway_id, batches.c.batch_seq, batches.c.frame_hash, batches.c.prev_hash)


def _chain_statements(dialect: str) -> _ChainStatements:
    links: Any = (
        text(
            "SELECT b.gateway_id, b.batch_seq, b.frame_hash, b.prev_hash"
            " FROM unnest(CAST(:gws AS text[]), CAST(:seqs AS bigint[])) AS k(g, s)"
            " JOIN batches b ON b.gateway_id = k.g AND b.batch_seq = k.s"
        )
        if dialect == "postgresql"
        else select(*_LINK_COLUMNS).where(
            tuple_(batches.c.gateway_id, batches.c.batch_seq).in_(bindparam("near", expanding=True))
        )
    )
    return _ChainStatements(
        gateways=select(gateways).where(one_of(dialect, gateways.c.gateway_id, "ids"))
        .order_by(gateways.c.gateway_id).with_for_update(),
        revoked=select(gateway_keys.c.key_id).where(
            one_of(dialect, gateway_keys.c.key_id, "key_ids"), gateway_keys.c.revoked_ms.is_not(None)
        ),
        links=links,
    )  # fmt: skip


# Built once (see one_of for why PostgreSQL gets arrays).
_CHAIN_STATEMENTS = {d: _chain_statements(d) for d in DIALECTS}

_SAVE_HEAD = (
    update(gateways)
    .where(gateways.c.gateway_id == bindparam("gw"))
    .values(
        last_seen_ms=bindparam("seen"), head_seq=bindparam("seq"), head_hash=bindparam("hash"),
        batches_accepted=gateways.c.batches_accepted + bindparam("frames"),
        readings_accepted=gateways.c.readings_accepted + bindparam("new"),
    )
)  # fmt: skip


#: A stored reading's columns, in the order :meth:`Ingestor._store_readings` builds its rows.
READING_COLUMNS = tuple(str(c.name) for c in readings.columns)
_COPY_READINGS = BinaryCopy(readings, READING_COLUMNS)
# Which of some keys are stored: equality on the whole primary key, one look-up each.
_STORED_READINGS_PG = text(
    "SELECT x.d, x.s FROM json_to_recordset(CAST(:keys AS json)) AS x(d text, s bigint)"
    " JOIN readings r ON r.device_id = x.d AND r.seq = x.s"
)
# The fallback when a COPY met a reading committed meanwhile: the database skips what exists.
_INSERT_READINGS_PG = (
    insert_from_json(readings, READING_COLUMNS)
    .on_conflict_do_nothing(index_elements=["device_id", "seq"])
    .returning(readings.c.device_id, readings.c.seq)
)


def _insert_new_readings_pg(
    conn: Connection, rows: list[tuple[Any, ...]], highest: dict[str, int]
) -> set[tuple[str, int]]:
    """Store the rows (``READING_COLUMNS`` tuples, keys distinct) not stored yet; their keys.

    A binary COPY of the rows not found stored; ``highest`` is each known device's highest stored
    sequence (``devices.max_seq``, read under the device's lock). Should another transaction commit
    one of them meanwhile (two gateways relaying a device that has no row yet to two workers), the
    COPY fails on the unique key, its savepoint is rolled back, and an ``INSERT … ON CONFLICT DO
    NOTHING`` stores the rest.
    """
    # Only a reading at or below its device's highest stored sequence can be stored already: a
    # backfill, or a device heard by two gateways. Asking the readings table about every reading
    # instead, by device and range of sequences, led PostgreSQL (with its statistics a little behind
    # a growing table) to scan each device's rows by the time index: 28 ms a group, then 84 ms.
    doubtful = [{"d": row[0], "s": row[1]} for row in rows if row[1] <= highest.get(row[0], -1)]
    stored: set[tuple[str, int]] = set()
    if doubtful:
        found = conn.execute(_STORED_READINGS_PG, {"keys": orjson.dumps(doubtful).decode()})
        stored = {(d, seq) for d, seq in found}
    fresh = [row for row in rows if (row[0], row[1]) not in stored] if stored else rows
    try:
        # The driver's own savepoint: lighter than SQLAlchemy's begin_nested, paid once a group.
        with conn.connection.driver_connection.transaction():  # type: ignore[union-attr]
            _COPY_READINGS(conn, fresh)
    except psycopg.errors.UniqueViolation:
        logger.info("a reading of this group was stored meanwhile by another worker; inserting the rest")
        result = conn.execute(_INSERT_READINGS_PG, json_rows(_named(fresh)))
        return {(row.device_id, row.seq) for row in result}
    return {(row[0], row[1]) for row in fresh}


def _named(rows: list[tuple[Any, ...]]) -> list[dict[str, Any]]:
    """``READING_COLUMNS`` tuples as dicts, for the statements that take named rows."""
    return [dict(zip(READING_COLUMNS, row, strict=True)) for row in rows]


def _new_indexes(rows: list[tuple[Any, ...]], stored: set[tuple[str, int]]) -> list[int] | None:
    """Positions of the rows this transaction stored (None: all of them); each key is taken once, so
    a reading repeated in a later frame of the transaction is not new there."""
    taken = []
    for j, row in enumerate(rows):
        key = (row[0], row[1])
        if key in stored:
            stored.remove(key)
            taken.append(j)
    return None if len(taken) == len(rows) else taken


# The devices of a transaction's readings, locked in key order before any is written, with the
# newest device time the rules have seen of each and the highest sequence stored: one worker at a
# time stores and evaluates a device's readings.
_LOCK_DEVICES = {
    d: select(devices.c.device_id, devices.c.rules_t_ms, devices.c.max_seq)
    .where(one_of(d, devices.c.device_id, "ids"))
    .order_by(devices.c.device_id)
    .with_for_update()
    for d in DIALECTS
}


def _lock_devices(conn: Connection, device_ids: set[str]) -> tuple[dict[str, int], dict[str, int]]:
    """Lock the devices' rows (those that exist); their ``rules_t_ms`` and ``max_seq``."""
    newest: dict[str, int] = {}
    highest: dict[str, int] = {}
    if device_ids:
        for device_id, rules_t, max_seq in conn.execute(
            _LOCK_DEVICES[conn.dialect.name], {"ids": sorted(device_ids)}
        ):
            newest[device_id] = rules_t
            highest[device_id] = max_seq
    return newest, highest


def _greater(ex: Any, name: str) -> Any:
    # The larger of the stored value and the new one (portable: SQLite has no GREATEST).
    return case((ex[name] > devices.c[name], ex[name]), else_=devices.c[name])


def _newer(ex: Any, name: str) -> Any:
    # Keep the newest reading's values: batches of one device may arrive out of order.
    return case((ex.last_seen_ms >= devices.c.last_seen_ms, ex[name]), else_=devices.c[name])


_UPSERT_DEVICES = BulkUpsert(
    devices,
    names=("device_id", "gateway_id", "site_id", "last_seen_ms", "last_t_device_ms", "last_seq", "battery_v",
           "temperature_c", "clock", "clock_skew_ms", "readings_total", "max_seq", "rules_t_ms"),
    keys=("device_id",),
    update=lambda ex: {
        **{c: _newer(ex, c) for c in ("gateway_id", "site_id", "last_seen_ms", "last_t_device_ms",
                                       "last_seq", "clock", "clock_skew_ms")},
        "battery_v": _newer(ex, "battery_v"), "temperature_c": _newer(ex, "temperature_c"),
        "readings_total": devices.c.readings_total + ex.readings_total,
        "max_seq": _greater(ex, "max_seq"), "rules_t_ms": _greater(ex, "rules_t_ms"),
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
        self._line_prefixes: dict[PrefixKey, str] = {}
        self.handoff: Handoff | None = None
        """Where committed spool chunks go to this worker's drainer; None: through the table only."""

    def now_ms(self) -> int:
        """The ingestor's clock (UTC milliseconds)."""
        return self._clock()

    def _unavailable(self, exc: DBAPIError) -> StoreUnavailable:
        self.metrics.store_up.set(0)
        return StoreUnavailable(f"the database is unavailable: {exc.orig or exc}")

    # -- entry point -------------------------------------------------------------------------------
    def ingest(self, frame: bytes, *, topic_gateway: str, identity: str, transport: str) -> IngestResult:
        """Verify and store one frame. Raises StoreUnavailable only; every refusal is a result."""
        return self.ingest_many([Inbound(frame, topic_gateway, identity)], transport=transport)[0]

    def ingest_many(self, frames: Sequence[Inbound], *, transport: str) -> list[IngestResult]:
        """Verify ``frames`` and store the good ones in one transaction; a result for each, in order.

        Storing many frames in one transaction is what lets a worker keep up with a backlog: the
        per-transaction and per-statement costs are paid once for all of them. Raises
        StoreUnavailable only (then nothing of the group was stored); every refusal is a result.
        """
        return self.store(self.check(frames), transport=transport)

    def check(self, frames: Sequence[Inbound]) -> Checked:
        """Verify each frame (identity, key, signature, schema) and prepare what storing the good
        ones needs (:class:`Prepared`): CPU work outside any transaction.

        A worker checks the next group while the previous one commits. Raises StoreUnavailable when
        a key or a subject's profile must be read from the database and cannot be.
        """
        started = time.perf_counter()
        checked = Checked(frames, good=[], refused=[], received_ms=self._clock(), started=started)
        try:
            for i, f in enumerate(frames):
                if f.refused is not None or f.topic_gateway is None or f.identity is None:
                    checked.refused.append((i, f.refused or Rejected(IngestReject.BAD_TOPIC, "no topic")))
                    continue
                try:
                    v = verify(f.frame, topic_gateway=f.topic_gateway, identity=f.identity, keys=self.keys,
                               limits=self.limits)  # fmt: skip
                except Rejected as exc:
                    checked.refused.append((i, exc))
                else:
                    checked.good.append((i, v))
            self._resolve_profiles([r for _, v in checked.good for r in v.batch.readings])
        except DBAPIError as exc:  # OperationalError (connection lost) is one
            raise self._unavailable(exc) from exc
        for i, v in checked.good:
            checked.prepared[i] = self._prepare(v, received_ms=checked.received_ms)
        return checked

    def _prepare(self, v: Verified, *, received_ms: int) -> Prepared:
        gw, seq = v.batch.gateway_id, v.batch.batch_seq
        readings_of = v.batch.readings
        rows = [
            (r.device_id, r.seq, gw, seq, r.site_id, r.t_device_ms, r.t_gateway_ms, received_ms,
             r.clock.value, r.temperature_c, r.humidity_pct, r.shock_g, r.battery_v, r.anomaly_score,
             ",".join(r.flags), r.shipment_id, ",".join(r.lot_ids))
            for r in readings_of
        ]  # fmt: skip
        lines = reading_lines(
            readings_of, gateway_id=gw, profile_of=self._profile_cached, prefixes=self._line_prefixes
        )
        return Prepared(rows, [self._sample(r) for r in readings_of], lines)

    def store(self, checked: Checked, *, transport: str) -> list[IngestResult]:
        """Store checked frames in one transaction and dead-letter the refused; a result for each."""
        frames = checked.frames
        results: list[IngestResult | None] = [None] * len(frames)
        refused = list(checked.refused)
        try:
            if checked.good:
                stored, refused_in_store = self._store(checked, transport=transport)
                for i, result in stored.items():
                    results[i] = result
                refused += refused_in_store
            for i, why in refused:
                f = frames[i]
                results[i] = self.reject(
                    f.frame, why, identity=f.identity, topic_gateway=f.topic_gateway, transport=transport,
                    received_ms=checked.received_ms,
                )  # fmt: skip
        except DBAPIError as exc:  # OperationalError (connection lost) is one
            raise self._unavailable(exc) from exc
        self.metrics.store_up.set(1)
        done = [r for r in results if r is not None]
        assert len(done) == len(frames), "every frame gets a result"  # noqa: S101 - an invariant
        for r in done:
            self.metrics.batches.labels(r.outcome.value).inc()
        self.metrics.store_seconds.observe(time.perf_counter() - checked.started)
        return done

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
            raise self._unavailable(db_exc) from db_exc
        self.metrics.rejects.labels(exc.code.value).inc()
        logger.warning("refused a batch from %s: %s", identity or "?", exc)
        return IngestResult(
            Outcome.REJECTED, exc.gateway_id or topic_gateway, reason=exc.code, detail=exc.detail
        )

    # -- the transaction ---------------------------------------------------------------------------
    def _store(
        self, checked: Checked, *, transport: str
    ) -> tuple[dict[int, IngestResult], list[tuple[int, Rejected]]]:
        """Store verified frames in one transaction: results by index, and those refused here."""
        good, received_ms = checked.good, checked.received_ms
        results: dict[int, IngestResult] = {}
        refused: list[tuple[int, Rejected]] = []
        with self.engine.begin() as conn:
            chain = _Chain.load(conn, [v for _, v in good])
            accepted: list[tuple[int, Verified]] = []
            for i, v in good:
                try:
                    duplicate = self._check_chain(conn, chain, v, received_ms=received_ms)
                except Rejected as exc:
                    refused.append((i, exc))
                    continue
                if duplicate:
                    n = len(v.batch.readings)
                    self.metrics.readings.labels("duplicate").inc(n)
                    results[i] = IngestResult(
                        Outcome.DUPLICATE, v.batch.gateway_id, v.batch.batch_seq, readings_duplicate=n
                    )
                else:
                    accepted.append((i, v))
            if not accepted:
                return results, refused
            # Before any reading is written: under the lock, max_seq counts every reading a worker
            # that held these devices committed, so the COPY meets none of them.
            newest, highest = _lock_devices(
                conn, {row[0] for i, _ in accepted for row in checked.prepared[i].rows}
            )
            new_of = self._store_readings(
                conn, [(v, checked.prepared[i]) for i, v in accepted], highest=highest,
                received_ms=received_ms, transport=transport,
            )  # fmt: skip
            outcome = self.rules.apply(
                conn, [s for f in new_of for s in f.samples], newest=newest, now_ms=received_ms
            )
            # After the rules, which needed each device's newest time from before these readings.
            self._update_devices(conn, [(f.frame.batch.gateway_id, f.readings) for f in new_of])
            handed = self._spool(conn, new_of, received_ms=received_ms)
            counts = [(v, len(fresh)) for (_, v), fresh in zip(accepted, new_of, strict=True)]
            chain.save(conn, accepted=counts, received_ms=received_ms)
        if handed is not None and self.handoff is not None:
            self.handoff.offer(handed)  # committed
        new = [r for f in new_of for r in f.readings]
        self._count(sum(len(v.batch.readings) for _, v in accepted), new, outcome, received_ms)
        for (i, v), fresh in zip(accepted, new_of, strict=True):
            results[i] = IngestResult(
                Outcome.ACCEPTED, v.batch.gateway_id, v.batch.batch_seq, readings_new=len(fresh),
                readings_duplicate=len(v.batch.readings) - len(fresh),
            )  # fmt: skip
        return results, refused

    def _check_chain(self, conn: Connection, chain: _Chain, v: Verified, *, received_ms: int) -> bool:
        """True for a byte-identical resend; Rejected for a revoked sender or conflicting frame.

        Records gaps and fills them; on acceptance the frame joins ``chain`` so later frames of the
        same transaction are checked against it.
        """
        gw, seq = v.batch.gateway_id, v.batch.batch_seq
        gateway = chain.gateways.get(gw)
        if gateway is None or gateway.status != "active" or v.key_id.hex() in chain.revoked_keys:
            raise Rejected(
                IngestReject.REVOKED if gateway is not None else IngestReject.UNKNOWN_GATEWAY,
                f"gateway {gw!r} or its key {v.key_id.hex()} is revoked: batches are refused",
                gateway_id=gw,
            )
        stored = chain.links.get((gw, seq))
        if stored is not None:
            if stored.frame_hash == v.frame_hash:
                return True
            raise Rejected(
                IngestReject.REPLAYED_SEQUENCE,
                f"batch {seq} of {gw!r} was already accepted with different content (hash "
                f"{stored.frame_hash[:16]}…, this one {v.frame_hash[:16]}…)",
                gateway_id=gw,
            )
        before = chain.links.get((gw, seq - 1))
        if before is not None and before.frame_hash != v.batch.prev_hash:
            raise Rejected(
                IngestReject.CHAIN_MISMATCH,
                f"batch {seq} of {gw!r} chains to {v.batch.prev_hash[:16]}…, but batch {seq - 1} "
                f"has hash {before.frame_hash[:16]}…",
                gateway_id=gw,
            )
        after = chain.links.get((gw, seq + 1))
        if after is not None and after.prev_hash != v.frame_hash:
            raise Rejected(
                IngestReject.CHAIN_MISMATCH,
                f"batch {seq + 1} of {gw!r} does not chain to this batch {seq}",
                gateway_id=gw,
            )
        head_seq = chain.head_seq[gw]
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
        chain.accept(v)
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
        self, conn: Connection, accepted: list[tuple[Verified, Prepared]], *, highest: dict[str, int],
        received_ms: int, transport: str,
    ) -> list[_Fresh]:  # fmt: skip
        """Store the frames' batch rows, readings and markers; each frame's new readings.

        ``highest``: the locked devices' highest stored sequences.

        A reading stored before (or earlier in this transaction, by another gateway that heard the
        same device) is not new: it belongs to the frame that stored it first.
        """
        rows: list[tuple[Any, ...]] = []
        seen: set[tuple[str, int]] = set()
        for _, prepared in accepted:
            for row in prepared.rows:
                key = (row[0], row[1])
                if key not in seen:
                    seen.add(key)
                    rows.append(row)
        stored: set[tuple[str, int]] = set()
        if rows and conn.dialect.name == "postgresql":
            stored = _insert_new_readings_pg(conn, rows, highest)
        elif rows:
            stmt = insert_ignoring(conn, readings, keys=("device_id", "seq")).returning(
                readings.c.device_id, readings.c.seq
            )
            # One statement per chunk; SQLAlchemy batches executemany + RETURNING ("insertmanyvalues").
            result = conn.execute(stmt, _named(rows))
            stored = {(row.device_id, row.seq) for row in result}
        new_of = [_Fresh(v, prepared, _new_indexes(prepared.rows, stored)) for v, prepared in accepted]
        conn.execute(
            insert(batches),
            [
                {"gateway_id": v.batch.gateway_id, "batch_seq": v.batch.batch_seq, "frame_hash": v.frame_hash,
                 "prev_hash": v.batch.prev_hash, "created_ms": v.batch.created_ms, "received_ms": received_ms,
                 "readings": len(v.batch.readings), "accepted": len(new), "markers": len(v.batch.markers),
                 "transport": transport}
                for (v, _), new in zip(accepted, new_of, strict=True)
            ],
        )  # fmt: skip
        marker_rows = [
            {"gateway_id": v.batch.gateway_id, "batch_seq": v.batch.batch_seq, "device_id": m.device_id,
             "kind": m.kind.value, "seq_from": m.seq_from, "seq_to": m.seq_to, "count": m.count,
             "t_from_ms": m.t_from_ms, "t_to_ms": m.t_to_ms}
            for v, _ in accepted
            for m in v.batch.markers
        ]  # fmt: skip
        if marker_rows:
            conn.execute(insert(markers), marker_rows)
        return new_of

    def _update_devices(self, conn: Connection, new_by_gateway: list[tuple[str, Sequence[Reading]]]) -> None:
        newest: dict[str, tuple[str, Reading]] = {}
        counts: dict[str, int] = {}
        highest: dict[str, int] = {}
        latest: dict[str, int] = {}
        for gw, new in new_by_gateway:
            for r in new:
                counts[r.device_id] = counts.get(r.device_id, 0) + 1
                if r.seq > highest.get(r.device_id, -1):
                    highest[r.device_id] = r.seq
                if r.t_device_ms > latest.get(r.device_id, -1):
                    latest[r.device_id] = r.t_device_ms
                best = newest.get(r.device_id)
                if best is None or (r.t_gateway_ms, r.seq) > (best[1].t_gateway_ms, best[1].seq):
                    newest[r.device_id] = (gw, r)
        rows = [
            {
                "device_id": d, "gateway_id": gw, "site_id": r.site_id, "last_seen_ms": r.t_gateway_ms,
                "last_t_device_ms": r.t_device_ms, "last_seq": r.seq, "battery_v": r.battery_v,
                "temperature_c": r.temperature_c, "clock": r.clock.value, "clock_skew_ms": r.skew_ms,
                "readings_total": counts[d], "max_seq": highest[d], "rules_t_ms": latest[d],
            }
            # In key order, as _lock_devices locks them: two workers cannot deadlock on new rows.
            for d, (gw, r) in sorted(newest.items())
        ]  # fmt: skip
        _UPSERT_DEVICES(conn, rows)

    # -- rules and telemetry -------------------------------------------------------------------------
    def _resolve_profiles(self, new: Sequence[Reading]) -> None:
        """Cache the product profile each reading's subject protects (unregistered subjects: none,
        asked again for the next batch that names them)."""
        unknown: dict[str, Reading] = {}
        for r in new:
            key = subject_key(r.shipment_id, r.lot_ids)
            if key is not None and key not in self._profiles:
                unknown.setdefault(key, r)
        if not unknown:
            return
        with self.engine.connect() as conn:
            for key, r in unknown.items():
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

    def _spool(self, conn: Connection, new_of: list[_Fresh], *, received_ms: int) -> Chunk | None:
        """The transaction's points, as one spool row: readings, thinning markers, one per batch.

        Returns the chunk to hand to this worker's drainer once the transaction commits, when it
        has room: the row is then leased to this worker. Otherwise the row is due at once.
        """
        parts: list[str] = []
        points = 0
        if len(self._line_prefixes) > LINE_PREFIXES_MAX:
            self._line_prefixes.clear()  # a bound, not an eviction policy: rebuilt at the next batches
        # A series holds one point per timestamp: one gateway's batches stored together are stamped
        # 1 ms apart, or each would overwrite the one before (a drain stores up to a group of them).
        stamped: Counter[str] = Counter()
        for fresh in new_of:
            batch = fresh.frame.batch
            site = batch.readings[0].site_id if batch.readings else None
            offset = stamped[batch.gateway_id]
            stamped[batch.gateway_id] += 1
            lines = fresh.prepared.lines
            if fresh.indexes is not None:
                lines = reading_lines(
                    fresh.readings, gateway_id=batch.gateway_id, profile_of=self._profile_cached,
                    prefixes=self._line_prefixes,
                )  # fmt: skip
            parts += [
                lines,
                marker_lines(batch.markers, gateway_id=batch.gateway_id, site_id=site),
                batch_line(
                    gateway_id=batch.gateway_id, site_id=site, batch_seq=batch.batch_seq,
                    readings=len(batch.readings), markers=len(batch.markers),
                    lag_ms=max(0, received_ms - batch.created_ms), received_ms=received_ms + offset,
                ),
            ]  # fmt: skip
            points += len(fresh) + len(batch.markers) + 1
        lines = "\n".join(p for p in parts if p)
        handoff = self.handoff
        lease_ms = handoff.lease_ms if handoff is not None and handoff.has_room() else None
        row_id = conn.execute(
            insert(telemetry_spool).values(
                created_ms=received_ms, lines=lines, points=points,
                next_attempt_ms=0 if lease_ms is None else received_ms + lease_ms,
            ).returning(telemetry_spool.c.id)
        ).scalar_one()  # fmt: skip
        return None if lease_ms is None else Chunk((row_id,), lines, points)

    def _count(self, received: int, new: Sequence[Reading], outcome: RuleOutcome, now_ms: int) -> None:
        m = self.metrics
        m.readings.labels("accepted").inc(len(new))
        m.readings.labels("duplicate").inc(received - len(new))
        m.lag_seconds.observe_many([max(0, now_ms - r.t_device_ms) / 1000 for r in new])
        m.alerts_raised.inc(outcome.alerts_raised)
        m.holds_placed.inc(outcome.holds_placed)
        m.glitches.inc(outcome.glitches_flagged)
        m.replayed.inc(outcome.replayed_readings)
