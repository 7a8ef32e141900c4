"""Long-running tasks of the demo in one ``asyncio.TaskGroup``, stopped in reverse order on exit."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

logger = logging.getLogger(__name__)

#: How long a task asked to stop politely (``stop=``) may take before it is cancelled.
STOP_GRACE_S = 10.0


@dataclass(slots=True)
class _Running:
    task: asyncio.Task[Any]
    stop: Callable[[], None] | None
    after: Callable[[], Awaitable[None]] | None


class Background:
    """``async with Background() as bg: bg.start(coro, "name")``; a task that fails cancels the block.

    On exit the tasks stop last-started first: each is asked to stop (its ``stop`` callback) or
    cancelled, awaited, then its ``after`` clean-up runs; so an agent stops before the broker it talks
    to, and a worker's MQTT session is closed only once its consumer no longer reconnects.
    """

    def __init__(self) -> None:
        self._group = asyncio.TaskGroup()
        self._running: list[_Running] = []

    async def __aenter__(self) -> Self:
        await self._group.__aenter__()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            for running in reversed(self._running):
                await self._stop(running)
        finally:
            await self._group.__aexit__(exc_type, exc, tb)

    def start(
        self, coro: Coroutine[Any, Any, Any], name: str, *, stop: Callable[[], None] | None = None,
        after: Callable[[], Awaitable[None]] | None = None,
    ) -> asyncio.Task[Any]:  # fmt: skip
        """Run ``coro`` as a named task of the group."""
        task = self._group.create_task(coro, name=name)
        self._running.append(_Running(task, stop, after))
        return task

    async def _stop(self, running: _Running) -> None:
        task = running.task
        if not task.done():
            if running.stop is not None:
                running.stop()
                done, _ = await asyncio.wait([task], timeout=STOP_GRACE_S)
                if not done:
                    logger.warning(
                        "%s did not stop within %g s; cancelling it", task.get_name(), STOP_GRACE_S
                    )
            task.cancel()
            await asyncio.wait([task])
        if running.after is not None:
            await running.after()
