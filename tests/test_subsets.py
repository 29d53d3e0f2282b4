"""Subsets are fair by construction: class-stratified, seeded, recorded (issue 6)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from advrw.data import build_data
from advrw.data.subsets import describe, digest, take
from advrw.core.errors import AdvrwError
from conftest import ok, results

CLASS_ORDERED = torch.arange(10).repeat_interleave(100)  # an ImageFolder set: all of class 0, then 1, ...


def test_stratified_is_equal_per_class_seeded_and_sorted():
    idx = take(CLASS_ORDERED, 200, seed=0)
    assert torch.bincount(CLASS_ORDERED[idx], minlength=10).tolist() == [20] * 10
    assert torch.equal(idx, idx.sort().values) and len(set(idx.tolist())) == 200
    assert torch.equal(idx, take(CLASS_ORDERED, 200, seed=0))  # same seed, same subset
    assert not torch.equal(idx, take(CLASS_ORDERED, 200, seed=1))
    # 205 = 10 x 20 + 5: five classes (chosen by the seed) get one more
    counts = torch.bincount(CLASS_ORDERED[take(CLASS_ORDERED, 205, seed=3)], minlength=10)
    assert sorted(counts.tolist()) == [20] * 5 + [21] * 5


def test_stratified_spreads_what_a_small_class_cannot_give():
    y = torch.cat([torch.zeros(3), torch.ones(100), torch.full((100,), 2)]).long()
    assert torch.bincount(y[take(y, 60, seed=0)]).tolist() == [3, 29, 28] or \
        torch.bincount(y[take(y, 60, seed=0)]).tolist() == [3, 28, 29]


def test_first_and_random_rules():
    interleaved = torch.arange(1000) % 10  # torchvision CIFAR-10's test order mixes the classes
    assert torch.equal(take(interleaved, 100, rule="first"), torch.arange(100))  # RobustBench's "first n"
    with pytest.raises(AdvrwError, match="miss 8 of 10 classes"):
        take(CLASS_ORDERED, 200, rule="first", key="eval.n_eval")
    r = take(CLASS_ORDERED, 200, rule="random", seed=5)
    assert len(r) == 200 and torch.equal(r, take(CLASS_ORDERED, 200, rule="random", seed=5))
    assert torch.equal(take(CLASS_ORDERED, None), torch.arange(1000))
    with pytest.raises(AdvrwError, match="n=1001 is larger"):
        take(CLASS_ORDERED, 1001)


def test_describe_records_rule_seed_and_hash():
    idx = take(CLASS_ORDERED, 50, seed=2)
    rec = describe(idx, 1000, "stratified", 2)
    assert rec == {"rule": "stratified", "seed": 2, "n": 50, "of": 1000, "hash": digest(idx)}
    assert len(rec["hash"]) == 12 and digest(idx.flip(0)) == rec["hash"]
    assert describe(torch.arange(1000), 1000, "stratified", 0)["rule"] == "all"


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def class_ordered_tree(root: Path, classes=4, n_train=12, n_test=10, size=16) -> Path:
    """{train,test}/{class}/*.png; each class a different mean colour so the model can learn a little."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                arr = np.clip(rng.normal(40 + 50 * c, 30, (size, size, 3)), 0, 255).astype(np.uint8)
                (folder / f"{i:03d}.png").write_bytes(_png(arr))
    return root


def test_dataset_subsets_of_a_class_ordered_set_are_balanced(tmp_path):
    root = class_ordered_tree(tmp_path / "set")
    cfg = {"name": "imagefolder", "root": str(root), "cache_dir": str(tmp_path / "cache"), "n_train": 40,
           "val_size": 8, "n_test": 20, "split_seed": 4}
    b = build_data(cfg, "cpu")
    assert torch.bincount(b.val_y, minlength=4).tolist() == [2] * 4
    assert torch.bincount(b.train_y, minlength=4).tolist() == [8] * 4
    assert torch.bincount(b.test_y, minlength=4).tolist() == [5] * 4
    assert b.subsets["test"]["rule"] == "stratified" and b.subsets["test"]["seed"] == 4 + 1_000_003
    assert build_data(cfg, "cpu").subsets == b.subsets  # same seed, same subsets
    with pytest.raises(AdvrwError, match="dataset.n_test=20 with subset rule 'first'"):
        build_data({**cfg, "subset": "first"}, "cpu")


def test_n_eval_on_an_imagefolder_scores_every_class(run_cli, tmp_path):
    root = class_ordered_tree(tmp_path / "set")
    run_dir = tmp_path / "run"
    ok(run_cli("train", "experiment=smoke", "dataset=imagefolder", f"dataset.root={root}", "dataset.n_train=null",
               "dataset.val_size=8", "schedule.epochs=1", "schedule.batch_size=16", "schedule.burn_in=0",
               "schedule.milestones=[1]",
               "eval.n_eval=8", "validation.n=4", f"hydra.run.dir={run_dir}"))
    res = results(run_dir)
    # the first 8 test images are all class c0; the stratified 8 are 2 of each class
    assert [sum(row) for row in res["clean"]["confusion"]] == [2, 2, 2, 2]
    sub = res["protocol"]["subsets"]
    assert sub["eval"]["rule"] == "stratified" and sub["eval"]["seed"] == 0 and sub["eval"]["n"] == 8
    assert sub["eval"]["of"] == 40 and len(sub["eval"]["hash"]) == 12
    assert sub["val"]["n"] == 8 and sub["test"]["rule"] == "all"
    # an evaluation of the same checkpoint with the same n_eval and seed scores the same images
    ok(run_cli("eval", f"ckpt={run_dir}", "eval=quick", "eval.n_eval=8", "logger=none", f"hydra.run.dir={tmp_path / 'e'}"))
    assert results(tmp_path / "e")["protocol"]["subsets"]["eval"] == sub["eval"]
