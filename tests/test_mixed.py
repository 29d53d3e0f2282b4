"""dataset.extra_fraction: a fixed share of extra data per batch, an epoch on the original set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import compose_config

from advrw.config.validation import validate_train
from advrw.data import MixedBatches, build_data
from advrw.core.errors import AdvrwError


def rows(n_orig, n_extra, size=4):
    """Images whose first pixel encodes the row (row % 256) and labels = row, so batches are traceable."""
    n = n_orig + n_extra
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    x[:, 0, 0, 0] = torch.arange(n) % 256
    return x, torch.arange(n)


def batches(n_orig=1000, n_extra=450, bs=100, f=0.7, seed=0, start_epoch=0, augment=False):
    x, y = rows(n_orig, n_extra)
    gen = torch.Generator().manual_seed(seed)
    return MixedBatches(x, y, n_extra, bs, f, augment=augment, generator=gen, extra_seed=seed,
                        start_epoch=start_epoch), gen


@pytest.mark.parametrize("n_orig,bs,f", [(1000, 100, 0.7), (997, 128, 0.7), (640, 64, 0.5), (500, 50, 0.3)])
def test_ratio_per_batch_and_epoch_length_on_the_original_set(n_orig, bs, f):
    mb, _ = batches(n_orig=n_orig, bs=bs, f=f)
    k = round(f * bs)
    assert len(mb) == -(-n_orig // (bs - k))  # epoch = original set / originals per batch
    seen_orig, n_extra_seen, total = [], 0, 0
    got = list(mb)
    assert len(got) == len(mb)
    for i, (_, yb) in enumerate(got):
        is_extra = yb >= n_orig
        seen_orig += yb[~is_extra].tolist()
        n_extra_seen += int(is_extra.sum())
        total += len(yb)
        if i < len(got) - 1:
            assert len(yb) == bs and int(is_extra.sum()) == k
    assert sorted(seen_orig) == list(range(n_orig))  # every original image once per epoch
    assert abs(n_extra_seen / total - f) <= 0.01


def test_extra_rows_without_replacement_across_epochs():
    # 450 extra rows, 70 per batch x 34 batches (the last 23) = 2333 per epoch: passes cross epochs.
    mb, _ = batches()
    stream = []
    for _ in range(2):
        for _, yb in mb:
            stream += [v - 1000 for v in yb.tolist() if v >= 1000]
    assert len(stream) == 2 * mb.extras_per_epoch() == 2 * 2333
    for p in range(len(stream) // 450):
        assert sorted(stream[p * 450:(p + 1) * 450]) == list(range(450)), p  # each pass a permutation
    assert stream[:450] != stream[450:900]  # a fresh permutation per pass


def test_resume_at_an_epoch_boundary_gives_the_same_batches():
    full, _ = batches(augment=True)
    epochs = [[(x.clone(), y.clone()) for x, y in full] for _ in range(3)]
    # the run stopped after epoch 2: its generator state is the one after two epochs
    replay, gen = batches(augment=True)
    for _ in range(2):
        list(replay)
    resumed, gen2 = batches(augment=True, start_epoch=2)
    gen2.set_state(gen.get_state())
    for (xa, ya), (xb, yb) in zip(epochs[2], resumed):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_generated_rows_keep_their_npz_labels(tmp_path):
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (40, 16, 16, 3), dtype=np.uint8)
    lab = rng.integers(0, 10, 40)  # e.g. RST's pseudo-labels
    np.savez(tmp_path / "extra.npz", image=img, label=lab)
    data = build_data({"name": "synthetic", "n_train": 60, "image_size": 16, "extra_npz": str(tmp_path / "extra.npz")}, "cpu")
    mb = MixedBatches(data.train_x, data.train_y, data.n_extra, 10, 0.5, augment=False, generator=None,
                      extra_seed=0)
    lookup = {tuple(torch.from_numpy(im).permute(2, 0, 1).flatten().tolist()): int(l) for im, l in zip(img, lab)}
    found = 0
    for xb, yb in mb:
        for xi, yi in zip(xb[5:], yb[5:]):
            assert lookup[tuple((xi * 255).round().to(torch.uint8).flatten().tolist())] == int(yi)
            found += 1
    assert found == 6 * 5 * 2  # 60 originals / 5 per batch = 12 batches, 5 extra each, over 40 rows


def compose_train(*overrides):
    return compose_config("train", "experiment=smoke", *overrides)


@pytest.mark.parametrize("overrides,needle", [
    (["dataset.extra_fraction=0.7"], "dataset.extra_fraction=0.7 needs dataset.extra_npz"),
    (["dataset.extra_fraction=1.0", "dataset.extra_npz=x.npz"], "dataset.extra_fraction=1.0 is invalid: must be a number in (0, 1)"),
    (["dataset.extra_fraction=0.999", "dataset.extra_npz=x.npz"], "gives 64 extra images per batch"),
])
def test_bad_extra_fraction(overrides, needle):
    with pytest.raises(AdvrwError) as err:
        validate_train(compose_train(*overrides))
    assert needle in str(err.value)


def test_null_extra_fraction_validates():
    validate_train(compose_train("dataset.extra_npz=x.npz"))
    validate_train(compose_train("dataset.extra_npz=x.npz", "dataset.extra_fraction=0.7"))


def test_mid_epoch_continuation_gives_the_remaining_batches():
    """A signal checkpoint saves the epoch's permutation and the generator after batch k: the
    continued epoch yields exactly the uninterrupted epoch's remaining batches (augmentation too)."""
    mb, gen = batches(augment=True)
    full = list(mb.batches())
    mb2, gen2 = batches(augment=True)
    it = mb2.batches()
    head = [next(it) for _ in range(3)]
    order, state = mb2.order.clone(), gen2.get_state()
    mb3, gen3 = batches(augment=True)
    gen3.set_state(state)
    rest = list(mb3.batches(order, 3))
    for (xa, ya), (xb, yb) in zip(full, head + rest):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert len(head + rest) == len(full)
