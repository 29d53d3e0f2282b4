"""``build_data(cfg, device)``: check ``dataset.*``, load, subset, split, add extra data, move to device.

Order of operations (all deterministic in ``split_seed``):

1. load the full train and test sets (uint8 NCHW on the CPU);
2. mean/std: the standard constants for MNIST/CIFAR/SVHN, else computed from the full training set;
3. ``n_train``: a ``dataset.subset`` sample (default class-stratified, seeded by ``split_seed``;
   see :mod:`advrw.data.subsets`) of the training set (``n_test`` likewise for the test set, with
   another seed);
4. ``val_size``: a stratified (``random`` under ``subset=random``) sample of those goes to the
   validation split, the rest train (so the training split has ``n_train - val_size`` examples;
   the test set is never touched);
5. ``extra_npz`` rows are appended to the training split (``DataBundle.n_extra``);
6. everything moves to ``device``.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import torch

from advrw.data import archive, sources
from advrw.data.bundle import DataBundle, RawData, channel_stats
from advrw.data.options import default_cache_dir, default_data_root, get, opt_bool, opt_int, opt_path
from advrw.data.subsets import RULES, describe, take
from advrw.core.errors import AdvrwError

log = logging.getLogger(__name__)

DATASET_NAMES = ("mnist", "cifar10", "cifar100", "svhn", "tinyimagenet", "imagefolder", "npz", "synthetic")

STATS: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2471, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.198, 0.201, 0.197)),
}

# dataset.augment unset: crop+flip for natural images (SPEC 4), none for digits / npz / synthetic.
DEFAULT_AUGMENT = {
    "mnist": False,
    "cifar10": True,
    "cifar100": True,
    "svhn": True,
    "tinyimagenet": True,
    "imagefolder": True,
    "npz": False,
    "synthetic": False,
}


def _name(cfg: Any) -> str:
    name = get(cfg, "name", None)
    if not isinstance(name, str) or name.strip().lower() not in DATASET_NAMES:
        raise AdvrwError(f"dataset.name={name!r} is unknown: choose one of {', '.join(DATASET_NAMES)}")
    return name.strip().lower()


def _cache_dir(cfg: Any) -> Path:
    return opt_path(cfg, "cache_dir") or default_cache_dir()


def _load(name: str, cfg: Any) -> RawData:
    if name == "synthetic":
        return sources.make_synthetic(
            num_classes=opt_int(cfg, "num_classes", 10, minimum=2),
            channels=_channels(cfg),
            image_size=opt_int(cfg, "image_size", 32, minimum=1),
            n_train=opt_int(cfg, "n_train", 256, minimum=1),
            n_test=opt_int(cfg, "n_test", 128, minimum=1),
            seed=opt_int(cfg, "seed", 0, minimum=0),
        )
    root = opt_path(cfg, "root")
    if name in sources.TORCHVISION_NAMES:
        return sources.load_torchvision(name, root or default_data_root(), bool(opt_bool(cfg, "download", False)))
    if root is None:
        raise AdvrwError(
            f"dataset.root=None is invalid for dataset.name={name}: set dataset.root= to "
            + ("a directory with train.npz and test.npz" if name == "npz" else "a folder or .tar.gz/.tgz/.tar/.zip archive")
        )
    if name == "npz":
        return sources.load_npz_dir(root, opt_int(cfg, "num_classes", None, minimum=2, allow_none=True))
    return archive.load_image_tree(
        name,
        root,
        channels=_channels(cfg),
        cache_dir=_cache_dir(cfg),
        workers=opt_int(cfg, "decode_workers", None, minimum=1, allow_none=True),
    )


def _channels(cfg: Any) -> int:
    channels = opt_int(cfg, "channels", 3, minimum=1)
    if channels not in (1, 3):
        raise AdvrwError(f"dataset.channels={channels} is invalid: must be 1 or 3")
    return channels


def _subset(labels: torch.Tensor, k: int | None, seed: int, key: str, name: str, what: str,
            rule: str) -> torch.Tensor:
    """Sorted indices of a ``rule`` subset of ``k`` (all when k is None), seeded by ``seed``."""
    n = len(labels)
    if k is not None and k > n:
        raise AdvrwError(f"dataset.{key}={k} is invalid: the {name} {what} set has only {n} images")
    return take(labels, k, rule=rule, seed=seed, key=f"dataset.{key}")


def _rule(cfg: Any) -> str:
    rule = get(cfg, "subset", "stratified")
    if rule not in RULES:
        raise AdvrwError(f"dataset.subset={rule!r} is unknown: choose one of {', '.join(RULES)}")
    return rule


def build_data(cfg: Any, device: torch.device | str) -> DataBundle:
    """Load the data set ``cfg`` describes (the ``dataset`` config group) onto ``device``."""
    name = _name(cfg)
    val_size = opt_int(cfg, "val_size", 0, minimum=0)
    split_seed = opt_int(cfg, "split_seed", 0, minimum=0)
    n_train = opt_int(cfg, "n_train", 256 if name == "synthetic" else None, minimum=1, allow_none=True)
    n_test = opt_int(cfg, "n_test", 128 if name == "synthetic" else None, minimum=1, allow_none=True)
    augment = opt_bool(cfg, "augment", None)
    augment = DEFAULT_AUGMENT[name] if augment is None else augment
    extra = opt_path(cfg, "extra_npz")
    rule = _rule(cfg)
    if n_train is not None and val_size >= n_train:
        raise AdvrwError(
            f"dataset.val_size={val_size} is invalid: must be < dataset.n_train={n_train} "
            "(the validation split is taken from the training set)"
        )

    t0 = time.perf_counter()
    raw = _load(name, cfg)
    if raw.train_x.shape[0] == 0 or raw.test_x.shape[0] == 0:
        raise AdvrwError(f"dataset.name={name}: the train or test set is empty")
    num_classes = len(raw.classes)
    mean, std = STATS[name] if name in STATS else channel_stats(raw.train_x)

    n_full = raw.train_x.shape[0]
    pool = _subset(raw.train_y, n_train, split_seed, "n_train", name, "training", rule)
    if val_size >= len(pool):
        raise AdvrwError(
            f"dataset.val_size={val_size} is invalid: must be < {len(pool)}, the size of the {name} training set"
        )
    # the validation split: a class-balanced part of the pool (never "the first" of a class-ordered set)
    val_rule = "random" if rule == "random" else "stratified"
    val_local = take(raw.train_y[pool], val_size, rule=val_rule, seed=split_seed + 7919) if val_size else pool[:0]
    keep = torch.ones(len(pool), dtype=torch.bool)
    keep[val_local] = False
    train_idx, val_idx = pool[keep], pool[val_local]
    if len(train_idx) == n_full:
        train_x, train_y = raw.train_x, raw.train_y
    else:
        train_x, train_y = raw.train_x[train_idx], raw.train_y[train_idx]
    val_x, val_y = raw.train_x[val_idx], raw.train_y[val_idx]
    n_test_full = raw.test_x.shape[0]
    test_idx = _subset(raw.test_y, n_test, split_seed + 1_000_003, "n_test", name, "test", rule)
    if n_test is not None and len(test_idx) < n_test_full:
        test_x, test_y = raw.test_x[test_idx], raw.test_y[test_idx]
    else:
        test_x, test_y = raw.test_x, raw.test_y
    subsets = {"train": describe(pool, n_full, rule, split_seed),
               "val": describe(val_idx, len(pool), val_rule, split_seed + 7919),
               "test": describe(test_idx, n_test_full, rule, split_seed + 1_000_003)}

    n_extra = 0
    if extra is not None:
        ex, ey, _ = sources.read_npz(extra, "dataset.extra_npz")
        if tuple(ex.shape[1:]) != tuple(train_x.shape[1:]):
            raise AdvrwError(
                f"dataset.extra_npz='{extra}' has images {tuple(ex.shape[1:])} (CHW): must match "
                f"the {name} images {tuple(train_x.shape[1:])}"
            )
        if ey.numel() and int(ey.max()) >= num_classes:
            raise AdvrwError(
                f"dataset.extra_npz='{extra}' has label {int(ey.max())}: must be < {num_classes} ({name} classes)"
            )
        train_x, train_y = torch.cat([train_x, ex]), torch.cat([train_y, ey])
        n_extra = int(ex.shape[0])

    dev = torch.device(device)
    bundle = DataBundle(
        name=name,
        train_x=train_x.to(dev),
        train_y=train_y.long().to(dev),
        val_x=val_x.to(dev),
        val_y=val_y.long().to(dev),
        test_x=test_x.to(dev),
        test_y=test_y.long().to(dev),
        num_classes=num_classes,
        classes=list(raw.classes),
        mean=tuple(float(m) for m in mean),
        std=tuple(float(s) for s in std),
        augment=bool(augment),
        n_extra=n_extra,
        subsets=subsets,
    )
    log.info("data %s (%.1fs)", bundle.summary(), time.perf_counter() - t0)
    return bundle
