"""A truck along a route: position as a pure function of time.

The route is a list of waypoints driven in order at a constant speed, with dwell stops at some of them.
Distances are great-circle (haversine, mean Earth radius); between waypoints the truck moves along the
great circle (spherical interpolation), so the haversine distance it has covered is exactly
speed x moving time. A stop at waypoint 0 delays the departure; after the last waypoint the truck stays.

Time is seconds from departure (the start of any stop at waypoint 0).
"""

from __future__ import annotations

import bisect
import itertools
import math
from dataclasses import dataclass

from firmware_sim.physics._checks import require_finite_positive, require_non_negative

EARTH_RADIUS_M = 6_371_008.8  #: IUGG mean Earth radius, m


@dataclass(frozen=True, slots=True)
class Waypoint:
    """A point on the route."""

    lat_deg: float  #: latitude, degrees north (-90..90)
    lon_deg: float  #: longitude, degrees east (-180..180)

    def __post_init__(self) -> None:
        if not (-90.0 <= self.lat_deg <= 90.0 and -180.0 <= self.lon_deg <= 180.0):
            raise ValueError(f"waypoint ({self.lat_deg}, {self.lon_deg}) is not a valid lat/lon")


@dataclass(frozen=True, slots=True)
class Stop:
    """A dwell at a waypoint (delivery, pickup, driver rest)."""

    waypoint_index: int  #: index into the route's waypoints
    duration_s: float  #: dwell time, s


@dataclass(frozen=True, slots=True)
class Fix:
    """Where the truck is at one instant."""

    lat_deg: float  #: latitude, degrees
    lon_deg: float  #: longitude, degrees
    speed_kmh: float  #: ground speed, km/h (0 when stationary)
    distance_m: float  #: distance driven since departure, m
    at_waypoint: int | None  #: index of the waypoint the truck stands at, None while driving

    @property
    def moving(self) -> bool:
        """The truck is driving."""
        return self.speed_kmh > 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class Route:
    """Waypoints driven in order at one speed, with dwell stops."""

    waypoints: tuple[Waypoint, ...]  #: at least one; consecutive ones must not be antipodal
    speed_kmh: float  #: driving speed, km/h
    stops: tuple[Stop, ...] = ()  #: at most one per waypoint

    def __post_init__(self) -> None:
        if not self.waypoints:
            raise ValueError("a route needs at least one waypoint")
        require_finite_positive(speed_kmh=self.speed_kmh)
        seen: set[int] = set()
        for stop in self.stops:
            if not 0 <= stop.waypoint_index < len(self.waypoints):
                raise ValueError(f"stop at waypoint {stop.waypoint_index} is outside the route")
            if stop.waypoint_index in seen:
                raise ValueError(f"two stops at waypoint {stop.waypoint_index}")
            require_non_negative(duration_s=stop.duration_s)
            seen.add(stop.waypoint_index)
        for a, b in itertools.pairwise(self.waypoints):
            # Antipodal points have no unique great circle between them.
            if haversine_m(a, b) > math.pi * EARTH_RADIUS_M * (1 - 1e-9):
                raise ValueError(f"waypoints {a} and {b} are antipodal")


@dataclass(frozen=True, slots=True)
class Leg:
    """One piece of the timeline: a dwell at a waypoint or a drive to the next one."""

    start_s: float  #: when the leg begins, s from departure
    duration_s: float  #: its length, s
    origin: int  #: waypoint index it starts from (and, for a dwell, stays at)
    moving: bool  #: a drive to ``origin + 1`` (True) or a dwell at ``origin`` (False)
    distance_before_m: float  #: distance driven before the leg, m


@dataclass(frozen=True, slots=True)
class Timeline:
    """A route planned once into legs, for :func:`position_at`."""

    route: Route  #: what was planned
    legs: tuple[Leg, ...]  #: in time order, back to back from t = 0

    @property
    def duration_s(self) -> float:
        """Time from departure until the truck is parked at the destination for good, s."""
        return self.legs[-1].start_s + self.legs[-1].duration_s if self.legs else 0.0

    @property
    def length_m(self) -> float:
        """Total distance driven, m."""
        return sum(leg.duration_s for leg in self.legs if leg.moving) * self.route.speed_kmh / 3.6


def haversine_m(a: Waypoint, b: Waypoint) -> float:
    """Great-circle distance between two points on a spherical Earth, m."""
    lat1, lat2 = math.radians(a.lat_deg), math.radians(b.lat_deg)
    dlat = lat2 - lat1
    dlon = math.radians(b.lon_deg - a.lon_deg)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_M * math.asin(min(1.0, math.sqrt(h)))


def plan(route: Route) -> Timeline:
    """Turn a route into its timeline of dwells and drives."""
    speed_m_s = route.speed_kmh / 3.6
    dwell_s = {stop.waypoint_index: stop.duration_s for stop in route.stops}
    legs: list[Leg] = []
    clock_s = 0.0
    driven_m = 0.0
    for i, here in enumerate(route.waypoints):
        if dwell_s.get(i, 0.0) > 0.0:
            legs.append(Leg(clock_s, dwell_s[i], i, moving=False, distance_before_m=driven_m))
            clock_s += dwell_s[i]
        if i + 1 < len(route.waypoints):
            hop_m = haversine_m(here, route.waypoints[i + 1])
            if hop_m > 0.0:  # a repeated waypoint adds no drive
                legs.append(Leg(clock_s, hop_m / speed_m_s, i, moving=True, distance_before_m=driven_m))
                clock_s += hop_m / speed_m_s
                driven_m += hop_m
    return Timeline(route, tuple(legs))


def position_at(timeline: Timeline, t_s: float) -> Fix:
    """Where the truck is ``t_s`` seconds after departure (at waypoint 0 before, at the end after)."""
    waypoints = timeline.route.waypoints
    speed_kmh = timeline.route.speed_kmh
    index = bisect.bisect_right(timeline.legs, t_s, key=lambda leg: leg.start_s) - 1
    if index < 0:  # before departure, or a route that never moves
        return Fix(waypoints[0].lat_deg, waypoints[0].lon_deg, 0.0, 0.0, 0)
    leg = timeline.legs[index]
    elapsed_s = t_s - leg.start_s
    if elapsed_s >= leg.duration_s:  # past the last leg: parked at the destination
        last = waypoints[-1]
        return Fix(last.lat_deg, last.lon_deg, 0.0, timeline.length_m, len(waypoints) - 1)
    origin = waypoints[leg.origin]
    if not leg.moving:
        return Fix(origin.lat_deg, origin.lon_deg, 0.0, leg.distance_before_m, leg.origin)
    lat, lon = _slerp(origin, waypoints[leg.origin + 1], elapsed_s / leg.duration_s)
    return Fix(lat, lon, speed_kmh, leg.distance_before_m + elapsed_s * speed_kmh / 3.6, None)


def _slerp(a: Waypoint, b: Waypoint, fraction: float) -> tuple[float, float]:
    """The point ``fraction`` of the way from ``a`` to ``b`` along the great circle, (lat, lon) degrees."""
    va, vb = _unit_vector(a), _unit_vector(b)
    angle = haversine_m(a, b) / EARTH_RADIUS_M
    wa = math.sin((1 - fraction) * angle) / math.sin(angle)
    wb = math.sin(fraction * angle) / math.sin(angle)
    x, y, z = (wa * p + wb * q for p, q in zip(va, vb, strict=True))
    return math.degrees(math.atan2(z, math.hypot(x, y))), math.degrees(math.atan2(y, x))


def _unit_vector(p: Waypoint) -> tuple[float, float, float]:
    lat, lon = math.radians(p.lat_deg), math.radians(p.lon_deg)
    return math.cos(lat) * math.cos(lon), math.cos(lat) * math.sin(lon), math.sin(lat)
