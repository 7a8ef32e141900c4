"""Exit codes of the ``coldtrace`` command; documented in the README so scripts can branch on them."""

import enum


class ExitCode(enum.IntEnum):
    """What a ``coldtrace`` process's exit status means."""

    OK = 0
    FAILURE = 1  #: the command ran and failed (a server down, a check that did not pass)
    USAGE = 2  #: wrong arguments or a state that forbids the command (e.g. CA exists, no --force)
    IO = 3  #: a file or directory could not be read or written (path, permissions, disk full)
    INVALID_INPUT = 4  #: input refused by the wire contract or a config file that does not validate
    UNAVAILABLE = 69  #: the role's extra is not installed (EX_UNAVAILABLE)
