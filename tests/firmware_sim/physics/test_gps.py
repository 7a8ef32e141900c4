"""GPS: the truck starts at the first waypoint, ends at the last, dwells at stops, covers speed x time."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from firmware_sim.physics.gps import Route, Stop, Waypoint, haversine_m, plan, position_at

ROTTERDAM = Waypoint(51.9244, 4.4777)
UTRECHT = Waypoint(52.0907, 5.1214)
ARNHEM = Waypoint(51.9851, 5.8987)
ROUTE = Route(
    waypoints=(ROTTERDAM, UTRECHT, ARNHEM),
    speed_kmh=72.0,  # 20 m/s
    stops=(Stop(0, 600.0), Stop(1, 1800.0)),
)
TIMELINE = plan(ROUTE)
LEG1_S = haversine_m(ROTTERDAM, UTRECHT) / 20.0
LEG2_S = haversine_m(UTRECHT, ARNHEM) / 20.0


def test_haversine_known_distance() -> None:
    # Paris - London: 343.5 km great-circle on the mean sphere.
    assert haversine_m(Waypoint(48.8566, 2.3522), Waypoint(51.5074, -0.1278)) == pytest.approx(
        343_500, rel=0.005
    )
    assert haversine_m(UTRECHT, UTRECHT) == 0.0


def test_at_the_first_waypoint_at_t0_and_before() -> None:
    for t_s in (-100.0, 0.0, 599.0):
        fix = position_at(TIMELINE, t_s)
        assert (fix.lat_deg, fix.lon_deg) == (ROTTERDAM.lat_deg, ROTTERDAM.lon_deg)
        assert not fix.moving
        assert fix.at_waypoint == 0


def test_at_the_last_waypoint_at_the_end_and_after() -> None:
    assert TIMELINE.duration_s == pytest.approx(600.0 + LEG1_S + 1800.0 + LEG2_S)
    for t_s in (TIMELINE.duration_s, TIMELINE.duration_s + 1e6):
        fix = position_at(TIMELINE, t_s)
        assert (fix.lat_deg, fix.lon_deg) == (ARNHEM.lat_deg, ARNHEM.lon_deg)
        assert fix.speed_kmh == 0.0
        assert fix.at_waypoint == 2
        assert fix.distance_m == pytest.approx(TIMELINE.length_m)


def test_stationary_during_a_stop() -> None:
    stop_start_s = 600.0 + LEG1_S
    fixes = [position_at(TIMELINE, stop_start_s + dt) for dt in (0.0, 900.0, 1799.0)]
    assert all((f.lat_deg, f.lon_deg) == (UTRECHT.lat_deg, UTRECHT.lon_deg) for f in fixes)
    assert all(not f.moving and f.at_waypoint == 1 for f in fixes)
    assert len({f.distance_m for f in fixes}) == 1
    assert position_at(TIMELINE, stop_start_s + 1801.0).moving


def test_distance_travelled_is_speed_times_moving_time() -> None:
    for t_s in (600.0 + 0.3 * LEG1_S, 600.0 + LEG1_S + 1800.0 + 0.7 * LEG2_S):
        fix = position_at(TIMELINE, t_s)
        moving_s = t_s - 600.0 - (1800.0 if t_s > 600.0 + LEG1_S else 0.0)
        assert fix.moving
        assert fix.speed_kmh == 72.0
        assert fix.distance_m == pytest.approx(20.0 * moving_s)
    # ...and the reported position really is that far along the great circle.
    mid = position_at(TIMELINE, 600.0 + 0.3 * LEG1_S)
    covered_m = haversine_m(ROTTERDAM, Waypoint(mid.lat_deg, mid.lon_deg))
    assert covered_m == pytest.approx(mid.distance_m, rel=1e-9)
    assert haversine_m(Waypoint(mid.lat_deg, mid.lon_deg), UTRECHT) == pytest.approx(
        0.7 * 20.0 * LEG1_S, rel=1e-9
    )


def test_single_waypoint_route_never_moves() -> None:
    timeline = plan(Route(waypoints=(UTRECHT,), speed_kmh=50.0))
    assert timeline.duration_s == 0.0
    assert position_at(timeline, 1e5).at_waypoint == 0


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"waypoints": ()}, "at least one"),
        ({"waypoints": (UTRECHT,), "speed_kmh": 0.0}, "speed_kmh"),
        ({"waypoints": (UTRECHT,), "stops": (Stop(1, 10.0),)}, "outside"),
        ({"waypoints": (UTRECHT, ARNHEM), "stops": (Stop(1, 10.0), Stop(1, 5.0))}, "two stops"),
        ({"waypoints": (Waypoint(0.0, 0.0), Waypoint(0.0, 180.0))}, "antipodal"),
    ],
)
def test_bad_routes_are_refused(kwargs: dict[str, object], match: str) -> None:
    args: dict[str, object] = {"speed_kmh": 50.0, **kwargs}
    with pytest.raises(ValueError, match=match):
        Route(**args)  # type: ignore[arg-type]


def test_invalid_coordinates_are_refused() -> None:
    with pytest.raises(ValueError, match="lat/lon"):
        Waypoint(91.0, 0.0)


_points = st.builds(Waypoint, lat_deg=st.floats(-60.0, 60.0), lon_deg=st.floats(-179.0, 179.0))


@given(
    points=st.lists(_points, min_size=2, max_size=6),
    speed=st.floats(5.0, 120.0),
    fractions=st.lists(st.floats(0.0, 1.0), min_size=2, max_size=10),
)
def test_distance_grows_with_time_at_the_driving_speed(
    points: list[Waypoint], speed: float, fractions: list[float]
) -> None:
    timeline = plan(Route(waypoints=tuple(points), speed_kmh=speed))
    times = sorted(f * timeline.duration_s for f in fractions)
    fixes = [position_at(timeline, t) for t in times]
    for t, fix in zip(times, fixes, strict=True):
        assert fix.distance_m == pytest.approx(min(t, timeline.duration_s) * speed / 3.6, rel=1e-9, abs=1e-3)
        assert -90.0 <= fix.lat_deg <= 90.0
        assert -180.0 <= fix.lon_deg <= 180.0
