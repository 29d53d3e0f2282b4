"""Campaigns: sweep presets, the report, W&B identity, launcher presets, unique run dirs, debug=fast."""

from __future__ import annotations

import csv
import io
import json
import os
import statistics
import struct
import subprocess
import sys
from pathlib import Path

import pytest

from advrw.records.identity import swept_overrides, wandb_identity
from advrw.config import CONF_DIR
from advrw.config.precheck import precheck
from advrw.config.validation import validate_train
from conftest import compose_config, preset_jobs, cli, ok, results

# The smallest jobs that still train (one epoch, one batch) and evaluate.
TINY = ["experiment=smoke", "dataset.n_train=64", "dataset.n_test=32", "dataset.val_size=0", "eval.plots=false",
        "schedule.epochs=1", "schedule.burn_in=0", "schedule.milestones=[1]"]


@pytest.mark.parametrize("preset, extra, n", [
    ("seeds", ["experiment=smoke", "weighting=vir,none"], 8), ("zeng_alpha", ["experiment=smoke"], 14),
    ("vir_gamma_beta", ["experiment=smoke"], 15), ("vir_factors", [], 6), ("mail_gamma_beta", [], 16),
    ("ewat_tau", [], 3), ("vir_table1", ["debug=fast"], 28), ("vir_table1", ["experiment=smoke"], 4),
])
def test_sweep_presets_expand_to_every_job(preset, extra, n):
    # the command line wins over a preset's key (experiment=smoke replaces vir_table1's seven presets)
    jobs = preset_jobs(f"sweep={preset}", *extra)
    assert len(jobs) == n and len({tuple(sorted(j)) for j in jobs}) == n


def test_zeng_alpha_grid_and_command_line_wins():
    jobs = preset_jobs("sweep=zeng_alpha", "experiment=smoke")
    pairs = {(dict(o.split("=", 1) for o in j)["defense"], float(dict(o.split("=", 1) for o in j)["weighting.alpha"]))
             for j in jobs}
    assert pairs == {(d, a) for d in ("at", "trades") for a in (0, 0.01, 0.05, 0.1, 1, 1.5, 2)}
    cfg = compose_config("train", *jobs[-1])
    validate_train(cfg)
    assert cfg.weighting.name == "margin_exp" and cfg.attack.weighted and cfg.eval.name == "nonuniform"
    assert list(cfg.eval.alpha_test) == [0.5, 1.0, 1.5, 2.0]  # evaluated in-job, not swept
    # a key given on the command line replaces the preset's list (Hydra's sweeper does the same)
    assert len(preset_jobs("sweep=zeng_alpha", "experiment=smoke", "weighting.alpha=0,2")) == 4


def test_precheck_validates_every_job_of_a_preset(capsys):
    # AT/TRADES/MART have no burn-in, so the first job is fine; the schemes' burn-in 74-75 >= 50 epochs is not
    with pytest.raises(SystemExit) as e:
        precheck("train", validate_train, ["-m", "sweep=vir_table1", "schedule.epochs=50",
                                             "schedule.milestones=[30,40]"])
    assert e.value.code == 2 and "schedule.burn_in=" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        precheck("train", validate_train, ["sweep=seeds", "experiment=smoke"])
    assert "add -m" in capsys.readouterr().err


def test_debug_fast_fits_every_paper_preset():
    presets = sorted(p.stem for p in (Path(CONF_DIR) / "experiment").glob("*.yaml") if p.stem != "smoke")
    for name in presets:
        cfg = compose_config("train", f"experiment={name}", "debug=fast")
        validate_train(cfg)
        assert cfg.schedule.epochs == 2 and cfg.schedule.burn_in == min(cfg.weighting.burn_in, 1), name
        assert cfg.eval.name == "quick" and cfg.eval.n_eval == 100
        assert cfg.dataset.n_train == max(256, cfg.schedule.batch_size), name  # at least one batch
        assert cfg.minimizer.get("warmup", 0) < cfg.schedule.epochs, name  # AWP runs in the debug epochs
        assert cfg.attack.steps == 3 and cfg.attack.step * 3 >= cfg.attack.eps  # the shortened attack still reaches eps
        assert cfg.validation.n == (min(cfg.dataset.val_size, 100) if cfg.dataset.val_size else None)
    # a sweep preset's own eval= gives way to debug=fast
    assert compose_config("train", "sweep=vir_table1", "debug=fast").eval.name == "quick"


def test_launcher_presets_compose(monkeypatch):
    monkeypatch.setenv("SBATCH_PARTITION", "gpu-a100")
    slurm = compose_config("train", "hydra/launcher=slurm", "experiment=smoke", hydra=True)
    local = compose_config("train", "hydra/launcher=local", hydra=True)
    share = compose_config("train", "hydra/launcher=gpu_share", "hydra.launcher.n_jobs=3", hydra=True)
    sl = slurm.hydra.launcher
    assert sl._target_.endswith("SlurmLauncher") and sl.gpus_per_node == 1 and sl.timeout_min == 1440
    assert sl.partition == "gpu-a100" and sl.account is None and sl.cpus_per_task > 0 and sl.mem_gb > 0
    assert local.hydra.launcher._target_.endswith("LocalLauncher")
    assert share.hydra.launcher._target_.endswith("JoblibLauncher") and share.hydra.launcher.n_jobs == 3


def test_joblib_preset_runs_two_jobs(tmp_path):
    sweep = tmp_path / "s"
    ok(cli("train", "-m", *TINY, "seed=0,1", "hydra/launcher=gpu_share", f"hydra.sweep.dir={sweep}", cwd=tmp_path))
    assert sorted(results(sweep / j)["protocol"]["train_seed"] for j in ("0", "1")) == [0, 1]


def test_runs_started_together_get_their_own_dirs(tmp_path):
    env = {**os.environ, "WANDB_MODE": "disabled", "ADVRW_CACHE": str(tmp_path / ".cache")}
    procs = [subprocess.Popen([sys.executable, "-m", "advrw.train", *TINY], cwd=tmp_path, env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    for p in procs:
        out, err = p.communicate(timeout=600)
        assert p.returncode == 0, err[-3000:]
    dirs = sorted(p.parent for p in (tmp_path / "outputs").glob("*/*/.hydra"))
    assert len(dirs) == 2 and dirs[0] != dirs[1]
    for d in dirs:
        assert [json.loads(x)["epoch"] for x in (d / "metrics.jsonl").read_text().splitlines()] == [1]
        assert (d / "last.pt").exists() and results(d)["protocol"]["checkpoint"]["epoch"] == 1
        assert len(list(d.glob("*.log"))) <= 1


# ---- sweeps + report (the expensive part: one sweep shared by several assertions) ----

@pytest.fixture(scope="module")
def seeds_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("seeds")
    sweep = cwd / "sweep"
    ok(cli("train", "-m", "sweep=seeds", *TINY, "weighting=vir,none", f"hydra.sweep.dir={sweep}", cwd=cwd,
           timeout=900))
    return cwd, sweep


def test_report_markdown_groups_seeds(seeds_sweep, tmp_path):
    cwd, sweep = seeds_sweep
    # an unfinished job (its config, no results) in a second dir is listed, not dropped
    broken = tmp_path / "broken" / "0"
    (broken / ".hydra").mkdir(parents=True)
    for f in ("config.yaml", "overrides.yaml"):
        (broken / ".hydra" / f).write_text((sweep / "0" / ".hydra" / f).read_text())
    md = ok(cli("report", str(sweep), str(tmp_path / "broken"), "--out", str(tmp_path / "rep"), cwd=cwd)).stdout
    table = [ln for ln in md.splitlines() if ln.startswith("|")]
    # one column names the method as the papers do; the unfinished job's unresolved .hydra config
    # (${mul:...}) compares equal to the finished jobs' resolved ones, so it adds no columns
    assert table[0] == "| method | seeds | Clean | PGD-20 (eps 8/255, 20 x 0.8/255) | Worst case |"
    assert set(table[1].strip("|")) <= set("-:|")
    rows = table[2:]
    assert [r.split("|")[1].strip() for r in rows] == ["AT", "VIR-AT"]
    for r in rows:
        cells = [c.strip() for c in r.strip("|").split("|")]
        assert len(cells) == len(table[0].strip("|").split("|"))
        assert cells[1] == "n=4" and all("±" in c for c in cells[2:])
    assert "Jobs without results (1)" in md and str(broken) in md
    # the numbers are the mean and sample std of the four seeds' results.json
    accs = [100 * r["clean"]["accuracy"] for r in map(results, sweep.glob("[0-9]*"))
            if r["protocol"]["weighting"] == "vir"]
    assert f"{statistics.fmean(accs):.2f} ± {statistics.stdev(accs):.2f}" in rows[1]


def test_report_csv_and_latex(seeds_sweep, tmp_path):
    cwd, sweep = seeds_sweep
    text = ok(cli("report", str(sweep), "--csv", "--out", str(tmp_path), cwd=cwd)).stdout
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [r["method"] for r in rows] == ["AT", "VIR-AT"] and {r["n"] for r in rows} == {"4"}
    assert {r["seeds"] for r in rows} == {"0 1 2 3"}
    assert all(0 <= float(r["clean mean"]) <= 100 and float(r["clean std"]) >= 0 for r in rows)
    assert (tmp_path / "report.csv").read_text() == text
    tex = ok(cli("report", str(sweep), "--latex", "--out", str(tmp_path), cwd=cwd)).stdout
    # a booktabs table: header and one row a method, the protocol and seed count in the caption
    assert "\\usepackage{booktabs}" in tex.splitlines()[0] and "\\begin{tabular}{lrrr}" in tex
    assert "\\toprule" in tex and "\\midrule" in tex and "\\bottomrule" in tex
    # \pm: the caption's, then 2 rows x 3 columns
    assert tex.count("\\\\") == 3 and tex.count("\\pm") == 1 + 6 and "VIR-AT & $" in tex
    assert "(n=4)" in tex and "PGD-20: eps 8/255, 20 x 0.8/255" in tex and "(\\%)" in tex


@pytest.fixture(scope="module")
def zeng_sweep(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("zeng")
    sweep = cwd / "sweep"
    ok(cli("train", "-m", "sweep=zeng_alpha", *TINY, "weighting.alpha=0,2", "logger=wandb", f"hydra.sweep.dir={sweep}",
           cwd=cwd, timeout=900, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"}))
    return cwd, sweep


def test_zeng_alpha_sweep_report_and_figures(zeng_sweep):
    cwd, sweep = zeng_sweep
    jobs = sorted(p.parent for p in sweep.glob("*/results.json"))
    seen = set()
    for j in jobs:
        res = results(j)
        assert sorted(res["nonuniform"]["alpha_test"]) == ["0.5", "1.0", "1.5", "2.0"]
        seen.add((res["protocol"]["defense"], json.loads((j / "run_info.json").read_text())["choices"]["weighting"]))
    assert len(jobs) == 4 and seen == {("at", "margin_exp"), ("trades", "margin_exp")}
    md = ok(cli("report", str(sweep), "--wandb", cwd=cwd, env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})).stdout
    head = next(ln for ln in md.splitlines() if ln.startswith("|"))
    for a in ("0.5", "1", "1.5", "2"):
        assert f"| A_sa (α={a}) |" in head and f"| A_tr (α={a}) |" in head
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")][1:]
    assert [tuple(c.strip() for c in r.split("|")[1:3]) for r in rows] == [
        ("margin_exp (alpha=0)", "0"), ("margin_exp (alpha=2)", "2"), ("margin_exp-TRADES (alpha=0)", "0"),
        ("margin_exp-TRADES (alpha=2)", "2")]
    # W&B: named from what differs (the swept alpha_train), never by job number; one group per config
    records = [wandb_records(j) for j in jobs]
    runs = [r for r, _, _ in records]
    assert sorted(r.display_name for r in runs) == sorted(
        f"margin_exp-{d}-synthetic-tiny-alpha={a}-s0" for d in ("at", "trades") for a in ("0", "2"))
    assert len({r.run_group for r in runs}) == 4
    # the campaign: a tag and a config field on every training run and on the report run that joins them
    report, _, report_config = wandb_records(sweep)
    assert report.job_type == "report"
    for run, summary, config in [*records, (report, {}, report_config)]:
        assert f"campaign-{sweep.name}" in run.tags and config["campaign"] == sweep.name
    for run, summary, config in records:  # W&B's panels group by prefix
        assert {"train/loss", "train/w_mean", "train/lr", "test/clean"} <= set(summary)
        assert "train/class_weight_sum/class0" in summary and not any(k.startswith("eval/") for k in summary)
        assert config["weighting"]["burn_in"] == config["schedule"]["burn_in"]  # the value that ran
    for name in ("alpha_test_curves.png", "heatmap_A_tr_alpha_test.png", "heatmap_defense_x_weighting.alpha.png"):
        assert (sweep / name).stat().st_size > 1000, name


# ---- W&B: the default logger, offline, through both CLIs ----

def wandb_records(run_dir: Path, wait_s: float = 30.0):
    """(run record, summary dict, config dict) of the offline run in ``run_dir``; W&B's service process
    writes the log after ``finish()`` returns, so a busy machine gets a few seconds for it to land."""
    import time

    deadline = time.monotonic() + wait_s
    while True:
        run, summary, config = _read_wandb_log(run_dir)
        if (run is not None and summary) or time.monotonic() > deadline:
            return run, summary, config
        time.sleep(0.5)


def _read_wandb_log(run_dir: Path):
    """(run record, summary dict, config dict) of the offline run in ``run_dir`` (a LevelDB-style log)."""
    from wandb.proto import wandb_internal_pb2 as pb

    (path,) = run_dir.glob("wandb/offline-run-*/*.wandb")
    data, pos, block, buf = path.read_bytes(), 7, 32768, b""
    run, summary, config = None, {}, {}
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:
            pos += left
            continue
        buf += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):  # a full record, or the last piece of one
            rec = pb.Record()
            rec.ParseFromString(buf)
            buf = b""
            which = rec.WhichOneof("record_type")
            if which == "run":  # the run record carries the config given to wandb.init
                run = rec.run
                config.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in run.config.update})
            elif which == "summary":
                summary.update({u.key or "/".join(u.nested_key): json.loads(u.value_json) for u in rec.summary.update})
    return run, summary, config


def test_wandb_train_resume_and_eval_records(tmp_path):
    env = {"WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    common = ["experiment=smoke", "weighting=vir", "logger=wandb", "dataset.n_train=128", "eval.n_eval=16",
              "eval.plots=true"]
    ok(cli("train", *common, "stop_after=1", f"hydra.run.dir={tmp_path / 'part'}", cwd=tmp_path, env=env))
    ok(cli("train", f"resume={tmp_path / 'part'}", f"hydra.run.dir={tmp_path / 'full'}", cwd=tmp_path, env=env))
    ok(cli("eval", f"ckpt={tmp_path / 'full'}", "eval=quick", "n_eval=16", f"hydra.run.dir={tmp_path / 'ev'}",
           cwd=tmp_path, env=env))  # the default logger (wandb), no logger= override
    part, _, _ = wandb_records(tmp_path / "part")
    full, summary, _ = wandb_records(tmp_path / "full")
    ev, ev_summary, ev_config = wandb_records(tmp_path / "ev")
    assert full.run_id == part.run_id  # the resume continued the same W&B run
    assert full.display_name == "vir-at-synthetic-tiny-s0" and full.job_type == "train"
    assert full.run_group.startswith("vir-at-synthetic-tiny-") and "s0" not in full.run_group
    assert {"test/clean", "test/pgd20", "test/worst_case", "best/val_robust", "best/epoch"} <= set(summary)
    assert {"val/robust", "val/clean", "train/loss"} <= set(summary)
    assert summary["test/clean"] == pytest.approx(results(tmp_path / "full")["clean"]["accuracy"])
    # class weight sums: one scalar per class and epoch, not a table of all epochs re-sent every epoch
    assert {f"train/class_weight_sum/class{c}" for c in range(10)} <= set(summary)
    assert not any(k.startswith("class_weight_sums") for k in summary) and "figures/class_weight_sums/path" in summary
    assert ev.job_type == "eval" and ev.run_group == full.run_group
    assert ev.display_name == "vir-at-synthetic-tiny-s0-eval-quick"
    assert ev_config["train_run"]["id"] == full.run_id
    assert ev_summary["test/clean"] == pytest.approx(results(tmp_path / "ev")["clean"]["accuracy"])


def test_wandb_identity_from_what_differs():
    base = {"weighting": {"name": "vir", "gamma": 3.0}, "defense": {"name": "at"},
            "dataset": {"name": "cifar10", "root": "/a"}, "model": {"name": "resnet18"}, "seed": 0}
    a = wandb_identity(base)
    assert a["name"] == "vir-at-cifar10-rn18-s0"
    assert wandb_identity({**base, "seed": 1})["group"] == a["group"]  # seeds share a group
    assert wandb_identity({**base, "dataset": {"name": "cifar10", "root": "/b"}})["group"] == a["group"]
    gamma10 = {**base, "weighting": {"name": "vir", "gamma": 10.0}}
    assert wandb_identity(gamma10)["group"] != a["group"]
    swept = swept_overrides(["weighting=vir", "weighting.gamma=10", "seed=1", "experiment=smoke"],
                            ["weighting=vir", "weighting.gamma=3,10", "seed=0,1", "experiment=smoke"])
    assert swept == ["gamma=10"]
    assert wandb_identity({**gamma10, "seed": 1}, swept)["name"] == "vir-at-cifar10-rn18-gamma=10-s1"


def _fake_job(d: Path, overrides: list[str], clean: float | None, pgd100: float = 0.5, paper: dict | None = None):
    """A job dir as Hydra and advrw leave it (config, overrides, results.json), without training."""
    from omegaconf import OmegaConf

    (d / ".hydra").mkdir(parents=True)
    cfg = OmegaConf.create({"seed": 0, "paper": paper, "schedule": {"epochs": 3}})
    for o in overrides:  # what the overrides set is in the config that ran (the report groups by it)
        OmegaConf.update(cfg, o.split("=")[0], o.split("=")[1], force_add=True)
    OmegaConf.save(cfg, d / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), d / ".hydra" / "overrides.yaml")
    if clean is not None:
        proto = {"attack": "pgd", "eps": 8 / 255, "steps": 100, "step": 1 / 255, "restarts": 1}
        (d / "results.json").write_text(json.dumps({
            "protocol": {"n_eval": 10000}, "clean": {"accuracy": clean},
            "attacks": {"pgd100": {"robust_accuracy": pgd100, "protocol": proto}}}))
    else:
        (d / "metrics.jsonl").write_text(json.dumps({"epoch": 1}) + "\n")


def test_report_paper_numbers_numeric_sort_and_unfinished(tmp_path, capsys, monkeypatch):
    from advrw.report import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")

    paper = {"source": "VIR Table 1", "clean": 84.59, "attacks": {"pgd100": 56.42}}
    for i, (seed, clean) in enumerate([(0, 0.84), (1, 0.86)]):
        _fake_job(tmp_path / "p" / str(i), ["experiment=vir_at_rn18_cifar10", f"seed={seed}"], clean, 0.56, paper)
    for i, g in enumerate(["10", "2", "3"]):  # string order would be 10, 2, 3
        _fake_job(tmp_path / "g" / str(i), [f"weighting.gamma={g}"], 0.8, paper=paper)
    _fake_job(tmp_path / "g" / "3", ["weighting.gamma=4"], None, paper=paper)
    assert main([str(tmp_path / "p"), "--no-plots", "--wandb"]) == 0
    md = capsys.readouterr().out
    run, summary, _ = wandb_records(tmp_path / "p")  # the table went to W&B as a report run
    assert run.job_type == "report" and run.run_group == "sweep-p" and summary["report/table/nrows"] == 1
    row = next(ln for ln in md.splitlines() if ln.startswith("| all"))
    assert "85.00 ± 1.41 (paper 84.59, Δ +0.41)" in row and "56.00 (paper 56.42, Δ -0.42)" in row.replace("± 0.00 ", "")
    assert "PGD-100 (eps 8/255, 100 x 1/255)" in md
    assert main([str(tmp_path / "g"), "--no-plots"]) == 0
    md = capsys.readouterr().out
    rows = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ")][1:]
    assert rows == ["2", "3", "10"] and "paper" not in md.split("Accuracy in %")[0]  # not the preset: no paper
    assert "Jobs without results (1)" in md and "trained 1/3 epochs" in md and str(tmp_path / "g" / "3") in md


@pytest.mark.slow
def test_continued_sweep_jobs_count_in_their_sweep_and_resumed_experiments_keep_their_rows(tmp_path):
    """A stop_after sweep continued job by job with resume= (the README's advice after a time limit):
    the sweep's report counts the continuations, two different resumed experiments stay two rows,
    lineage is recorded both ways, each job's command is its own, and a finished run makes no new dir."""
    sweep = tmp_path / "sweep"
    tiny = [o for o in TINY if not o.startswith("schedule.")] + ["schedule.epochs=2", "schedule.burn_in=0",
                                                                 "schedule.milestones=[2]"]
    ok(cli("train", "-m", *tiny, "weighting=none,vir", "stop_after=1", f"hydra.sweep.dir={sweep}", cwd=tmp_path))
    for j in ("0", "1"):
        ok(cli("train", f"resume={sweep / j}", f"hydra.run.dir={tmp_path / ('cont' + j)}", cwd=tmp_path))
    md = ok(cli("report", str(sweep), "--no-plots", "--out", str(tmp_path / "rep"), cwd=tmp_path)).stdout
    rows = [ln for ln in md.splitlines() if ln.startswith("| ")][1:]
    assert [r.split("|")[1].strip() for r in rows] == ["AT", "VIR-AT"] and "Jobs without results" not in md
    assert all(r.split("|")[2].strip() == "n=1" for r in rows)
    # the continuations alone (command lines: only resume=...) are still two experiments
    md = ok(cli("report", str(tmp_path / "cont0"), str(tmp_path / "cont1"), "--no-plots", "--out",
                str(tmp_path / "rep2"), cwd=tmp_path)).stdout
    assert [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ")][1:] == ["AT", "VIR-AT"]
    first = json.loads((sweep / "1" / "run_info.json").read_text())
    cont = json.loads((tmp_path / "cont1" / "run_info.json").read_text())
    assert first["continued_by"] == [str((tmp_path / "cont1").resolve())]
    assert cont["continues"] == str((sweep / "1").resolve())
    assert first["command"].startswith("python -m advrw.train ") and "weighting=vir" in first["command"]
    assert "weighting=none" not in first["command"] and "-m" not in first["command"].split()[2:]  # its own values
    assert cont["command"] == f"python -m advrw.train resume={sweep / '1'}"
    assert isinstance(first["git_dirty"], bool) and cont["config"]["weighting"]["name"] == "vir"
    assert Path(results(tmp_path / "cont1")["protocol"]["checkpoint"]["path"]).is_absolute()
    assert results(tmp_path / "cont1")["classes"] == [f"class{c}" for c in range(10)]
    proc = ok(cli("train", f"resume={tmp_path / 'cont1'}", f"hydra.run.dir={tmp_path / 'again'}", cwd=tmp_path))
    assert "is complete" in proc.stdout and not (tmp_path / "again").exists()
