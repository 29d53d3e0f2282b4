"""Every error type advrw raises on purpose, and the exit code each one ends the process with.

Bad input is an :class:`AdvrwError` (a ``ValueError``): one line naming the value and what is
allowed, raised before any work. A run that stops on purpose (a signal, non-finite values) raises a
:class:`RunStop`, which derives from ``BaseException`` like ``KeyboardInterrupt``: a broad
``except Exception`` in figure or W&B code cannot swallow it, only the entry wrapper
(:func:`advrw.core.exits.guarded`) turns it into its line and exit code.

Exit codes (README "Guarantees"): 0 done, 2 bad input, 3 non-finite values, 4 a file could not be
written (disk full, read-only), 75 interrupted by a signal with its state saved (EX_TEMPFAIL:
resume later), 128+N a second signal N (no new checkpoint).
"""

from __future__ import annotations

from pathlib import Path

EXIT_BAD_INPUT = 2
EXIT_NONFINITE = 3
EXIT_WRITE = 4
EXIT_INTERRUPTED = 75


class AdvrwError(ValueError):
    """Bad user input (config value, path, checkpoint): one line, raised before any work."""

    exit_code = EXIT_BAD_INPUT
    prefix = "advrw: error: "


class CheckpointWriteError(AdvrwError):
    """A file of the run could not be written (disk full, read-only); the previous copy is intact."""

    exit_code = EXIT_WRITE


class RunStop(BaseException):
    """A run that ends early on purpose: one line for the user and its own exit code."""

    exit_code = 1
    prefix = "advrw: error: "


class NonFiniteError(RunStop):
    exit_code = EXIT_NONFINITE


class Interrupted(RunStop):
    exit_code = EXIT_INTERRUPTED
    prefix = "advrw: "


def exit_code(err: BaseException) -> int:
    return getattr(err, "exit_code", EXIT_BAD_INPUT)


def user_line(err: BaseException) -> str:
    return getattr(err, "prefix", "advrw: error: ") + str(err)


def resume_command(run_dir: Path) -> str:
    return f"python -m advrw.train resume={run_dir}"
