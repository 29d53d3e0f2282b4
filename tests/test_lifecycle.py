"""Runs that survive: signals, resume of anything, non-finite values, a full disk, W&B trouble."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from conftest import cli, ok, results

COMMON = ["experiment=smoke", "dataset.n_train=320", "eval.n_eval=16", "eval.checkpoint=best"]


def epochs_of(run_dir: Path) -> list[int]:
    return [json.loads(x)["epoch"] for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def same_weights(a: Path, b: Path) -> bool:
    wa = torch.load(a, weights_only=False)["model"]
    wb = torch.load(b, weights_only=False)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def one_line(proc) -> str:
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1 and "Traceback" not in proc.stderr + proc.stdout, proc.stderr[-3000:]
    return err[0]


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An uninterrupted smoke run: the reference every interrupted run must end identical to."""
    cwd = tmp_path_factory.mktemp("full")
    ok(cli("train", *COMMON, f"hydra.run.dir={cwd / 'run'}", cwd=cwd))
    return cwd / "run"


def test_device_batches_continue_an_epoch_exactly():
    from advrw.data import DeviceBatches

    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (50,))
    ref = DeviceBatches(x, y, 16, shuffle=True, augment=True, generator=torch.Generator().manual_seed(5))
    want = [xb for xb, _ in ref]
    gen = torch.Generator().manual_seed(5)
    part = DeviceBatches(x, y, 16, shuffle=True, augment=True, generator=gen)
    it = part.batches()
    got = [next(it)[0], next(it)[0]]
    order, state = part.order.clone(), gen.get_state()
    gen2 = torch.Generator()
    gen2.set_state(state)
    rest = DeviceBatches(x, y, 16, shuffle=True, augment=True, generator=gen2)
    got += [xb for xb, _ in rest.batches(order, start=2)]
    assert len(got) == len(want) == 4 and all(torch.equal(a, b) for a, b in zip(got, want))


def test_signal_mid_epoch_then_resume_is_bitwise_identical(full_run, tmp_path):
    part = tmp_path / "part"
    proc = cli("train", *COMMON, f"hydra.run.dir={part}", cwd=tmp_path, env={"ADVRW_FAULT_SIGNAL": "SIGINT@1:2"})
    assert proc.returncode == 75, proc.stderr[-3000:]
    line = one_line(proc)  # SIGINT: no KeyboardInterrupt traceback
    assert "SIGINT" in line and f"python -m advrw.train resume={part}" in line
    saved = torch.load(part / "last.pt", weights_only=False)
    assert saved["epoch"] == 0 and saved["position"]["batch"] == 3 and saved["interrupted"] == "SIGINT"
    # a kill during a save and between a metrics append and the save leave these behind:
    (part / "last.pt.tmp").write_bytes(b"")
    with (part / "metrics.jsonl").open("a") as f:
        f.write(json.dumps({"epoch": 1, "train_loss": 9.9}) + "\n")
    res = tmp_path / "resumed"
    ok(cli("train", f"resume={part}", f"hydra.run.dir={res}", cwd=tmp_path))
    assert same_weights(full_run / "last.pt", res / "last.pt")
    assert epochs_of(res) == [1, 2]
    rows = [json.loads(x) for x in (res / "metrics.jsonl").read_text().splitlines()]
    ref = [json.loads(x) for x in (full_run / "metrics.jsonl").read_text().splitlines()]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in ref]  # partial sums carried over
    assert results(res)["clean"] == results(full_run)["clean"]
    assert not list(part.glob("*.tmp")) and not list(res.glob("*.tmp"))


def test_second_signal_exits_at_once_and_keeps_the_last_checkpoint(tmp_path):
    run = tmp_path / "r"
    proc = cli("train", *COMMON, f"hydra.run.dir={run}", cwd=tmp_path, env={"ADVRW_FAULT_SIGNAL": "SIGTERM*2@2:1"})
    assert proc.returncode == 128 + 15 and "again" in proc.stderr and "Traceback" not in proc.stderr
    saved = torch.load(run / "last.pt", weights_only=False)  # epoch 1's, intact
    assert saved["epoch"] == 1 and saved["interrupted"] is None and not list(run.glob("*.tmp"))


def test_resume_finishes_a_complete_or_half_evaluated_run(full_run, tmp_path):
    proc = ok(cli("train", f"resume={full_run}", f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path))
    assert f"{full_run / 'results.json'}" in proc.stdout and "is complete" in proc.stdout
    assert not (tmp_path / "again").exists()  # resuming a finished run makes no new dir
    half = tmp_path / "half"  # killed during the final evaluation: training done, no results
    shutil.copytree(full_run, half)
    (half / "results.json").unlink()
    res = tmp_path / "finished"
    ok(cli("train", f"resume={half}", f"hydra.run.dir={res}", cwd=tmp_path))
    out = results(res)
    assert out["protocol"]["checkpoint"]["kind"] == "best" and out["clean"] == results(full_run)["clean"]
    assert epochs_of(res) == [1, 2] and (res / "best.pt").exists() and (res / "last.pt").exists()


@pytest.mark.parametrize("args", [["schedule.lr=1e6"], ["weighting=vir", "weighting.alpha=1e30"]])
def test_non_finite_values_stop_with_one_line(tmp_path, args):
    run = tmp_path / "r"
    proc = cli("train", *COMMON, *args, f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 3
    line = one_line(proc)
    assert "non-finite values" in line and "at epoch" in line and "lr=" in line, line
    if "vir" in args:
        assert "alpha" in line and "last finite checkpoint" in line
    for pt in run.glob("*.pt"):
        for key, value in torch.load(pt, weights_only=False)["model"].items():
            assert not value.is_floating_point() or torch.isfinite(value).all(), (pt, key)
    assert not list(run.glob("*.tmp"))


def test_full_disk_is_one_line_and_keeps_the_checkpoint(tmp_path, small_disk):
    run = small_disk.path / "r"
    ok(cli("train", *COMMON, "stop_after=1", f"hydra.run.dir={run}", cwd=tmp_path))
    before = (run / "last.pt").read_bytes()
    small_disk.fill(16384)  # leave less room than a checkpoint needs
    proc = cli("train", f"resume={run}", "progress=false", f"hydra.run.dir={run}", cwd=tmp_path)
    assert proc.returncode == 4, proc.stderr[-3000:]
    line = one_line(proc)
    assert "no space left on device" in line and str(run) in line, line
    assert (run / "last.pt").read_bytes() == before and not list(run.glob("*.tmp"))


def test_eval_applies_dataset_overrides_on_the_checkpoints_dataset(run_cli, tmp_path, trained_run):
    ok(run_cli("eval", f"ckpt={trained_run}", "eval=quick", "n_eval=16", "logger=none", "dataset.n_test=32",
               f"hydra.run.dir={tmp_path / 'e'}"))
    assert results(tmp_path / "e")["protocol"]["dataset"] == "synthetic"
    proc = run_cli("eval", f"ckpt={trained_run}", "eval=quick", "logger=none", "dataset.normalize=true",
                   f"hydra.run.dir={tmp_path / 'e2'}")
    assert proc.returncode == 2 and "trained with dataset.normalize=false" in one_line(proc)


def test_wandb_unwritable_dir_and_failed_online_start(tmp_path, monkeypatch, caplog):
    from advrw.records.runlog import RunLog

    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("WANDB_BASE_URL", "http://127.0.0.1:9")  # nothing listens: never the network
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    rl = RunLog(tmp_path / "run", {"name": "wandb", "mode": "offline", "dir": str(blocker / "wb")}, {"a": 1})
    rl.finish()
    assert "is not writable" in caplog.text and list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    caplog.clear()
    rl = RunLog(tmp_path / "run2", {"name": "wandb", "mode": "online"}, {"a": 1})
    assert rl.wandb is not None and "logging offline" in caplog.text
    rl.finish()
    assert list((tmp_path / "run2" / "wandb").glob("offline-run-*"))


@pytest.mark.slow
def test_submitit_preemption_requeues_and_continues_in_place(full_run, tmp_path):
    pytest.importorskip("hydra_plugins.hydra_submitit_launcher")
    sweep = tmp_path / "sweep"
    # submitit's preemption signal (USR2) mid-epoch in both jobs: each saves, is requeued, continues alone
    ok(cli("train", "-m", *COMMON, "seed=0,1", "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}",
           cwd=tmp_path, env={"ADVRW_FAULT_SIGNAL": "SIGUSR2@1:2"}))
    logs = [p.read_text() for p in (sweep / ".submitit").rglob("*_log.out")]
    assert len(logs) == 2 and all("Requeued job" in t and "continuing the interrupted run" in t for t in logs)
    assert same_weights(full_run / "last.pt", sweep / "0" / "last.pt")
    for job in ("0", "1"):
        assert (sweep / job / "results.json").exists() and epochs_of(sweep / job) == [1, 2]
        assert torch.load(sweep / job / "last.pt", weights_only=False)["interrupted"] is None


def test_a_stale_run_dir_is_refused_but_a_preempted_one_continues(tmp_path):
    from omegaconf import OmegaConf

    from advrw.training.lifecycle import RunState

    cfg = OmegaConf.create({"resume": None, "seed": 0, "schedule": {"epochs": 2}, "logger": {"name": "none"}})
    run = tmp_path / "r"
    run.mkdir()
    payload = {"config": OmegaConf.to_container(cfg), "optimizer": {}, "epoch": 0, "interrupted": None}
    torch.save(payload, run / "last.pt")
    with pytest.raises(Exception, match="already holds a run"):
        RunState.open(cfg, run, None)
    torch.save({**payload, "interrupted": "SIGUSR2"}, run / "last.pt")
    assert RunState.open(cfg, run, None).resumed["interrupted"] == "SIGUSR2"
    other = OmegaConf.merge(cfg, {"seed": 1})  # another config in the same dir: never continued
    with pytest.raises(Exception, match="already holds a run"):
        RunState.open(other, run, None)


def test_kill_9_at_random_points_then_resume_is_identical(tmp_path):
    """kill -9 (no handler runs) at seeded random moments -- one as soon as a checkpoint save is under
    way (its .tmp exists) -- then resume: final weights equal an uninterrupted run's and
    metrics.jsonl holds every epoch once."""
    import random
    import signal
    import sys
    import time

    args = [*COMMON, "schedule.epochs=6", "schedule.milestones=[6]"]
    ref = tmp_path / "ref"
    ok(cli("train", *args, f"hydra.run.dir={ref}", cwd=tmp_path))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "WANDB_MODE": "disabled", "ADVRW_CACHE": str(tmp_path / ".cache")}
    rng = random.Random(0)
    for trial, during_save in enumerate([True, False]):
        part = tmp_path / f"killed{trial}"
        proc = subprocess.Popen([sys.executable, "-m", "advrw.train", *args, f"hydra.run.dir={part}"], cwd=tmp_path,
                                env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline, delay = time.monotonic() + 120, rng.uniform(0.0, 0.5)
        while proc.poll() is None and time.monotonic() < deadline:
            if during_save and any(part.glob("*.pt.tmp")):
                break  # a save is under way: kill it mid-write
            if not during_save and (part / "last.pt").exists():
                time.sleep(delay)
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert (part / "last.pt").exists() or any(part.glob("*.tmp")), "killed before any checkpoint"
        if not (part / "last.pt").exists():  # killed inside the very first save: start again in place
            shutil.rmtree(part)
            ok(cli("train", *args, "stop_after=1", f"hydra.run.dir={part}", cwd=tmp_path))
        res = tmp_path / f"resumed{trial}"
        ok(cli("train", f"resume={part}", f"hydra.run.dir={res}", cwd=tmp_path))
        assert same_weights(ref / "last.pt", res / "last.pt"), f"trial {trial}"
        assert epochs_of(res) == [1, 2, 3, 4, 5, 6], f"trial {trial}"
        assert not list(res.glob("*.tmp"))
