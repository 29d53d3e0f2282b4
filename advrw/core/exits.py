"""The one error-to-exit-code wrapper both entry points (``advrw.train``, ``advrw.eval``) run under,
and :func:`launch`, which turns a submitit sweep's stopped jobs into one line each.

Every deliberate stop becomes its single line on stderr and its exit code (:mod:`.errors`); a
failed write anywhere (a record, a figure, W&B's files) is one line naming the path, exit 4.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
from pathlib import Path
from typing import Callable, TypeVar

from advrw.core import checkpoints as ckpt_io
from advrw.core.errors import EXIT_BAD_INPUT, EXIT_INTERRUPTED, AdvrwError, RunStop, exit_code, resume_command, user_line
from advrw.core.files import remove_stray_run_dir, write_error

T = TypeVar("T")


def _stop(line: str, code: int):
    print(line, file=sys.stderr)
    sys.exit(code)


def guarded(body: Callable[[], T], refused: Callable[[], None] | None = None) -> T:
    """``body()``, with advrw's stops turned into one line and an exit code.

    ``refused()`` runs after bad input (exit 2), e.g. to remove the run dir Hydra made for nothing.
    """
    try:
        return body()
    except (AdvrwError, RunStop) as err:  # one line for the user (no traceback, no log echo)
        if exit_code(err) == EXIT_BAD_INPUT and refused is not None:
            refused()
        _stop(user_line(err), exit_code(err))
    except OSError as err:  # a write failed (disk full, read-only) outside advrw's own writers
        line = write_error(err)
        if line is None:
            raise
        _stop(user_line(line), exit_code(line))
    except KeyboardInterrupt:  # SIGINT before the run's signal guard was installed: nothing to save
        _stop("advrw: SIGINT before the run started: nothing to save", 130)


def _sweep_dir(text: str) -> Path | None:
    """The sweep dir of a submitit job, from the result path its error message names."""
    m = re.search(r"with path (\S+)", text)
    if not m:
        return None
    p = Path(m.group(1))
    return next((q.parent for q in p.parents if q.name == ".submitit"), None)


def _stopped_jobs(sweep: Path) -> list[tuple[Path, str]]:
    """``(run dir, signal)`` of each job of ``sweep`` whose last.pt says it was interrupted."""
    out = []
    for last in sorted(sweep.glob("*/last.pt"), key=lambda p: (len(p.parent.name), p.parent.name)):
        with contextlib.suppress(AdvrwError):
            why = ckpt_io.read(last, key="last.pt").get("interrupted")
            if why:
                out.append((last.parent, str(why)))
    return out


def _drop_unwritten_job_dirs() -> None:
    """Hydra could not write a job's ``.hydra/`` files: remove the job dir it had just made (found
    through the job log's file handler) when nothing but Hydra's own files are in it, so a full
    disk leaves no half-written config or empty log behind. A dir with a run in it is kept."""
    for handler in list(logging.getLogger().handlers):
        if isinstance(handler, logging.FileHandler):
            run_dir = Path(handler.baseFilename).parent
            if (run_dir / ".hydra").is_dir():
                handler.close()
                logging.getLogger().removeHandler(handler)
                remove_stray_run_dir(run_dir)


def launch(hydra_main: Callable[[], object]) -> None:
    """Run Hydra's main; a sweep whose launcher (submitit) reports stopped jobs gets one line per job,
    and a write Hydra itself makes (its .hydra/ files on a full disk) fails in one line, exit 4."""
    before = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"  # Hydra re-raises instead of printing a traceback and exit 1
    try:
        hydra_main()
    except OSError as err:
        line = write_error(err)
        if line is None:
            raise
        _drop_unwritten_job_dirs()
        _stop(user_line(line), exit_code(line))
    except Exception as err:
        if type(err).__name__ != "UncompletedJobError":  # submitit's, without importing submitit
            raise
        sweep = _sweep_dir(str(err))
        stopped = _stopped_jobs(sweep) if sweep is not None else []
        if not stopped:
            _stop("advrw: error: a sweep job did not finish: " + " ".join(str(err).split())[:300], 1)
        for run_dir, why in stopped:
            print(f"advrw: job {run_dir.name} stopped by {why} with a checkpoint; continue with: "
                  f"{resume_command(run_dir)}", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)
    finally:
        if before is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = before
