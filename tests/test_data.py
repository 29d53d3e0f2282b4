"""Tests for advrw.data: loaders, splits, archives + cache, batching and augmentation."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import time
import zipfile
from pathlib import Path
from urllib.error import URLError

import numpy as np
import pytest
import torch
from PIL import Image

from advrw.data import DATASET_NAMES, DataBundle, DeviceBatches, build_data, crop_flip
from advrw.data import archive as archive_mod
from advrw.core.errors import AdvrwError
from conftest import CIFAR_JPEG

REAL_ARCHIVE = CIFAR_JPEG  # $ADVRW_CIFAR10_ARCHIVE or ../shared/data/ beside the checkout (conftest)
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Never write into the real ~/.cache/advrw."""
    monkeypatch.setenv("ADVRW_CACHE", str(tmp_path / "default-cache"))
    monkeypatch.setenv("ADVRW_DATA", str(tmp_path / "default-data"))


def synth(**kw):
    cfg = {"name": "synthetic", "num_classes": 4, "channels": 3, "image_size": 8, "n_train": 120, "n_test": 60}
    cfg.update(kw)
    return build_data(cfg, "cpu")


# ------------------------------------------------------------------------------------- synthetic


def test_synthetic_shapes_dtypes_and_determinism():
    b = synth()
    assert isinstance(b, DataBundle)
    assert b.train_x.shape == (120, 3, 8, 8) and b.train_x.dtype == torch.uint8
    assert b.train_y.shape == (120,) and b.train_y.dtype == torch.int64
    assert b.val_x.shape == (0, 3, 8, 8) and b.val_y.shape == (0,)
    assert b.test_x.shape == (60, 3, 8, 8) and b.test_y.dtype == torch.int64
    assert (b.channels, b.image_size, b.n_train, b.n_val, b.n_test) == (3, 8, 120, 0, 60)
    assert b.num_classes == 4 and len(b.classes) == 4
    assert set(b.train_y.tolist()) == {0, 1, 2, 3}
    assert len(b.mean) == len(b.std) == 3 and all(0 < s < 1 for s in b.std)
    assert b.augment is False
    again = synth()
    assert torch.equal(again.train_x, b.train_x) and torch.equal(again.test_y, b.test_y)
    other = synth(seed=1)
    assert not torch.equal(other.train_x, b.train_x)


def test_synthetic_defaults_and_one_channel():
    b = build_data({"name": "synthetic"}, "cpu")
    assert b.train_x.shape == (256, 3, 32, 32) and b.test_x.shape == (128, 3, 32, 32) and b.num_classes == 10
    g = synth(channels=1, image_size=28)
    assert g.train_x.shape == (120, 1, 28, 28) and len(g.mean) == 1


def test_synthetic_is_learnable_by_nearest_class_mean():
    b = synth(num_classes=10, n_train=500, n_test=500, image_size=16)
    xtr = b.train_x.float().flatten(1) / 255
    means = torch.stack([xtr[b.train_y == k].mean(0) for k in range(10)])
    pred = torch.cdist(b.test_x.float().flatten(1) / 255, means).argmin(1)
    acc = (pred == b.test_y).float().mean().item()
    assert acc > 0.6, acc  # chance is 0.1


def test_dictconfig_works():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"name": "synthetic", "n_train": 40, "n_test": 20, "image_size": 8, "val_size": 10})
    OmegaConf.set_struct(cfg, True)
    b = build_data(cfg, torch.device("cpu"))
    assert (b.n_train, b.n_val, b.n_test) == (30, 10, 20)


# ------------------------------------------------------------------------------------- splits


def _rows(x):
    return {bytes(r.numpy().tobytes()) for r in x}


def test_val_split_disjoint_from_train_deterministic_and_sized():
    full = synth()
    b = synth(val_size=30, split_seed=3)
    assert (b.n_train, b.n_val, b.n_test) == (90, 30, 60)
    tr, va = _rows(b.train_x), _rows(b.val_x)
    assert not (tr & va)
    assert tr | va == _rows(full.train_x)  # taken from the training set
    assert torch.equal(b.test_x, full.test_x)  # test set untouched
    # labels stay attached to their images
    lookup = {bytes(x.numpy().tobytes()): int(y) for x, y in zip(full.train_x, full.train_y)}
    assert all(lookup[bytes(x.numpy().tobytes())] == int(y) for x, y in zip(b.val_x, b.val_y))
    again = synth(val_size=30, split_seed=3)
    assert torch.equal(again.val_x, b.val_x) and torch.equal(again.train_x, b.train_x)
    other = synth(val_size=30, split_seed=4)
    assert _rows(other.val_x) != va


def test_n_train_n_test_subsets_real_style(tmp_path):
    _write_npz(tmp_path / "train.npz", 50, seed=0)
    _write_npz(tmp_path / "test.npz", 20, seed=1)
    cfg = {"name": "npz", "root": str(tmp_path), "n_train": 30, "n_test": 8, "val_size": 5, "split_seed": 7}
    b = build_data(cfg, "cpu")
    assert (b.n_train, b.n_val, b.n_test) == (25, 5, 8)
    b2 = build_data(cfg, "cpu")
    assert torch.equal(b.train_x, b2.train_x) and torch.equal(b.test_x, b2.test_x)
    full = build_data({"name": "npz", "root": str(tmp_path)}, "cpu")
    assert _rows(b.test_x) <= _rows(full.test_x)
    assert (_rows(b.train_x) | _rows(b.val_x)) <= _rows(full.train_x)


# ------------------------------------------------------------------------------------- crop_flip


def test_crop_flip_without_shift_is_identity_or_flip():
    x = torch.randint(0, 256, (64, 3, 6, 5), dtype=torch.uint8)
    out = crop_flip(x, pad=0, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == x.dtype
    flipped = torch.flip(x, dims=[3])
    same = (out == x).flatten(1).all(1)
    flip = (out == flipped).flatten(1).all(1)
    assert bool((same | flip).all())
    assert 0 < int(flip.sum()) < 64  # both outcomes happen


def test_crop_flip_outputs_are_windows_of_the_zero_padded_image():
    pad = 4
    x = torch.randint(1, 256, (40, 2, 8, 8), dtype=torch.uint8)  # nonzero so padding is visible
    out = crop_flip(x, pad=pad, generator=torch.Generator().manual_seed(1))
    padded = torch.nn.functional.pad(x, (pad,) * 4)
    shifted = 0
    for i in range(len(x)):
        matches = [
            (dy, dx)
            for dy in range(2 * pad + 1)
            for dx in range(2 * pad + 1)
            for win in [padded[i, :, dy : dy + 8, dx : dx + 8]]
            if torch.equal(out[i], win) or torch.equal(out[i], torch.flip(win, dims=[2]))
        ]
        assert matches, f"image {i} is not a (flipped) window of the padded image"
        shifted += (pad, pad) not in matches
    assert shifted > 20


def test_crop_flip_reproducible_with_generator_and_float_input():
    x = torch.rand(16, 3, 10, 10)
    a = crop_flip(x, generator=torch.Generator().manual_seed(5))
    b = crop_flip(x, generator=torch.Generator().manual_seed(5))
    c = crop_flip(x, generator=torch.Generator().manual_seed(6))
    assert a.dtype == torch.float32 and torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(AdvrwError, match="pad=-1"):
        crop_flip(x, pad=-1)


# ------------------------------------------------------------------------------------- DeviceBatches


def test_device_batches_cover_each_example_once_and_range():
    n = 103
    x = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8)
    x[0] = 255
    x[1] = 0
    y = torch.arange(n)
    batches = DeviceBatches(x, y, 10, shuffle=True, augment=False, generator=torch.Generator().manual_seed(0))
    assert len(batches) == 11
    seen, firsts = [], []
    for xb, yb in batches:
        assert xb.dtype == torch.float32 and yb.dtype == torch.int64 and xb.device == x.device
        assert float(xb.min()) >= 0.0 and float(xb.max()) <= 1.0
        assert torch.allclose(xb, x[yb].float() / 255)  # labels stay with their images
        seen += yb.tolist()
        firsts.append(yb[0].item())
    assert sorted(seen) == list(range(n))
    assert seen != list(range(n))  # shuffled
    # a second epoch draws a new permutation
    assert [yb[0].item() for _, yb in batches] != firsts
    dl = DeviceBatches(x, y, 10, shuffle=False, augment=False, drop_last=True)
    assert len(dl) == 10 and sum(len(yb) for _, yb in dl) == 100
    assert [yb.tolist() for _, yb in dl][0] == list(range(10))


def test_device_batches_reproducible_with_same_generator_state():
    x = torch.randint(0, 256, (50, 3, 8, 8), dtype=torch.uint8)
    y = torch.randint(0, 10, (50,))
    g1 = torch.Generator().manual_seed(123)
    torch.randint(0, 5, (7,), generator=g1)  # advance: only the state matters
    g2 = torch.Generator()
    g2.set_state(g1.get_state())
    a = list(DeviceBatches(x, y, 16, shuffle=True, augment=True, generator=g1))
    b = list(DeviceBatches(x, y, 16, shuffle=True, augment=True, generator=g2))
    assert len(a) == len(b) == 4
    for (xa, ya), (xb, yb) in zip(a, b):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    xs, ys, idx = next(iter(DeviceBatches(x, y, 16, shuffle=True, augment=False, with_index=True)))
    assert torch.equal(ys, y[idx]) and torch.equal(xs, x[idx].float() / 255)


def test_device_batches_bad_inputs():
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    with pytest.raises(AdvrwError, match="batch_size=0"):
        DeviceBatches(x, torch.zeros(4), 0, shuffle=False, augment=False)
    with pytest.raises(AdvrwError, match="uint8"):
        DeviceBatches(x.float(), torch.zeros(4), 2, shuffle=False, augment=False)


# ------------------------------------------------------------------------------------- image folders


def _png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _jpg(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


def _imagefolder_files(size=(6, 5)) -> dict[str, bytes]:
    """{relative path: bytes}; classes created out of order, mixed extensions/case."""
    rng = np.random.default_rng(0)
    files = {}
    h, w = size
    for split, n in (("train", 3), ("test", 2)):
        for cls in ("zebra", "Apple", "mango"):  # sorted: Apple, mango, zebra
            for i in range(n):
                arr = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                ext = [".png", ".jpg", ".JPEG"][i % 3]
                data = _png(arr) if ext == ".png" else _jpg(arr)
                files[f"{split}/{cls}/img{i}{ext}"] = data
    return files


def _write_folder(root: Path, files: dict[str, bytes]) -> Path:
    for rel, data in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return root


def _write_tar(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for rel, data in files.items():
            info = tarfile.TarInfo(prefix + rel)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return path


def _write_zip(path: Path, files: dict[str, bytes], prefix: str = "") -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        for rel, data in files.items():
            zf.writestr(prefix + rel, data)
        zf.writestr("__MACOSX/._junk.png", b"not an image")
    return path


def test_imagefolder_folder_targz_zip_identical(tmp_path):
    files = _imagefolder_files()
    folder = _write_folder(tmp_path / "folder", files)
    tgz = _write_tar(tmp_path / "set.tar.gz", files, prefix="./myset/")  # leading directory
    zp = _write_zip(tmp_path / "set.zip", files)
    bundles = [
        build_data({"name": "imagefolder", "root": str(p), "cache_dir": str(tmp_path / "cache")}, "cpu")
        for p in (folder, tgz, zp)
    ]
    first = bundles[0]
    assert first.classes == ["Apple", "mango", "zebra"]
    assert first.train_x.shape == (9, 3, 6, 5) and first.test_x.shape == (6, 3, 6, 5)
    assert first.train_y.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert first.test_y.tolist() == [0, 0, 1, 1, 2, 2]
    # pixel content matches the PNG we wrote (Apple/img0.png is the first train image)
    expected = np.asarray(Image.open(io.BytesIO(files["train/Apple/img0.png"])))
    assert torch.equal(first.train_x[0], torch.from_numpy(expected.copy()).permute(2, 0, 1))
    for other in bundles[1:]:
        assert other.classes == first.classes
        for attr in ("train_x", "train_y", "test_x", "test_y"):
            assert torch.equal(getattr(other, attr), getattr(first, attr)), attr
    assert first.augment is True and len(first.mean) == 3


def test_imagefolder_cache_is_used_second_time(tmp_path, monkeypatch):
    files = _imagefolder_files()
    tgz = _write_tar(tmp_path / "set.tgz", files)
    cache = tmp_path / "cache"
    cfg = {"name": "imagefolder", "root": str(tgz), "cache_dir": str(cache)}
    a = build_data(cfg, "cpu")
    cached = list(cache.glob("*.pt"))
    assert len(cached) == 1 and not list(cache.glob("*.tmp"))

    def boom(*args, **kwargs):
        raise AssertionError("decoder called although the cache exists")

    monkeypatch.setattr(archive_mod, "decode_images", boom)
    b = build_data(cfg, "cpu")
    assert torch.equal(a.train_x, b.train_x) and a.classes == b.classes
    # a changed archive (mtime/size) misses the cache
    st = tgz.stat()
    os.utime(tgz, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))
    with pytest.raises(AssertionError, match="decoder called"):
        build_data(cfg, "cpu")


def test_imagefolder_read_only_archive_dir_and_grayscale(tmp_path):
    files = _imagefolder_files()
    ro = tmp_path / "ro"
    ro.mkdir()
    zp = _write_zip(ro / "set.zip", files)
    ro.chmod(0o555)
    try:
        b = build_data(
            {"name": "imagefolder", "root": str(zp), "channels": 1, "cache_dir": str(tmp_path / "c")}, "cpu"
        )
    finally:
        ro.chmod(0o755)
    assert b.train_x.shape == (9, 1, 6, 5) and len(b.mean) == 1


def test_imagefolder_mismatched_size_names_file(tmp_path):
    files = _imagefolder_files()
    files["train/mango/odd.png"] = _png(np.zeros((7, 5, 3), np.uint8))
    folder = _write_folder(tmp_path / "f", files)
    with pytest.raises(AdvrwError, match=r"train/mango/odd\.png.*same size"):
        build_data({"name": "imagefolder", "root": str(folder), "cache_dir": str(tmp_path / "c")}, "cpu")


def test_imagefolder_layout_errors(tmp_path):
    files = {k: v for k, v in _imagefolder_files().items() if k.startswith("train/")}
    folder = _write_folder(tmp_path / "f", files)
    with pytest.raises(AdvrwError, match="no test/ folder"):
        build_data({"name": "imagefolder", "root": str(folder), "cache_dir": str(tmp_path / "c")}, "cpu")
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"not an archive")
    with pytest.raises(AdvrwError, match="junk.tar.gz"):
        build_data({"name": "imagefolder", "root": str(junk), "cache_dir": str(tmp_path / "c")}, "cpu")


def test_parallel_decode_matches_serial(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    blobs = [_png(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)) for _ in range(300)]
    names = [f"x/{i}.png" for i in range(300)]
    monkeypatch.setattr(archive_mod, "_PARALLEL_MIN", 10)
    serial = archive_mod.decode_images(blobs, names, "RGB", "test", workers=1)
    parallel = archive_mod.decode_images(blobs, names, "RGB", "test", workers=2)
    assert np.array_equal(serial, parallel)
    blobs[200] = _png(np.zeros((5, 4, 3), np.uint8))
    blobs[250] = b"garbage"
    with pytest.raises(AdvrwError, match=r"x/200\.png"):
        archive_mod.decode_images(blobs, names, "RGB", "test", workers=2)


# ------------------------------------------------------------------------------------- Tiny ImageNet


def test_tinyimagenet_from_zip(tmp_path):
    rng = np.random.default_rng(2)
    wnids = ["n02", "n01"]
    files: dict[str, bytes] = {"tiny-imagenet-200/wnids.txt": "\n".join(wnids).encode()}
    for w in wnids:
        for i in range(3):
            files[f"tiny-imagenet-200/train/{w}/images/{w}_{i}.JPEG"] = _jpg(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        files[f"tiny-imagenet-200/train/{w}/{w}_boxes.txt"] = b"ignored"
    ann = []
    for i, w in enumerate(["n01", "n02", "n02", "n01"]):
        files[f"tiny-imagenet-200/val/images/val_{i}.JPEG"] = _jpg(rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
        ann.append(f"val_{i}.JPEG\t{w}\t0\t0\t7\t7")
    files["tiny-imagenet-200/val/val_annotations.txt"] = "\n".join(ann).encode()
    files["tiny-imagenet-200/test/images/test_0.JPEG"] = _jpg(np.zeros((8, 8, 3), np.uint8))
    zp = tmp_path / "tiny-imagenet-200.zip"
    with zipfile.ZipFile(zp, "w") as zf:
        for k, v in files.items():
            zf.writestr(k, v)
    b = build_data({"name": "tinyimagenet", "root": str(zp), "cache_dir": str(tmp_path / "c")}, "cpu")
    assert b.classes == ["n01", "n02"] and b.num_classes == 2
    assert b.train_x.shape == (6, 3, 8, 8) and b.train_y.tolist() == [0, 0, 0, 1, 1, 1]
    assert b.test_x.shape == (4, 3, 8, 8) and b.test_y.tolist() == [0, 1, 1, 0]
    assert b.augment is True


# ------------------------------------------------------------------------------------- npz


def _write_npz(path: Path, n: int, seed: int, shape=(8, 8, 3), classes=3) -> Path:
    rng = np.random.default_rng(seed)
    np.savez(path, image=rng.integers(0, 256, (n, *shape), dtype=np.uint8), label=np.arange(n) % classes)
    return path


def test_npz_main_set_and_extra_concatenation(tmp_path):
    _write_npz(tmp_path / "train.npz", 30, seed=0)
    _write_npz(tmp_path / "test.npz", 12, seed=1)
    extra = _write_npz(tmp_path / "extra.npz", 10, seed=2)
    base = build_data({"name": "npz", "root": str(tmp_path)}, "cpu")
    assert base.train_x.shape == (30, 3, 8, 8) and base.num_classes == 3 and base.classes == ["0", "1", "2"]
    raw = np.load(tmp_path / "train.npz")
    assert torch.equal(base.train_x, torch.from_numpy(raw["image"]).permute(0, 3, 1, 2))
    b = build_data({"name": "npz", "root": str(tmp_path), "extra_npz": str(extra), "val_size": 5}, "cpu")
    assert b.n_train == 25 + 10 and b.n_extra == 10 and b.n_val == 5
    ex = np.load(extra)
    assert torch.equal(b.train_x[-10:], torch.from_numpy(ex["image"]).permute(0, 3, 1, 2))
    assert torch.equal(b.train_y[-10:], torch.from_numpy(ex["label"]).long())
    assert _rows(b.val_x) <= _rows(base.train_x)  # validation never comes from the extra data


def test_extra_npz_must_match(tmp_path):
    bad = _write_npz(tmp_path / "bad.npz", 5, seed=0, shape=(16, 16, 3))
    with pytest.raises(AdvrwError, match="bad.npz"):
        synth(extra_npz=str(bad))
    gray = _write_npz(tmp_path / "gray.npz", 5, seed=0, shape=(8, 8, 1))
    with pytest.raises(AdvrwError, match="gray.npz"):
        synth(extra_npz=str(gray))
    big = _write_npz(tmp_path / "big.npz", 5, seed=0, classes=9)
    with pytest.raises(AdvrwError, match="label 4"):
        synth(extra_npz=str(big))
    ok = _write_npz(tmp_path / "ok.npz", 5, seed=0, classes=4)
    assert synth(extra_npz=str(ok)).n_extra == 5


# ------------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "cfg, needle",
    [
        ({"name": "cifar11"}, "cifar11"),
        ({"name": None}, "None"),
        ({"name": "synthetic", "val_size": -1}, "val_size=-1"),
        ({"name": "synthetic", "val_size": "ten"}, "ten"),
        ({"name": "synthetic", "val_size": 256}, "val_size=256"),
        ({"name": "synthetic", "n_train": 10, "val_size": 10}, "val_size=10"),
        ({"name": "synthetic", "n_train": 0}, "n_train=0"),
        ({"name": "synthetic", "channels": 2}, "channels=2"),
        ({"name": "synthetic", "augment": "yes"}, "yes"),
        ({"name": "imagefolder"}, "dataset.root=None"),
        ({"name": "imagefolder", "root": "/nonexistent/advrw-x"}, "/nonexistent/advrw-x"),
        ({"name": "tinyimagenet", "root": None}, "dataset.root=None"),
        ({"name": "npz", "root": "/nonexistent/advrw-npz"}, "/nonexistent/advrw-npz"),
        ({"name": "synthetic", "extra_npz": "/nonexistent/e.npz"}, "/nonexistent/e.npz"),
    ],
)
def test_bad_inputs_raise_one_line(cfg, needle):
    with pytest.raises(AdvrwError) as info:
        build_data(cfg, "cpu")
    msg = str(info.value)
    assert needle in msg and "\n" not in msg


def test_n_train_larger_than_data(tmp_path):
    _write_npz(tmp_path / "train.npz", 30, seed=0)
    _write_npz(tmp_path / "test.npz", 12, seed=1)
    with pytest.raises(AdvrwError, match="n_train=31"):
        build_data({"name": "npz", "root": str(tmp_path), "n_train": 31}, "cpu")
    with pytest.raises(AdvrwError, match="val_size=30"):
        build_data({"name": "npz", "root": str(tmp_path), "val_size": 30}, "cpu")


def test_dataset_names_listed():
    assert set(DATASET_NAMES) == {"mnist", "cifar10", "cifar100", "svhn", "tinyimagenet", "imagefolder", "npz", "synthetic"}


# ------------------------------------------------------------------------------------- torchvision


@pytest.mark.parametrize(
    "name, missing",
    [
        ("cifar10", "cifar-10-batches-py/data_batch_1"),
        ("cifar100", "cifar-100-python/train"),
        ("mnist", "MNIST/raw/train-images-idx3-ubyte"),
        ("svhn", "train_32x32.mat"),
    ],
)
def test_offline_torchvision_missing_files(tmp_path, name, missing):
    with pytest.raises(AdvrwError) as info:
        build_data({"name": name, "root": str(tmp_path), "download": False}, "cpu")
    msg = str(info.value)
    assert missing in msg and "dataset.root=" in msg and "dataset.download=true" in msg and "\n" not in msg


def test_failed_download_is_advrw_error(tmp_path, monkeypatch):
    from advrw._compat import import_torchvision

    tv = import_torchvision()

    def no_network(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv.datasets, "CIFAR10", no_network)
    with pytest.raises(AdvrwError) as info:
        build_data({"name": "cifar10", "root": str(tmp_path), "download": True}, "cpu")
    msg = str(info.value)
    assert "URLError" in msg and "dataset.root=" in msg and "internet" in msg and "\n" not in msg


def test_cifar_conversion_from_torchvision_arrays(tmp_path, monkeypatch):
    from advrw._compat import import_torchvision

    tv = import_torchvision()
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for f in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]:
        (folder / f).write_bytes(b"")
    rng = np.random.default_rng(0)

    class FakeCIFAR10:
        classes = CIFAR10_CLASSES

        def __init__(self, root, train=True, download=False):
            assert not download
            n = 20 if train else 10
            self.data = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
            self.targets = list(np.arange(n) % 10)

    monkeypatch.setattr(tv.datasets, "CIFAR10", FakeCIFAR10)
    b = build_data({"name": "cifar10", "root": str(tmp_path), "val_size": 4}, "cpu")
    assert b.train_x.shape == (16, 3, 32, 32) and b.test_x.shape == (10, 3, 32, 32)
    assert b.classes == CIFAR10_CLASSES and b.mean == (0.4914, 0.4822, 0.4465) and b.augment is True


def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


@pytest.mark.parametrize("compressed", [False, True])
def test_mnist_from_local_idx_files(tmp_path, compressed):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (12, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.arange(12) % 10,
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (5, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.arange(5),
    }
    for fname, arr in arrays.items():
        data = _idx_bytes(arr)
        if compressed:
            (raw / (fname + ".gz")).write_bytes(gzip.compress(data))
        else:
            (raw / fname).write_bytes(data)
    b = build_data({"name": "mnist", "root": str(tmp_path)}, "cpu")
    assert b.train_x.shape == (12, 1, 28, 28) and b.test_x.shape == (5, 1, 28, 28)
    assert torch.equal(b.train_x[:, 0], torch.from_numpy(arrays["train-images-idx3-ubyte"]))
    assert b.train_y.tolist() == (np.arange(12) % 10).tolist()
    assert b.mean == (0.1307,) and b.augment is False and b.num_classes == 10


# ------------------------------------------------------------------------------------- real archive


@pytest.mark.skipif(not REAL_ARCHIVE.is_file(), reason="the shared CIFAR-10 JPEG archive is not beside this checkout")
def test_real_cifar10_jpeg_archive(tmp_path, capsys):
    cfg = {"name": "imagefolder", "root": str(REAL_ARCHIVE), "cache_dir": str(tmp_path / "cache")}
    t0 = time.perf_counter()
    b = build_data(cfg, "cpu")
    first = time.perf_counter() - t0
    assert (b.n_train, b.n_test, b.num_classes) == (50000, 10000, 10)
    assert b.classes == CIFAR10_CLASSES
    assert b.input_shape == (3, 32, 32)
    assert torch.bincount(b.train_y).tolist() == [5000] * 10
    assert torch.bincount(b.test_y).tolist() == [1000] * 10
    for got, want in zip(b.mean, (0.4914, 0.4822, 0.4465)):
        assert abs(got - want) < 0.02
    t0 = time.perf_counter()
    again = build_data(cfg, "cpu")
    second = time.perf_counter() - t0
    assert torch.equal(again.test_x, b.test_x)
    with capsys.disabled():
        print(f"\n[real archive] first load (read+decode+cache) {first:.1f}s, cached load {second:.2f}s")
