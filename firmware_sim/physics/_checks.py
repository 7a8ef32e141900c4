"""Parameter validation shared by the physics models: refuse values that would make a model meaningless."""

from __future__ import annotations

import math


def require_positive(**values: float) -> None:
    """Raise ``ValueError`` unless every value is > 0 (``math.inf`` allowed, NaN refused)."""
    for name, value in values.items():
        if not value > 0:
            raise ValueError(f"{name} must be > 0, got {value!r}")


def require_finite_positive(**values: float) -> None:
    """Raise ``ValueError`` unless every value is finite and > 0."""
    for name, value in values.items():
        if not (value > 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be finite and > 0, got {value!r}")


def require_non_negative(**values: float) -> None:
    """Raise ``ValueError`` unless every value is finite and >= 0."""
    for name, value in values.items():
        if not (value >= 0 and math.isfinite(value)):
            raise ValueError(f"{name} must be finite and >= 0, got {value!r}")


def require_finite(**values: float) -> None:
    """Raise ``ValueError`` unless every value is finite (temperatures, coordinates)."""
    for name, value in values.items():
        if not math.isfinite(value):
            raise ValueError(f"{name} must be finite, got {value!r}")
