"""The evaluation runner: a final evaluation interrupted between attacks resumes where it stopped."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from advrw.data import build_data, subsets
from advrw.evaluation.runner import PARTIAL, final_eval
from advrw.models import build_model


class Stop(Exception):
    """Stands in for training's Interrupted (raised by the lifecycle's between_attacks)."""


def test_final_eval_resumes_from_the_first_attack_not_done(cfg_train, tmp_path):
    cfg = cfg_train("experiment=smoke", "eval=quick", "+eval.attacks.fgsm={kind:fgsm}", "eval.alpha_test=[1.0]",
                    "eval.rho=[0.5]", "dataset.n_test=48")
    data = build_data(cfg.dataset, "cpu")
    torch.manual_seed(0)
    model = build_model("tiny", data.num_classes, in_channels=data.channels, image_size=data.image_size).eval()
    subset = subsets.eval_subset(data.test_y, cfg.eval)
    dirs = {}
    for name in ("interrupted", "straight"):
        dirs[name] = tmp_path / name
        dirs[name].mkdir()
        torch.save({"model": model.state_dict(), "config": OmegaConf.to_container(cfg, resolve=True), "epoch": 2},
                   dirs[name] / "last.pt")
    calls = []

    def stop_after_first():
        calls.append(len(calls))
        if len(calls) == 1:
            raise Stop

    with pytest.raises(Stop):
        final_eval(cfg, model, data, dirs["interrupted"], None, subset, between_attacks=stop_after_first)
    saved = json.loads((dirs["interrupted"] / PARTIAL).read_text())
    assert list(saved["units"]) == ["last@2/pgd20"] and not (dirs["interrupted"] / "results.json").exists()
    ran = []
    resumed = final_eval(cfg, model, data, dirs["interrupted"], None, subset, between_attacks=lambda: ran.append(1))
    assert len(ran) == 2  # fgsm and the non-uniform metrics; pgd20 came from the partial file
    straight = final_eval(cfg, model, data, dirs["straight"], None, subset)
    assert not (dirs["interrupted"] / PARTIAL).exists()
    strip = lambda r: {k: v for k, v in r.items() if k != "protocol"}  # noqa: E731 (paths differ)
    assert strip(resumed) == strip(straight)
    assert resumed["nonuniform"]["A_rob"] == pytest.approx(resumed["attacks"]["pgd20"]["robust_accuracy"])
    pngs = sorted(p.name for p in (dirs["straight"] / "figures").glob("*.png"))  # a run's figures live in figures/
    assert pngs and pngs == sorted(p.name for p in (dirs["interrupted"] / "figures").glob("*.png"))
    for png in pngs:
        assert (dirs["interrupted"] / "figures" / png).read_bytes() == (dirs["straight"] / "figures" / png).read_bytes()
