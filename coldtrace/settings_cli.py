"""Loading a component's settings at the command line: clear errors and the right exit code."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import TypeVar

import typer
from pydantic import ValidationError
from rich.console import Console

from coldtrace.exitcodes import ExitCode
from coldtrace.settings import TomlSettings

_err = Console(stderr=True)
S = TypeVar("S", bound=TomlSettings)


def load_or_exit(cls: type[S], config: Path | None) -> S:
    """``cls`` from ``config`` and the environment, or an error naming the key and exit 3 or 4."""
    if config is not None and not config.is_file():
        _err.print(f"[red]error:[/] config file {config} not found", soft_wrap=True)
        raise typer.Exit(ExitCode.IO)
    try:
        return cls.load(config)
    except tomllib.TOMLDecodeError as exc:
        _err.print(f"[red]error:[/] {config} is not valid TOML: {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(ExitCode.INVALID_INPUT) from exc
    except ValidationError as exc:
        for error in exc.errors(include_url=False):
            key = ".".join(str(p) for p in error["loc"])
            _err.print(f"[red]error:[/] {config}: {key}: {error['msg']}", soft_wrap=True, highlight=False)
        raise typer.Exit(ExitCode.INVALID_INPUT) from exc
