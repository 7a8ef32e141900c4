"""``coldtrace model …``: train and sign a glitch model, make a signing key, verify a package.

``train`` needs the ``train`` extra (scikit-learn, skl2onnx, onnx); ``keygen`` and ``verify`` need only
what the agent has.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from coldtrace.exitcodes import ExitCode
from edge_agent.scoring.errors import ModelRejected
from edge_agent.scoring.keys import (
    KeyFileError,
    key_id,
    load_private_key,
    load_public_key,
    public_pem,
    write_private_key,
)
from edge_agent.scoring.model import load_model

if TYPE_CHECKING:
    from edge_agent.scoring.train import Evaluation, LabelCount, TrainResult

logger = logging.getLogger(__name__)
app = typer.Typer(no_args_is_help=True, help="Glitch model: train and sign a package, make a key, verify.")
_out = Console()
_err = Console(stderr=True)


def _fail(message: str, code: ExitCode) -> typer.Exit:
    _err.print(f"[red]error:[/] {message}", soft_wrap=True, highlight=False, markup=True)
    return typer.Exit(code)


def public_key_path(private_key_path: Path) -> Path:
    """Where ``keygen`` writes the public half: ``KEY.pem`` → ``KEY.pub.pem``."""
    return private_key_path.with_suffix(".pub.pem")


@app.command("keygen")
def keygen(
    out: Annotated[Path, typer.Option("--out", help="Private key file to create (PKCS#8 PEM, mode 0600).")],
    force: Annotated[bool, typer.Option(help="Replace existing key files.")] = False,
) -> None:
    """Create an Ed25519 model-signing key; the public key goes next to it as KEY.pub.pem."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey  # noqa: PLC0415

    key = Ed25519PrivateKey.generate()
    public_path = public_key_path(out)
    try:
        write_private_key(out, key, overwrite=force)
        public_path.write_bytes(public_pem(key.public_key()))
    except FileExistsError as exc:
        raise _fail(f"{out} exists (use --force to replace it)", ExitCode.USAGE) from exc
    except OSError as exc:
        raise _fail(f"cannot write {exc.filename}: {exc.strerror}", ExitCode.IO) from exc
    _out.print(f"private key {out} (0600), public key {public_path}, key id {key_id(key.public_key())}")


@app.command("verify")
def verify(
    package: Annotated[Path, typer.Argument(help="Package directory, one of its files, or its stem.")],
    public_key: Annotated[
        list[Path], typer.Option("--public-key", help="Trusted Ed25519 public key (PEM); repeatable.")
    ],
) -> None:
    """Check a package's signature, hash and feature spec, and that onnxruntime runs it."""
    try:
        keys = [load_public_key(p) for p in public_key]
    except KeyFileError as exc:
        raise _fail(str(exc), ExitCode.IO) from exc
    try:
        model = load_model(package, keys)
    except ModelRejected as exc:
        raise _fail(f"model refused: {exc}", ExitCode.INVALID_INPUT) from exc
    manifest = model.manifest
    table = Table(title="model package: verified", show_header=False)
    table.add_row("model", model.model_ref)
    table.add_row("signed by key", model.key_id)
    table.add_row("created", manifest.created_utc)
    table.add_row("features", ", ".join(manifest.feature_spec.names))
    t = manifest.training
    table.add_row(
        "training",
        f"{t.algorithm}, {t.n_estimators} trees x {t.max_samples} samples, seed {t.seed}, "
        f"{t.devices} devices x {t.hours:g} h of {', '.join(t.scenarios)}",
    )
    table.add_row("calibration", f"contamination {manifest.calibration.contamination:g}")
    _out.print(table)


def _count(count: LabelCount) -> str:
    return f"{count.flagged}/{count.total} ({count.share:.1%})"


def _evaluation_table(result: TrainResult) -> Table:
    evaluations: list[Evaluation] = [result.model, result.rules]
    table = Table(title="held-out evaluation: share of readings scored > 0.5")
    table.add_column("label")
    for ev in evaluations:
        table.add_column("model" if ev is result.model else "rules", justify="right")
    for i, row in enumerate(result.model.per_label):
        table.add_row(row.label, *(_count(ev.per_label[i]) for ev in evaluations))
    table.add_row(
        "real excursion (clean)",
        *(_count(ev.excursion) for ev in evaluations),
    )
    table.add_row("precision (glitch vs clean)", *(f"{ev.precision:.3f}" for ev in evaluations))
    table.add_row("recall (glitch vs clean)", *(f"{ev.recall:.3f}" for ev in evaluations))
    table.add_row("clean false-positive rate", *(f"{ev.clean_false_positive_rate:.4f}" for ev in evaluations))
    return table


@app.command("train")
def train_command(  # noqa: PLR0917 - typer reads options from the signature
    out: Annotated[Path, typer.Option("--out", help="Directory to write NAME.{onnx,json,sig} into.")],
    key: Annotated[
        Path, typer.Option("--key", help="Ed25519 private key (PKCS#8 PEM) that signs the package.")
    ],
    seed: Annotated[int, typer.Option(help="Simulation and forest seed.")] = 1,
    devices: Annotated[int, typer.Option(min=1, help="Devices per training scenario.")] = 200,
    hours: Annotated[float, typer.Option(min=0.1, help="Simulated hours per training scenario.")] = 12.0,
    eval_seed: Annotated[int | None, typer.Option(help="Held-out seed (default seed + 1000).")] = None,
    eval_devices: Annotated[int | None, typer.Option(min=1, help="Devices per evaluation scenario.")] = None,
    trees: Annotated[int, typer.Option(min=1, help="IsolationForest trees.")] = 100,
    max_samples: Annotated[int, typer.Option(min=2, help="Readings per tree.")] = 256,
    contamination: Annotated[
        float, typer.Option(min=1e-6, max=0.49, help="Share of clean training readings mapped above 0.5.")
    ] = 0.002,
    name: Annotated[str, typer.Option(help="File stem of the package.")] = "default",
    model_id: Annotated[
        str, typer.Option(help="Model id in the readings' model reference.")
    ] = "glitch-iforest",
    created_utc: Annotated[
        str | None, typer.Option(help="Manifest timestamp, e.g. 2026-01-01T00:00:00Z (default now).")
    ] = None,
    check_export: Annotated[
        bool, typer.Option(help="Compare the exported graph with scikit-learn and skl2onnx.")
    ] = True,
) -> None:
    """Simulate, train, export, sign and evaluate a glitch model (needs the train extra)."""
    try:
        from edge_agent.scoring.train import TrainConfig, train  # noqa: PLC0415 - optional dependencies
    except ImportError as exc:
        raise _fail(
            f"training needs the train extra (scikit-learn, skl2onnx, onnx): {exc}", ExitCode.UNAVAILABLE
        ) from exc
    try:
        signing_key = load_private_key(key)
    except KeyFileError as exc:
        raise _fail(str(exc), ExitCode.IO) from exc
    config = TrainConfig(
        seed=seed, devices=devices, hours=hours, eval_seed=eval_seed, eval_devices=eval_devices,
        n_estimators=trees, max_samples=max_samples, contamination=contamination, model_id=model_id,
        created_utc=created_utc, check_export=check_export,
    )  # fmt: skip
    try:
        result = train(
            config, out, signing_key, name=name, progress=lambda line: _err.print(line, highlight=False)
        )
    except ValueError as exc:
        raise _fail(str(exc), ExitCode.INVALID_INPUT) from exc
    except OSError as exc:
        raise _fail(f"cannot write {exc.filename}: {exc.strerror}", ExitCode.IO) from exc
    paths = result.paths
    _out.print(
        f"wrote {paths.onnx} ({paths.onnx.stat().st_size} bytes), {paths.manifest.name}, "
        f"{paths.signature.name}: model {result.manifest.model_ref}, signed by key "
        f"{key_id(signing_key.public_key())}",
        highlight=False,
    )
    if result.export_check is not None:
        c = result.export_check
        _out.print(
            f"export check on {c.rows} rows: max |diff| vs scikit-learn {c.max_diff_sklearn:.1e}, "
            f"vs skl2onnx {c.max_diff_skl2onnx:.1e}",
            highlight=False,
        )
    _out.print(_evaluation_table(result))
    _out.print(", ".join(f"{k} {v:.1f} s" for k, v in result.seconds.items()), highlight=False)
