"""``coldtrace contract``: publish the schema and inspect or verify batch frames offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import orjson
import typer
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from rich.console import Console

from coldtrace.contract import (
    SCHEMA_VERSION,
    Batch,
    ContractError,
    decode_body,
    frame_hash,
    open_frame,
    verify_frame,
)
from coldtrace.exitcodes import ExitCode

app = typer.Typer(no_args_is_help=True)
_out = Console()
_err = Console(stderr=True)


@app.command()
def schema() -> None:
    """Print the JSON Schema of the batch body (schema version 1)."""
    document = Batch.model_json_schema()
    document["$comment"] = f"coldtrace batch body, schema_version {SCHEMA_VERSION}"
    typer.echo(orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode())


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        _err.print(f"[red]error:[/] cannot read {path}: {exc.strerror}. Check the path and its permissions.")
        raise typer.Exit(ExitCode.IO) from exc


def _public_key(path: Path) -> Ed25519PublicKey:
    key = load_pem_public_key(_read(path))
    if not isinstance(key, Ed25519PublicKey):
        _err.print(f"[red]error:[/] {path} is not an Ed25519 public key (PEM, SubjectPublicKeyInfo).")
        raise typer.Exit(ExitCode.INVALID_INPUT)
    return key


@app.command()
def inspect(
    frame_file: Annotated[Path, typer.Argument(help="A file holding one batch frame, as sent on the wire.")],
    public_key: Annotated[
        Path | None, typer.Option(help="The gateway's Ed25519 public key (PEM) to verify the signature.")
    ] = None,
) -> None:
    """Decode one batch frame strictly and summarise it; verify its signature when given the key."""
    frame = _read(frame_file)
    try:
        if public_key is None:
            batch = decode_body(open_frame(frame).body)
            verdict = "[yellow]signature NOT verified[/] (pass --public-key)"
        else:
            batch = verify_frame(frame, _public_key(public_key)).batch
            verdict = "[green]signature verified[/]"
    except ContractError as exc:
        _err.print(f"[red]rejected ({exc.code.value}):[/]")
        for error in exc.errors:
            _err.print(f"  {error}")
        raise typer.Exit(ExitCode.INVALID_INPUT) from exc
    devices = {r.device_id for r in batch.readings}
    _out.print(f"gateway {batch.gateway_id}  batch {batch.batch_seq}  {verdict}")
    _out.print(f"  readings {len(batch.readings)} from {len(devices)} devices, markers {len(batch.markers)}")
    _out.print(f"  frame sha256 {frame_hash(frame)}")
    _out.print(f"  prev  sha256 {batch.prev_hash}")
