"""Breach runs in event time: the pure core of the threshold rules.

A *run* is a stretch of one device's consecutive readings beyond one limit. It becomes an excursion
(fires) once it has lasted the rule's delay, measured between device timestamps - so late or
backfilled readings produce an excursion that starts when the breach truly began. An isolated
reading the edge scored as a glitch never fires, even for a rule without delay; a run of two or more
readings that lasts the delay fires whatever its scores.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

from cloud_ingest.rules.limits import RuleId, Threshold
from coldtrace.profiles import ProfileName


@dataclass(slots=True)
class Sample:
    """One reading as the rules see it (a plain dataclass: this is the hot path)."""

    device_id: str
    seq: int
    t_ms: int
    temperature_c: float | None
    humidity_pct: float | None
    shock_g: float | None
    glitch: bool
    subject: str | None
    """``shipment:<id>`` or ``lot:<id>[,lot:<id>…]``; None for an unbound reading."""
    profile: ProfileName | None
    new: bool = True
    """False for stored history re-read to place a late reading in context."""


@dataclass(slots=True)
class RunState:
    """Where one (device, rule) stands after its newest reading."""

    start_ms: int | None = None
    last_ms: int | None = None
    count: int = 0
    glitches: int = 0
    peak: float = 0.0
    subject: str | None = None
    fired: bool = False
    touched: bool = False
    """The open run holds a new reading (not persisted: only replays need it)."""

    @property
    def is_open(self) -> bool:
        """A run is under way (fired or not): the only state worth storing."""
        return self.start_ms is not None


@dataclass(frozen=True, slots=True)
class Firing:
    """A run became an excursion (or got worse): raise or upgrade its alert."""

    rule: Threshold
    device_id: str
    subject: str
    started_ms: int
    t_ms: int
    value: float
    peak: float

    @property
    def critical(self) -> bool:
        """Beyond the limit by the rule's critical margin at some point of the run."""
        return self.peak >= self.rule.critical_margin


@dataclass(frozen=True, slots=True)
class Ending:
    """A fired run ended: a reading came back in range (or the device was re-bound)."""

    rule_id: RuleId
    device_id: str
    subject: str
    t_ms: int


@dataclass(slots=True)
class Advance:
    """What advancing one (device, rule) over a series of readings produced."""

    firings: list[Firing]
    endings: list[Ending]
    glitches: int
    """Isolated glitch-scored breaches that were flagged and not alerted."""


def advance(
    state: RunState,
    rule_id: RuleId,
    threshold_of: Callable[[Sample], Threshold | None],
    samples: Iterable[Sample],
) -> Advance:
    """Advance ``state`` over ``samples`` (sorted by device time); mutates ``state``."""
    out = Advance([], [], 0)
    for s in samples:
        rule = threshold_of(s)
        value = None if rule is None else getattr(s, rule.quantity)
        if rule is None or value is None:
            continue
        excess = rule.excess(value)
        if state.start_ms is not None and (excess is None or s.subject != state.subject):
            _end(state, rule_id, s, out)
        if excess is None or s.subject is None:
            continue
        if state.start_ms is None:
            state.start_ms, state.count, state.glitches, state.peak = s.t_ms, 0, 0, 0.0
            state.subject, state.fired, state.touched = s.subject, False, False
        state.last_ms = s.t_ms
        state.count += 1
        state.glitches += s.glitch
        state.touched = state.touched or s.new
        worse = excess > state.peak
        was_critical = state.peak >= rule.critical_margin
        state.peak = max(state.peak, excess)
        lasted = s.t_ms - state.start_ms >= rule.delay_ms and (state.count >= 2 or not s.glitch)
        upgrade = state.fired and worse and not was_critical and state.peak >= rule.critical_margin
        if state.touched and ((lasted and not state.fired) or upgrade):
            state.fired = True
            out.firings.append(
                Firing(rule, s.device_id, s.subject, state.start_ms, s.t_ms, float(value), state.peak)
            )
    return out


def _end(state: RunState, rule_id: RuleId, s: Sample, out: Advance) -> None:
    if state.fired and state.subject is not None:
        out.endings.append(Ending(rule_id, s.device_id, state.subject, s.t_ms))
    elif state.count == 1 and state.glitches == 1:
        out.glitches += 1
    state.start_ms = state.last_ms = state.subject = None
    state.count = state.glitches = 0
    state.peak = 0.0
    state.fired = state.touched = False
