"""What the demo shows while it runs: each step as it completes, then live bars (fleet and cloud)."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rich.console import Console
from rich.progress import BarColumn, Progress, TaskID, TextColumn, TimeElapsedColumn


def _clock(sim_s: float) -> str:
    minutes = int(sim_s // 60)
    return f"{minutes // 60}:{minutes % 60:02d}"


class Display:
    """Step lines and two bars: simulated time (fleet) and readings stored in the cloud."""

    def __init__(self, console: Console, *, sim_total_s: float) -> None:
        self.console = console
        self.sim_total_s = sim_total_s
        self._progress = Progress(
            TextColumn("{task.description:<6}"),
            BarColumn(bar_width=24),
            TextColumn("{task.fields[count]:>17}"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[note]}"),
            console=console,
        )
        self._fleet: TaskID | None = None
        self._cloud: TaskID | None = None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._progress.stop()

    def step(self, text: str) -> None:
        """One finished start-up step."""
        self.console.print(f"[green]✓[/] {text}")

    def start_bars(self, *, expected_readings: int) -> None:
        """Show the live bars (from the moment the fleet starts)."""
        self._fleet = self._progress.add_task(
            "fleet", total=self.sim_total_s, count=f"0:00 / {_clock(self.sim_total_s)}", note=""
        )
        self._cloud = self._progress.add_task(
            "cloud", total=expected_readings, count=f"0 / ~{expected_readings:,}", note=""
        )
        self._progress.start()

    def fleet(self, sim_s: float, *, published: int, note: str) -> None:
        """The fleet's position in simulated time."""
        if self._fleet is not None:
            self._progress.update(
                self._fleet, completed=sim_s, count=f"{_clock(sim_s)} / {_clock(self.sim_total_s)}",
                note=f"{published:,} msgs · {note}",
            )  # fmt: skip

    def cloud(self, stored: int, *, expected: int, exact: bool, note: str) -> None:
        """Readings the cloud has stored so far, of ``expected`` (an estimate until the fleet is done)."""
        if self._cloud is not None:
            target = f"{expected:,}" if exact else f"~{expected:,}"
            self._progress.update(
                self._cloud, completed=stored, total=max(expected, stored), count=f"{stored:,} / {target}",
                note=note,
            )  # fmt: skip

    def stop_bars(self) -> None:
        """Freeze the bars before the summary is printed."""
        self._progress.refresh()
        self._progress.stop()
