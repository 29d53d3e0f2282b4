"""The papers' tables: table sweep presets, eval presets with the tables' columns, the report's row
and column order, Best / Last columns. No training: jobs are composed, or faked as run dirs."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from advrw.evaluation import bestlast
from advrw.config import CONF_DIR
from advrw.config.precheck import precheck
from advrw.config.validation import validate_train
from advrw.report import main
from advrw.evaluation.suite import selected_attacks
from conftest import compose_config, preset_jobs

EPS = 8 / 255


@pytest.mark.parametrize("preset, extra, n", [
    ("mail_table2", [], 40), ("mail_table2", ["experiment=smoke"], 5), ("mail_table2", ["debug=fast"], 40),
    ("ewat_table2", [], 16), ("ewat_table2", ["experiment=ewat_trades_awp_cifar10"], 8),
])
def test_table_sweeps_expand_to_every_job(preset, extra, n):
    jobs = preset_jobs(f"sweep={preset}", *extra)
    assert len(jobs) == n and len({tuple(sorted(j)) for j in jobs}) == n


def test_table_sweeps_pass_precheck_and_score_the_tables_columns(monkeypatch, cfg_train):
    # composes and validates every method of each table (seed=0 on the command line: 8 + 4 jobs);
    # CIFAR-10's files are not here, so the file checks of the precheck are left out
    monkeypatch.setattr("advrw.config.precheck.preflight", lambda *a, **k: None)
    precheck("train", validate_train, ["-m", "sweep=mail_table2", "seed=0"])
    precheck("train", validate_train, ["-m", "sweep=ewat_table2", "seed=0"])
    mail = preset_jobs("sweep=mail_table2")
    assert sorted({dict(o.split("=", 1) for o in j)["experiment"] for j in mail}) == sorted(
        ["at_rn18_cifar10", "trades_rn18_cifar10", "mart_rn18_cifar10", "fat_rn18_cifar10", "at_awp_rn18_cifar10",
         "gairat_rn18_cifar10", "mail_at_rn18_cifar10", "mail_trades_rn18_cifar10"])
    vir_jobs, ewat_jobs = preset_jobs("sweep=vir_table1"), preset_jobs("sweep=ewat_table2")  # (these reset Hydra)
    fat = cfg_train(*next(j for j in mail if "experiment=fat_rn18_cifar10" in j))
    vir = cfg_train(*vir_jobs[0])
    ewat = [cfg_train(*next(j for j in ewat_jobs if f"weighting={w}" in j)) for w in ("none", "ewat")]
    # MAIL Table 2: NAT / PGD-100 / APGD(-CE) / CW / AA; the FAT row's paper numbers are MAIL's
    assert set(selected_attacks(fat.eval)) == {"pgd100", "apgd_ce", "cw", "autoattack"}
    assert fat.attack.name == "fat" and fat.paper.source.startswith("MAIL Table 2") and fat.paper.clean == 87.97
    # VIR Table 1: NATURAL / FGSM / PGD-100 / CW / FMN-100 / AA / MDE
    assert set(selected_attacks(vir.eval)) == {"fgsm", "pgd100", "cw", "fmn", "autoattack", "mde"}
    assert vir.eval.attacks.fmn.steps == 100
    # EWAT Table 2: PGD-10 (eps 8/255, step 2/255) on best.pt and last.pt, best chosen on a validation split
    for cfg in ewat:
        assert cfg.eval.checkpoint == "both" and cfg.dataset.val_size == 1000
        assert set(selected_attacks(cfg.eval)) == {"pgd10", "autoattack"}
        pgd10 = cfg.eval.attacks.pgd10
        assert pgd10.steps == 10 and pgd10.step * 255 == pytest.approx(2) and cfg.eval.eps * 255 == pytest.approx(8)
    assert [c.weighting.name for c in ewat] == ["none", "ewat"] and ewat[0].model.name == "preact_resnet18"


def test_every_paper_block_is_one_table_with_our_attack_names(cfg_train):
    """A preset's paper numbers sit next to our columns only under an attack the eval presets define."""
    names = set()
    for ev in ("full", "mail_table2", "vir_table1", "ewat_table2"):
        names |= set(cfg_train(f"eval={ev}").eval.attacks)
    for path in sorted((Path(CONF_DIR) / "experiment").glob("*.yaml")):
        paper = cfg_train(f"experiment={path.stem}").get("paper")
        if paper:
            assert paper.source.split()[0] in ("VIR", "MAIL", "EWAT", "Zeng", "DM-Improves-AT"), path.stem
            assert set(paper.get("attacks") or {}) <= names, path.stem
    # EW-TRADES-AWP builds on the EW-TRADES preset but must not inherit its numbers
    assert cfg_train("experiment=ewat_trades_awp_cifar10").paper is None


# ---- the report on constructed run dirs ----

def _protocols() -> dict:
    """Attack protocols as advrw.evaluation.suite writes them, in an order that is not the papers'."""
    return {
        "logit_scaling": {"attack": "pgd", "objective": "scaled_ce", "eps": EPS, "steps": 20, "step": EPS / 10,
                          "restarts": 1, "scale": 10.0},
        "mde": {"attack": "mde", "eps": EPS, "md_steps": 50, "change_point": 20},
        "autoattack": {"attack": "autoattack", "eps": EPS, "version": "standard", "n_iter": 100,
                       "restarts": {"apgd-ce": 1, "apgd-t": 1, "fab-t": 1, "square": 1}},
        "cw": {"attack": "pgd", "objective": "cw", "eps": EPS, "steps": 30, "step": 1 / 255, "restarts": 1},
        "fmn": {"attack": "fmn", "eps": EPS, "steps": 100},
        "apgd_ce": {"attack": "apgd_ce", "eps": EPS, "n_iter": 100, "restarts": 1, "loss": "ce"},
        "pgd100": {"attack": "pgd", "objective": "ce", "eps": EPS, "steps": 100, "step": 1 / 255, "restarts": 1},
        "fgsm": {"attack": "fgsm", "eps": EPS, "steps": 1, "step": EPS, "restarts": 1},
        "pgd20": {"attack": "pgd", "objective": "ce", "eps": EPS, "steps": 20, "step": EPS / 10, "restarts": 1},
    }


def _results(clean: float, attacks: dict[str, float], kind: str = "last", epoch: int = 3) -> dict:
    protos = _protocols()
    protos["pgd10"] = {"attack": "pgd", "objective": "ce", "eps": EPS, "steps": 10, "step": EPS / 4, "restarts": 1}
    return {"protocol": {"n_eval": 100, "checkpoint": {"kind": kind, "epoch": epoch}},
            "clean": {"accuracy": clean},
            "attacks": {n: {"robust_accuracy": v, "protocol": protos[n]} for n, v in attacks.items()},
            "worst_case": {"robust_accuracy": min(attacks.values()), "attacks": list(attacks)}}


def _composed(overrides: tuple[str, ...]):
    return compose_config("train", *overrides)


def _job(d: Path, overrides: list[str], res: dict | None, config_overrides: list[str] | None = None) -> None:
    """A run dir as Hydra and advrw leave it: the composed config, the overrides, results.json."""
    cfg = _composed(tuple(o for o in (config_overrides if config_overrides is not None else overrides)
                          if not o.startswith("seed=")))
    (d / ".hydra").mkdir(parents=True)
    OmegaConf.save(cfg, d / ".hydra" / "config.yaml")
    OmegaConf.save(OmegaConf.create(overrides), d / ".hydra" / "overrides.yaml")
    if res is not None:
        (d / "results.json").write_text(json.dumps(res))


def _table(md: str) -> tuple[list[str], list[list[str]]]:
    lines = [ln for ln in md.splitlines() if ln.startswith("|")]
    split = [[c.strip() for c in ln.strip("|").split("|")] for ln in lines]
    return split[0], split[2:]


# alphabetical by preset name on purpose: the report must not keep this order
PRESETS = {"at_awp_rn18_cifar10": "AT-AWP", "at_rn18_cifar10": "AT", "ewat_at_cifar10": "EW-AT",
           "ewat_trades_awp_cifar10": "EW-TRADES-AWP", "ewat_trades_cifar10": "EW-TRADES", "fat_rn18_cifar10": "FAT",
           "gairat_rn18_cifar10": "GAIRAT", "mail_at_rn18_cifar10": "MAIL-AT", "mail_trades_rn18_cifar10": "MAIL-TRADES",
           "mart_rn18_cifar10": "MART", "trades_awp_rn18_cifar10": "TRADES-AWP", "trades_rn18_cifar10": "TRADES",
           "vir_at_rn18_cifar10": "VIR-AT", "vir_trades_rn18_cifar10": "VIR-TRADES"}


def test_report_rows_in_the_papers_method_order_and_columns_in_their_order(tmp_path, capsys):
    accs = {n: 0.40 + 0.01 * i for i, n in enumerate(_protocols())}
    for i, exp in enumerate(PRESETS):
        for seed in (0, 1):
            _job(tmp_path / "sweep" / f"{i}-{seed}", [f"experiment={exp}", f"seed={seed}", "sweep=vir_table1"],
                 _results(0.80 + 0.02 * seed, accs))
    assert main([str(tmp_path / "sweep"), "--no-plots"]) == 0
    md = capsys.readouterr().out
    head, rows = _table(md)
    assert [r[0] for r in rows] == ["AT", "TRADES", "MART", "FAT", "AT-AWP", "TRADES-AWP", "GAIRAT", "MAIL-AT",
                                    "MAIL-TRADES", "VIR-TRADES", "VIR-AT", "EW-AT", "EW-TRADES", "EW-TRADES-AWP"]
    assert [r[1] for r in rows][:4] == ["at_rn18_cifar10", "trades_rn18_cifar10", "mart_rn18_cifar10",
                                        "fat_rn18_cifar10"]
    assert head[:3] == ["method", "experiment", "seeds"]
    assert head[3:] == [  # the papers' names, each with its budget
        "Clean", "FGSM (eps 8/255, 1 x 8/255)", "PGD-20 (eps 8/255, 20 x 0.8/255)", "PGD-100 (eps 8/255, 100 x 1/255)",
        "APGD-CE (eps 8/255, 100 iter)", "CW (eps 8/255, 30 x 1/255)", "FMN-100 (eps 8/255, 100 steps)",
        "AA (eps 8/255, version standard)", "MDE (eps 8/255, MD 50 steps, change point 20)",
        "logit_scaling (eps 8/255, 20 x 0.8/255)", "Worst case"]
    # FAT's row compares with MAIL Table 2, VIR-AT's with VIR Table 1; the sources are listed
    fat = rows[3]
    assert fat[3].startswith("81.00 ± 1.41 (paper 87.97, Δ -6.97)")
    assert f"(paper 46.68, Δ {100 * accs['apgd_ce'] - 46.68:+.2f})" in fat[head.index("APGD-CE (eps 8/255, 100 iter)")]
    assert "paper" not in rows[-1][3]  # EW-TRADES-AWP: no paper ran it
    assert "- method=FAT, experiment=fat_rn18_cifar10: MAIL Table 2" in md
    assert "- method=VIR-AT, experiment=vir_at_rn18_cifar10: VIR Table 1" in md


def test_report_method_first_then_numeric_for_swept_keys(tmp_path, capsys):
    # alphabetically ewat < vir and "10" < "2"; the papers put VIR before EWAT, and 2 < 10
    for i, (w, e) in enumerate([("vir", "10"), ("ewat", "2"), ("vir", "2"), ("ewat", "10")]):
        _job(tmp_path / "g" / str(i), [f"weighting={w}", f"schedule.epochs={e}"], _results(0.8, {"pgd20": 0.4}),
             config_overrides=["experiment=smoke", f"weighting={w}", f"schedule.epochs={e}"])
    assert main([str(tmp_path / "g"), "--no-plots", "--csv"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("method,schedule.epochs,n,seeds,clean mean")  # the method's name, not weighting=
    assert [tuple(ln.split(",")[:2]) for ln in lines[1:]] == [("VIR-AT", "2"), ("VIR-AT", "10"), ("EW-AT", "2"),
                                                               ("EW-AT", "10")]


def test_report_best_and_last_columns_from_one_evaluation(tmp_path, capsys):
    """eval.checkpoint=both: best.pt and last.pt side by side (EWAT Table 2's Best / Last PGD-10)."""
    for seed in (0, 1):
        best = _results(0.70 + 0.01 * seed, {"pgd10": 0.50 + 0.01 * seed, "autoattack": 0.45}, "best", epoch=2)
        last = _results(0.75 + 0.01 * seed, {"pgd10": 0.40 + 0.01 * seed, "autoattack": 0.38}, "last", epoch=4)
        res = bestlast.merge({"best": best, "last": last})
        _job(tmp_path / "s" / f"ew{seed}", ["weighting=ewat", f"seed={seed}"], res,
             config_overrides=["experiment=smoke", "weighting=ewat"])
    # a single-checkpoint run of another method: its numbers go to the last columns
    _job(tmp_path / "s" / "at0", ["weighting=none", "seed=0"], _results(0.9, {"pgd10": 0.3, "autoattack": 0.2}),
         config_overrides=["experiment=smoke"])
    assert main([str(tmp_path / "s"), "--no-plots"]) == 0
    md = capsys.readouterr().out
    head, rows = _table(md)
    b = "(eps 8/255, 10 x 2/255)"
    aa = "(eps 8/255, version standard)"
    assert head == ["method", "seeds", "Clean (best)", "Clean (last)", f"PGD-10 (best) {b}", f"PGD-10 (last) {b}",
                    f"AA (best) {aa}", f"AA (last) {aa}", "Worst case (best)", "Worst case (last)"]
    none, ewat = rows  # plain AT before its reweighting
    assert none[0] == "AT" and none[2] == "" and none[3] == "90.00" and none[5] == "30.00" and none[4] == ""
    assert ewat[0] == "EW-AT" and ewat[1] == "n=2"
    assert ewat[2].startswith("70.50 ± 0.71") and ewat[3].startswith("75.50 ± 0.71")
    assert ewat[4].startswith("50.50 ± 0.71") and ewat[5].startswith("40.50 ± 0.71")
    assert ewat[6].startswith("45.00") and ewat[7].startswith("38.00")
    assert "`best`: best.pt" in md and "validation split" in md


# ---- the report never gives a traceback ----

def test_report_lists_and_skips_corrupt_or_foreign_results(tmp_path, capsys, caplog):
    good = _results(0.8, {"pgd20": 0.4})
    _job(tmp_path / "s" / "0", ["weighting=none", "seed=0"], good, config_overrides=["experiment=smoke"])
    _job(tmp_path / "s" / "1", ["weighting=none", "seed=1"], None, config_overrides=["experiment=smoke"])
    (tmp_path / "s" / "1" / "results.json").write_text(json.dumps(good)[:40])  # truncated by a full disk
    _job(tmp_path / "s" / "2", ["weighting=none", "seed=2"], None, config_overrides=["experiment=smoke"])
    (tmp_path / "s" / "2" / "results.json").write_text("[1, 2, 3]")  # another tool's file
    assert main([str(tmp_path / "s"), "--no-plots"]) == 0
    md = capsys.readouterr().out
    head, rows = _table(md)
    assert len(rows) == 1 and rows[0][1] == "n=1" and rows[0][2] == "80.00"
    for d, why in (("1", "not readable JSON"), ("2", "not an advrw results.json (a list")):
        path = str(tmp_path / "s" / d / "results.json")
        assert f"`{path}`: {why}" in md and path in caplog.text


@pytest.mark.parametrize("kind", ["file", "readonly", "full"])
def test_report_unwritable_out_is_one_line(tmp_path, capsys, monkeypatch, kind):
    import errno
    import os

    _job(tmp_path / "s" / "0", ["seed=0"], _results(0.8, {"pgd20": 0.4}), config_overrides=["experiment=smoke"])
    out = tmp_path / "out"
    if kind == "file":
        out.write_text("x")
    elif kind == "readonly":
        out.mkdir()
        monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == out else True)  # root ignores modes
    else:
        def full(fd):
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(os, "fsync", full)
    code = main([str(tmp_path / "s"), "--no-plots", "--out", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == (4 if kind == "full" else 2) and len(err) == 1 and err[0].startswith("advrw: error: ")
    assert str(out) in err[0] and "Traceback" not in err[0]
    if kind != "file":
        assert not [p for p in out.iterdir()]  # no 0-byte report.md, no temp file


def test_report_latex_is_a_booktabs_table_with_the_papers_names(tmp_path, capsys):
    for exp, w in (("at_rn18_cifar10", 0.40), ("vir_trades_rn18_cifar10", 0.45)):
        for seed in (0, 1):
            _job(tmp_path / "s" / f"{exp}-{seed}", [f"experiment={exp}", f"seed={seed}"],
                 _results(0.8 + 0.01 * seed, {"pgd20": w, "autoattack": w - 0.05}))
    assert main([str(tmp_path / "s"), "--no-plots", "--latex", "--bold"]) == 0
    tex = capsys.readouterr().out
    lines = tex.splitlines()
    assert "\\usepackage{booktabs}" in lines[0] and lines[1] == "\\begin{table}[t]" and lines[-1] == "\\end{table}"
    assert [ln for ln in lines if ln in ("\\toprule", "\\midrule", "\\bottomrule")] == ["\\toprule", "\\midrule",
                                                                                     "\\bottomrule"]
    cap = next(ln for ln in lines if ln.startswith("\\caption{"))
    assert "CIFAR" in cap.upper() and "100 test examples" in cap and "(n=2)" in cap
    assert "PGD-20: eps 8/255, 20 x 0.8/255" in cap and "AA: eps 8/255, version standard" in cap
    head = lines[lines.index("\\toprule") + 1]
    assert head.startswith("Method & experiment & Clean & PGD-20 & AA & Worst case")
    body = lines[lines.index("\\midrule") + 1:lines.index("\\bottomrule")]
    assert [b.split(" & ")[0] for b in body] == ["AT", "VIR-TRADES"]
    vir = body[1].split(" & ")
    assert vir[3].startswith("$\\mathbf{45.00") and not body[0].split(" & ")[3].startswith("$\\mathbf")
    assert "(56.01" not in tex  # a preset's paper numbers are (paper, Δ) only where the paper has the column
    # the Markdown table: bold best per column too
    assert main([str(tmp_path / "s"), "--no-plots", "--bold"]) == 0
    assert "**45.00 ± 0.00**" in capsys.readouterr().out


def test_report_audit_column_summarises_every_seed(tmp_path, capsys):
    """Issue 13: the report's audit column says reliable only when every audited seed passed."""
    def audited(reasons):
        res = _results(0.8, {"pgd20": 0.4})
        res["audit"] = {"verdict": "flagged" if reasons else "reliable", "reasons": reasons, "n": 100, "checks": {}}
        return res
    for seed, reasons in enumerate([[], []]):  # VIR: both seeds pass
        _job(tmp_path / "g" / f"v{seed}", ["weighting=vir", f"seed={seed}"], audited(reasons),
             config_overrides=["experiment=smoke", "weighting=vir"])
    for seed, reasons in enumerate([["loss_choice"], [], ["black_box", "loss_choice"]]):  # GAIRAT: 2 of 3 flagged
        _job(tmp_path / "g" / f"g{seed}", ["weighting=gairat", f"seed={seed}"], audited(reasons),
             config_overrides=["experiment=smoke", "weighting=gairat"])
    assert main([str(tmp_path / "g"), "--no-plots"]) == 0
    head, rows = _table(capsys.readouterr().out)
    assert head[-1] == "Audit"
    by_method = {r[0]: r[-1] for r in rows}
    assert by_method == {"GAIRAT": "flagged 2/3: black_box, loss_choice", "VIR-AT": "reliable"}, by_method
    assert main([str(tmp_path / "g"), "--no-plots", "--csv"]) == 0
    table = list(csv.reader(io.StringIO(capsys.readouterr().out)))
    assert table[0][-1] == "audit"
    assert sorted(r[-1] for r in table[1:]) == ["flagged 2/3: black_box, loss_choice", "reliable"]
    # without any audit block there is no column at all
    _job(tmp_path / "plain" / "0", ["weighting=vir"], _results(0.8, {"pgd20": 0.4}),
         config_overrides=["experiment=smoke", "weighting=vir"])
    assert main([str(tmp_path / "plain"), "--no-plots"]) == 0
    head, _ = _table(capsys.readouterr().out)
    assert "Audit" not in head
