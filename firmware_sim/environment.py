"""What a device senses: its enclosure's physics, composed per device kind.

Each device owns one :class:`Environment`. ``advance`` steps every physical model to the next sample
time and returns the true values a perfect sensor would read; faults are applied afterwards, by the
device. All randomness comes from the device's own Generator.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

from coldtrace.profiles import ProfileName
from firmware_sim.physics import (
    COLD_ROOM_THERMAL,
    FROZEN_REEFER,
    AmbientParams,
    AmbientState,
    BatteryInputs,
    BatteryParams,
    BatteryState,
    ColdRoomInputs,
    ColdRoomParams,
    DoorEvent,
    HumidityInputs,
    HumidityParams,
    PalletParams,
    ReeferInputs,
    ReeferParams,
    Route,
    ShockInputs,
    ShockParams,
    Stop,
    Timeline,
    Waypoint,
    ambient,
    battery,
    cold_room,
    door_open_seconds,
    draw_door_events,
    humidity,
    pallet,
    plan,
    position_at,
    reefer,
    shock,
)
from firmware_sim.physics.pallet import PalletState
from firmware_sim.physics.reefer import ReeferState
from firmware_sim.scenario import DeviceKind

#: Outside relative humidity the boxes exchange air with, %.
AMBIENT_RH_PCT = 60.0
#: Reefer thermostat settings per product profile (chilled default for vaccines).
REEFER_BY_PROFILE: dict[ProfileName, ReeferParams] = {
    ProfileName.VACCINES: ReeferParams(),
    ProfileName.FROZEN: FROZEN_REEFER,
    ProfileName.FRESH_PRODUCE: ReeferParams(setpoint_c=2.0, hysteresis_k=1.5, supply_c=-4.0),
    ProfileName.AMBIENT_PHARMA: ReeferParams(setpoint_c=20.0, supply_c=12.0, defrost_heater_c=30.0),
}
COLD_ROOM_BY_PROFILE: dict[ProfileName, ReeferParams] = {
    ProfileName.VACCINES: replace(COLD_ROOM_THERMAL, setpoint_c=5.0, supply_c=-2.0),
    ProfileName.FROZEN: replace(COLD_ROOM_THERMAL, setpoint_c=-20.0, supply_c=-30.0, defrost_heater_c=5.0),
    ProfileName.FRESH_PRODUCE: COLD_ROOM_THERMAL,
    ProfileName.AMBIENT_PHARMA: replace(
        COLD_ROOM_THERMAL, setpoint_c=20.0, supply_c=12.0, defrost_heater_c=30.0
    ),
}
#: Truck routes start around Hamburg and run 3-5 legs of 40-120 km at 70-85 km/h, 20-40 min stops.
ROUTE_ORIGIN = (53.55, 9.99)


@dataclass(slots=True)
class Truth:
    """The true physical state at a sample time."""

    temperature_c: float
    humidity_pct: float
    shock_g: float
    battery_v: float
    lat: float | None
    lon: float | None


@dataclass(slots=True)
class Environment:
    """The physics around one device."""

    kind: DeviceKind
    profile: ProfileName
    rng: np.random.Generator
    ambient_params: AmbientParams
    truck: bool = False
    ambient_state: AmbientState = field(default_factory=AmbientState)
    thermal: ReeferState | PalletState | None = None
    humidity_state: humidity.HumidityState | None = None
    battery_state: BatteryState = field(default_factory=BatteryState)
    route: Timeline | None = None
    doors: list[DoorEvent] = field(default_factory=list)
    """Door openings, scripted and (for cold rooms) drawn from the shift traffic."""
    compressor_failed_at_s: float = math.inf
    t_s: float = 0.0
    # Parameter objects validate themselves on construction: build them once, not per step.
    battery_params: BatteryParams = field(default_factory=BatteryParams)
    humidity_params: HumidityParams = field(default_factory=HumidityParams)
    shock_params: ShockParams = field(default_factory=ShockParams)
    pallet_params: PalletParams = field(default_factory=PalletParams)
    reefer_params: ReeferParams = field(default_factory=ReeferParams)
    cold_room_params: ColdRoomParams = field(default_factory=ColdRoomParams)

    def __post_init__(self) -> None:
        self.ambient_state = ambient.initial_state(self.rng, self.ambient_params)
        self.reefer_params = REEFER_BY_PROFILE[self.profile]
        self.cold_room_params = ColdRoomParams(thermal=COLD_ROOM_BY_PROFILE[self.profile])
        if self.kind is DeviceKind.REEFER:
            self.thermal = reefer.initial_state(self.reefer_params)
        elif self.kind is DeviceKind.COLD_ROOM:
            self.thermal = cold_room.initial_state(self.cold_room_params)
        else:
            self.thermal = pallet.initial_state(self.pallet_params)
        air_c = self._air_c()
        self.humidity_state = humidity.state_at(air_c, float(self.rng.uniform(70.0, 90.0)))
        if self.truck:
            self.route = plan(self._draw_route())

    def _draw_route(self) -> Route:
        lat, lon = ROUTE_ORIGIN
        points = [Waypoint(lat, lon)]
        for _ in range(int(self.rng.integers(3, 6))):
            heading = float(self.rng.uniform(0.0, 2 * math.pi))
            hop_km = float(self.rng.uniform(40.0, 120.0))
            lat += hop_km / 111.0 * math.cos(heading)
            lon += hop_km / (111.0 * math.cos(math.radians(lat))) * math.sin(heading)
            points.append(Waypoint(lat, lon))
        stops = tuple(Stop(i, float(self.rng.uniform(1200.0, 2400.0))) for i in range(1, len(points) - 1))
        return Route(waypoints=tuple(points), speed_kmh=float(self.rng.uniform(70.0, 85.0)), stops=stops)

    def add_traffic(self, duration_s: float) -> None:
        """Draw the cold room's shift door traffic for the run (other kinds have none)."""
        if self.kind is DeviceKind.COLD_ROOM:
            traffic = self.cold_room_params.traffic
            self.doors.extend(draw_door_events(self.rng, traffic, start_s=0.0, duration_s=duration_s))
            self.doors.sort(key=lambda d: d.start_s)

    def _air_c(self) -> float:
        if isinstance(self.thermal, ReeferState):
            return self.thermal.air_c
        if isinstance(self.thermal, PalletState):
            return self.thermal.product_c
        raise TypeError("environment has no thermal state")

    def advance(self, t_s: float, *, transmitted: bool) -> Truth:
        """Step every model from the previous sample time to ``t_s`` and read the true values."""
        dt_s = max(0.0, t_s - self.t_s)
        t0_s, self.t_s = self.t_s, t_s
        self.ambient_state = ambient.step(self.ambient_state, self.ambient_params, dt_s, self.rng)
        outside_c = ambient.ambient_c(self.ambient_params, self.ambient_state, t_s)
        failed = t_s >= self.compressor_failed_at_s
        open_s = door_open_seconds(self.doors, t0_s, t_s) if self.doors else 0.0
        if self.kind is DeviceKind.REEFER and isinstance(self.thermal, ReeferState):
            params = self.reefer_params
            state = reefer.step(self.thermal, params, open_s, ReeferInputs(outside_c, True, failed))
            self.thermal = reefer.step(state, params, dt_s - open_s, ReeferInputs(outside_c, False, failed))
        elif self.kind is DeviceKind.COLD_ROOM and isinstance(self.thermal, ReeferState):
            inputs = ColdRoomInputs(outside_c, door_open_s=open_s, compressor_failed=failed)
            self.thermal = cold_room.step(self.thermal, self.cold_room_params, dt_s, inputs)
        elif isinstance(self.thermal, PalletState):
            self.thermal = pallet.step(self.thermal, self.pallet_params, dt_s, outside_c)
        air_c = self._air_c()
        if self.humidity_state is None:
            raise TypeError("environment has no humidity state")
        self.humidity_state = humidity.step(
            self.humidity_state, self.humidity_params, dt_s,
            HumidityInputs(
                air_c=air_c, ambient_c=outside_c, ambient_rh_pct=AMBIENT_RH_PCT, door_open=open_s > dt_s / 2
            ),
        )  # fmt: skip
        fix = position_at(self.route, t_s) if self.route is not None else None
        moving = fix is not None and fix.moving
        handling = open_s > 0.0 or (fix is not None and fix.at_waypoint is not None)
        peak = shock.sample(self.rng, self.shock_params, dt_s, ShockInputs(moving=moving, handling=handling))
        self.battery_state = battery.step(
            self.battery_state, self.battery_params, dt_s,
            BatteryInputs(temperature_c=air_c, samples=1, transmissions=1 if transmitted else 0),
        )  # fmt: skip
        return Truth(
            temperature_c=air_c,
            humidity_pct=self.humidity_state.rh_pct,
            shock_g=peak.peak_g,
            battery_v=battery.volts(self.battery_state, self.battery_params, air_c),
            lat=None if fix is None else fix.lat_deg,
            lon=None if fix is None else fix.lon_deg,
        )
