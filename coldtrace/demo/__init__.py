"""``coldtrace demo``: the whole path on embedded defaults, in one process, in under two minutes.

A throwaway PKI, in-process MQTT 5 brokers that require client certificates, the cloud (SQLite, the
real worker and HTTPS API) with an embedded InfluxDB-API telemetry sink, two real edge agents, and the
simulator running a scenario mix at accelerated time; then a summary checked against the ground truth.
"""

from coldtrace.demo.command import run_command
from coldtrace.demo.settings import DemoSettings

__all__ = ["DemoSettings", "run_command"]
