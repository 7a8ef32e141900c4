"""Backoff: doubling, capped, jittered downwards only, and reset after a success."""

from __future__ import annotations

import random

import pytest

from cloud_ingest.telemetry import Backoff


def test_delays_double_up_to_the_cap_without_jitter() -> None:
    backoff = Backoff(initial_s=0.5, max_s=5.0, jitter=0.0)

    delays = [backoff.next_delay() for _ in range(6)]

    assert delays == [0.5, 1.0, 2.0, 4.0, 5.0, 5.0]


def test_reset_starts_short_again() -> None:
    backoff = Backoff(initial_s=1.0, max_s=60.0, jitter=0.0)
    for _ in range(4):
        backoff.next_delay()

    backoff.reset()

    assert backoff.next_delay() == 1.0


def test_jitter_only_shortens_and_stays_within_its_fraction() -> None:
    backoff = Backoff(initial_s=1.0, max_s=8.0, jitter=0.25, rng=random.Random(7))  # noqa: S311 - reproducible jitter
    bases = [1.0, 2.0, 4.0, 8.0] + [8.0] * 200

    delays = [backoff.next_delay() for _ in bases]

    for delay, base in zip(delays, bases, strict=True):
        assert 0.75 * base <= delay <= base
    assert len({round(d, 9) for d in delays[4:]}) > 100, "capped delays must still be spread"


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_s": 0.0},
        {"initial_s": 10.0, "max_s": 1.0},
        {"jitter": -0.1},
        {"jitter": 1.5},
        {"multiplier": 0.5},
    ],
)
def test_nonsense_parameters_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match=r"must|need"):
        Backoff(**kwargs)  # type: ignore[arg-type]
