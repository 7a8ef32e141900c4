"""What a test does when a server it needs is not installed: skip locally, fail in CI.

A developer without, say, VictoriaMetrics should still be able to run the rest of the suite, but CI
must never report green while silently skipping the integration tests, so ``CI=true`` turns every
"service unavailable" into a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import NoReturn

import pytest

#: The one command that installs every server the harness starts.
INSTALL_SCRIPT = "bash scripts/install-test-services.sh"


def ci_mode() -> bool:
    """True when the environment variable ``CI`` is "true" (any case), as CI services set it."""
    return os.environ.get("CI", "").strip().lower() == "true"


def service_unavailable(name: str, why: str, how_to_install: str) -> NoReturn:
    """Fail (``CI=true``) or skip (otherwise) the requesting test, saying how to install ``name``."""
    message = f"{name} is unavailable: {why}. Install it with: {how_to_install}"
    if ci_mode():
        pytest.fail(f"{message} (CI=true: a missing test service fails the run)", pytrace=False)
    pytest.skip(message)


def require_binary(
    name: str,
    executable: str,
    *,
    package: str,
    extra_dirs: Sequence[Path] = (),
    env_override: str | None = None,
) -> Path:
    """Locate ``executable`` or report ``name`` unavailable before anything is started.

    Looks at the environment variable ``env_override`` (an explicit path) first, then ``PATH``, then
    ``extra_dirs`` (Debian installs daemons in /usr/sbin, which is not on an ordinary user's PATH).
    """
    hint = f"apt-get install {package}  (or: {INSTALL_SCRIPT})"
    if env_override is not None and (explicit := os.environ.get(env_override)):
        path = Path(explicit)
        if path.is_file() and os.access(path, os.X_OK):
            return path
        service_unavailable(name, f"${env_override}={explicit} is not an executable file", hint)
    found = shutil.which(executable)
    if found is None and extra_dirs:
        found = shutil.which(executable, path=os.pathsep.join(str(d) for d in extra_dirs))
    if found is None:
        searched = "PATH" + "".join(f", {d}" for d in extra_dirs)
        service_unavailable(name, f"`{executable}` not found (searched {searched})", hint)
    return Path(found)
