"""Errors a user can act on, printed by the ``jaxnet`` command as one line without a traceback.

This module imports nothing from jaxnet, so any layer (the command line, the training loop,
the benchmarks) can raise these without import cycles.

* :class:`UsageError`: a bad argument or input; exit status 2.
* :class:`FaultError`: the run could not go on (a full disk, a run that diverged, a folder in
  use by another run, out of memory); exit status 1.
* :class:`Interrupted`: the user stopped the run (Ctrl-C); exit status 130.
"""
from __future__ import annotations

__all__ = ["one_line", "JaxnetError", "UsageError", "FaultError", "Interrupted", "EXIT_USAGE", "EXIT_FAULT",
           "EXIT_INTERRUPTED"]

EXIT_FAULT = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130  # the shell's convention for a run ended by SIGINT (128 + 2)


def one_line(message: object) -> str:
    """``message`` as a single line: its lines joined with "; " (blank ones dropped)."""
    return "; ".join(part.strip() for part in str(message).splitlines() if part.strip())


class JaxnetError(Exception):
    """Base of the one-line errors; ``exit_code`` is the command's exit status, ``label`` the
    word after ``jaxnet:`` in the printed line."""

    exit_code = EXIT_FAULT
    label = "error: "


class UsageError(JaxnetError):
    """A bad argument or input: printed as one line, no traceback, exit status 2."""

    exit_code = EXIT_USAGE


class FaultError(JaxnetError):
    """A run that cannot go on for a reason other than its arguments: one line, exit status 1."""

    exit_code = EXIT_FAULT


class Interrupted(JaxnetError):
    """The user interrupted the run (Ctrl-C); exit status 130."""

    exit_code = EXIT_INTERRUPTED
    label = ""
