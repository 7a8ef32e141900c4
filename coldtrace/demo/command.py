"""``coldtrace demo`` as a process: reserve the port, prepare the work directory, log to a file, run, map
errors to exit codes and say what to do."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time
from collections.abc import Iterator

from rich.console import Console

from coldtrace.demo.cloud import bind_api_socket
from coldtrace.demo.errors import DemoError, OutcomeNotMet, ServicesNotConfigured
from coldtrace.demo.settings import DemoSettings
from coldtrace.demo.stack import Lifetime, run_demo
from coldtrace.demo.summary import Summary
from coldtrace.demo.workdir import Workdir, prepare
from coldtrace.exitcodes import ExitCode

logger = logging.getLogger(__name__)

#: Exit status after Ctrl-C or SIGTERM during the run (128 + SIGINT, the shell's convention).
INTERRUPTED = 130


def _log_to_file(workdir: Workdir) -> None:
    """Every component logs to ``demo.log`` at the level ``--log-level`` set; the console is left to the
    progress display and the summary."""
    handler = logging.FileHandler(workdir.log, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    logging.getLogger().handlers[:] = [handler]


def _leaves(error: BaseException) -> Iterator[BaseException]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    else:
        yield error


async def _main(settings: DemoSettings, *, workdir: Workdir, console: Console, hold_open: bool,
                started: float, api_socket: socket.socket) -> Summary:  # fmt: skip
    loop = asyncio.get_running_loop()
    main = asyncio.current_task()
    lifetime = Lifetime(hold_open=hold_open)

    def on_signal() -> None:
        lifetime.stop.set()
        if not lifetime.holding and main is not None:
            main.cancel()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    try:
        return await run_demo(
            settings, workdir=workdir, api_socket=api_socket, console=console, lifetime=lifetime,
            started=started,
        )  # fmt: skip
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


def run_command(settings: DemoSettings, *, hold_open: bool, console: Console, err: Console) -> int:
    """Run the demo; returns the process exit status (0 only when the expected outcome was met)."""
    started = time.monotonic()
    try:
        if settings.use_services and (missing := settings.services.missing()):
            raise ServicesNotConfigured(missing)
        api_socket = bind_api_socket(settings.host, settings.port)
        try:
            workdir = prepare(settings.workdir)
        except DemoError:
            api_socket.close()
            raise
    except DemoError as exc:
        err.print(f"[red]error:[/] {exc}")
        return int(exc.exit_code)
    _log_to_file(workdir)
    keep = False
    try:
        summary = asyncio.run(
            _main(settings, workdir=workdir, console=console, hold_open=hold_open, started=started,
                  api_socket=api_socket)
        )  # fmt: skip
        keep = not summary.ok  # a failed run's files are evidence
    except (KeyboardInterrupt, asyncio.CancelledError):
        err.print("[yellow]interrupted[/]")
        return INTERRUPTED
    except Exception as exc:
        keep = True
        logger.exception("the demo failed")
        failures = list(_leaves(exc))
        known = [f for f in failures if isinstance(f, DemoError)]
        for failure in known[:1] or failures:
            name = "" if isinstance(failure, DemoError) else f"{type(failure).__name__}: "
            err.print(f"[red]error:[/] {name}{failure}")
        err.print(f"Logs and state are kept in {workdir.path} (demo.log).")
        return int(known[0].exit_code) if known else int(ExitCode.FAILURE)
    finally:
        api_socket.close()
        if not keep:
            workdir.remove()
    if not summary.ok:
        failed = OutcomeNotMet("the demo ran, but the expected outcome was not met (see the verdict)")
        err.print(f"[red]error:[/] {failed}")
        err.print(f"Logs and state are kept in {workdir.path} (demo.log).")
        return int(failed.exit_code)
    return int(ExitCode.OK)
