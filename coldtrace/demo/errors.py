"""What can stop the demo, each with the message an operator acts on."""

from __future__ import annotations

from pathlib import Path

from coldtrace.exitcodes import ExitCode


class DemoError(Exception):
    """The demo cannot run or did not show what it should; ``exit_code`` is the process status."""

    exit_code: ExitCode = ExitCode.FAILURE


class PortInUse(DemoError):
    """The API's port is taken."""

    exit_code = ExitCode.USAGE

    def __init__(self, host: str, port: int, reason: str) -> None:
        super().__init__(
            f"cannot listen on {host}:{port} for the API ({reason}). Another program (an earlier demo?) "
            f"uses it: stop it, or pick another port with --port (0 picks a free one)"
        )
        self.host = host
        self.port = port


class WorkdirUnusable(DemoError):
    """The work directory cannot be created or written."""

    exit_code = ExitCode.IO

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(
            f"cannot use {path} as the demo's work directory ({reason}): choose a writable directory "
            "with --workdir, or free some disk space"
        )
        self.path = path


class ServicesNotConfigured(DemoError):
    """``--services`` without the servers to run against."""

    exit_code = ExitCode.USAGE

    def __init__(self, missing: list[str]) -> None:
        super().__init__(
            f"--services needs {' and '.join(missing)} (in the environment, or under [services] in the file "
            'given with --config); see README, "coldtrace demo --services"'
        )
        self.missing = missing


class StackFailed(DemoError):
    """A component of the demo stack did not come up or stopped."""


class OutcomeNotMet(DemoError):
    """The run finished but the expected outcome (holds, readings, chains) was not met."""
