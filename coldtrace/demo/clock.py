"""Accelerated time: the simulated clock the fleet runs on, which the gateways read as their wall clock.

The fleet publishes each reading at its simulated time divided by the speed-up; the clock follows the
fleet's progress (:meth:`SimClock.advance`) and interpolates between reports, so a gateway judges
device clocks, forms batches and tells live readings from backlog in simulated time, as it would in
the field. Scripted incidents wait for a simulated instant with :meth:`SimClock.reached`.
"""

from __future__ import annotations

import asyncio
import time

#: Between two progress reports the clock runs on at the set speed for at most this long (wall seconds),
#: so a fleet that falls behind its schedule is not overtaken by its gateways' clocks.
MAX_EXTRAPOLATION_S = 1.0


class SimClock:
    """Simulated UTC milliseconds from ``start_ms``, at ``speed`` simulated seconds per second."""

    def __init__(self, *, start_ms: int, speed: float) -> None:
        self.start_ms = start_ms
        self.speed = speed
        self._sim_s = 0.0
        self._at: float | None = None
        self._free = False
        self._last_ms = start_ms
        self._waiters: list[tuple[float, asyncio.Future[None]]] = []

    @property
    def sim_s(self) -> float:
        """Simulated seconds since the start, as last reported."""
        return self._sim_s

    def advance(self, sim_s: float) -> None:
        """The fleet has reached ``sim_s``: move the clock and wake whoever waits for that moment."""
        self._sim_s = max(self._sim_s, sim_s)
        self._at = time.monotonic()
        still: list[tuple[float, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if target <= self._sim_s:
                if not future.done():
                    future.set_result(None)
            else:
                still.append((target, future))
        self._waiters = still

    def run_free(self) -> None:
        """The fleet is done: from now on the clock simply runs at the set speed."""
        self.advance(self._sim_s)
        self._free = True

    def now_ms(self) -> int:
        """Simulated now, never earlier than a value returned before."""
        sim_s = self._sim_s
        if self._at is not None:
            ahead = time.monotonic() - self._at
            sim_s += (ahead if self._free else min(ahead, MAX_EXTRAPOLATION_S)) * self.speed
        self._last_ms = max(self._last_ms, self.start_ms + round(sim_s * 1000))
        return self._last_ms

    def reached(self, sim_s: float) -> asyncio.Future[None]:
        """A future that completes once the fleet has reached simulated second ``sim_s``."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if self._sim_s >= sim_s:
            future.set_result(None)
        else:
            self._waiters.append((sim_s, future))
        return future
