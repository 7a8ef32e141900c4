"""``python -m coldtrace`` runs the ``coldtrace`` command."""

from coldtrace.cli import main

main()
