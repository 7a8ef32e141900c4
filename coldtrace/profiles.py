"""Product temperature profiles: the limits a shipment's goods must stay within.

Shared by the simulator (ground truth of real excursions), the edge agent (local fallback alerts) and
the cloud (excursion rules), so the three agree on what "out of range" means.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class ProfileName(enum.StrEnum):
    """The profiles coldtrace ships with."""

    VACCINES = "vaccines"
    FROZEN = "frozen"
    FRESH_PRODUCE = "fresh-produce"
    AMBIENT_PHARMA = "ambient-pharma"


@dataclass(frozen=True, slots=True, kw_only=True)
class ProductProfile:
    """Allowed ranges for one kind of product. Temperatures in °C, humidity in %RH, shock in g."""

    name: ProfileName
    temperature_min_c: float
    temperature_max_c: float
    humidity_max_pct: float | None = None
    shock_max_g: float | None = None

    def temperature_in_range(self, temperature_c: float) -> bool:
        """True when ``temperature_c`` lies within the profile's limits (inclusive)."""
        return self.temperature_min_c <= temperature_c <= self.temperature_max_c


PROFILES: dict[ProfileName, ProductProfile] = {
    p.name: p
    for p in (
        # WHO/EU GDP cold chain for vaccines and most biologics: 2-8 °C.
        ProductProfile(
            name=ProfileName.VACCINES, temperature_min_c=2.0, temperature_max_c=8.0, shock_max_g=10.0
        ),
        ProductProfile(name=ProfileName.FROZEN, temperature_min_c=-25.0, temperature_max_c=-15.0),
        ProductProfile(
            name=ProfileName.FRESH_PRODUCE,
            temperature_min_c=0.0,
            temperature_max_c=4.0,
            humidity_max_pct=98.0,
        ),
        ProductProfile(name=ProfileName.AMBIENT_PHARMA, temperature_min_c=15.0, temperature_max_c=25.0),
    )
}
