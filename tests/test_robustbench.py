"""RobustBench both ways, offline: a zoo entry from a local file in RobustBench's layout, the
eval=robustbench protocol, and advrw.export's layout loaded back through ckpt=robustbench:."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from conftest import ok, results

from advrw.models import zoo

if importlib.util.find_spec("robustbench") is None:  # the optional extra (in .[dev], so CI runs these)
    pytest.skip("robustbench is not installed: pip install -e '.[robustbench]'", allow_module_level=True)


def test_the_real_robustbench_is_imported():
    rb = zoo.import_robustbench()
    assert "site-packages" in rb.__file__ and hasattr(rb, "load_model")
    import autoattack  # the alias robustbench's own modules import
    import pyautoattack

    assert autoattack.AutoAttack is pyautoattack.AutoAttack


def test_zoo_entry_offline_from_robustbench_layout(run_cli, tmp_path):
    """Sehwag2021Proxy_R18 (a ResNet-18 of the zoo) with local weights: built by robustbench's own
    architecture, evaluated with advrw's suite; no file -> one line saying where to put it."""
    name, where = "Sehwag2021Proxy_R18", tmp_path / "models" / "cifar10" / "Linf"
    data = ("dataset=synthetic", "dataset.image_size=32", "dataset.n_test=40", f"robustbench.model_dir={tmp_path / 'models'}")
    proc = run_cli("eval", f"ckpt=robustbench:{name}", *data, "logger=none", f"hydra.run.dir={tmp_path / 'none'}")
    assert proc.returncode == 2 and f"no file at {where / (name + '.pt')}" in proc.stderr.strip().splitlines()[-1]
    assert not (tmp_path / "none").exists()
    where.mkdir(parents=True)
    model = zoo.zoo_entry(name, {"dataset": "cifar10", "threat_model": "Linf"})()
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, where / f"{name}.pt")
    out = tmp_path / "ev"
    ok(run_cli("eval", f"ckpt=robustbench:{name}", *data, "eval=quick", "n_eval=8", "logger=none",
               "eval.plots=false", f"hydra.run.dir={out}"))
    p = results(out)["protocol"]
    assert p["checkpoint"]["kind"] == "robustbench" and p["model"] == f"robustbench:{name}"
    assert p["robustbench"]["source"] == "RobustBench model zoo" and p["n_eval"] == 8


@pytest.mark.slow  # four CLI runs, AutoAttack among them
def test_export_then_load_back_with_the_robustbench_protocol(run_cli, tmp_path, trained_run):
    out = tmp_path / "zoo"
    proc = subprocess.run([sys.executable, "-m", "advrw.export", str(trained_run), "--robustbench", "--out", str(out),
                           "--name", "mine"], capture_output=True, text=True, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((out / "synthetic" / "Linf" / "mine.json").read_text())
    res = results(trained_run)
    assert info["clean_acc"] == f"{100 * res['clean']['accuracy']:.2f}" and info["eps"] == "8/255"
    assert info["autoattack_acc"] is None and "AutoAttack not measured" in info["footnote"]
    assert info["architecture"] == "tiny" and info["unreliable"] is None and info["advrw"]["model"] == "tiny"
    args = ("ckpt=robustbench:mine", f"robustbench.model_dir={out}", "robustbench.dataset=synthetic", "dataset=synthetic",
            "logger=none", "eval.plots=false")
    ok(run_cli("eval", *args, "eval=quick", f"hydra.run.dir={tmp_path / 'back'}"))
    back = results(tmp_path / "back")
    assert back["clean"]["accuracy"] == res["clean"]["accuracy"]  # the same weights and images
    assert back["attacks"]["pgd20"]["robust_accuracy"] == res["attacks"]["pgd20"]["robust_accuracy"]
    ok(run_cli("eval", *args, "eval=robustbench", "n_eval=64", f"hydra.run.dir={tmp_path / 'rb'}"))
    rb = results(tmp_path / "rb")
    assert rb["protocol"]["subsets"]["eval"]["rule"] == "first" and rb["protocol"]["n_eval"] == 64
    assert list(rb["attacks"]) == ["autoattack"] and rb["attacks"]["autoattack"]["protocol"]["version"] == "standard"
