"""coldtrace: signed, durable edge-to-cloud telemetry for cold-chain logistics.

This package holds what every role shares: the ``coldtrace`` command line and the wire contract
(:mod:`coldtrace.contract`) that the edge agent and the cloud both import.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("coldtrace")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

__all__ = ["__version__"]
