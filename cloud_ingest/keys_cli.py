"""``coldtrace cloud keys``: create, list and revoke API keys in the cloud database.

``create`` writes the new key, and only the key, to stdout (so ``KEY=$(coldtrace cloud keys create …)``
works); everything else goes to stderr. The key is not stored and cannot be shown again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine

from cloud_ingest.db.engine import open_database
from cloud_ingest.errors import Conflict, NotFound
from cloud_ingest.keys import Role, create_key, list_keys, revoke_key
from cloud_ingest.settings import CloudSettings
from coldtrace.clock import wall_ms
from coldtrace.exitcodes import ExitCode
from coldtrace.settings_cli import load_or_exit

app = typer.Typer(no_args_is_help=True, help="API keys: create (shown once), list, revoke.")
_out = Console()
_err = Console(stderr=True)

Config = Annotated[Path | None, typer.Option(help="The cloud's TOML file (COLDTRACE_CLOUD_* overrides it).")]


def load_settings(config: Path | None) -> CloudSettings:
    """Settings from ``config`` and the environment, or a clear error and exit 3 or 4."""
    return load_or_exit(CloudSettings, config)


def _database(config: Path | None) -> Engine:
    return open_database(load_settings(config).database_url)


def _time(ms: int | None) -> str:
    # Milliseconds are what the API shows too; no local-time conversion to get wrong here.
    return "-" if ms is None else str(ms)


@app.command()
def create(
    role: Annotated[Role, typer.Option(help="What the key may do.")],
    name: Annotated[str, typer.Option(help="Who uses it; recorded as the actor of their changes.")],
    config: Config = None,
) -> None:
    """Create a key and print it once."""
    engine = _database(config)
    try:
        with engine.begin() as conn:
            new = create_key(conn, role=role, name=name, now_ms=wall_ms())
    except ValueError as exc:
        _err.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(ExitCode.USAGE) from exc
    finally:
        engine.dispose()
    _err.print(
        f"API key {new.prefix} for {name.strip()} ({role}): shown only now, store it in a secret manager.",
        soft_wrap=True,
        highlight=False,
    )
    typer.echo(new.key)


@app.command("list")
def list_command(config: Config = None) -> None:
    """List keys (prefix, name, role, times); secrets are never stored, so never shown."""
    engine = _database(config)
    try:
        with engine.begin() as conn:
            keys = list_keys(conn)
    finally:
        engine.dispose()
    table = Table("prefix", "name", "role", "created_ms", "last_used_ms", "revoked_ms")
    for key in keys:
        table.add_row(
            key.prefix,
            key.name,
            key.role,
            _time(key.created_ms),
            _time(key.last_used_ms),
            _time(key.revoked_ms),
        )
    _out.print(table)


@app.command()
def revoke(
    prefix: Annotated[str, typer.Argument(help="The key's prefix, as `keys list` shows it.")],
    config: Config = None,
) -> None:
    """Revoke a key: the API refuses it from the next request on."""
    engine = _database(config)
    try:
        with engine.begin() as conn:
            key = revoke_key(conn, prefix, now_ms=wall_ms())
    except NotFound as exc:
        _err.print(f"[red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(ExitCode.FAILURE) from exc
    except Conflict as exc:
        # Revoking twice leaves the key as asked: revoked. Scripts need not special-case it.
        _err.print(f"[yellow]note:[/] {exc}", soft_wrap=True, highlight=False)
        raise typer.Exit(ExitCode.OK) from exc
    finally:
        engine.dispose()
    _err.print(f"API key {key.prefix} ({key.name}, {key.role}) revoked.", soft_wrap=True, highlight=False)
