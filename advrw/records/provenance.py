"""What a run records about where it came from: the code's commit (and whether the tree had
uncommitted changes, with their hash), the job's own command, and the runs it continues or that
continue it."""

from __future__ import annotations

import hashlib
import json
import logging
import shlex
import subprocess
from pathlib import Path

from advrw.core.files import write_json

log = logging.getLogger(__name__)
_HERE = Path(__file__).resolve().parent


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=_HERE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout if out.returncode == 0 else None


def git_state() -> dict:
    """``{"commit", "dirty", "diff_sha1"}`` of the advrw checkout (all None outside git). ``diff_sha1``
    hashes ``git diff HEAD`` (tracked files), so two runs from the same dirty tree can be told apart
    from two runs of different edits."""
    head = _git("rev-parse", "HEAD")
    if head is None:
        return {"commit": None, "dirty": None, "diff_sha1": None}
    diff = _git("diff", "HEAD", "--no-color") or ""
    return {"commit": head.strip(), "dirty": bool(diff.strip()),
            "diff_sha1": hashlib.sha1(diff.encode()).hexdigest() if diff.strip() else None}


def git_commit() -> str | None:
    """The commit of the advrw checkout, ``-dirty`` when tracked files differ from it (None outside git)."""
    state = git_state()
    return state["commit"] and state["commit"] + ("-dirty" if state["dirty"] else "")


def job_command(module: str, overrides: list[str]) -> str:
    """``python -m advrw.train <exactly this job's overrides>`` (a sweep job: its own values, not the sweep)."""
    return " ".join(["python", "-m", module, *(shlex.quote(str(o)) for o in overrides)])


def record_continuation(source_dir: Path, run_dir: Path) -> None:
    """Lineage both ways: ``run_dir`` ``continues`` ``source_dir`` (written by the caller into its own
    run_info), and ``source_dir``'s run_info lists ``run_dir`` under ``continued_by``."""
    source_dir, run_dir = Path(source_dir).resolve(), Path(run_dir).resolve()
    if source_dir == run_dir:
        return
    path = source_dir / "run_info.json"
    try:
        info = json.loads(path.read_text()) if path.exists() else {}
        if not isinstance(info, dict):
            info = {}
    except (OSError, ValueError):
        info = {}
    later = [p for p in info.get("continued_by") or [] if p != str(run_dir)]
    info["continued_by"] = [*later, str(run_dir)]
    try:
        write_json(path, info)
    except OSError as err:  # a read-only old run: the new run's `continues` still links them
        log.warning("could not record the continuation in %s: %s", path, err)
