"""coldtrace's Grafana dashboards, as code.

``python -m coldtrace.grafana`` renders them into ``grafana/dashboards/`` (``--check`` only compares).
The provisioning files beside them, and how to mount them into Grafana, are in ``grafana/README.md``.
"""

from coldtrace.grafana.build import DASHBOARDS, render_all, stale, write_all
from coldtrace.grafana.model import DATASOURCES, Dashboard, Datasource

__all__ = ["DASHBOARDS", "DATASOURCES", "Dashboard", "Datasource", "render_all", "stale", "write_all"]
