"""Render the dashboards to JSON files, or check that the files on disk are what the code renders."""

from __future__ import annotations

import json
from pathlib import Path

from coldtrace.grafana.alerts import ALERTS_AND_HOLDS
from coldtrace.grafana.fleet import FLEET_HEALTH
from coldtrace.grafana.model import Dashboard
from coldtrace.grafana.pipeline import INGEST_PIPELINE
from coldtrace.grafana.shipments import SHIPMENT_TEMPERATURE

DASHBOARDS: tuple[Dashboard, ...] = (FLEET_HEALTH, SHIPMENT_TEMPERATURE, ALERTS_AND_HOLDS, INGEST_PIPELINE)
#: Where the repository keeps the rendered files (relative to its root).
DEFAULT_OUT = Path("grafana/dashboards")


def render_all() -> dict[str, str]:
    """File name -> JSON text (two-space indent, trailing newline) of every dashboard."""
    return {d.filename: json.dumps(d.render(), indent=2, ensure_ascii=False) + "\n" for d in DASHBOARDS}


def write_all(out: Path) -> list[Path]:
    """Write every dashboard into ``out`` (created if missing); returns the files written."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in render_all().items():
        path = out / name
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written


def stale(out: Path) -> list[str]:
    """Names of dashboard files in ``out`` that are missing or differ from what the code renders,
    and ``*.json`` files there that no dashboard renders."""
    rendered = render_all()
    differing = [
        name
        for name, text in rendered.items()
        if not (out / name).is_file() or (out / name).read_text(encoding="utf-8") != text
    ]
    extra = sorted(p.name for p in out.glob("*.json") if p.name not in rendered) if out.is_dir() else []
    return differing + extra
