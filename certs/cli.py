"""``coldtrace certs …``: create the development/edge PKI, issue, revoke, publish the CRL, inspect.

Mounted by the root CLI with ``root_app.add_typer(certs.cli.app, name="certs")``; also runnable on
its own (``python -m certs.cli``). Expected failures (:class:`~certs.errors.PkiError`) print one red
``error:`` line on stderr and exit 2 (usage/state) or 3 (filesystem/permissions) without a traceback.
Nothing here ever reads or prints private key material; only key *paths* are shown.
"""

from __future__ import annotations

import contextlib
import enum
import os
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from certs.errors import PkiError
from certs.model import serial_hex
from certs.pki import CertificateInfo, Pki, Role

__all__ = ["DEFAULT_DIR", "Reason", "app"]

DEFAULT_DIR = Path("certs/dev")  # relative to the working directory; git-ignored
_NON_TTY_WIDTH = 250  # piped output keeps one row per line so grep/awk work

app = typer.Typer(
    name="certs",
    help="Manage the coldtrace PKI: root + issuing CA, identity certificates, CRL.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,  # locals of a crashed command could hold PEM bytes
)


class Reason(enum.StrEnum):
    """Revocation reasons the CLI accepts (mirrors ``certs.pki.REVOCATION_REASONS``)."""

    UNSPECIFIED = "unspecified"
    KEY_COMPROMISE = "key_compromise"
    SUPERSEDED = "superseded"
    CESSATION_OF_OPERATION = "cessation_of_operation"


DirOption = Annotated[
    Path,
    typer.Option(
        "--dir",
        envvar="COLDTRACE_PKI_DIR",
        show_envvar=True,
        help="PKI directory; relative paths are resolved against the current directory.",
    ),
]
RoleArg = Annotated[Role, typer.Argument(case_sensitive=False, metavar="ROLE", help="Identity role.")]
NameArg = Annotated[
    str,
    typer.Argument(metavar="NAME", help="Identity name: becomes the certificate CN and the broker username."),
]


def _console(*, stderr: bool = False) -> Console:
    # Built per call so output goes to whatever sys.stdout/sys.stderr is now (CliRunner swaps them).
    console = Console(stderr=stderr, highlight=False)
    if not console.is_terminal and "COLUMNS" not in os.environ:
        console = Console(stderr=stderr, highlight=False, width=_NON_TTY_WIDTH)
    return console


@contextlib.contextmanager
def _pki_errors() -> Iterator[None]:
    """Turn an expected PkiError into a one-line message and its exit code; let bugs surface."""
    try:
        yield
    except PkiError as exc:
        # escape(): messages contain "[--force]"-like text that rich would read as markup.
        _console(stderr=True).print(f"[bold red]error:[/] {escape(exc.message)}", soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def _when(value: datetime) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _role_label(info: CertificateInfo) -> str:
    return info.role.value if info.role is not None else info.name.replace("-ca", " CA")


def _label(info: CertificateInfo) -> str:
    return f"{info.role} {info.name}" if info.role is not None else _role_label(info)


@app.command()
def init(
    *,
    directory: DirOption = DEFAULT_DIR,
    org: Annotated[str, typer.Option(help="Organisation (O) put into every certificate.")] = "coldtrace",
    force: Annotated[
        bool, typer.Option("--force", help="Replace an existing PKI (all its certificates become untrusted).")
    ] = False,
    root_days: Annotated[int, typer.Option(min=1, help="Root CA validity in days.")] = 3650,
    issuing_days: Annotated[int, typer.Option(min=1, help="Issuing CA validity in days.")] = 1825,
    crl_days: Annotated[int, typer.Option(min=1, help="CRL validity in days.")] = 7,
) -> None:
    """Create the root CA, the issuing CA, the CA bundle and an empty CRL."""
    with _pki_errors():
        pki = Pki.init(
            directory, org=org, force=force, root_days=root_days, issuing_days=issuing_days, crl_days=crl_days
        )
    out = _console()
    out.print(f"[green]PKI created[/] in {escape(str(pki.directory))}")
    out.print(f"  root CA:    {escape(str(pki.root_cert_path))}")
    out.print(f"  issuing CA: {escape(str(pki.issuing_cert_path))}")
    out.print(f"  CA bundle:  {escape(str(pki.ca_bundle_path))}  (peers' cafile)")
    out.print(f"  CRL:        {escape(str(pki.crl_path))}  (broker crlfile)")


@app.command()
def issue(
    role: RoleArg,
    name: NameArg,
    *,
    directory: DirOption = DEFAULT_DIR,
    dns: Annotated[
        list[str] | None, typer.Option("--dns", help="DNS subjectAltName (repeatable), e.g. localhost.")
    ] = None,
    ip: Annotated[
        list[str] | None, typer.Option("--ip", help="IP subjectAltName (repeatable), e.g. 127.0.0.1.")
    ] = None,
    days: Annotated[int, typer.Option(min=1, help="Certificate validity in days.")] = 397,
    force: Annotated[
        bool, typer.Option("--force", help="Re-issue; the old certificate is revoked as superseded.")
    ] = False,
) -> None:
    """Issue a key and certificate for ROLE NAME (server, gateway, device or service)."""
    with _pki_errors():
        pki = Pki.open(directory)
        identity = pki.issue(role, name, days=days, dns_names=dns or (), ip_addresses=ip or (), force=force)
    out = _console()
    out.print(f"[green]issued[/] {identity.role} {escape(identity.name)}  ({escape(identity.uri)})")
    out.print(f"  certificate: {escape(str(identity.cert_path))}")
    out.print(f"  chain:       {escape(str(identity.chain_path))}")
    out.print(f"  key:         {escape(str(identity.key_path))}  (mode 0600, keep it on the host)")
    out.print(f"  CA bundle:   {escape(str(pki.ca_bundle_path))}")
    out.print(f"  serial:      {serial_hex(identity.serial)}")
    out.print(f"  not after:   {_when(identity.not_after)}")


@app.command()
def revoke(
    role: RoleArg,
    name: NameArg,
    *,
    directory: DirOption = DEFAULT_DIR,
    reason: Annotated[
        Reason, typer.Option(help="Revocation reason recorded in the CRL.")
    ] = Reason.UNSPECIFIED,
) -> None:
    """Revoke the current certificate of ROLE NAME and rewrite the CRL."""
    with _pki_errors():
        pki = Pki.open(directory)
        pki.revoke(role, name, reason=reason.value)
        crl = pki.crl_info()
    out = _console()
    out.print(f"[green]revoked[/] {role} {escape(name)} ({reason.value})")
    out.print(f"  CRL #{crl.number} written to {escape(str(crl.path))}; reload the broker to apply it")


@app.command()
def crl(
    *,
    directory: DirOption = DEFAULT_DIR,
    days: Annotated[int, typer.Option(min=1, help="Validity of the new CRL in days.")] = 7,
) -> None:
    """Re-sign the CRL (new CRL number); run it before the current one's next update."""
    with _pki_errors():
        pki = Pki.open(directory)
        pki.write_crl(days=days)
        info = pki.crl_info()
    out = _console()
    out.print(f"CRL written to {escape(str(info.path))}")
    out.print(f"  number:      {info.number}")
    out.print(f"  revoked:     {len(info.revoked_serials)} certificate(s)")
    out.print(f"  next update: {_when(info.next_update)}")


def _table(infos: Sequence[CertificateInfo], now: datetime) -> Table:
    table = Table()
    for column in ("CN", "Role", "SAN URIs", "DNS", "IPs"):
        table.add_column(column)
    table.add_column("Serial", no_wrap=True)
    for column in ("Not before", "Not after"):
        table.add_column(column, no_wrap=True)
    table.add_column("Days left", justify="right")
    table.add_column("Revoked")
    for info in infos:
        revoked = "no"
        if info.revoked_at is not None:
            revoked = f"[red]{_when(info.revoked_at)} ({escape(info.revocation_reason or 'unspecified')})[/]"
        table.add_row(
            escape(info.subject_cn),
            _role_label(info),
            escape(", ".join(info.uris)),
            escape(", ".join(info.dns_names)),
            ", ".join(info.ip_addresses),
            info.serial_hex,
            _when(info.not_before),
            _when(info.not_after),
            str(info.days_left(now)),
            revoked,
        )
    return table


@app.command()
def show(
    role: Annotated[
        Role | None,
        typer.Argument(case_sensitive=False, metavar="ROLE", help="Role of one identity to show."),
    ] = None,
    name: Annotated[str | None, typer.Argument(metavar="NAME", help="Name of one identity to show.")] = None,
    *,
    directory: DirOption = DEFAULT_DIR,
    warn_days: Annotated[
        int, typer.Option(min=0, help="Warn about certificates expiring within this many days.")
    ] = 30,
) -> None:
    """Show one identity (ROLE NAME) or all identities, plus the CA certificates and the CRL."""
    if (role is None) != (name is None):
        raise typer.BadParameter("give both ROLE and NAME, or neither to show every identity")
    with _pki_errors():
        pki = Pki.open(directory)
        identities = pki.list() if role is None or name is None else [pki.info(role, name)]
        infos = [*pki.ca_certificates(), *identities]
        crl = pki.crl_info()
    now = datetime.now(UTC)
    out, err = _console(), _console(stderr=True)
    out.print(_table(infos, now))
    if not identities:
        out.print("no identities issued yet: `coldtrace certs issue ROLE NAME`")
    out.print(f"CRL #{crl.number}: {escape(str(crl.path))}, next update {_when(crl.next_update)}")
    cutoff = now + timedelta(days=warn_days)
    for info in infos:
        if info.revoked_at is None and info.not_after <= cutoff:
            days_left = info.days_left(now)
            when = "has EXPIRED" if days_left < 0 else f"expires in {days_left} day(s)"
            err.print(
                f"[yellow]WARNING:[/] {escape(_label(info))} {when} ({_when(info.not_after)})",
                soft_wrap=True,
            )
    # A stale CRL makes mosquitto reject every client, so flag it before it bites.
    if crl.next_update <= now + timedelta(days=1):
        err.print(
            f"[yellow]WARNING:[/] the CRL's next update is {_when(crl.next_update)}: "
            "run `coldtrace certs crl` and reload the broker",
            soft_wrap=True,
        )


if __name__ == "__main__":
    app()
