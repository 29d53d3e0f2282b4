"""Finding a campaign's jobs: run dirs holding ``.hydra/config.yaml``, the config each one ran, its
results, its continuations (``resume=``) and, for unfinished ones, what they got to.

What a job *is* comes from the resolved config that ran: ``run_info.json``'s ``config`` (written by
every training run), else the checkpoint's config (older runs), else ``.hydra/config.yaml``. A
resumed run's ``.hydra/config.yaml`` is the resume command's composition (defaults plus
``resume=``), which is why the command line alone cannot tell two resumed experiments apart.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from advrw.config import resolvers
from advrw.core.keys import override_key

log = logging.getLogger("advrw.report")


@dataclass
class Job:
    dir: Path
    overrides: list[str]  # what the job's first run was started with (a continuation: its origin's)
    config: dict  # the resolved config that ran
    results: dict | None
    seed: object = None
    status: str = ""
    lineage: list[Path] = field(default_factory=list)  # the dirs this job's training went through


@dataclass
class Skipped:
    """A file the report cannot read (truncated JSON, a list, another tool's file): listed, not fatal."""
    path: Path
    why: str


def _load_yaml(path: Path):
    return OmegaConf.to_container(OmegaConf.load(path), resolve=False)


def _resolved(cfg) -> dict:
    """A Hydra ``config.yaml`` resolved as the job resolved it (``${mul:${attack.eps},0.1}`` -> a
    number), so a job that never wrote run_info compares with those that did. A job's config has no
    ``hydra`` node and advrw's resolvers are registered here, so it resolves; a foreign one that does
    not is compared as written."""
    resolvers.register()
    try:
        return OmegaConf.to_container(cfg, resolve=True)
    except Exception:  # noqa: BLE001 -- an interpolation only its own job could resolve
        return OmegaConf.to_container(cfg, resolve=False)


def _read_json(path: Path):
    return json.loads(path.read_text())


def run_info(job_dir: Path) -> dict:
    try:
        info = _read_json(job_dir / "run_info.json")
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _overrides(job_dir: Path) -> list[str]:
    try:
        return [str(o) for o in (_load_yaml(job_dir / ".hydra" / "overrides.yaml") or [])]
    except Exception:  # noqa: BLE001 -- a missing or foreign overrides file: the job has none we can read
        return []


def resume_target(job_dir: Path, overrides: list[str] | None = None) -> Path | None:
    """The run dir a job continued (``resume=<dir or .pt>``), from its records or its command line."""
    info = run_info(job_dir)
    target = info.get("continues")
    if not target:
        target = next((o.split("=", 1)[1] for o in (overrides if overrides is not None else _overrides(job_dir))
                       if override_key(o) == "resume"), None)
        if target in (None, "", "null"):
            return None
        p = Path(target).expanduser()
        if not p.is_absolute():
            p = job_dir.parent / p if not p.exists() else p
        target = p if p.is_dir() else p.parent
    p = Path(target)
    return None if p.resolve() == job_dir.resolve() else p


def origin_overrides(job_dir: Path) -> list[str]:
    """The overrides the job's first run was started with: followed back through ``resume=``, with
    the continuation's own overrides (other than ``resume``) on top."""
    seen, chain = set(), []
    d: Path | None = job_dir
    while d is not None and d.resolve() not in seen:
        seen.add(d.resolve())
        ovs = _overrides(d)
        chain.append([o for o in ovs if override_key(o) != "resume"])
        d = resume_target(d, ovs)
    merged: dict[str, str] = {}
    for ovs in reversed(chain):  # the origin first, each continuation's changes on top
        for o in ovs:
            merged[override_key(o)] = o
    return list(merged.values())


def ran_config(job_dir: Path) -> dict:
    """The resolved config that ran in ``job_dir`` (see the module docstring)."""
    config = run_info(job_dir).get("config")
    if isinstance(config, dict):
        return config
    if resume_target(job_dir) is not None:
        for name in ("last.pt", "best.pt"):
            if (job_dir / name).exists():
                from advrw.core import checkpoints  # deferred: torch, only for runs older than run_info's config

                try:
                    saved = checkpoints.read(job_dir / name)
                    if isinstance(saved.get("config"), dict):
                        return saved["config"]
                except Exception as err:  # noqa: BLE001 -- an unreadable checkpoint: fall back to Hydra's copy
                    log.warning("report: cannot read the config of %s: %s", job_dir / name, err)
    return _resolved(OmegaConf.load(job_dir / ".hydra" / "config.yaml"))


def _status(job_dir: Path, config: dict) -> str:
    """What an unfinished job got to, from its own records."""
    epochs = (config.get("schedule") or {}).get("epochs")
    try:
        lines = [ln for ln in (job_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        last = json.loads(lines[-1]).get("epoch") if lines else None
    except (OSError, ValueError, AttributeError):
        last = None
    if last is not None:
        return f"no results.json; trained {last}/{epochs} epochs" + (" (last.pt saved)" if (job_dir / "last.pt").exists() else "")
    return "no results.json; no epoch finished (failed at start, or still running)"


def _results(path: Path) -> tuple[dict | None, str | None]:
    """(results, None), (None, None) when there is none, or (None, why) for a file that is not advrw's."""
    if not path.exists():
        return None, None
    try:
        res = _read_json(path)
    except (OSError, ValueError) as err:
        return None, f"not readable JSON ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"
    if not _is_results(res):
        return None, f"not an advrw results.json (a {type(res).__name__} without clean.accuracy)"
    return res, None


def _is_results(res) -> bool:
    if not isinstance(res, dict):
        return False
    if isinstance(res.get("checkpoints"), dict):  # eval.checkpoint=both
        return all(_is_results(r) for r in res["checkpoints"].values())
    clean = res.get("clean")
    return isinstance(clean, dict) and isinstance(clean.get("accuracy"), (int, float)) and \
        isinstance(res.get("attacks", {}), dict)


def latest_continuation(job_dir: Path) -> Path:
    """The last dir of a job's ``continued_by`` chain (the job itself when nobody continued it)."""
    seen = {job_dir.resolve()}
    d = job_dir
    while True:
        nxt = [Path(p) for p in run_info(d).get("continued_by") or [] if (Path(p) / ".hydra").is_dir()]
        nxt = [p for p in nxt if p.resolve() not in seen]
        if not nxt:
            return d
        d = nxt[-1]  # the most recent continuation
        seen.add(d.resolve())


def find_jobs(dirs: list[Path]) -> tuple[list[Job], list[Skipped]]:
    """Every job under ``dirs``; a continuation replaces the run it continued (one job per lineage)."""
    found: dict[Path, Path] = {}  # resolved -> as given
    for d in dirs:
        for cfg_path in sorted(Path(d).rglob(".hydra/config.yaml")):
            found.setdefault(cfg_path.parent.parent.resolve(), cfg_path.parent.parent)
    # each found dir is followed to its latest continuation, even one outside ``dirs`` (a sweep job
    # continued with resume= after a time limit writes to a new dir); continued dirs drop out
    heads: dict[Path, Path] = {}
    for real, d in found.items():
        head = latest_continuation(d)
        heads.setdefault(head.resolve(), head)
    continued = set()
    for real, head in heads.items():
        t = resume_target(head)
        while t is not None and t.resolve() not in continued:
            continued.add(t.resolve())
            t = resume_target(t)
    jobs, skipped = [], []
    for real, head in heads.items():
        if real in continued:
            continue
        try:
            config = ran_config(head)
        except Exception as err:  # noqa: BLE001 -- a broken config file: list it, keep the table
            skipped.append(Skipped(head / ".hydra" / "config.yaml", f"unreadable config ({type(err).__name__})"))
            continue
        if not isinstance(config, dict):
            skipped.append(Skipped(head / ".hydra" / "config.yaml", "not a config mapping"))
            continue
        if "ckpt" in config:  # an advrw.eval run (<run>/eval/...): its training run is the job
            continue
        overrides = origin_overrides(head)
        res, why = _results(head / "results.json")
        if why:
            skipped.append(Skipped(head / "results.json", why))
        seed = next((o.split("=", 1)[1] for o in overrides if override_key(o) == "seed"), config.get("seed"))
        lineage = _lineage(head)
        status = "" if res else (why and f"results.json skipped: {why}") or _status(head, config)
        jobs.append(Job(head, overrides, config, res, seed, status, lineage))
    return sorted(jobs, key=lambda j: str(j.dir)), skipped


def _lineage(head: Path) -> list[Path]:
    out, d, seen = [head], resume_target(head), {head.resolve()}
    while d is not None and d.resolve() not in seen:
        seen.add(d.resolve())
        out.insert(0, d)
        d = resume_target(d)
    return out
