"""The rule engine: advances breach runs, budgets and MKT for a batch's new readings, in SQL.

Called inside the ingest transaction, after the batch's readings are stored, so an alert or hold
commits with the readings that caused it or not at all. Per batch it does a handful of set-wise
statements, not one per reading. Readings that arrive in device order advance the stored run state;
a reading older than its device's newest (a backfill after an outage) makes the engine re-read that
device's stored history from ``recompute_lookback_s`` before it and replay it, so the excursion's
start is the true one. Only runs holding a new reading fire on replay, so history never re-raises
an alert people already closed.

Correlation: one incident, one alert. A budget or MKT breach on a subject that already has an open
excursion alert is recorded on that alert's history instead of raising a second alert.
"""

from __future__ import annotations

import functools
import logging
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from sqlalchemy import Connection, and_, bindparam, func, select

from cloud_ingest import alerts as alert_ops
from cloud_ingest.alerts import AlertSpec, Severity, dedupe_key
from cloud_ingest.db.listparam import DIALECTS, one_of
from cloud_ingest.db.tables import alert_events, alerts, budgets, mkt_buckets, readings, rule_state
from cloud_ingest.db.upsert import BulkUpsert
from cloud_ingest.holds import HoldSource, SubjectType, place_hold
from cloud_ingest.rules.limits import THRESHOLD_RULES, RuleId, Threshold, thresholds_for
from cloud_ingest.rules.mkt import HOUR_MS, boltzmann, hour_of, mkt_from_sums
from cloud_ingest.rules.runs import Advance, Firing, RunState, Sample, advance
from cloud_ingest.settings import RuleSettings
from coldtrace.contract.reading import Flag
from coldtrace.profiles import ProfileName

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class RuleOutcome:
    """What one batch's evaluation changed."""

    alerts_raised: int = 0
    holds_placed: int = 0
    glitches_flagged: int = 0
    replayed_readings: int = 0
    """Stored readings re-read to place late ones in context."""


@functools.lru_cache(maxsize=65536)
def subjects_of(subject: str) -> tuple[tuple[SubjectType, str], ...]:
    """``"shipment:S"`` or ``"lot:A,lot:B"`` as (type, id) pairs (cached: asked for every reading)."""
    out = []
    for part in subject.split(","):
        kind, _, ident = part.partition(":")
        out.append((SubjectType(kind), ident))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class _Range:
    """A profile's allowed range of each quantity, as :meth:`Threshold.excess` judges it (limits
    included); a missing bound allows anything."""

    temperature_low: float
    temperature_high: float
    humidity_high: float
    shock_high: float

    @classmethod
    def of(cls, rules: dict[RuleId, Threshold]) -> _Range:
        """The range ``rules`` allow."""

        def limit(rule_id: RuleId, default: float) -> float:
            rule = rules.get(rule_id)
            return default if rule is None else rule.limit

        inf = float("inf")
        return cls(limit(RuleId.TEMP_LOW, -inf), limit(RuleId.TEMP_HIGH, inf),
                   limit(RuleId.HUMIDITY_HIGH, inf), limit(RuleId.SHOCK, inf))  # fmt: skip

    def holds(self, s: Sample) -> bool:
        """No threshold of the profile is breached by ``s``."""
        t, h, g = s.temperature_c, s.humidity_pct, s.shock_g
        return (
            (t is None or self.temperature_low <= t <= self.temperature_high)
            and (h is None or h <= self.humidity_high)
            and (g is None or g <= self.shock_high)
        )


class RuleEngine:
    """Evaluates the rules of each reading's product profile; see the module docstring."""

    def __init__(self, settings: RuleSettings) -> None:
        self.settings = settings
        self._thresholds = {p: thresholds_for(p, settings) for p in ProfileName}
        self._ranges = {p: _Range.of(rules) for p, rules in self._thresholds.items()}
        self._gap_ms = round(settings.max_sample_gap_s * 1000)
        self._lookback_ms = round(settings.recompute_lookback_s * 1000)

    def is_glitch(self, flags: Sequence[str], anomaly_score: float | None) -> bool:
        """The edge flagged the reading a glitch, or scored it at least ``glitch_score``."""
        return Flag.GLITCH in flags or (anomaly_score or 0.0) >= self.settings.glitch_score

    def threshold(self, rule_id: RuleId, sample: Sample) -> Threshold | None:
        """The sample's profile's threshold for ``rule_id`` (None: unbound or not in the profile)."""
        if sample.profile is None:
            return None
        return self._thresholds[sample.profile].get(rule_id)

    # -- entry point -------------------------------------------------------------------------------
    def apply(
        self, conn: Connection, samples: Sequence[Sample], *, newest: Mapping[str, int], now_ms: int
    ) -> RuleOutcome:
        """Evaluate ``samples`` (this batch's new, bound readings) and act on what they show.

        ``newest``: each device's newest device time before these readings (``devices.rules_t_ms``,
        read under the row lock the caller holds); a device missing from it has none.
        """
        outcome = RuleOutcome()
        by_device: dict[str, list[Sample]] = defaultdict(list)
        for s in samples:
            if s.profile is not None and s.subject is not None:
                by_device[s.device_id].append(s)
        if not by_device:
            return outcome
        states = self._load_states(conn, list(by_device))
        stored = {(d, rule) for d, per_rule in states.items() for rule in per_rule}
        firings: list[Firing] = []
        endings = []
        budget_add: dict[tuple[str, str], int] = defaultdict(int)
        for device_id, new in by_device.items():
            new.sort(key=lambda s: (s.t_ms, s.seq))
            newest_t = newest.get(device_id, -1)
            if new[0].t_ms <= newest_t:
                series = self._history(conn, device_id, new)
                outcome.replayed_readings += sum(not s.new for s in series)
                device_states = states[device_id] = {}
                prev_t = None
            else:
                series = new
                prev_t = newest_t if newest_t >= 0 else None
                device_states = states.setdefault(device_id, {})
                if not device_states and self._all_in_range(series):
                    continue
            for rule_id in THRESHOLD_RULES:
                result: Advance = advance(
                    device_states.setdefault(rule_id, RunState()), rule_id, partial(self.threshold, rule_id),
                    series,
                )  # fmt: skip
                firings += result.firings
                endings += result.endings
                outcome.glitches_flagged += result.glitches
            self._budget(series, prev_t, budget_add)
        self._save_states(conn, states, stored)
        for firing in firings:
            self._fire(conn, firing, now_ms, outcome)
        for ending in endings:
            self._maybe_clear(conn, ending.rule_id, ending.subject, now_ms)
        self._apply_budgets(conn, budget_add, samples, now_ms, outcome)
        self._apply_mkt(conn, samples, now_ms, outcome)
        return outcome

    def _all_in_range(self, series: list[Sample]) -> bool:
        """The common case, for a device with no run open: every reading is within its profile's
        range, so nothing can fire, end or count against a budget, and advancing the rules would
        change nothing. False when the full evaluation is needed."""
        ranges = self._ranges
        # Only bound, profiled samples get here.
        return all(ranges[s.profile].holds(s) for s in series)  # type: ignore[index]

    # -- run state ---------------------------------------------------------------------------------
    def _load_states(self, conn: Connection, device_ids: list[str]) -> dict[str, dict[RuleId, RunState]]:
        """The stored states of the devices, by device: their open runs, the only ones stored. A
        device or rule missing has none (a fresh state, made only if its readings are evaluated in
        full). Positional rows and a dict for the rule ids (not RuleId(...)): a group can load
        thousands."""
        states: dict[str, dict[RuleId, RunState]] = {}
        rows = conn.execute(_LOAD_STATES[conn.dialect.name], {"device_ids": device_ids})
        for device_id, rule_id, start, last, count, glitches, peak, subject, fired in rows:
            states.setdefault(device_id, {})[_RULE_IDS[rule_id]] = RunState(
                start, last, count, glitches, peak or 0.0, subject, fired, False
            )
        return states

    def _save_states(
        self, conn: Connection, states: dict[str, dict[RuleId, RunState]], stored: set[tuple[str, RuleId]]
    ) -> None:
        """Store the open runs and delete the ones that were stored (``stored``) and have ended.

        A state without an open run holds nothing the next batch needs: the device's newest time
        lives in ``devices.rules_t_ms``. So in-range readings write no rule state at all.
        """
        rows = [
            {
                "device_id": device_id, "rule_id": rule_id.value, "run_start_ms": st.start_ms,
                "run_last_ms": st.last_ms, "run_count": st.count, "run_glitches": st.glitches,
                "run_peak": st.peak, "subject": st.subject, "fired": st.fired,
            }
            for device_id, per_rule in states.items()
            for rule_id, st in per_rule.items()
            if st.is_open
        ]  # fmt: skip
        _SAVE_STATES(conn, rows)
        ended = [
            {"d": device_id, "r": rule_id.value}
            for device_id, rule_id in stored
            if not states[device_id][rule_id].is_open
        ]
        if ended:
            conn.execute(_DELETE_STATE, ended)

    def _history(self, conn: Connection, device_id: str, new: list[Sample]) -> list[Sample]:
        """The device's stored readings from where a replay must start, with ``new`` marked as new."""
        new_seqs = {s.seq for s in new}
        template = {s.seq: s for s in new}
        since = self._replay_from(conn, device_id, new)
        rows = conn.execute(
            select(
                readings.c.seq, readings.c.t_device_ms, readings.c.temperature_c, readings.c.humidity_pct,
                readings.c.shock_g, readings.c.anomaly_score, readings.c.flags, readings.c.shipment_id,
                readings.c.lot_ids,
            )
            .where(readings.c.device_id == device_id, readings.c.t_device_ms >= since)
            .order_by(readings.c.t_device_ms, readings.c.seq)
        )  # fmt: skip
        profile = new[-1].profile
        out: list[Sample] = []
        for row in rows:
            if row.seq in template:
                out.append(template[row.seq])
                continue
            glitch = self.is_glitch(row.flags.split(","), row.anomaly_score)
            subject = subject_key(row.shipment_id, row.lot_ids.split(",") if row.lot_ids else [])
            out.append(
                Sample(
                    device_id, row.seq, row.t_device_ms, row.temperature_c, row.humidity_pct, row.shock_g,
                    glitch, subject, profile, new=row.seq in new_seqs,
                )
            )  # fmt: skip
        return out

    def _replay_from(self, conn: Connection, device_id: str, new: list[Sample]) -> int:
        """Where replaying the device's history must start for the late readings ``new``.

        Usually at the stored reading just before the first late one: when each rule's newest value
        before it is in range, no run is open there, so fresh state from that reading on is exact and
        a backfill after an outage replays the outage, not ``recompute_lookback_s`` of history. When
        a run may be open there (or nothing precedes), the whole lookback.
        """
        first = new[0].t_ms
        lookback = first - self._lookback_ms
        before = (readings.c.device_id == device_id, readings.c.t_device_ms < first,
                  readings.c.t_device_ms >= lookback)  # fmt: skip
        latest = (readings.c.t_device_ms.desc(), readings.c.seq.desc())
        previous = conn.execute(
            select(readings.c.t_device_ms).where(*before).order_by(*latest).limit(1)
        ).scalar_one_or_none()
        profile = new[-1].profile
        if previous is None or profile is None:
            return lookback
        for rule in self._thresholds[profile].values():
            column = readings.c[rule.quantity.value]
            value = conn.execute(
                select(column).where(*before, column.is_not(None)).order_by(*latest).limit(1)
            ).scalar_one_or_none()
            if rule.excess(value) is not None:
                return lookback
        return int(previous)

    # -- alerts and holds ----------------------------------------------------------------------------
    def _fire(self, conn: Connection, firing: Firing, now_ms: int, outcome: RuleOutcome) -> None:
        rule = firing.rule
        side = "above" if rule.upper else "below"
        severity = Severity.CRITICAL if firing.critical else Severity.MAJOR
        for subject_type, subject_id in subjects_of(firing.subject):
            spec = AlertSpec(
                rule_id=rule.rule_id, kind="excursion", subject_type=subject_type, subject_id=subject_id,
                severity=severity, device_id=firing.device_id, started_ms=firing.started_ms,
                title=f"{rule.quantity.removesuffix('_c').removesuffix('_pct').removesuffix('_g')} "
                f"{side} {rule.limit:g} on {subject_type} {subject_id}",
                detail={"limit": rule.limit, "value": firing.value, "peak_excess": firing.peak,
                        "device_id": firing.device_id, "delay_ms": rule.delay_ms},
            )  # fmt: skip
            self._raise_and_hold(conn, spec, now_ms, outcome, hold=rule.places_hold)

    def _raise_and_hold(
        self, conn: Connection, spec: AlertSpec, now_ms: int, outcome: RuleOutcome, *, hold: bool = True
    ) -> None:
        alert_id, new = alert_ops.raise_alert(conn, spec, now_ms=now_ms)
        if new:
            outcome.alerts_raised += 1
        if not hold:
            return
        _, placed = place_hold(
            conn, subject_type=SubjectType(spec.subject_type), subject_id=spec.subject_id,
            source=HoldSource.RULE, reason=spec.title, placed_by="rule:" + spec.rule_id,
            now_ms=now_ms, alert_id=alert_id,
        )  # fmt: skip
        outcome.holds_placed += placed

    def _maybe_clear(self, conn: Connection, rule_id: RuleId, subject: str, now_ms: int) -> None:
        """Clear the subject's alert once no device of it still has a fired run of the rule."""
        still = conn.execute(
            select(func.count()).select_from(rule_state).where(
                rule_state.c.rule_id == rule_id, rule_state.c.subject == subject, rule_state.c.fired,
            )
        ).scalar_one()  # fmt: skip
        if still:
            return
        for subject_type, subject_id in subjects_of(subject):
            alert_ops.clear_alert(conn, dedupe_key(rule_id, subject_type, subject_id), now_ms=now_ms)

    def _correlated(self, conn: Connection, spec: AlertSpec, now_ms: int) -> bool:
        """Record ``spec`` on an open excursion alert of its subject, if there is one."""
        open_id = conn.execute(
            select(alerts.c.id).where(
                alerts.c.subject_type == spec.subject_type, alerts.c.subject_id == spec.subject_id,
                alerts.c.kind == "excursion", alerts.c.workflow != alert_ops.Workflow.CLOSED,
            ).limit(1)
        ).scalar_one_or_none()  # fmt: skip
        if open_id is None:
            return False
        already = conn.execute(
            select(func.count()).select_from(alert_events).where(
                alert_events.c.alert_id == open_id, alert_events.c.kind == spec.rule_id
            )
        ).scalar_one()  # fmt: skip
        if not already:
            conn.execute(
                alert_events.insert().values(
                    alert_id=open_id, at_ms=now_ms, kind=spec.rule_id, actor=alert_ops.SYSTEM_ACTOR,
                    comment=spec.title,
                )
            )  # fmt: skip
        return True

    # -- cumulative budget ---------------------------------------------------------------------------
    def _budget(self, series: list[Sample], prev_t: int | None, add: dict[tuple[str, str], int]) -> None:
        """Out-of-range time of the new readings: each counts the time since the device's previous one.

        A stored reading counted its gap from the reading stored before it at the time. When a late
        batch lands in that gap (a replay), the stored reading's share shrinks by what the new
        readings now cover, so the total stays what in-order arrival would have given.
        """
        prev = prev_t  # the reading before ``s`` now
        prev_old = prev_t  # the reading before ``s`` among those stored before this batch
        for s in series:
            gap = 0 if prev is None else min(s.t_ms - prev, self._gap_ms)
            if s.new:
                if self._out_of_range(s):
                    add[(s.subject, s.device_id)] += gap  # type: ignore[index]
            else:
                if prev != prev_old and self._out_of_range(s):
                    counted = 0 if prev_old is None else min(s.t_ms - prev_old, self._gap_ms)
                    add[(s.subject, s.device_id)] += gap - counted  # type: ignore[index]
                prev_old = s.t_ms
            prev = s.t_ms

    def _out_of_range(self, s: Sample) -> bool:
        """A temperature breach that counts against the budget (glitch-scored readings do not)."""
        if s.glitch or s.subject is None or s.temperature_c is None or s.profile is None:
            return False
        rules = self._thresholds[s.profile]
        high, low = rules.get(RuleId.TEMP_HIGH), rules.get(RuleId.TEMP_LOW)
        return bool((high and high.excess(s.temperature_c)) or (low and low.excess(s.temperature_c)))

    def _apply_budgets(
        self, conn: Connection, add: dict[tuple[str, str], int], samples: Sequence[Sample], now_ms: int,
        outcome: RuleOutcome,
    ) -> None:  # fmt: skip
        if not add:
            return
        rows = [{"subject": s, "device_id": d, "out_of_range_ms": ms} for (s, d), ms in add.items()]
        _ADD_BUDGETS(conn, rows)
        profiles = {s.subject: s.profile for s in samples if s.subject and s.profile}
        subjects = sorted({s for s, _ in add})
        over = conn.execute(
            select(budgets.c.subject, func.max(budgets.c.out_of_range_ms).label("worst"))
            .where(budgets.c.subject.in_(subjects))
            .group_by(budgets.c.subject)
        )
        for row in over:
            profile = profiles.get(row.subject)
            if profile is None:
                continue
            limit_ms = round(self.settings.budget_s[profile] * 1000)
            if row.worst <= limit_ms:
                continue
            for subject_type, subject_id in subjects_of(row.subject):
                spec = AlertSpec(
                    rule_id=RuleId.BUDGET, kind="budget", subject_type=subject_type, subject_id=subject_id,
                    severity=Severity.MAJOR, started_ms=now_ms,
                    title=f"time out of range {row.worst / 60000:.0f} min exceeds the {profile} budget "
                    f"of {limit_ms / 60000:.0f} min on {subject_type} {subject_id}",
                    detail={"out_of_range_ms": row.worst, "budget_ms": limit_ms},
                )  # fmt: skip
                if not self._correlated(conn, spec, now_ms):
                    self._raise_and_hold(conn, spec, now_ms, outcome)

    # -- mean kinetic temperature --------------------------------------------------------------------
    def _apply_mkt(
        self, conn: Connection, samples: Sequence[Sample], now_ms: int, outcome: RuleOutcome
    ) -> None:
        k = self.settings.mkt_activation_k
        sums: dict[tuple[str, int], list[float]] = defaultdict(lambda: [0.0, 0])
        profiles: dict[str, ProfileName] = {}
        for s in samples:
            if s.subject is None or s.profile is None or s.temperature_c is None or s.glitch:
                continue
            for subject_type, subject_id in subjects_of(s.subject):
                key = f"{subject_type}:{subject_id}"
                bucket = sums[(key, hour_of(s.t_ms))]
                bucket[0] += boltzmann(s.temperature_c, k)
                bucket[1] += 1
                profiles[key] = s.profile
        if not sums:
            return
        rows = [{"subject": s, "hour_ms": h, "sum_exp": v[0], "n": int(v[1])} for (s, h), v in sums.items()]
        _ADD_MKT(conn, rows)
        totals = self._mkt_totals(conn, list(profiles))
        # Too few hours of the window, and a short spike would be most of the average: not judged yet.
        covered = self.settings.mkt_min_coverage_h
        profiles = {s: p for s, p in profiles.items() if totals[s][3] >= covered}
        values = {subject: mkt_from_sums(totals[subject][1], totals[subject][2], k) for subject in profiles}
        # Only subjects with an open MKT alert can have one to clear: find them in one query.
        clearable = self._open_alerts(
            conn, [_mkt_dedupe(s) for s, p in profiles.items() if values[s] <= self.settings.mkt_max_c[p]]
        )
        for subject, profile in profiles.items():
            newest = totals[subject][0]
            value = values[subject]
            limit = self.settings.mkt_max_c[profile]
            subject_type, subject_id = subjects_of(subject)[0]
            dedupe = _mkt_dedupe(subject)
            if value <= limit:
                if dedupe in clearable:
                    alert_ops.clear_alert(conn, dedupe, now_ms=now_ms)
                continue
            spec = AlertSpec(
                rule_id=RuleId.MKT, kind="mkt", subject_type=subject_type, subject_id=subject_id,
                severity=Severity.MAJOR, started_ms=newest,
                title=f"MKT {value:.2f} °C over {self.settings.mkt_window_h} h exceeds {limit:g} °C "
                f"on {subject_type} {subject_id}",
                detail={"mkt_c": value, "limit_c": limit, "window_h": self.settings.mkt_window_h},
            )  # fmt: skip
            if not self._correlated(conn, spec, now_ms):
                self._raise_and_hold(conn, spec, now_ms, outcome)

    def _mkt_totals(self, conn: Connection, subjects: list[str]) -> dict[str, tuple[int, float, int, int]]:
        """Per subject: its newest hour, the sums over the MKT window that ends there and the hours in
        it that hold readings (one query)."""
        window_ms = self.settings.mkt_window_h * HOUR_MS
        rows = conn.execute(_MKT_TOTALS[conn.dialect.name], {"subjects": subjects, "window_ms": window_ms})
        return {row[0]: (int(row[1]), float(row[2]), int(row[3]), int(row[4])) for row in rows}

    @staticmethod
    def _open_alerts(conn: Connection, dedupe_keys: list[str]) -> set[str]:
        """Which of ``dedupe_keys`` have an alert not closed (unlocked: ``clear_alert`` locks, re-reads)."""
        if not dedupe_keys:
            return set()
        return set(conn.execute(_OPEN_ALERTS, {"keys": dedupe_keys}).scalars())


def _mkt_dedupe(subject: str) -> str:
    subject_type, subject_id = subjects_of(subject)[0]
    return dedupe_key(RuleId.MKT, subject_type, subject_id)


_STATE_COLUMNS = ("device_id", "rule_id", "run_start_ms", "run_last_ms", "run_count", "run_glitches",
                  "run_peak", "subject", "fired")  # fmt: skip
_SAVE_STATES = BulkUpsert(
    rule_state, names=_STATE_COLUMNS, keys=("device_id", "rule_id"),
    update=lambda ex: {c: ex[c] for c in _STATE_COLUMNS if c not in {"device_id", "rule_id"}},
)  # fmt: skip
_ADD_BUDGETS = BulkUpsert(
    budgets, names=("subject", "device_id", "out_of_range_ms"), keys=("subject", "device_id"),
    update=lambda ex: {"out_of_range_ms": budgets.c.out_of_range_ms + ex.out_of_range_ms},
)  # fmt: skip
_ADD_MKT = BulkUpsert(
    mkt_buckets, names=("subject", "hour_ms", "sum_exp", "n"), keys=("subject", "hour_ms"),
    update=lambda ex: {"sum_exp": mkt_buckets.c.sum_exp + ex.sum_exp, "n": mkt_buckets.c.n + ex.n},
)  # fmt: skip
_RULE_IDS = {rule.value: rule for rule in RuleId}
_DELETE_STATE = rule_state.delete().where(
    rule_state.c.device_id == bindparam("d"), rule_state.c.rule_id == bindparam("r")
)
_STATE_SELECT = select(*(rule_state.c[name] for name in _STATE_COLUMNS))
_LOAD_STATES = {
    d: _STATE_SELECT.where(one_of(d, rule_state.c.device_id, "device_ids")).with_for_update()
    for d in DIALECTS
}


def _mkt_totals_query(in_subjects: Any) -> Any:
    """Per subject: its newest hour and the sums over the window that ends there."""
    newest = (
        select(mkt_buckets.c.subject, func.max(mkt_buckets.c.hour_ms).label("newest"))
        .where(in_subjects)
        .group_by(mkt_buckets.c.subject)
        .subquery()
    )
    return (
        select(newest.c.subject, newest.c.newest, func.sum(mkt_buckets.c.sum_exp), func.sum(mkt_buckets.c.n),
               func.count())
        .join_from(newest, mkt_buckets, and_(
            mkt_buckets.c.subject == newest.c.subject,
            mkt_buckets.c.hour_ms > newest.c.newest - bindparam("window_ms"),
        ))
        .group_by(newest.c.subject, newest.c.newest)
    )  # fmt: skip


_MKT_TOTALS = {d: _mkt_totals_query(one_of(d, mkt_buckets.c.subject, "subjects")) for d in DIALECTS}
_OPEN_ALERTS = select(alerts.c.dedupe_key).where(
    alerts.c.dedupe_key.in_(bindparam("keys", expanding=True)), alerts.c.workflow != alert_ops.Workflow.CLOSED
)


def subject_key(shipment_id: str | None, lot_ids: Sequence[str]) -> str | None:
    """The subject a reading's excursion is about: its shipment, else its lots, else None."""
    if shipment_id is not None:
        return f"shipment:{shipment_id}"
    if lot_ids:
        return ",".join(f"lot:{lot}" for lot in lot_ids)
    return None
