"""Rules through the ingest transaction: one incident, one alert and one hold, in event time."""

from __future__ import annotations

import copy
from collections import defaultdict
from functools import partial

import pytest
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, select

from cloud_ingest.db.tables import alert_events, alerts, budgets, devices, holds, outbox_events, rule_state
from cloud_ingest.ingest import Ingestor, Outcome
from cloud_ingest.metrics import CloudMetrics
from cloud_ingest.rules.engine import RuleEngine
from cloud_ingest.rules.limits import THRESHOLD_RULES, RuleId
from cloud_ingest.rules.runs import RunState, Sample, advance
from cloud_ingest.settings import CloudSettings, RuleSettings
from coldtrace.contract.reading import Flag
from coldtrace.profiles import ProfileName
from tests.cloud_ingest.builders import MINUTE, T0, GatewaySim, add_shipment, reading, series

NOW = T0 + 48 * 3_600_000


@pytest.fixture
def cloud(engine: Engine) -> tuple[Ingestor, GatewaySim]:
    add_shipment(engine, "SHP-1", ("LOT-1", "LOT-2"))
    gw = GatewaySim()
    gw.register(engine)
    return Ingestor(engine, CloudSettings(), metrics=CloudMetrics(), clock=lambda: NOW), gw


def send_all(ingestor: Ingestor, gw: GatewaySim, readings: list, per_batch: int = 10) -> None:  # type: ignore[type-arg]
    for i in range(0, len(readings), per_batch):
        result = ingestor.ingest(gw.frame(readings[i : i + per_batch]), topic_gateway="gw-1", identity="gw-1",
                                 transport="mqtt")  # fmt: skip
        assert result.outcome is Outcome.ACCEPTED


def rows(engine: Engine, table):  # type: ignore[no-untyped-def]
    with engine.connect() as conn:
        return conn.execute(select(table).order_by(table.c.id)).all()


def test_a_sustained_excursion_raises_one_alert_and_one_hold_with_its_true_start(
    engine: Engine, cloud: tuple[Ingestor, GatewaySim]
) -> None:
    ingestor, gw = cloud
    lots = ("LOT-1", "LOT-2")
    # Three sensors in one reefer; two see the warm-up from minute 10, one stays cold.
    temps = [5.0] * 10 + [9.0 + 0.1 * i for i in range(40)] + [6.0] * 5
    readings = [r for d in ("a", "b") for r in series(f"dev-{d}", temps, lot_ids=lots)]
    readings += list(series("dev-c", [5.0] * 55, lot_ids=lots))
    send_all(ingestor, gw, readings)

    found = rows(engine, alerts)
    assert [(a.rule_id, a.subject_type, a.subject_id) for a in found] == [("temp_high", "shipment", "SHP-1")]
    alert = found[0]
    assert alert.started_ms == T0 + 10 * MINUTE
    assert alert.condition == "cleared"  # back in range at minute 50, still latched for people
    assert alert.workflow == "unacknowledged"
    placed = rows(engine, holds)
    assert [(h.subject_type, h.subject_id, h.source, h.alert_id) for h in placed] == [
        ("shipment", "SHP-1", "rule", alert.id)
    ]
    with engine.connect() as conn:
        topics = conn.execute(select(outbox_events.c.topic)).scalars().all()
        budget = conn.execute(
            select(budgets.c.out_of_range_ms).where(budgets.c.device_id == "dev-a")
        ).scalar_one()
        history = (
            conn.execute(select(alert_events.c.kind).where(alert_events.c.alert_id == alert.id))
            .scalars()
            .all()
        )
    assert "hold.placed" in topics
    assert "alert.raised" in topics
    assert budget == 40 * MINUTE
    assert "budget" not in history  # 40 min out of range is within the 60-min vaccines budget


def test_a_glitch_storm_holds_nothing(engine: Engine, cloud: tuple[Ingestor, GatewaySim]) -> None:
    ingestor, gw = cloud
    readings = []
    for i in range(200):
        spike = i % 7 == 3
        readings.append(
            reading("dev-g", i + 1, T0 + i * MINUTE, 30.0 if spike else 5.0, lot_ids=("LOT-1",),
                    score=0.97 if spike else 0.02, flags=(Flag.GLITCH,) if spike else ())
        )  # fmt: skip
    send_all(ingestor, gw, readings, per_batch=25)
    assert rows(engine, alerts) == []
    assert rows(engine, holds) == []
    # 29 spikes; the last is the newest reading, so whether it stays isolated is not known yet.
    assert ingestor.metrics.registry.get_sample_value("coldtrace_cloud_glitches_flagged_total") == 28


def test_a_backfilled_outage_alerts_with_the_true_start(
    engine: Engine, cloud: tuple[Ingestor, GatewaySim]
) -> None:
    ingestor, gw = cloud
    # The gateway was cut off from minute 10 to 60; after reconnecting it sends live readings first,
    # then the backlog - which holds a 30-minute excursion starting at minute 20.
    before = list(series("dev-a", [5.0] * 10))
    outage = list(
        series("dev-a", [5.0] * 10 + [11.0] * 30 + [5.0] * 10, start_ms=T0 + 10 * MINUTE, first_seq=11)
    )
    live = list(series("dev-a", [5.0] * 5, start_ms=T0 + 60 * MINUTE, first_seq=61))
    send_all(ingestor, gw, before + live + [r.model_copy(update={"flags": (Flag.BACKFILL,)}) for r in outage])
    found = rows(engine, alerts)
    assert len(found) == 1
    assert found[0].started_ms == T0 + 20 * MINUTE
    assert found[0].condition == "cleared"
    assert len(rows(engine, holds)) == 1


def test_readings_without_a_registered_profile_are_stored_but_raise_nothing(
    engine: Engine, cloud: tuple[Ingestor, GatewaySim]
) -> None:
    ingestor, gw = cloud
    send_all(ingestor, gw, list(series("dev-x", [30.0] * 30, shipment_id="SHP-UNKNOWN", lot_ids=())))
    assert rows(engine, alerts) == []


def _budget_after(engine: Engine, ingestor: Ingestor, gw: GatewaySim, order: list[int]) -> int:
    # Three batches of ten minutes each, all out of range; sent in ``order``.
    temps = [9.0] * 30
    readings = list(series("dev-o", temps, lot_ids=("LOT-1",)))
    frames = [gw.frame(readings[i : i + 10]) for i in range(0, 30, 10)]
    for index in order:
        result = ingestor.ingest(frames[index], topic_gateway="gw-1", identity="gw-1", transport="mqtt")
        assert result.outcome is Outcome.ACCEPTED
    with engine.connect() as conn:
        return int(
            conn.execute(select(budgets.c.out_of_range_ms).where(budgets.c.device_id == "dev-o")).scalar_one()
        )


@pytest.mark.parametrize("order", [[0, 1, 2], [0, 2, 1], [2, 1, 0], [1, 2, 0]])
def test_the_out_of_range_budget_does_not_depend_on_arrival_order(
    engine: Engine, cloud: tuple[Ingestor, GatewaySim], order: list[int]
) -> None:
    ingestor, gw = cloud
    # 30 readings a minute apart: 29 minutes between the first and the last.
    assert _budget_after(engine, ingestor, gw, order) == 29 * MINUTE


def test_mkt_is_judged_once_the_window_holds_enough_hours_then_alerts_and_holds(engine: Engine) -> None:
    add_shipment(engine, "SHP-1", ("LOT-1",))
    gw = GatewaySim()
    gw.register(engine)
    # Only MKT can fire: no threshold delay or budget is ever reached.
    profile = ProfileName.VACCINES
    d = RuleSettings()
    rules = RuleSettings(delay_s={**d.delay_s, profile: 1e9}, budget_s={**d.budget_s, profile: 1e9},
                         mkt_min_coverage_h=12)  # fmt: skip
    ingestor = Ingestor(engine, CloudSettings(rules=rules), metrics=CloudMetrics(), clock=lambda: NOW)
    warm = list(
        series("dev-a", [9.5] * 13 * 6, step_ms=10 * MINUTE, lot_ids=("LOT-1",))
    )  # 13 h, every 10 min

    send_all(ingestor, gw, warm[: 2 * 6])  # 2 h at 9.5 °C: MKT 9.5 > 8, but over 3 hour buckets of 24
    assert rows(engine, alerts) == []
    send_all(ingestor, gw, warm[2 * 6 : 10 * 6])  # T0 is 13 min into an hour: 11 buckets, not judged
    assert rows(engine, alerts) == []
    send_all(ingestor, gw, warm[10 * 6 :])  # 12 and more buckets: judged, and over the limit
    found = rows(engine, alerts)
    assert [(a.rule_id, a.subject_type, a.subject_id) for a in found] == [("mkt", "shipment", "SHP-1")]
    assert [(h.subject_id, h.alert_id) for h in rows(engine, holds)] == [("SHP-1", found[0].id)]


def test_mkt_coverage_cannot_exceed_its_window() -> None:
    with pytest.raises(ValueError, match="mkt_min_coverage_h"):
        RuleSettings(mkt_window_h=6, mkt_min_coverage_h=12)


def test_a_backfill_replays_from_the_reading_before_it_not_the_whole_lookback(
    engine: Engine, cloud: tuple[Ingestor, GatewaySim]
) -> None:
    ingestor, gw = cloud
    # Ten hours in range, then a 20-minute outage whose backlog arrives after the live readings.
    history = list(series("dev-a", [5.0] * 600))
    outage = list(series("dev-a", [5.0] * 20, start_ms=T0 + 600 * MINUTE, first_seq=601))
    live = list(series("dev-a", [5.0] * 5, start_ms=T0 + 620 * MINUTE, first_seq=621))
    send_all(ingestor, gw, history + live, per_batch=100)
    send_all(ingestor, gw, outage, per_batch=20)
    replayed = ingestor.metrics.registry.get_sample_value("coldtrace_cloud_rules_replayed_readings_total")
    assert replayed == 1 + 5  # the reading before the backlog and the live ones after it


def test_a_backfill_behind_an_open_breach_replays_the_lookback_to_keep_the_true_start(
    engine: Engine, cloud: tuple[Ingestor, GatewaySim]
) -> None:
    ingestor, gw = cloud
    # The breach began before the outage: the run is open at the reading before the backlog.
    before = list(series("dev-a", [5.0] * 10 + [11.0] * 5))
    outage = list(series("dev-a", [11.0] * 20, start_ms=T0 + 15 * MINUTE, first_seq=16))
    live = list(series("dev-a", [11.0] * 5, start_ms=T0 + 35 * MINUTE, first_seq=36))
    send_all(ingestor, gw, before + live)
    send_all(ingestor, gw, outage, per_batch=20)
    found = rows(engine, alerts)
    assert [(a.rule_id, a.started_ms) for a in found] == [("temp_high", T0 + 10 * MINUTE)]
    replayed = ingestor.metrics.registry.get_sample_value("coldtrace_cloud_rules_replayed_readings_total")
    assert replayed == 15 + 5  # everything stored within the lookback


@st.composite
def _quiet_case(draw: st.DrawFn) -> tuple[dict[RuleId, RunState], list[Sample]]:
    """States with no open run (the only kind the shortcut may take) and a device-time-ordered series,
    its values near every profile's limits."""
    near = st.sampled_from([-25.0, -15.0, -0.01, 0.0, 2.0, 4.0, 5.5, 8.0, 8.01, 50.0, 60.0, 75.0, 100.0])
    maybe = st.one_of(st.none(), near)
    shock = st.one_of(st.none(), st.sampled_from([0.0, 3.0, 10.0, 11.0]))
    states = {rule: RunState() for rule in THRESHOLD_RULES}
    times = sorted(draw(st.lists(st.integers(100, 10_000), min_size=1, max_size=8)))
    series = [
        Sample("d", i, t, draw(maybe), draw(maybe), draw(shock),
               draw(st.booleans()), "shipment:S", draw(st.sampled_from(list(ProfileName))))
        for i, t in enumerate(times)
    ]  # fmt: skip
    return states, series


@given(_quiet_case())
def test_the_in_range_shortcut_agrees_with_advancing_every_rule(
    case: tuple[dict[RuleId, RunState], list[Sample]],
) -> None:
    states, series = case
    engine = RuleEngine(RuleSettings())
    took = engine._all_in_range(series)
    full = copy.deepcopy(states)
    outputs = [advance(full[rule], rule, partial(engine.threshold, rule), series) for rule in THRESHOLD_RULES]
    budget: dict[tuple[str, str], int] = defaultdict(int)
    engine._budget(series, None, budget)
    if took:
        assert full == states  # advancing every rule changes nothing ...
        assert all(not (o.firings or o.endings or o.glitches) for o in outputs)  # ... and raises nothing
        assert not any(budget.values())


def test_the_in_range_shortcut_is_taken_only_with_every_value_in_range() -> None:
    engine = RuleEngine(RuleSettings())
    ok = [
        Sample("d", i, 1000 * i, 5.0, 50.0, 0.5, False, "shipment:S", ProfileName.VACCINES) for i in range(3)
    ]
    assert engine._all_in_range(ok)
    warm = [*ok, Sample("d", 3, 3000, 8.01, None, None, False, "shipment:S", ProfileName.VACCINES)]
    assert not engine._all_in_range(warm)


def test_only_open_runs_are_stored_and_the_newest_time_is_kept_on_the_device(
    engine: Engine, cloud: tuple[Ingestor, GatewaySim]
) -> None:
    ingestor, gw = cloud
    send_all(ingestor, gw, list(series("dev-1", [5.0, 5.5, 9.0])))  # a breach begins at minute 2
    with engine.connect() as conn:
        states = conn.execute(select(rule_state.c.rule_id, rule_state.c.run_start_ms)).all()
        newest = conn.execute(select(devices.c.rules_t_ms)).scalar_one()
    assert [tuple(s) for s in states] == [("temp_high", T0 + 2 * MINUTE)]
    assert newest == T0 + 2 * MINUTE
    send_all(ingestor, gw, list(series("dev-1", [5.0], start_ms=T0 + 3 * MINUTE, first_seq=4)))
    with engine.connect() as conn:
        assert conn.execute(select(rule_state)).all() == []  # the run ended: nothing left to store
        assert conn.execute(select(devices.c.rules_t_ms)).scalar_one() == T0 + 3 * MINUTE
