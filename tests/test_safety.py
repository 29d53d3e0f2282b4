"""Runs that survive, round two (issue 15): no checkpoint runs code, signals in every phase, a sweep
refused whole, one run per dir, a full disk in the final evaluation and under advrw.eval."""

from __future__ import annotations

import json
import os
import random
import signal
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import cli, ok, results

COMMON = ["experiment=smoke", "dataset.n_train=320", "eval.n_eval=16"]
PNGS = tuple(f"figures/{p}" for p in ("confusion_pgd20.png", "per_class_pgd20.png", "entropy_hist.png",
                                        "class_weight_sums.png"))  # every run figure lives in figures/


def one_line(proc) -> str:
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    return err[0]


class Evil:
    """Unpickling this runs code (it would create ``marker``)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("full")
    ok(cli("train", *COMMON, f"hydra.run.dir={cwd / 'run'}", cwd=cwd))
    return cwd / "run"


# ------------------------------------------------------------------------------- no code runs
def test_a_crafted_checkpoint_never_runs_its_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pt"
    torch.save({"model": Evil(marker), "config": {}, "optimizer": {}}, evil)
    proc = cli("eval", f"ckpt={evil}", "model=tiny", "dataset=synthetic", "logger=none", cwd=tmp_path)
    assert proc.returncode == 2 and "ckpt_trust=true" in one_line(proc) and str(evil) in one_line(proc)
    proc = cli("train", "experiment=smoke", f"resume={evil}", f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path)
    assert proc.returncode == 2 and "ckpt_trust=true" in one_line(proc)
    assert not marker.exists() and not (tmp_path / "r").exists() and not (tmp_path / "outputs").exists()


def test_own_and_earlier_checkpoints_round_trip_under_weights_only(tmp_path):
    """advrw's RNG states are tensors/lists (weights_only-safe); an earlier version's numpy tuple and
    TorchVersion still load; every RNG continues exactly where it was saved."""
    from advrw.core import checkpoints as ckpt_io

    gen = torch.Generator().manual_seed(3)
    np.random.seed(1)
    random.seed(2)
    ckpt_io.save(tmp_path / "new.pt", {"rng": ckpt_io.rng_state(gen), "epoch": 1})
    torch.save({"rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                        "generator": gen.get_state()}, "run_info": {"torch": torch.__version__}}, tmp_path / "old.pt")
    want = (np.random.rand(3).tolist(), random.random(), torch.rand(2, generator=gen).tolist(), torch.rand(2).tolist())
    torch.load(tmp_path / "new.pt", weights_only=True)  # plain torch, no allow-list: advrw's own format
    for name in ("new.pt", "old.pt"):
        np.random.seed(99)
        random.seed(99)
        gen2 = torch.Generator().manual_seed(99)
        ckpt_io.restore_rng(ckpt_io.read(tmp_path / name)["rng"], gen2)
        got = (np.random.rand(3).tolist(), random.random(), torch.rand(2, generator=gen2).tolist(), torch.rand(2).tolist())
        assert got == want, name


def test_checkpoint_texts_name_the_problem(tmp_path):
    from advrw.core import checkpoints as ckpt_io
    from advrw.core.errors import AdvrwError
    from advrw.models import build_model

    model = build_model("tiny", 10, in_channels=3, image_size=16)
    state = model.state_dict()
    renamed = {("body." + k if i == 0 else k): v for i, (k, v) in enumerate(state.items())}
    with pytest.raises(AdvrwError, match=r"missing layer names: .*; unexpected layer names: body\."):
        ckpt_io.load_model_state(model, renamed, "x.pt", "tiny", 10)
    nan = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in state.items()}
    with pytest.raises(AdvrwError, match="non-finite weights"):
        ckpt_io.load_model_state(model, nan, "x.pt", "tiny", 10)
    (tmp_path / "rand.pt").write_bytes(bytes(random.Random(0).randrange(256) for _ in range(999)))
    with pytest.raises(AdvrwError, match="is unreadable: not a torch checkpoint"):
        ckpt_io.read(tmp_path / "rand.pt")
    with pytest.raises(AdvrwError, match="is a directory"):
        ckpt_io.read(tmp_path)


# ------------------------------------------------------------------------------------- signals
def test_a_signal_in_a_deferred_phase_is_never_swallowed(tmp_path):
    from advrw.core.errors import Interrupted
    from advrw.training.signals import SignalGuard

    with SignalGuard(tmp_path) as guard:
        guard.phase = "the final evaluation"
        os.kill(os.getpid(), signal.SIGTERM)  # recorded only: nothing raises inside library code
        assert guard.requested == signal.SIGTERM
        with pytest.raises(Interrupted, match="SIGTERM during the final evaluation"):
            try:  # what a figure or W&B helper does around its work
                guard.between_attacks()
            except Exception:
                pass


@pytest.mark.parametrize("phase, said", [("eval", "the final evaluation"), ("figures", "the figures"),
                                         ("finish", "W&B finishing")])
def test_sigterm_in_each_final_phase_then_resume_gives_identical_results(full_run, tmp_path, phase, said):
    """SIGTERM as the final evaluation, the figures or W&B finishing begins: exit 75 with the resume
    command; the resume (or, after finishing, the run itself) has the uninterrupted run's results and
    byte-identical figures."""
    part = tmp_path / "part"
    proc = cli("train", *COMMON, f"hydra.run.dir={part}", cwd=tmp_path, env={"ADVRW_FAULT_SIGNAL": f"SIGTERM@{phase}"})
    assert proc.returncode == 75, proc.stderr[-3000:]
    assert f"SIGTERM during {said}" in one_line(proc) and f"resume={part}" in one_line(proc)
    if phase == "finish":  # the evaluation and figures were complete: nothing is left to redo
        assert (part / "results.json").exists()
        res = part
        assert "is complete" in ok(cli("train", f"resume={part}", f"hydra.run.dir={tmp_path / 'res'}",
                                       cwd=tmp_path)).stdout
    else:
        assert not (part / "results.json").exists()  # not complete: the resume finishes it
        res = tmp_path / "res"
        ok(cli("train", f"resume={part}", f"hydra.run.dir={res}", cwd=tmp_path))
    a, b = results(res), results(full_run)
    assert a["clean"] == b["clean"] and a["attacks"] == b["attacks"] and a["worst_case"] == b["worst_case"]
    for png in PNGS:
        assert (res / png).read_bytes() == (full_run / png).read_bytes(), png


def test_second_signal_before_any_checkpoint_says_so(tmp_path):
    run = tmp_path / "r"
    proc = cli("train", *COMMON, f"hydra.run.dir={run}", cwd=tmp_path, env={"ADVRW_FAULT_SIGNAL": "SIGTERM*2@1:0"})
    assert proc.returncode == 128 + 15 and "no complete checkpoint exists yet" in proc.stderr, proc.stderr[-2000:]


POOL_SCRIPT = """
import io, logging
from pathlib import Path
from PIL import Image
from advrw.data import archive
from advrw.training.signals import SignalGuard
logging.basicConfig(level=logging.INFO)
buf = io.BytesIO()
Image.new("RGB", (4, 4), (9, 9, 9)).save(buf, format="PNG")
blobs = [buf.getvalue()] * max(archive._PARALLEL_MIN, 64)
with SignalGuard(Path(".")) as guard:
    out = archive.decode_images(blobs, [f"{i}.png" for i in range(len(blobs))], "RGB", "test", workers=2)
print(out.shape, guard.requested)
"""


def test_pool_workers_ignore_the_runs_signal_handler(tmp_path):
    """Forked decode workers must not run the run's guard: it logged a stop when the pool closed."""
    proc = subprocess.run([sys.executable, "-c", POOL_SCRIPT], cwd=tmp_path, capture_output=True, text=True,
                          timeout=300, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 0 and proc.stdout.split()[-1] == "None", proc.stderr[-2000:]
    assert "received" not in proc.stderr, proc.stderr[-2000:]


# ---------------------------------------------------------------------------- sweeps and dirs
def _npz(path: Path, n: int, label: int, size: int = 16) -> Path:
    np.savez(path, image=np.zeros((n, size, size, 3), np.uint8), label=np.full(n, label))
    return path


def test_a_sweep_with_a_bad_npz_in_job_1_is_refused_before_job_0(tmp_path):
    good, bad = _npz(tmp_path / "good.npz", 8, 1), _npz(tmp_path / "bad.npz", 8, 19)
    proc = cli("train", "-m", "experiment=smoke", f"dataset.extra_npz={good},{bad}", "dataset.extra_fraction=0.25",
               cwd=tmp_path)
    assert proc.returncode == 2 and "has label 19: must be < 10" in one_line(proc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.npz", "good.npz"]  # no outputs/, no multirun/


def test_npz_texts_name_the_problem(tmp_path):
    from advrw.core.errors import AdvrwError
    from advrw.data.sources import inspect_npz

    np.savez(tmp_path / "onehot.npz", image=np.zeros((640, 4, 4, 3), np.uint8), label=np.eye(10)[np.arange(640) % 10])
    (tmp_path / "rand.npz").write_bytes(os.urandom(500))
    cases = {tmp_path / "onehot.npz": r"label array float64 \(640, 10\).*one-hot",
             tmp_path: "is a directory", tmp_path / "rand.npz": "is not an npz archive",
             _npz(tmp_path / "empty.npz", 0, 0): "has 0 images"}
    for path, text in cases.items():
        with pytest.raises(AdvrwError, match=text):
            inspect_npz(path, "dataset.extra_npz")


def test_five_simultaneous_launches_into_one_dir_run_once(tmp_path):
    run = tmp_path / "r"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "ADVRW_CACHE": str(tmp_path / ".cache")}
    procs = [subprocess.Popen([sys.executable, "-m", "advrw.train", *COMMON, "eval.plots=false",
                               f"hydra.run.dir={run}"], cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True) for _ in range(5)]
    outs = [(p.wait(timeout=600), p.stderr.read()) for p in procs]
    assert sorted(rc for rc, _ in outs) == [0, 2, 2, 2, 2], outs
    for rc, err in outs:
        if rc == 2:
            line = err.strip().splitlines()[-1]
            assert "in use by a running advrw process" in line or "already holds a run" in line, err
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and not (run / "run.lock").exists()


def test_a_stale_lock_is_reported_and_taken_over(tmp_path, caplog):
    from advrw.core.errors import AdvrwError
    from advrw.core.lock import RunLock

    dead = subprocess.Popen(["true"])
    dead.wait()
    (tmp_path / "run.lock").write_text(str(dead.pid))
    with RunLock(tmp_path):
        assert f"left by pid {dead.pid}" in caplog.text and "stale" in caplog.text
        with pytest.raises(AdvrwError, match=f"in use by a running advrw process \\(pid {os.getpid()}"):
            RunLock(tmp_path).__enter__()
    assert not (tmp_path / "run.lock").exists()


def test_a_dir_in_use_refuses_train_and_eval_before_hydra_writes(full_run, tmp_path):
    """A live run's dir (its lock held, here by this process): a training or an evaluation pointed at
    it is refused in one line naming the pid, and the run's .hydra/ files are left as they were."""
    from advrw.core.lock import RunLock

    busy = tmp_path / "busy"
    shutil.copytree(full_run, busy)
    before = {p.name: p.read_bytes() for p in (busy / ".hydra").iterdir()}
    with RunLock(busy):
        for args in (["train", *COMMON], ["eval", f"ckpt={full_run}", "eval=quick", "logger=none"]):
            proc = cli(*args, f"hydra.run.dir={busy}", cwd=tmp_path)
            assert proc.returncode == 2, proc.stderr[-2000:]
            assert f"in use by a running advrw process (pid {os.getpid()}" in one_line(proc)
        assert {p.name: p.read_bytes() for p in (busy / ".hydra").iterdir()} == before
    # free again: an evaluation into its own dir takes and drops the same lock
    ok(cli("eval", f"ckpt={full_run}", "eval=quick", "logger=none", f"hydra.run.dir={tmp_path / 'e'}", cwd=tmp_path))
    assert (tmp_path / "e" / "results.json").exists() and not (tmp_path / "e" / "run.lock").exists()


def test_a_kill_inside_the_first_save_then_rerun_in_place(tmp_path):
    """kill -9 while the first checkpoint is written: never best.pt without last.pt; the same command
    in the same dir then starts again and finishes, with each epoch once and no .tmp left."""
    run = tmp_path / "r"
    args = [*COMMON, "eval.checkpoint=best", "eval.plots=false", f"hydra.run.dir={run}"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "ADVRW_CACHE": str(tmp_path / ".cache")}
    proc = subprocess.Popen([sys.executable, "-m", "advrw.train", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while proc.poll() is None and time.monotonic() < deadline and not any(run.glob("*.pt.tmp")):
        time.sleep(0.001)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "last.pt").exists() or not (run / "best.pt").exists()
    ok(cli("train", *args, cwd=tmp_path) if not (run / "last.pt").exists()
       else cli("train", f"resume={run}", f"hydra.run.dir={run}", cwd=tmp_path))
    epochs = [json.loads(x)["epoch"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == [1, 2] and (run / "best.pt").exists() and not list(run.glob("*.tmp"))


# ------------------------------------------------------------------------------------ full disk
def test_a_full_disk_in_the_final_evaluation_and_under_eval(full_run, tmp_path, small_disk):
    import shutil

    run = small_disk.path / "r"  # a finished training without results: the final evaluation fills the disk
    run.mkdir()
    for name in ("last.pt", "metrics.jsonl"):
        shutil.copy(full_run / name, run / name)
    small_disk.fill(40_000)
    proc = cli("train", f"resume={run}", f"hydra.run.dir={run}", "progress=false", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr[-3000:]
    line = one_line(proc)
    assert "no space left on device" in line and str(run) in line, line
    left = [p for p in run.iterdir() if p.suffix == ".tmp" or p.stat().st_size == 0]
    assert not left and not (run / "results.json").exists(), left  # a resume with room finishes it
    out = small_disk.path / "e"
    proc = cli("eval", f"ckpt={full_run}", "logger=none", "progress=false", f"hydra.run.dir={out}", cwd=tmp_path)
    assert proc.returncode == 4 and "no space left on device" in one_line(proc), proc.stderr[-3000:]
    assert not [p for p in out.rglob("*") if p.is_file() and (p.suffix == ".tmp" or p.stat().st_size == 0)]
    assert not out.exists()  # Hydra could not write its .hydra/ files there: the dir made for nothing is gone


@pytest.mark.slow
def test_a_submitit_job_stopped_by_sigterm_is_one_line_per_job(tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    proc = cli("train", "-m", *COMMON, "seed=0,1", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
               cwd=tmp_path, env={"ADVRW_FAULT_SIGNAL": "SIGTERM@1:2"})
    assert proc.returncode == 75, proc.stderr[-3000:]
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr and len(lines) == 2, proc.stderr[-3000:]
    for job, line in zip(("0", "1"), lines):
        assert f"job {job} stopped by SIGTERM" in line and f"resume={sweep / job}" in line


def test_an_epoch_of_zero_weights_is_one_warning_naming_the_scheme(tmp_path):
    proc = ok(cli("train", *COMMON, "weighting=ewat", "weighting.tau=1e-9", "eval.plots=false",
                  f"hydra.run.dir={tmp_path / 'r'}", cwd=tmp_path))
    warned = [x for x in (proc.stdout + proc.stderr).splitlines() if "weight 0 for all of epoch" in x]
    assert len(warned) == 1 and "weighting=ewat {'tau': 1e-09}" in warned[0], proc.stdout[-2000:]
