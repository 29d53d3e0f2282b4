"""Checks the command line before Hydra runs anything, so bad input gets one line and exit 2.

Hydra reports an unknown group option or key as a multi-line message, and by the time a task
function sees a bad value Hydra has already created (or reused) the run dir. Here we parse the
overrides, compose the config for every job of a sweep (first ``MAX_JOBS`` combinations), run
the entry point's validator on each, and check the output dir -- all before any work.
"""

from __future__ import annotations

import itertools
import os
import re
import sys
from pathlib import Path

from advrw.errors import AdvrwError

CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
MAX_JOBS = 256
_SKIP = {"-h", "--help", "--hydra-help", "--info", "-i", "--cfg", "-c", "--shell-completion", "-sc",
         "--version", "--resolve"}
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


def one_line(err: Exception) -> str:
    """Hydra/OmegaConf composition errors, folded to one line that still lists the options."""
    text = str(err)
    m = re.search(r"Could not find '([^']+)/([^']+)'", text)
    if m:
        group, option = m.groups()
        block = re.search(r"Available options in '[^']+':\n((?:\t.*\n?)+)", text)
        options = block.group(1).split() if block else []
        allowed = ", ".join(options) if options else "see conf/" + group
        return f"{group}={option} is unknown: choose one of {allowed}"
    m = re.search(r"Could not override '([^']+)'", text)
    if m:
        key = m.group(1)
        return f"{key} is not a config key (to add a new key use +{key}=...)"
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
        found = [m for m in RUN_MARKERS if (target / m).exists()]
        if found and not (resume and Path(resume).resolve() in (target.resolve(), (target / "last.pt").resolve())):
            fail(f"hydra.run.dir={explicit} already holds a run ({', '.join(found)}): pass resume={explicit} "
                 "to continue it, or choose a new dir (nothing was changed)")


def precheck(config_name: str, validate, argv: list[str] | None = None) -> None:
    """Compose and validate every job of the command line; exit 2 with one line on bad input."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    overrides, multirun, skip = split_args(sys.argv[1:] if argv is None else argv)
    if skip:
        return
    try:
        from advrw.campaign import with_sweep_preset  # a sweep=NAME preset's hydra.sweeper.params count too

        jobs = job_overrides(with_sweep_preset(CONF_DIR, config_name, overrides, multirun), multirun)
    except Exception as err:
        fail(one_line(err))
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    check_output_dir(overrides, multirun, resume if resume not in (None, "null") else None)
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        for job in jobs:
            try:
                cfg = compose(config_name=config_name, overrides=job)
            except Exception as err:
                fail(one_line(err))
            try:
                validate(cfg)
            except AdvrwError as err:
                fail(str(err) + (f"  [job: {' '.join(job)}]" if multirun and len(jobs) > 1 else ""))
    GlobalHydra.instance().clear()
