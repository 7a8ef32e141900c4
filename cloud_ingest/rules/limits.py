"""The excursion rules a product profile implies: which quantity, which side, how long.

A rule's thresholds come from the shared :mod:`coldtrace.profiles` (so edge, cloud and simulator agree
on "out of range"); the delays and budgets are operator settings (:class:`RuleSettings`).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from cloud_ingest.settings import RuleSettings
from coldtrace.profiles import PROFILES, ProfileName


class RuleId(enum.StrEnum):
    """Stable rule names; they appear in alert dedupe keys and the API."""

    TEMP_HIGH = "temp_high"
    TEMP_LOW = "temp_low"
    HUMIDITY_HIGH = "humidity_high"
    SHOCK = "shock"
    BUDGET = "budget"
    MKT = "mkt"


class Quantity(enum.StrEnum):
    """The reading field a threshold rule watches."""

    TEMPERATURE = "temperature_c"
    HUMIDITY = "humidity_pct"
    SHOCK = "shock_g"


@dataclass(frozen=True, slots=True)
class Threshold:
    """One side of one quantity's allowed range, with how long a breach must last to count."""

    rule_id: RuleId
    quantity: Quantity
    limit: float
    upper: bool
    """True: breach above ``limit``; False: breach below it."""
    delay_ms: int
    critical_margin: float
    """Beyond the limit by this much, an excursion is critical."""
    places_hold: bool = True
    """Temperature excursions hold product at once; a drop or damp calls for inspection first, so shock
    and humidity breaches alert without placing a hold (quality may place one by hand)."""

    def excess(self, value: float | None) -> float | None:
        """How far ``value`` lies beyond the limit, or None when it does not breach (or is missing)."""
        if value is None:
            return None
        beyond = value - self.limit if self.upper else self.limit - value
        return beyond if beyond > 0 else None


#: Threshold rules in evaluation order.
THRESHOLD_RULES = (RuleId.TEMP_HIGH, RuleId.TEMP_LOW, RuleId.HUMIDITY_HIGH, RuleId.SHOCK)


def thresholds_for(profile: ProfileName, settings: RuleSettings) -> dict[RuleId, Threshold]:
    """The threshold rules of ``profile``; shock counts at once (a drop is an instant)."""
    p = PROFILES[profile]
    delay_ms = round(settings.delay_s[profile] * 1000)
    margin = settings.critical_margin_c
    temperature = Quantity.TEMPERATURE
    rules = {
        RuleId.TEMP_HIGH: Threshold(
            RuleId.TEMP_HIGH, temperature, p.temperature_max_c, True, delay_ms, margin
        ),
        RuleId.TEMP_LOW: Threshold(
            RuleId.TEMP_LOW, temperature, p.temperature_min_c, False, delay_ms, margin
        ),
    }
    if p.humidity_max_pct is not None:
        rules[RuleId.HUMIDITY_HIGH] = Threshold(
            RuleId.HUMIDITY_HIGH,
            Quantity.HUMIDITY,
            p.humidity_max_pct,
            True,
            delay_ms,
            10.0,
            places_hold=False,
        )
    if p.shock_max_g is not None:
        rules[RuleId.SHOCK] = Threshold(
            RuleId.SHOCK, Quantity.SHOCK, p.shock_max_g, True, 0, p.shock_max_g, places_hold=False
        )
    return rules
