#!/usr/bin/env bash
# coldtrace's one test command: the README names it and .ci/run runs exactly this.
# It installs the Debian packages of the real servers the suite starts (when run as root), installs
# the project with its dev extra into .venv (unless a virtualenv is already active), then runs
# ruff, mypy --strict and pytest. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."

bash scripts/install-test-services.sh

if [ -z "${VIRTUAL_ENV:-}" ]; then
    [ -x .venv/bin/python ] || python3 -m venv .venv
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
python -m pip install --quiet --disable-pip-version-check -e '.[dev]'

echo "== ruff"
ruff check .
ruff format --check .
echo "== mypy --strict"
mypy
echo "== pytest"
python -m pytest "$@"
