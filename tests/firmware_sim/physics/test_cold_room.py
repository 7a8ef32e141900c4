"""Cold room: door traffic by shift, its statistics, and a large thermal mass holding the band."""

from __future__ import annotations

import math

import numpy as np
import pytest

from firmware_sim.physics import cold_room, reefer
from firmware_sim.physics.cold_room import (
    COLD_ROOM_THERMAL,
    ColdRoomInputs,
    ColdRoomParams,
    DoorEvent,
    ShiftTraffic,
    door_open_seconds,
    door_rate_per_h,
    draw_door_events,
)
from firmware_sim.physics.thermal import Coupling, equilibrium, relax

TRAFFIC = ShiftTraffic()
DAY_S = 86_400.0
DT_S = 10.0


@pytest.mark.parametrize(
    ("hour", "rate"),
    [
        (6.0, 12.0),
        (13.99, 12.0),
        (14.0, 8.0),
        (21.5, 8.0),
        (22.0, 1.0),
        (3.0, 1.0),
        (30.0, 12.0),
        (-1.0, 1.0),
    ],
)
def test_door_rate_follows_the_shifts(hour: float, rate: float) -> None:
    assert door_rate_per_h(TRAFFIC, hour) == rate


def test_shift_starts_out_of_order_are_refused() -> None:
    with pytest.raises(ValueError, match="shift starts"):
        ShiftTraffic(day_start_h=15.0)


def test_drawn_openings_match_the_shift_rates() -> None:
    days = 30
    events = draw_door_events(np.random.default_rng(7), TRAFFIC, start_s=0.0, duration_s=days * DAY_S)
    assert list(events) == sorted(events, key=lambda e: e.start_s)
    assert all(0.0 <= e.start_s < days * DAY_S and e.duration_s > 0.0 for e in events)
    by_shift = {"day": 0, "evening": 0, "night": 0}
    for event in events:
        hour = (event.start_s / 3600.0) % 24
        by_shift["day" if 6 <= hour < 14 else "evening" if 14 <= hour < 22 else "night"] += 1
    for shift, rate_per_h in (("day", 12.0), ("evening", 8.0), ("night", 1.0)):
        expected = rate_per_h * 8 * days  # each shift is 8 h long
        assert abs(by_shift[shift] - expected) < 5 * math.sqrt(expected), shift  # Poisson, 5 sigma
    mean_open_s = sum(e.duration_s for e in events) / len(events)
    assert mean_open_s == pytest.approx(TRAFFIC.mean_open_s, rel=0.1)


def test_drawing_is_determined_by_the_seed_and_window() -> None:
    def draw(seed: int) -> tuple[DoorEvent, ...]:
        return draw_door_events(np.random.default_rng(seed), TRAFFIC, start_s=3 * 3600.0, duration_s=DAY_S)

    assert draw(1) == draw(1)
    assert draw(1) != draw(2)
    assert all(3 * 3600.0 <= e.start_s < 27 * 3600.0 for e in draw(1))


def test_open_seconds_count_overlaps_once_and_clip_to_the_window() -> None:
    events = [DoorEvent(0.0, 30.0), DoorEvent(20.0, 30.0), DoorEvent(100.0, 10.0)]
    assert door_open_seconds(events, 0.0, 200.0) == 60.0  # [0, 50) and [100, 110)
    assert door_open_seconds(events, 10.0, 40.0) == 30.0
    assert door_open_seconds(events, 45.0, 105.0) == 10.0
    assert door_open_seconds(events, 60.0, 90.0) == 0.0


def test_open_seconds_longer_than_the_step_are_refused() -> None:
    state = cold_room.initial_state(ColdRoomParams())
    with pytest.raises(ValueError, match="door_open_s"):
        cold_room.step(state, ColdRoomParams(), 10.0, ColdRoomInputs(20.0, door_open_s=11.0))


def test_room_holds_its_band_through_shifts_and_works_harder_by_day() -> None:
    params = ColdRoomParams()
    thermal = params.thermal
    days = 3
    events = draw_door_events(np.random.default_rng(11), params.traffic, start_s=0.0, duration_s=days * DAY_S)
    state = cold_room.initial_state(params)
    on_s = {"busy": 0.0, "night": 0.0}
    temps = []
    for i in range(round(days * DAY_S / DT_S)):
        t_s = i * DT_S
        inputs = ColdRoomInputs(20.0, door_open_s=door_open_seconds(events, t_s, t_s + DT_S))
        state = cold_room.step(state, params, DT_S, inputs)
        temps.append(state.air_c)
        hour = (t_s / 3600.0) % 24
        on_s["busy" if 6 <= hour < 22 else "night"] += DT_S if state.compressor_on else 0.0
    assert thermal.low_c - 1e-9 <= min(temps)
    # Hard bound: a defrost starting at the upper switch point with the door open throughout.
    worst_eq_c, worst_tau_s = equilibrium(
        [
            Coupling(20.0, thermal.tau_ambient_s),
            Coupling(20.0, thermal.tau_door_s),
            Coupling(thermal.defrost_heater_c, thermal.tau_defrost_s),
        ]
    )
    assert max(temps) <= relax(thermal.high_c, worst_eq_c, thermal.defrost_duration_s, worst_tau_s)
    # Typically the mass shrugs off door gusts: a defrost in a busy shift is what pushes it out of band.
    temps.sort()
    assert temps[len(temps) // 2] == pytest.approx(thermal.setpoint_c, abs=0.3)
    assert temps[int(0.99 * len(temps))] < thermal.high_c + 1.0
    # Busy shifts are 16 h of the day, night 8 h: compare duty cycles, not totals.
    assert on_s["busy"] / 16 > 1.5 * on_s["night"] / 8


def test_a_failed_plant_takes_hours_not_minutes() -> None:
    params = ColdRoomParams()
    expected_s = reefer.time_to_cross(3.0, 8.0, 20.0, COLD_ROOM_THERMAL.tau_ambient_s)
    assert expected_s > 8 * 3600.0  # the room's mass buys a shift's worth of time
    state = cold_room.initial_state(params, air_c=3.0)
    failed = ColdRoomInputs(20.0, compressor_failed=True)
    before = cold_room.step(state, params, expected_s - 60.0, failed)
    after = cold_room.step(state, params, expected_s + 60.0, failed)
    assert before.air_c < 8.0 < after.air_c
