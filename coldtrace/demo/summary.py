"""The demo's summary: what the stack did, read back from the cloud's database, the agents and the sink,
and the verdict against the scenario's expectations and the simulator's ground truth."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from prometheus_client import Counter as PromCounter
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine, func, select

from cloud_ingest.db.tables import alerts, chain_gaps, gateways, holds, readings, rejects
from cloud_ingest.holds import SubjectType, lots_held_by
from coldtrace.demo.scenario import INCIDENTS, GroundTruth, Subject, subjects_of
from firmware_sim.fleet import Binding


@dataclass(frozen=True, slots=True)
class AlertLine:
    """One alert the cloud raised."""

    rule_id: str
    kind: str
    subject_type: str
    subject_id: str
    severity: str
    condition: str
    device_id: str | None


@dataclass(frozen=True, slots=True)
class HoldLine:
    """One active hold and the lots it covers."""

    subject_type: str
    subject_id: str
    lots: tuple[str, ...]
    source: str
    rule_id: str | None


@dataclass(frozen=True, slots=True)
class ChainLine:
    """A gateway's hash chain as the cloud stored it, beside the agent's own head."""

    gateway_id: str
    site_id: str | None
    head_seq: int
    head_hash: str | None
    agent_head_hash: str | None
    batches: int
    readings: int
    open_gaps: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """One expectation and what was seen."""

    name: str
    expected: str
    observed: str
    ok: bool


@dataclass(slots=True)
class GatewayFigures:
    """What one edge agent counted."""

    gateway_id: str
    messages: int
    duplicates: int
    rejects: dict[str, int]
    local_alerts: int
    head_hash: str | None
    uplink_cuts: int


@dataclass(slots=True)
class Summary:
    """Everything the summary prints (and ``summary.json`` holds)."""

    elapsed_s: float
    devices: int
    speed: float
    sim_s: float
    messages_published: int
    messages_acknowledged: int
    samples_sent: int
    readings_stored: int
    telemetry_points: int
    telemetry_refused: int
    gateways: list[GatewayFigures]
    cloud_rejects: dict[str, int]
    alerts: list[AlertLine]
    holds: list[HoldLine]
    chains: list[ChainLine]
    verdicts: list[Verdict] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Every expectation met."""
        return bool(self.verdicts) and all(v.ok for v in self.verdicts)

    def to_json(self) -> bytes:
        """The summary as JSON (sorted keys)."""
        body: dict[str, Any] = asdict(self)
        body["ok"] = self.ok
        return orjson.dumps(body, option=orjson.OPT_SORT_KEYS | orjson.OPT_INDENT_2)


# -- reading the stack back ------------------------------------------------------------------------
def counter_by_label(counter: PromCounter, label: str) -> dict[str, int]:
    """A labelled Prometheus counter's values, by that label."""
    out: dict[str, int] = {}
    for family in counter.collect():
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out[sample.labels[label]] = int(sample.value)
    return out


def counter_total(counter: PromCounter) -> int:
    """An unlabelled Prometheus counter's value."""
    return sum(
        int(sample.value)
        for family in counter.collect()
        for sample in family.samples
        if sample.name.endswith("_total")
    )


@dataclass(frozen=True, slots=True)
class CloudState:
    """What the cloud's database holds after the run."""

    readings: int
    rejects: dict[str, int]
    alerts: list[AlertLine]
    holds: list[HoldLine]
    chains: list[tuple[str, str | None, int, str | None, int, int, int]]


def read_cloud(engine: Engine) -> CloudState:
    """Readings, rejects, alerts, active holds with their lots, and chain heads, from the database."""
    with engine.connect() as conn:
        stored = int(conn.execute(select(func.count()).select_from(readings)).scalar_one())
        refused = {
            str(reason): int(n)
            for reason, n in conn.execute(select(rejects.c.reason, func.count()).group_by(rejects.c.reason))
        }
        raised = [
            AlertLine(a.rule_id, a.kind, a.subject_type, a.subject_id, a.severity, a.condition, a.device_id)
            for a in conn.execute(select(alerts).order_by(alerts.c.id))
        ]
        rule_of = {a.id: a.rule_id for a in conn.execute(select(alerts.c.id, alerts.c.rule_id))}
        placed = [
            HoldLine(
                h.subject_type,
                h.subject_id,
                tuple(lots_held_by(conn, SubjectType(h.subject_type), h.subject_id)),
                h.source,
                rule_of.get(h.alert_id),
            )
            for h in conn.execute(select(holds).where(holds.c.status == "active").order_by(holds.c.id))
        ]
        gaps: dict[str, int] = {
            str(g): int(n)
            for g, n in conn.execute(
                select(chain_gaps.c.gateway_id, func.count())
                .where(chain_gaps.c.filled_ms.is_(None))
                .group_by(chain_gaps.c.gateway_id)
            )
        }
        chains = [
            (g.gateway_id, g.site_id, int(g.head_seq), g.head_hash, int(g.batches_accepted),
             int(g.readings_accepted), gaps.get(g.gateway_id, 0))
            for g in conn.execute(select(gateways).order_by(gateways.c.gateway_id))
        ]  # fmt: skip
    return CloudState(stored, refused, raised, placed, chains)


def stored_readings(engine: Engine) -> tuple[int, int, int]:
    """Readings accepted (all gateways), alerts and active holds: cheap enough to poll for progress."""
    with engine.connect() as conn:
        accepted = conn.execute(select(func.coalesce(func.sum(gateways.c.readings_accepted), 0))).scalar_one()
        raised = conn.execute(select(func.count()).select_from(alerts)).scalar_one()
        held = conn.execute(
            select(func.count()).select_from(holds).where(holds.c.status == "active")
        ).scalar_one()
    return int(accepted), int(raised), int(held)


# -- verdicts --------------------------------------------------------------------------------------
def _names(subjects: Iterable[Subject]) -> str:
    return ", ".join(f"{kind} {name}" for kind, name in sorted(subjects)) or "nothing"


def verdicts(summary: Summary, truth: GroundTruth, bindings: Iterable[Binding]) -> list[Verdict]:
    """Check the run against the scenario's expectations and the simulator's ground truth."""
    by_device = {b.device_id: b for b in bindings}
    held: set[Subject] = {(h.subject_type, h.subject_id) for h in summary.holds}
    out: list[Verdict] = []
    for incident in INCIDENTS:
        devices = truth.incident_devices.get(incident.event_kind, ())
        subjects = {s for d in devices for s in subjects_of(by_device[d])}
        hit = subjects & held
        if incident.must_hold:
            ok = bool(subjects) and hit == subjects
            expected = f"held: {_names(subjects)}"
        else:
            ok = bool(subjects) and not hit
            expected = f"not held: {_names(subjects)}"
        observed = f"held: {_names(hit)}" if hit else "nothing held"
        out.append(Verdict(f"{incident.title} ({len(devices)} devices)", expected, observed, ok))
    missing, unexpected = truth.excursion_subjects - held, held - truth.excursion_subjects
    out.append(
        Verdict(
            "holds vs ground truth",
            f"{len(truth.excursion_subjects)} subjects truly out of range beyond their delay",
            "same" if not missing and not unexpected
            else f"missing: {_names(missing)}; unexpected: {_names(unexpected)}",
            not missing and not unexpected,
        )
    )  # fmt: skip
    out.append(
        Verdict(
            "every reading stored once",
            f"{truth.samples_sent:,} samples sent in well-formed messages",
            f"{summary.readings_stored:,} stored, {summary.telemetry_points:,} telemetry points",
            summary.readings_stored == truth.samples_sent and summary.telemetry_points == truth.samples_sent,
        )
    )
    cut = [g for g in summary.gateways if g.uplink_cuts]
    intact = all(c.open_gaps == 0 and c.head_hash == c.agent_head_hash for c in summary.chains)
    out.append(
        Verdict(
            "uplink partition",
            "gateway cut off for 30 simulated minutes, backlog drained, chains intact",
            f"{', '.join(g.gateway_id for g in cut) or 'no gateway'} cut; "
            + ("chains match the agents' heads, no gaps" if intact else "chain gap or head mismatch"),
            bool(cut) and intact,
        )
    )
    return out


# -- printing --------------------------------------------------------------------------------------
def _table(title: str, *columns: str) -> Table:
    table = Table(title=title, title_justify="left", title_style="bold")
    for column in columns:
        table.add_column(column)
    return table


def _overview(summary: Summary, extra_rows: Mapping[str, str]) -> Table:
    table = Table(
        title="coldtrace demo: summary", show_header=False, title_justify="left", title_style="bold"
    )
    table.add_column(style="bold")
    table.add_column()
    gateway_rejects: dict[str, int] = {}
    for g in summary.gateways:
        for reason, n in g.rejects.items():
            gateway_rejects[reason] = gateway_rejects.get(reason, 0) + n
    rows = {
        "fleet": f"{summary.devices} devices on 2 gateways, {summary.sim_s / 3600:g} simulated hours "
        f"at {summary.speed:g}x",
        "messages": f"{summary.messages_published:,} published, {summary.messages_acknowledged:,} "
        "acknowledged by the gateway brokers",
        "readings": f"{summary.samples_sent:,} sent by the devices, {summary.readings_stored:,} stored "
        f"by the cloud, {summary.telemetry_points:,} points read back from telemetry",
        "duplicates": f"{sum(g.duplicates for g in summary.gateways):,} dropped at the gateways "
        "(resends, replays)",
        "rejects, gateways": _reasons(gateway_rejects),
        "rejects, cloud": _reasons(summary.cloud_rejects),
        "local alerts": f"{sum(g.local_alerts for g in summary.gateways)} raised by a gateway while "
        "its uplink was down",
        **extra_rows,
        "elapsed": f"{summary.elapsed_s:.1f} s wall-clock",
    }
    for key, value in rows.items():
        table.add_row(key, value)
    return table


def render(summary: Summary, console: Console, *, extra_rows: Mapping[str, str]) -> None:
    """Print the summary tables and the verdict."""
    console.print(_overview(summary, extra_rows))
    alerts_table = _table("alerts", "rule", "subject", "severity", "condition")
    for a in summary.alerts:
        alerts_table.add_row(a.rule_id, f"{a.subject_type} {a.subject_id}", a.severity, a.condition)
    console.print(alerts_table)
    holds_table = _table("holds", "subject", "lots held", "placed by")
    for h in summary.holds:
        placed_by = f"{h.source} {h.rule_id or ''}".strip()
        holds_table.add_row(f"{h.subject_type} {h.subject_id}", ", ".join(h.lots) or "-", placed_by)
    console.print(holds_table)
    chains_table = _table("chain heads", "gateway", "batches", "readings", "head (cloud)", "agent's", "gaps")
    for c in summary.chains:
        agreed = "same" if c.head_hash == c.agent_head_hash else f"{(c.agent_head_hash or '?')[:12]}…"
        head = f"#{c.head_seq} {(c.head_hash or '')[:12]}…"
        chains_table.add_row(
            c.gateway_id, f"{c.batches:,}", f"{c.readings:,}", head, agreed, str(c.open_gaps)
        )
    console.print(chains_table)
    verdict_table = _table("verdict", "", "check", "expected", "observed")
    for v in summary.verdicts:
        verdict_table.add_row("[green]PASS[/]" if v.ok else "[red]FAIL[/]", v.name, v.expected, v.observed)
    console.print(verdict_table)
    if summary.ok:
        console.print("[bold green]Expected outcome met:[/] reefer failure and door left open held, "
                      "glitch storm not held, nothing lost to the partition.")  # fmt: skip
    else:
        console.print("[bold red]Expected outcome NOT met[/] (see the FAIL rows above).")


def _reasons(counts: Mapping[str, int]) -> str:
    if not counts:
        return "none"
    return ", ".join(f"{reason} {n}" for reason, n in sorted(counts.items()))
