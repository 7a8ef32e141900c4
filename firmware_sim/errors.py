"""Errors of the fleet simulator, each saying what to fix."""

from __future__ import annotations

from pathlib import Path


class SimulatorError(Exception):
    """Base of the simulator's errors."""


class ScenarioError(SimulatorError):
    """A scenario file that cannot be used: names the file, the key and the reason."""

    def __init__(self, path: Path | str, key: str, reason: str) -> None:
        self.path = str(path)
        self.key = key
        self.reason = reason
        super().__init__(f"{self.path}: {key or '<file>'}: {reason}")


class UnknownScenario(SimulatorError):
    """No built-in scenario of that name."""

    def __init__(self, name: str, known: list[str]) -> None:
        self.name = name
        super().__init__(
            f"no scenario named {name!r}; known: {', '.join(known)} (or pass a path to a .toml file)"
        )
