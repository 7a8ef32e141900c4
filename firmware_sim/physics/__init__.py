"""Device physics of the fleet simulator: pure, exactly-stepped models of what a cold-chain logger senses.

Each model is a module with frozen parameter and state dataclasses and a pure
``step(state, params, dt_s, inputs) -> state``; randomness comes only from a ``numpy.random.Generator``
the caller passes. The modules are re-exported (``physics.reefer.step``) since their ``step`` and
``initial_state`` share names; the types and analytic helpers are re-exported by name.
"""

from __future__ import annotations

from firmware_sim.physics import ambient, battery, cold_room, gps, humidity, pallet, reefer, shock, thermal
from firmware_sim.physics.ambient import AmbientParams, AmbientState, ambient_c, diurnal_c
from firmware_sim.physics.battery import BatteryInputs, BatteryParams, BatteryState, volts
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
from firmware_sim.physics.gps import Fix, Route, Stop, Timeline, Waypoint, haversine_m, plan, position_at
from firmware_sim.physics.humidity import (
    HumidityInputs,
    HumidityParams,
    HumidityState,
    relative_humidity_pct,
    saturation_vapour_hpa,
)
from firmware_sim.physics.pallet import PalletParams, PalletState, rated_hours
from firmware_sim.physics.reefer import (
    FROZEN_REEFER,
    ReeferInputs,
    ReeferParams,
    ReeferState,
    pull_down_limit_c,
    time_to_cross,
)
from firmware_sim.physics.shock import GRange, ShockEvent, ShockInputs, ShockKind, ShockParams, ShockSample

__all__ = [
    "COLD_ROOM_THERMAL",
    "FROZEN_REEFER",
    "AmbientParams",
    "AmbientState",
    "BatteryInputs",
    "BatteryParams",
    "BatteryState",
    "ColdRoomInputs",
    "ColdRoomParams",
    "DoorEvent",
    "Fix",
    "GRange",
    "HumidityInputs",
    "HumidityParams",
    "HumidityState",
    "PalletParams",
    "PalletState",
    "ReeferInputs",
    "ReeferParams",
    "ReeferState",
    "Route",
    "ShiftTraffic",
    "ShockEvent",
    "ShockInputs",
    "ShockKind",
    "ShockParams",
    "ShockSample",
    "Stop",
    "Timeline",
    "Waypoint",
    "ambient",
    "ambient_c",
    "battery",
    "cold_room",
    "diurnal_c",
    "door_open_seconds",
    "door_rate_per_h",
    "draw_door_events",
    "gps",
    "haversine_m",
    "humidity",
    "pallet",
    "plan",
    "position_at",
    "pull_down_limit_c",
    "rated_hours",
    "reefer",
    "relative_humidity_pct",
    "saturation_vapour_hpa",
    "shock",
    "thermal",
    "time_to_cross",
    "volts",
]
