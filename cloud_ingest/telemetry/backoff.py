"""Capped, jittered exponential backoff for the spool drain's retries."""

from __future__ import annotations

import random


class Backoff:
    """Delays that double from ``initial_s`` up to ``max_s``, each shortened by up to ``jitter`` of itself.

    Jitter spreads the retries of many workers that lost the same server at the same moment, so they
    do not return in lockstep. Call :meth:`reset` after a success: the next failure starts short again.
    """

    def __init__(
        self,
        *,
        initial_s: float = 0.5,
        max_s: float = 30.0,
        jitter: float = 0.5,
        multiplier: float = 2.0,
        rng: random.Random | None = None,
    ) -> None:
        """Validate the parameters; ``rng`` makes the jitter reproducible in tests."""
        if not 0 < initial_s <= max_s:
            raise ValueError(f"need 0 < initial_s <= max_s, got initial_s={initial_s}, max_s={max_s}")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"jitter must lie in [0, 1], got {jitter}")
        if multiplier < 1.0:
            raise ValueError(f"multiplier must be at least 1, got {multiplier}")
        self.initial_s = initial_s
        self.max_s = max_s
        self.jitter = jitter
        self.multiplier = multiplier
        self._rng = rng if rng is not None else random.Random()  # noqa: S311 - jitter, not security
        self._base = initial_s

    def next_delay(self) -> float:
        """The delay before the next attempt, in seconds; the one after it will be longer (up to max_s)."""
        base = self._base
        self._base = min(self.max_s, base * self.multiplier)
        return base * (1.0 - self.jitter * self._rng.random())

    def reset(self) -> None:
        """Start again from ``initial_s`` (after a successful attempt)."""
        self._base = self.initial_s
