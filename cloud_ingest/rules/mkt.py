"""Mean kinetic temperature (MKT), the single temperature that ages product like the real history.

    MKT = (ΔH/R) / -ln( Σ exp(-ΔH/(R·T_i)) / n )        T_i in kelvin

with ΔH/R = 10 000 K by default (ΔH = 83.144 kJ/mol, the ICH Q1A / USP <1079> convention). The sum
is additive, so the cloud keeps ``Σ exp(-ΔH/(R·T))`` and ``n`` per subject and hour: late readings
land in their own hour, duplicates are never counted (readings are deduplicated first), and a
rolling window is a sum over buckets.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

KELVIN = 273.15
DEFAULT_ACTIVATION_K = 10_000.0
HOUR_MS = 3_600_000


def boltzmann(temperature_c: float, activation_k: float = DEFAULT_ACTIVATION_K) -> float:
    """``exp(-ΔH/(R·T))`` of one reading: its share of the MKT sum."""
    return math.exp(-activation_k / (temperature_c + KELVIN))


def mkt_from_sums(sum_exp: float, n: int, activation_k: float = DEFAULT_ACTIVATION_K) -> float:
    """MKT in °C from a bucket sum; ValueError for an empty window."""
    if n <= 0 or sum_exp <= 0.0:
        raise ValueError("MKT needs at least one reading")
    return activation_k / -math.log(sum_exp / n) - KELVIN


def mkt_c(temperatures_c: Iterable[float], activation_k: float = DEFAULT_ACTIVATION_K) -> float:
    """MKT in °C of equally spaced readings."""
    values = list(temperatures_c)
    return mkt_from_sums(sum(boltzmann(t, activation_k) for t in values), len(values), activation_k)


def hour_of(t_ms: int) -> int:
    """Start of the UTC hour holding ``t_ms`` (the MKT bucket key)."""
    return t_ms - t_ms % HOUR_MS
