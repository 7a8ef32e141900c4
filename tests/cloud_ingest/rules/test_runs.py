"""Breach runs in event time: delay, glitches, severity upgrades."""

from __future__ import annotations

from functools import partial

from cloud_ingest.rules.limits import RuleId, thresholds_for
from cloud_ingest.rules.runs import RunState, Sample, advance
from cloud_ingest.settings import RuleSettings
from coldtrace.profiles import ProfileName

RULES = thresholds_for(ProfileName.VACCINES, RuleSettings())
MIN = 60_000


def threshold(rule_id: RuleId, s: Sample):  # type: ignore[no-untyped-def]
    return RULES.get(rule_id)


def samples(temps: list[float], *, glitch: set[int] = frozenset(), step: int = MIN) -> list[Sample]:  # type: ignore[assignment]
    return [
        Sample("d", i, i * step, t, None, None, i in glitch, "shipment:S", ProfileName.VACCINES)
        for i, t in enumerate(temps)
    ]


def run(temps: list[float], **kw: object):  # type: ignore[no-untyped-def]
    state = RunState()
    return state, advance(state, RuleId.TEMP_HIGH, partial(threshold, RuleId.TEMP_HIGH), samples(temps, **kw))  # type: ignore[arg-type]


def test_a_breach_fires_once_it_lasts_the_delay_with_its_true_start() -> None:
    # 15 min delay for vaccines: breach from minute 2; fires at minute 17.
    state, out = run([5, 5] + [10] * 16 + [5])
    assert len(out.firings) == 1
    assert (out.firings[0].started_ms, out.firings[0].t_ms) == (2 * MIN, 17 * MIN)
    assert len(out.endings) == 1
    assert state.start_ms is None


def test_a_shorter_breach_is_not_an_excursion() -> None:
    _, out = run([5] + [10] * 15 + [5])
    assert out.firings == []
    assert out.endings == []


def test_an_isolated_glitch_is_flagged_not_fired_even_without_delay() -> None:
    state = RunState()
    shock = RULES[RuleId.SHOCK]
    series = [Sample("d", i, i * MIN, 5.0, None, g, i == 1, "shipment:S", ProfileName.VACCINES)
              for i, g in enumerate([0.5, 40.0, 0.5])]  # fmt: skip
    out = advance(state, RuleId.SHOCK, lambda _s: shock, series)
    assert out.firings == []
    assert out.glitches == 1
    # The same shock without a glitch score is an excursion at once.
    series[1].glitch = False
    out = advance(RunState(), RuleId.SHOCK, lambda _s: shock, series)
    assert len(out.firings) == 1


def test_a_sustained_breach_fires_whatever_its_scores() -> None:
    _, out = run([5] + [10] * 20, glitch=set(range(1, 21)))
    assert len(out.firings) == 1


def test_a_run_that_gets_critical_fires_again_to_raise_severity() -> None:
    _, out = run([5] + [10] * 16 + [14] * 2)
    assert [f.critical for f in out.firings] == [False, True]


def test_old_runs_replayed_without_new_readings_do_not_fire() -> None:
    state = RunState()
    series = samples([5] + [10] * 20 + [5] * 3)
    for s in series:
        s.new = s.seq > 21  # only the in-range tail is new
    out = advance(state, RuleId.TEMP_HIGH, partial(threshold, RuleId.TEMP_HIGH), series)
    assert out.firings == []
