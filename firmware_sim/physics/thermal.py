"""First-order thermal relaxation, solved exactly over a step.

Every thermal model here is one lumped node exchanging heat with reservoirs at fixed temperatures
(ambient air, the evaporator's supply air, a defrost heater) over the step:

    dT/dt = sum_i (T_i - T) / tau_i

Parallel heat paths add conductances, so the node relaxes toward their conductance-weighted mean with
``1/tau = sum 1/tau_i``. With the reservoirs constant over a step the solution is exact:
``T(t) = T_eq + (T0 - T_eq) * exp(-t / tau)``. Explicit Euler would overshoot (and oscillate) whenever
``dt`` approaches the shortest time constant, such as a door-open path of a few minutes.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

from firmware_sim.physics._checks import require_finite, require_positive


@dataclass(frozen=True, slots=True)
class Coupling:
    """One heat path from the node to a reservoir held at a fixed temperature."""

    temp_c: float  #: reservoir temperature, °C
    tau_s: float  #: time constant of this path alone, s (node heat capacity / path conductance)

    def __post_init__(self) -> None:
        require_finite(temp_c=self.temp_c)
        require_positive(tau_s=self.tau_s)


def equilibrium(couplings: Iterable[Coupling]) -> tuple[float, float]:
    """Return ``(equilibrium_c, tau_s)`` of parallel couplings: where the node settles and how fast.

    ``math.inf`` time constants contribute nothing (a disabled path). At least one path must be finite.
    """
    rate_per_s = 0.0
    weighted = 0.0
    for path in couplings:
        conductance = 1.0 / path.tau_s
        rate_per_s += conductance
        weighted += conductance * path.temp_c
    if rate_per_s <= 0.0:
        raise ValueError("at least one coupling needs a finite time constant")
    return weighted / rate_per_s, 1.0 / rate_per_s


def relax(temp_c: float, equilibrium_c: float, dt_s: float, tau_s: float) -> float:
    """Temperature after ``dt_s`` seconds of exponential approach to ``equilibrium_c``."""
    return equilibrium_c + (temp_c - equilibrium_c) * math.exp(-dt_s / tau_s)


def time_to_reach(start_c: float, target_c: float, equilibrium_c: float, tau_s: float) -> float:
    """Seconds :func:`relax` takes from ``start_c`` to ``target_c``.

    ``tau * ln((eq - start) / (eq - target))``; 0 when already there; ``math.inf`` when the target is
    never reached (it lies behind the start, at or beyond the equilibrium, or the node does not move).
    """
    if start_c == target_c:
        return 0.0
    start_gap = equilibrium_c - start_c
    target_gap = equilibrium_c - target_c
    # The target is reached only if it lies strictly between the start and the equilibrium.
    if start_gap * target_gap <= 0.0 or abs(target_gap) >= abs(start_gap) or math.isinf(tau_s):
        return math.inf
    return tau_s * math.log(start_gap / target_gap)
