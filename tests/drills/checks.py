"""What every drill asserts at the end, against the simulator's ground truth.

- **Exactly once**: every (device, seq) the devices sent in a well-formed message is stored once in
  PostgreSQL - minus only what the drill allows the cloud not to have (readings thinned at a full
  gateway and declared by a marker, readings in batches the cloud refused) - and present once in
  VictoriaMetrics (its ``reading_seq`` samples). Device, gateway and batch counters agree with the rows;
  each gateway's chain is complete and ends at the hash its agent reports.
- **Never repaired**: every stored reading keeps the device's own timestamp and value.
- **The right holds**: exactly one active rule hold, and one temperature alert, per subject the truth
  says breached for longer than its profile's delay - seen in the database and through ``GET /v1/holds``.
- **Every reject explained**: the cloud's refusals by reason agree between the ``rejects`` table,
  ``GET /v1/rejects/summary`` and the workers' ``coldtrace_cloud_rejects_total``, and match what the
  drill provoked; every device message an agent refused is one the simulator corrupted, counted by
  reason in the agent's metrics.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Engine, select

from cloud_ingest.db.tables import (
    alerts,
    batches,
    chain_gaps,
    devices,
    gateways,
    holds,
    outbox_events,
    readings,
    rejects,
)
from coldtrace.contract.topics import parse_device_uplink
from coldtrace.demo.scenario import GroundTruth, Subject
from firmware_sim.fleet import gateway_id
from tests.drills.scenario import Key, Truth
from tests.drills.stack import ROGUE_REJECTS, Snapshot, refused_frames
from tests.harness.victoriametrics import VictoriaMetrics

logger = logging.getLogger(__name__)

TEMPERATURE_RULES = ("temp_high", "temp_low", "budget", "mkt")
#: How far a decoded temperature may lie from the device's own: half the vendor format's step
#: (vendor A carries °F exactly, B hundredths and C tenths of a degree; see coldtrace.device_formats).
QUANTISATION_C = {"vendor-a-json": 1e-9, "vendor-b-binary": 0.005 + 1e-9, "vendor-c-text": 0.05 + 1e-9}


@dataclass
class Outcome:
    """A finished drill: the truth, what the processes reported, and where the cloud keeps its data."""

    label: str
    """Seed and drill, prefixed to every failure message."""
    truth: Truth
    snapshot: Snapshot
    engine: Engine
    vm: VictoriaMetrics
    api_holds: list[dict[str, Any]]
    api_gateways: dict[str, dict[str, Any]]
    api_rejects: dict[str, int]
    exit_codes: dict[str, int | None]
    restarted_agents: set[str] = field(default_factory=set)
    """Gateways whose agent was killed: its counters restarted, its dead letters may repeat."""

    # -- what the cloud stored ----------------------------------------------------------------------
    def stored(self) -> dict[Key, Any]:
        """Every stored reading row by (device, seq)."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(readings)).all()
        out = {(r.device_id, r.seq): r for r in rows}
        assert len(out) == len(rows), f"{self.label}: a (device, seq) stored twice"
        return out


def assert_processes_healthy(o: Outcome) -> None:
    """Every agent and worker ran to the end and stopped cleanly on SIGTERM."""
    assert o.exit_codes == dict.fromkeys(o.exit_codes, 0), f"{o.label}: exit statuses {o.exit_codes}"


def assert_exactly_once(
    o: Outcome, expected: Collection[Key], *, refused_gateways: Collection[str] = ()
) -> None:
    """The cloud holds exactly ``expected``, once each, with counters and chains to match."""
    stored = o.stored()
    want = set(expected)
    missing, extra = sorted(want - stored.keys()), sorted(stored.keys() - want)
    assert not missing, f"{o.label}: {len(missing)} of {len(want)} readings lost (first {missing[:5]})"
    assert not extra, f"{o.label}: {len(extra)} readings stored that should not be (first {extra[:5]})"
    per_device = Counter(device for device, _ in stored)
    per_gateway = Counter(r.gateway_id for r in stored.values())
    with o.engine.connect() as conn:
        totals = {r.device_id: r.readings_total for r in conn.execute(select(devices))}
        batch_rows = conn.execute(select(batches.c.gateway_id, batches.c.batch_seq, batches.c.accepted,
                                         batches.c.frame_hash)).all()  # fmt: skip
        heads = {g.gateway_id: g for g in conn.execute(select(gateways))}
        gaps = conn.execute(select(chain_gaps).where(chain_gaps.c.filled_ms.is_(None))).all()
    assert totals == dict(per_device), f"{o.label}: devices.readings_total disagrees with the stored rows"
    assert sum(b.accepted for b in batch_rows) == len(stored), f"{o.label}: a reading counted in two batches"
    assert not gaps, f"{o.label}: open chain gaps {gaps}"
    refused = Counter(
        (f.batch.gateway_id, f.batch.batch_seq) for f in refused_frames(o.engine, o.snapshot.agent_heads)
    )
    for g, (head_seq, head_hash) in o.snapshot.agent_heads.items():
        seqs = sorted(b.batch_seq for b in batch_rows if b.gateway_id == g)
        refused_seqs = sorted(seq for (gw, seq) in refused if gw == g)
        assert sorted(seqs + refused_seqs) == list(range(1, head_seq + 1)), (
            f"{o.label}: {g} formed batches 1..{head_seq}; the cloud stored {len(seqs)} and refused "
            f"{len(refused_seqs)} of them (a batch lost, or one both stored and refused)"
        )
        row = heads[g]
        assert (row.batches_accepted, row.readings_accepted) == (len(seqs), per_gateway[g]), (
            f"{o.label}: {g}'s counters disagree with its stored batches and readings"
        )
        if g not in refused_gateways:
            assert (row.head_seq, row.head_hash) == (head_seq, head_hash), (
                f"{o.label}: {g}'s chain head in the cloud is not the agent's"
            )
        assert o.api_gateways[g]["open_gaps"] == [], f"{o.label}: GET /v1/gateways/{g} shows open gaps"


def assert_never_repaired(o: Outcome) -> None:
    """Each stored reading carries the device's own timestamp and temperature (flagged, never fixed)."""
    sent = o.truth.sent()
    formats = {b.device_id: b.format for b in o.truth.bindings}
    for key, row in o.stored().items():
        truth = sent[key]
        assert row.t_device_ms == truth.t_device_ms, (
            f"{o.label}: {key} stored at device time {row.t_device_ms}, the device said {truth.t_device_ms}"
        )
        reported = truth.reported_temperature_c
        if reported is None:
            assert row.temperature_c is None, f"{o.label}: {key} stored a temperature the device did not send"
        else:
            assert row.temperature_c is not None, f"{o.label}: {key} lost its temperature"
            assert abs(row.temperature_c - reported) <= QUANTISATION_C[formats[key[0]]], (
                f"{o.label}: {key} stored {row.temperature_c} °C, the device reported {reported} °C"
            )


def assert_telemetry_once(o: Outcome, expected: Collection[Key]) -> None:
    """VictoriaMetrics holds one ``reading_seq`` sample per expected reading, and nothing else."""
    want = len(expected)
    exported = o.vm.export(
        '{__name__="reading_seq"}', timeout=30.0, until=lambda s: sum(len(x["values"]) for x in s) >= want
    )
    seen = Counter((x["metric"]["device"], int(v)) for x in exported for v in x["values"])
    doubled = sorted(k for k, n in seen.items() if n > 1)
    missing, extra = sorted(set(expected) - seen.keys()), sorted(seen.keys() - set(expected))
    assert not doubled, f"{o.label}: VictoriaMetrics has {len(doubled)} readings twice (first {doubled[:5]})"
    assert not missing, f"{o.label}: VictoriaMetrics misses {len(missing)} readings (first {missing[:5]})"
    assert not extra, f"{o.label}: VictoriaMetrics has {len(extra)} unexpected readings (first {extra[:5]})"


def assert_holds(o: Outcome, truth: GroundTruth) -> None:
    """One active rule hold and one temperature alert per subject that truly breached; none elsewhere."""
    want: Counter[Subject] = Counter(dict.fromkeys(truth.excursion_subjects, 1))
    assert want, f"{o.label}: the scenario should hold something (a reefer failed, a door stayed open)"
    with o.engine.connect() as conn:
        placed = conn.execute(select(holds)).all()
        raised = conn.execute(select(alerts)).all()
        events = conn.execute(select(outbox_events.c.topic, outbox_events.c.aggregate_id)).all()
    held = Counter(
        (h.subject_type, h.subject_id) for h in placed if h.status == "active" and h.source == "rule"
    )
    assert held == want, f"{o.label}: holds {dict(held)}, the truth says {sorted(want)}"
    assert len(placed) == len(want), f"{o.label}: holds placed twice or released: {placed}"
    temperature = Counter((a.subject_type, a.subject_id) for a in raised if a.rule_id in TEMPERATURE_RULES)
    assert temperature == want, (
        f"{o.label}: temperature alerts {dict(temperature)}, expected one per {sorted(want)}"
    )
    # The ERP and ledger hear of each hold and each alert once.
    announced = Counter(
        (e.topic, e.aggregate_id) for e in events if e.topic in ("hold.placed", "alert.raised")
    )
    effects = Counter(
        {("hold.placed", str(h.id)): 1 for h in placed} | {("alert.raised", str(a.id)): 1 for a in raised}
    )
    assert announced == effects, (
        f"{o.label}: outbox events {dict(announced)} for holds and alerts {dict(effects)}"
    )
    gateway_alerts = [a for a in raised if a.kind == "gateway"]
    assert not gateway_alerts, f"{o.label}: gateway alerts (chain gaps?) {gateway_alerts}"
    api = Counter((h["subject_type"], h["subject_id"]) for h in o.api_holds if h["source"] == "rule")
    assert api == want, f"{o.label}: GET /v1/holds?status=active shows {dict(api)}"


def assert_cloud_rejects(o: Outcome, provoked: Mapping[str, int] | None = None) -> None:
    """The cloud's refusals by reason: what the drill provoked plus the control rejects, in the
    ``rejects`` table, the API and the workers' metrics alike."""
    want = Counter(provoked or {}) + ROGUE_REJECTS
    with o.engine.connect() as conn:
        rows = conn.execute(select(rejects.c.reason)).scalars().all()
    table = Counter(rows)
    assert table == want, f"{o.label}: rejects table {dict(table)}, expected {dict(want)}"
    assert Counter(o.api_rejects) == want, f"{o.label}: GET /v1/rejects/summary {o.api_rejects}"
    counted = dict(o.snapshot.worker_rejects)
    assert counted == want, (
        f"{o.label}: workers' coldtrace_cloud_rejects_total {counted}, expected {dict(want)}"
    )


def assert_device_rejects_explained(o: Outcome) -> None:
    """Each device message an agent refused is one the simulator corrupted, and each corrupted one was
    refused; an agent that ran throughout counted each refusal by its reason."""
    malformed: dict[str, Counter[tuple[str, int]]] = {}
    for p in o.truth.malformed():
        malformed.setdefault(gateway_id(p.gateway), Counter())[(p.device_id, p.size)] += 1
    assert sum(len(c) for c in malformed.values()), f"{o.label}: the scenario corrupted no message"
    for g, letters in o.snapshot.dead_letters.items():
        distinct = {(topic, payload): reason for reason, topic, payload in letters}
        refused = Counter((parse_device_uplink(topic), len(payload)) for topic, payload in distinct)
        assert refused == malformed.get(g, Counter()), (
            f"{o.label}: {g} refused {dict(refused)}; the simulator corrupted {dict(malformed.get(g, {}))}"
        )
        if g not in o.restarted_agents:
            assert len(letters) == len(distinct), f"{o.label}: {g} dead-lettered a message twice"
            reasons = Counter(distinct.values())
            counted = dict(o.snapshot.agent_rejects[g])
            assert counted == reasons, (
                f"{o.label}: {g}'s coldtrace_agent_messages_rejected_total {counted}, "
                f"its dead letters {dict(reasons)}"
            )


def assert_all(
    o: Outcome, *, expected: Iterable[Key] | None = None, provoked: Mapping[str, int] | None = None,
    refused_gateways: Collection[str] = (),
) -> None:  # fmt: skip
    """Every check above, for the readings ``expected`` to be stored (default: every sent one)."""
    keys = set(o.truth.sent() if expected is None else expected)
    s = o.snapshot
    logger.info(
        "%s %d readings expected of %d sent; holds %s; cloud rejects %s; agent rejects %s; batches %s; "
        "thinned %s", o.label, len(keys), len(o.truth.sent()),
        sorted(o.truth.expected(keys).excursion_subjects), dict(s.worker_rejects),
        {g: dict(c) for g, c in s.agent_rejects.items()}, {g: h[0] for g, h in s.agent_heads.items()},
        s.agent_thinned,
    )  # fmt: skip
    assert_processes_healthy(o)
    assert_exactly_once(o, keys, refused_gateways=refused_gateways)
    assert_never_repaired(o)
    assert_telemetry_once(o, keys)
    assert_holds(o, o.truth.expected(keys))
    assert_cloud_rejects(o, provoked)
    assert_device_rejects_explained(o)
    # Last: had it not settled, the checks above would have said what was missing.
    assert o.snapshot.settled, f"{o.label}: the stack took longer than its settle timeout"
