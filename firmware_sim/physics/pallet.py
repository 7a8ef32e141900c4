"""Passive insulated pallet shipper with phase-change (gel) packs.

One lumped node (product + packs) behind an insulation conductance ``UA``. While the packs are part
melted, heat leaking in (or out) only melts (or freezes) them and the product sits at the phase-change
temperature; once they are fully melted the product drifts toward ambient exponentially with
``tau = C / UA``; once fully frozen and still losing heat, it drifts down the same way.

The model is written in enthalpy ``H`` (J, zero = packs fully frozen at the phase temperature), where it
is piecewise linear and solved exactly, regime by regime:

    H < 0        fully frozen, T = phase + H / C
    0 <= H <= L  melting,      T = phase
    H > L        fully melted, T = phase + (H - L) / C        with dH/dt = UA * (ambient - T)

Default parameters (a vacuum-insulated 2-8 °C pallet shipper; assumptions):

- ``phase_c`` = 5 °C: a +5 °C PCM, the usual choice for 2-8 °C lanes.
- ``latent_heat_j`` = 8 MJ: ~40 kg of PCM at ~200 kJ/kg.
- ``ua_w_per_k`` = 0.9 W/K: ~8 m2 of vacuum panels at an effective ~0.1 W/m2K including edges.
- ``heat_capacity_j_per_k`` = 200 kJ/K: ~100 kg of packaged product (~2 kJ/kgK) plus the melted PCM.

This rates the shipper at ~99 h in 30 °C ambient (:func:`rated_hours`); after that the product leaves
2-8 °C within ~8 h (``tau`` = C / UA ~ 62 h).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from firmware_sim.physics._checks import require_finite, require_finite_positive
from firmware_sim.physics.thermal import relax, time_to_reach


@dataclass(frozen=True, slots=True, kw_only=True)
class PalletParams:
    """Thermal parameters of a passive pallet shipper (defaults: 2-8 °C vacuum-panel shipper)."""

    phase_c: float = 5.0  #: phase-change temperature of the packs, °C
    latent_heat_j: float = 8.0e6  #: latent heat of all packs together, J
    ua_w_per_k: float = 0.9  #: insulation conductance, W/K
    heat_capacity_j_per_k: float = 2.0e5  #: sensible heat capacity of product + packs, J/K

    def __post_init__(self) -> None:
        require_finite(phase_c=self.phase_c)
        require_finite_positive(
            latent_heat_j=self.latent_heat_j,
            ua_w_per_k=self.ua_w_per_k,
            heat_capacity_j_per_k=self.heat_capacity_j_per_k,
        )

    @property
    def tau_s(self) -> float:
        """Time constant of the sensible drift once the packs are spent, s."""
        return self.heat_capacity_j_per_k / self.ua_w_per_k


@dataclass(frozen=True, slots=True)
class PalletState:
    """The shipper at one instant.

    Consistent states have ``latent_left_j`` equal to the full latent heat when the product is below the
    phase temperature and 0 when above it; :func:`step` returns only such states.
    """

    product_c: float  #: product temperature, °C
    latent_left_j: float  #: heat the packs can still absorb before they are fully melted, J


def initial_state(params: PalletParams, *, frozen_fraction: float = 1.0) -> PalletState:
    """Freshly conditioned packs (``frozen_fraction`` of them solid), product at the phase temperature.

    Part-melted packs (e.g. 0.5) also protect against freezing on winter lanes.
    """
    if not 0.0 <= frozen_fraction <= 1.0:
        raise ValueError(f"frozen_fraction must lie in [0, 1], got {frozen_fraction!r}")
    return PalletState(product_c=params.phase_c, latent_left_j=frozen_fraction * params.latent_heat_j)


def rated_hours(params: PalletParams, ambient_c: float) -> float:
    """Hours the packs hold the phase temperature at a constant warmer ambient: L / (UA * dT) / 3600.

    ``math.inf`` when the ambient is not warmer than the phase temperature (the packs do not melt).
    """
    if ambient_c <= params.phase_c:
        return math.inf
    return params.latent_heat_j / (params.ua_w_per_k * (ambient_c - params.phase_c)) / 3600.0


def step(state: PalletState, params: PalletParams, dt_s: float, ambient_c: float) -> PalletState:
    """Advance the shipper by ``dt_s`` seconds at a constant ``ambient_c`` (°C), exactly."""
    if not dt_s >= 0:
        raise ValueError(f"dt_s must be >= 0, got {dt_s!r}")
    enthalpy_j = _enthalpy(state, params)
    target_j = _equilibrium_enthalpy(params, ambient_c, enthalpy_j)
    remaining_s = dt_s
    # Enthalpy moves monotonically toward its equilibrium, so it crosses each regime boundary at most
    # once: at most three passes.
    while remaining_s > 0.0 and enthalpy_j != target_j:
        span_s, enthalpy_j = _advance_within_regime(
            params, ambient_c, enthalpy_j, remaining_s, rising=enthalpy_j < target_j
        )
        remaining_s -= span_s
    return _state(enthalpy_j, params)


def _advance_within_regime(
    params: PalletParams, ambient_c: float, enthalpy_j: float, max_s: float, *, rising: bool
) -> tuple[float, float]:
    """Advance until ``max_s`` or the regime's boundary, whichever first; return (seconds, enthalpy)."""
    latent_j = params.latent_heat_j
    capacity = params.heat_capacity_j_per_k
    frozen = enthalpy_j < 0.0 or (enthalpy_j == 0.0 and not rising)
    melted = enthalpy_j > latent_j or (enthalpy_j == latent_j and rising)
    if frozen or melted:
        # Sensible regime: enthalpy relaxes like a temperature, toward its value at T = ambient.
        offset_j = 0.0 if frozen else latent_j
        eq_j = offset_j + capacity * (ambient_c - params.phase_c)
        boundary_j = 0.0 if frozen else latent_j
        # Only the melting range lies ahead: warming out of frozen, or cooling out of melted.
        toward_melting = rising if frozen else not rising
        to_boundary_s = (
            time_to_reach(enthalpy_j, boundary_j, eq_j, params.tau_s) if toward_melting else math.inf
        )
        if to_boundary_s <= max_s:
            return to_boundary_s, boundary_j
        return max_s, relax(enthalpy_j, eq_j, max_s, params.tau_s)
    # Melting or freezing: the product holds the phase temperature, the leak is constant.
    leak_w = params.ua_w_per_k * (ambient_c - params.phase_c)
    boundary_j = latent_j if rising else 0.0
    to_boundary_s = (boundary_j - enthalpy_j) / leak_w
    if to_boundary_s <= max_s:
        return to_boundary_s, boundary_j
    return max_s, enthalpy_j + leak_w * max_s


def _enthalpy(state: PalletState, params: PalletParams) -> float:
    melted_j = params.latent_heat_j - state.latent_left_j
    return melted_j + params.heat_capacity_j_per_k * (state.product_c - params.phase_c)


def _equilibrium_enthalpy(params: PalletParams, ambient_c: float, enthalpy_j: float) -> float:
    """Enthalpy at which no heat flows; at ambient == phase, every part-melted state is one."""
    if ambient_c < params.phase_c:
        return params.heat_capacity_j_per_k * (ambient_c - params.phase_c)
    if ambient_c > params.phase_c:
        return params.latent_heat_j + params.heat_capacity_j_per_k * (ambient_c - params.phase_c)
    return min(max(enthalpy_j, 0.0), params.latent_heat_j)


def _state(enthalpy_j: float, params: PalletParams) -> PalletState:
    latent_j = params.latent_heat_j
    if enthalpy_j < 0.0:
        return PalletState(params.phase_c + enthalpy_j / params.heat_capacity_j_per_k, latent_j)
    if enthalpy_j > latent_j:
        return PalletState(params.phase_c + (enthalpy_j - latent_j) / params.heat_capacity_j_per_k, 0.0)
    return PalletState(params.phase_c, latent_j - enthalpy_j)
