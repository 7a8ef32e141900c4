"""``coldtrace agent run``: the edge agent as a foreground service (systemd runs it like this)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from coldtrace.exitcodes import ExitCode
from coldtrace.settings_cli import load_or_exit
from edge_agent.agent import AgentError, EdgeAgent
from edge_agent.outbox import OutboxError
from edge_agent.settings import AgentSettings

app = typer.Typer(
    no_args_is_help=True, help="Edge agent: ingest, normalise, bind, score, buffer, sign, forward."
)
_err = Console(stderr=True)


def load_settings(config: Path | None) -> AgentSettings:
    """Settings from ``config`` and the environment, or a clear error and exit 3 or 4."""
    return load_or_exit(AgentSettings, config)


async def _run(agent: EdgeAgent) -> None:
    task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    if task is not None:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
    # SIGTERM cancels us; the agent closes its stores on the way out.
    with contextlib.suppress(asyncio.CancelledError):
        await agent.run()


@app.command()
def run(
    config: Annotated[
        Path | None, typer.Option(help="The agent's TOML file (COLDTRACE_AGENT_* overrides it).")
    ] = None,
) -> None:
    """Run the edge agent until SIGTERM."""
    settings = load_settings(config)
    try:
        asyncio.run(_run(EdgeAgent(settings)))
    except (AgentError, OutboxError) as exc:
        # A damaged or locked outbox, an unreadable key: the message says what to do.
        _err.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(ExitCode.USAGE) from exc
