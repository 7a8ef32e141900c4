"""The simulated clock: driven by the fleet's progress, read by the gateways."""

from __future__ import annotations

import asyncio

from coldtrace.demo.clock import SimClock


def test_waiters_wake_when_the_fleet_reaches_their_moment() -> None:
    async def scenario() -> None:
        clock = SimClock(start_ms=1_000_000, speed=100.0)
        first, second = clock.reached(60.0), clock.reached(120.0)
        clock.advance(59.0)
        assert not first.done()
        clock.advance(90.0)
        assert first.done()
        assert not second.done()
        clock.advance(130.0)
        assert second.done()
        assert clock.reached(10.0).done()  # a moment already past

    asyncio.run(scenario())


def test_now_follows_the_fleet_never_goes_back_and_runs_free_after_it() -> None:
    clock = SimClock(start_ms=1_000_000, speed=100.0)
    assert clock.now_ms() == 1_000_000  # paused until the fleet starts
    clock.advance(60.0)
    first = clock.now_ms()
    assert 1_060_000 <= first <= 1_060_000 + 100_000  # at most one second of extrapolation
    clock.advance(30.0)  # a late report cannot move it back
    assert clock.now_ms() >= first
    clock.run_free()
    assert clock.now_ms() >= first
