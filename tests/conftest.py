"""Shared fixtures: run the real CLI in a subprocess, compose real configs."""

from __future__ import annotations

import functools
import inspect
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
# The real CIFAR-10 JPEG archive (tests that need it skip without it): $ADVRW_CIFAR10_ARCHIVE, else
# ../shared/data/cifar10-jpeg.tar.gz beside the checkout (the README's path), never an absolute one.
CIFAR_JPEG = Path(os.environ.get("ADVRW_CIFAR10_ARCHIVE") or ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz")
# A test is ``slow`` (left out by ``pytest -m "not slow"``) when it or one of its fixtures starts a
# training or an evaluation through the CLI: each such run costs seconds to minutes on a CPU.
_CLI_RUN = re.compile(r"""\b(?:run_)?cli\(\s*["'](?:train|eval)["']""")


def cli(module: str, *args: str, cwd: Path, timeout: int = 600, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m advrw.<module> args...`` with W&B disabled and a private data cache."""
    # One torch thread per child: tiny models gain nothing from two, and two busy-waiting threads
    # on a 2-core box slow every CLI test several times over.
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0",
                "ADVRW_CACHE": str(cwd / ".cache"), **(env or {})}
    return subprocess.run([sys.executable, "-m", f"advrw.{module}", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def ok(proc: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert proc.returncode == 0, f"exit {proc.returncode}\nSTDOUT:\n{proc.stdout[-3000:]}\nSTDERR:\n{proc.stderr[-5000:]}"
    return proc


def preset_jobs(*args: str) -> list[list[str]]:
    """The jobs the precheck validates (and Hydra's sweeper launches) for ``advrw.train -m args``."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from advrw.config import CONF_DIR
    from advrw.config.precheck import job_overrides, sweeper_params, with_sweeper_params

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        overrides = with_sweeper_params(sweeper_params(compose, "train", list(args)), list(args))
    return job_overrides(overrides, True)


@functools.lru_cache(maxsize=None)
def _compose(config_name: str, overrides: tuple[str, ...], hydra: bool):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from advrw.config import CONF_DIR

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides), return_hydra_config=hydra)


def compose_config(config_name: str, *overrides: str, hydra: bool = False):
    """The real ``conf/<config_name>.yaml`` composed with ``overrides`` (a fresh copy each call)."""
    import copy

    return copy.deepcopy(_compose(config_name, tuple(overrides), hydra))  # cached compose, private copy


@pytest.fixture
def cfg_train():
    """``cfg_train(*overrides)``: ``conf/train.yaml`` as ``python -m advrw.train overrides...`` composes it."""
    return lambda *overrides, hydra=False: compose_config("train", *overrides, hydra=hydra)


@pytest.fixture
def cfg_eval():
    """``cfg_eval(*overrides)``: ``conf/eval.yaml`` as ``python -m advrw.eval overrides...`` composes it."""
    return lambda *overrides, hydra=False: compose_config("eval", *overrides, hydra=hydra)


def results(run_dir: Path) -> dict:
    return json.loads((Path(run_dir) / "results.json").read_text())


@pytest.fixture
def run_cli(tmp_path):
    def _run(module, *args, **kw):
        return cli(module, *args, cwd=tmp_path, **kw)
    return _run


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory):
    """One real tiny training run through the CLI (smoke preset + a val split), shared by eval tests."""
    cwd = tmp_path_factory.mktemp("trained")
    run_dir = cwd / "run"
    ok(cli("train", "experiment=smoke", "weighting=vir", f"hydra.run.dir={run_dir}", "schedule.epochs=4",
           "schedule.lr=0.2", "schedule.milestones=[3]", "dataset.n_train=512", cwd=cwd))
    return run_dir


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """Two busy-waiting torch threads on a shared 2-core box slow small tensors by 10-50x."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _runs_the_cli(func) -> bool:
    try:
        return bool(_CLI_RUN.search(inspect.getsource(func)))
    except (OSError, TypeError):
        return False


def pytest_collection_modifyitems(items):
    """Mark every test that trains or evaluates through the CLI (itself or in a fixture) ``slow``."""
    for item in items:
        fn = getattr(item, "function", None)
        defs = getattr(getattr(item, "_fixtureinfo", None), "name2fixturedefs", {}) or {}
        fixtures = [d[-1].func for d in defs.values() if d]
        if fn is not None and (_runs_the_cli(fn) or any(_runs_the_cli(f) for f in fixtures)):
            item.add_marker(pytest.mark.slow)
