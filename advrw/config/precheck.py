"""Checks the command line before Hydra runs anything, so bad input gets one line and exit 2.

Hydra reports an unknown group option or key as a multi-line message, and by the time a task
function sees a bad value Hydra has already created (or reused) the run dir. Here we parse the
overrides, compose the config for every job of a sweep (first ``MAX_JOBS`` combinations), run
the entry point's validator on each, and check the output dir -- all before any work.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import sys
from pathlib import Path

from advrw.config import CONF_DIR
from advrw.core.errors import AdvrwError
from advrw.config import resume as resume_cfg
from advrw.config.validation import preflight
from advrw.core.keys import HYDRA_ONLY_FLAGS, override_key
from advrw.core.lock import check_free
from advrw.core.rules import suggest

MAX_JOBS = 256
_SKIP = set(HYDRA_ONLY_FLAGS)
_WITH_VALUE = {"--config-name", "-cn", "--config-path", "-cp", "--config-dir", "-cd", "--experimental-rerun",
               "--cfg", "-c", "--package", "-p", "--info", "-i"}
RUN_MARKERS = ("last.pt", "best.pt", "results.json", "metrics.jsonl")


def fail(message: str) -> None:
    print(f"advrw: error: {message}", file=sys.stderr)
    sys.exit(2)


def split_args(argv: list[str]) -> tuple[list[str], bool, bool]:
    """(overrides, multirun, skip_checks) from Hydra's command line."""
    overrides, multirun, skip, i = [], False, False, 0
    while i < len(argv):
        a = argv[i]
        if a in ("-m", "--multirun"):
            multirun = True
        elif a in _SKIP or a.split("=")[0] in _SKIP:
            skip = True
            i += a in _WITH_VALUE
        elif a in _WITH_VALUE:
            i += 1
        elif not a.startswith("-"):
            overrides.append(a)
        i += 1
    return overrides, multirun, skip


def one_line(err: Exception, candidates=None) -> str:
    """Hydra/OmegaConf composition errors, folded to one line that still lists the options.

    ``candidates(key)`` lists the keys and groups a misspelled ``key`` may have meant.
    """
    text = str(err)
    m = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if m:
        group, option = m.groups()
        block = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)+)", text)
        options = block.group(1).split() if block else []
        allowed = ", ".join(options) if options else "see conf/" + group
        return f"{group}={option} is unknown: choose one of {allowed}{suggest(option, options)}"
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        hint = suggest(key, candidates(key)) if candidates else ""
        return f"{key} is not a config key or group{hint or ' (see --cfg job for the keys)'}"
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not re.match(
        r"(full_key|object_type|reference_type|Set the environment)", ln.strip())]
    return "; ".join(lines) or type(err).__name__


def job_overrides(overrides: list[str], multirun: bool) -> list[list[str]]:
    """Every job's override list (a sweep's combinations), hydra.* settings left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = []
    for o in parsed:
        key = o.get_key_element()
        if key.startswith("hydra.") or key.startswith("hydra/") or key.startswith("+hydra"):
            continue
        if multirun and o.is_sweep_override():
            vals = list(o.sweep_string_iterator())
            prefix = key.split("@")[0]
            choices.append([f"{prefix}={v}" for v in vals])
        else:
            choices.append([o.input_line])
    total = 1
    for c in choices:
        total *= len(c)
    if total > MAX_JOBS:  # composing each job costs ~0.1 s; say what was not checked
        print(f"advrw: note: checking the first {MAX_JOBS} of {total} jobs before the sweep starts", file=sys.stderr)
    return [list(c) for c in itertools.islice(itertools.product(*choices), MAX_JOBS)]


def _hydra_dir(overrides: list[str], multirun: bool) -> str | None:
    key = "hydra.sweep.dir=" if multirun else "hydra.run.dir="
    for o in overrides:
        if o.startswith(key):
            return o[len(key):]
    return None


def check_output_dir(overrides: list[str], multirun: bool, resume: str | None) -> None:
    explicit = _hydra_dir(overrides, multirun)
    target = Path(explicit or "outputs").expanduser()
    probe = target
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not os.access(probe, os.W_OK) or (probe.exists() and not probe.is_dir()):
        fail(f"output dir {str(target)!r} is not writable: pick another hydra.{'sweep' if multirun else 'run'}.dir")
    if explicit and not multirun and target.is_dir():
        try:  # a live run there: refused before Hydra writes its .hydra/ files over the run's
            check_free(target)
        except AdvrwError as err:
            fail(str(err))
        found = [m for m in RUN_MARKERS if (target / m).exists()]
        # records without a checkpoint: a run killed inside its first save, started again in place
        if found and found != ["metrics.jsonl"] and not (resume and Path(resume).resolve() in (target.resolve(), (target / "last.pt").resolve())):
            fail(f"hydra.run.dir={explicit} already holds a run ({', '.join(found)}): pass resume={explicit} "
                 "to continue it, or choose a new dir (nothing was changed)")


def _last_epoch(run_dir: Path) -> int | None:
    try:
        lines = [ln for ln in (run_dir / "metrics.jsonl").read_text().splitlines() if ln.strip()]
        return int(json.loads(lines[-1])["epoch"]) if lines else None
    except (OSError, ValueError, KeyError, TypeError):
        return None


def finished_resume(resume: str, overrides: list[str]) -> None:
    """``resume=`` of a run that trained and evaluated: say so and exit 0 before Hydra makes a run dir
    (a new dir would hold only hard links and read later as an unfinished run). A resume that raises
    ``schedule.epochs`` past the epochs trained goes on (it trains more)."""
    p = Path(resume).expanduser()
    run_dir = p if p.is_dir() else p.parent
    res = run_dir / "results.json"
    if not res.is_file():
        return
    done = _last_epoch(run_dir)
    more = next((o.split("=", 1)[1] for o in overrides if override_key(o) == "schedule.epochs"), None)
    try:
        if more is not None and (done is None or int(more) > done):
            return
    except ValueError:
        return  # a bad value: the validation below names it
    print(f"advrw: run {run_dir} is complete ({done} epochs trained and evaluated); its results are in {res} "
          "(nothing to do, no new run dir)")
    sys.exit(0)


# Top-level keys a config reads that its composition does not show (train's eval.n_eval reads n_eval).
READ_EXTRA = {"train": {"n_eval"}, "eval": set()}
# Evaluation settings that are lists evaluated inside one job: a sweep over them is a list.
LIST_KEYS = ("eval.alpha_test", "eval.rho", "eval.only")


def groups() -> list[str]:
    return sorted(p.name for p in Path(CONF_DIR).iterdir() if p.is_dir() and p.name != "hydra")


def check_eval_sweeps(config_name: str, overrides: list[str]) -> None:
    """A multirun over evaluation settings: never one training per value (issue: evaluation grids)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for o in OverridesParser.create().parse_overrides(overrides):
        if not o.is_sweep_override():
            continue
        key, vals = o.key_or_group, list(o.sweep_string_iterator())
        shown = f"{key}={','.join(vals)}"
        if key in LIST_KEYS:
            fail(f"{shown} would start one job per value: {key} is a list evaluated inside each job, "
                 f"write {key}=[{','.join(vals)}]")
        if config_name == "train" and (key in ("eval", "n_eval") or key.startswith("eval.")):
            fail(f"{shown} in a multirun of advrw.train would retrain once per evaluation setting: train once, then "
                 f"run python -m advrw.eval -m ckpt=<run dir> {shown}")


def check_added_keys(config_name: str, overrides: list[str], base) -> None:
    """``+key=value`` at the top level that no code reads (e.g. ``+defence=trades``) is refused."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import OverrideType

    known = set(base) | set(groups()) | READ_EXTRA.get(config_name, set())
    for o in OverridesParser.create().parse_overrides(overrides):
        if o.type not in (OverrideType.ADD, OverrideType.FORCE_ADD):
            continue
        top = o.key_or_group.split(".")[0].split("@")[0]
        if top == "hydra" or top in known:
            continue
        fail(f"{o.input_line} adds a top-level key '{top}' that nothing reads{suggest(top, sorted(known))}: "
             "remove it or fix its name")


def _candidates(base):
    """``candidates(key)``: the keys beside a dotted ``key`` in the config, and the group names."""
    from omegaconf import OmegaConf

    def candidates(key: str) -> list[str]:
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        node = OmegaConf.select(base, parent) if parent else base
        if parent and not hasattr(node, "keys"):  # the first part is misspelled: evel.n_eval
            first, rest = key.split(".", 1)
            return [f"{k}.{rest}" for k in [*map(str, base.keys()), *groups()]]
        keys = [f"{parent}.{k}" if parent else str(k) for k in (node.keys() if hasattr(node, "keys") else [])]
        return keys + ([] if parent else groups())
    return candidates


def precheck(config_name: str, validate, argv: list[str] | None = None) -> None:
    """Compose and validate every job of the command line; exit 2 with one line on bad input."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides, multirun, skip = split_args(sys.argv[1:] if argv is None else argv)
    if skip:
        return
    sweep = next((o.split("=", 1)[1] for o in overrides if o.lstrip("+").startswith("sweep=")), None)
    if sweep not in (None, "null") and not multirun:
        fail(f"sweep={sweep} launches a sweep: add -m (python -m advrw.{config_name} -m sweep={sweep} ...)")
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    check_output_dir(overrides, multirun, resume if resume not in (None, "null") else None)
    if config_name == "train" and not multirun and resume not in (None, "null"):
        finished_resume(resume, overrides)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        if multirun:  # a sweep a config sets (hydra.sweeper.params, e.g. a sweep preset) is checked too
            overrides = with_sweeper_params(sweeper_params(compose, config_name, overrides), overrides)
            check_eval_sweeps(config_name, overrides)
        try:
            jobs = job_overrides(overrides, multirun)
        except Exception as err:
            fail(one_line(err))
        check_hydra_groups(compose, config_name, overrides)
        if any(o.startswith("+") for o in overrides):
            check_added_keys(config_name, overrides, compose(config_name=config_name, overrides=[]))
        composed = []
        for job in jobs:  # every job's values first, then the files they name (a typo beats a download)
            try:
                cfg = compose(config_name=config_name, overrides=job)
            except Exception as err:
                fail(one_line(err, _candidates(_groups_only(compose, config_name, job))))
            try:
                if config_name == "train" and cfg.get("resume"):  # validate the run it continues
                    _, saved = resume_cfg.training_checkpoint(cfg, mmap=True)
                    cfg = resume_cfg.merge(cfg, saved, job, resume_cfg.group_choices(job))
                validate(cfg)
            except AdvrwError as err:
                fail(str(err) + (f"  [job: {' '.join(job)}]" if multirun and len(jobs) > 1 else ""))
            composed.append((job, cfg))
        for job, cfg in composed:
            try:
                preflight(config_name, cfg)
            except AdvrwError as err:
                fail(str(err) + (f"  [job: {' '.join(job)}]" if multirun and len(jobs) > 1 else ""))
    GlobalHydra.instance().clear()


def check_hydra_groups(compose, config_name: str, overrides: list[str]) -> None:
    """Hydra's own groups (``hydra/launcher=``, ``hydra/sweeper=``): an unknown option in one line."""
    picks = [o for o in overrides if override_key(o).startswith("hydra/")]
    if not picks:
        return
    try:
        compose(config_name=config_name, overrides=picks, return_hydra_config=True)
    except Exception as err:
        fail(one_line(err))


def sweeper_params(compose, config_name: str, overrides: list[str]) -> dict:
    """``hydra.sweeper.params`` that the command line's config sets (e.g. a ``sweep=`` preset)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:  # composed without the command line's own sweeps, which compose() does not take
        plain = [o.input_line for o in OverridesParser.create().parse_overrides(overrides)
                 if not o.is_sweep_override()]
        cfg = compose(config_name=config_name, overrides=plain, return_hydra_config=True)
        params = cfg.hydra.sweeper.get("params")
    except Exception:  # the per-job composition below reports a broken command line
        return {}
    return dict(params or {})


def with_sweeper_params(params: dict, overrides: list[str]) -> list[str]:
    """``hydra.sweeper.params`` as overrides, before the command line's (which win for the same key)."""
    given = {override_key(o) for o in overrides}
    return [f"{k}={v}" for k, v in params.items() if str(k) not in given] + list(overrides)


def _groups_only(compose, config_name, job):
    """The job's config with only its group choices (what a misspelled key is compared against)."""
    picks = [o for o in job if "=" in o and "." not in o.split("=")[0] and not o.startswith(("+", "~"))]
    try:
        return compose(config_name=config_name, overrides=picks)
    except Exception:
        return compose(config_name=config_name, overrides=[])
