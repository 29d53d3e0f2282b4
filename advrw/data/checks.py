"""The data set's rules (``dataset.*`` values) and its files, checked before any run dir exists (the command-line precheck runs this for
every job of a sweep): torchvision files present, archives readable, ``.npz`` contents (rows,
image shape and dtype, labels) -- what ``build_data`` would otherwise refuse after job 0 ran."""

from __future__ import annotations

from pathlib import Path

from advrw.core.errors import AdvrwError
from advrw.data import archive, sources
from advrw.data.build import DATASET_NAMES
from advrw.data.options import default_data_root, opt_path
from advrw.data.subsets import RULES as SUBSET_RULES
from advrw.core.rules import boolean, check, choice, integer


DATASET_RULES = [
    ("val_size", integer(ge=0)),
    ("split_seed", integer(ge=0)),
    ("n_train", integer(ge=1, null=True)),
    ("n_test", integer(ge=1, null=True)),
    ("subset", choice(*SUBSET_RULES)),
    ("augment", boolean(null=True)),
    ("normalize", boolean()),
    ("download", boolean()),
    ("num_classes", integer(ge=2, null=True)),
    ("channels", integer(ge=1)),
    ("image_size", integer(ge=1)),
    ("seed", integer(ge=0)),
    ("decode_workers", integer(ge=1, null=True)),
]


def validate_dataset(cfg) -> None:
    check(cfg, [("dataset.name", choice(*DATASET_NAMES))])
    check(cfg.dataset, DATASET_RULES, prefix="dataset.")
    d = cfg.dataset
    if d.get("channels") not in (None, 1, 3):
        raise AdvrwError(f"dataset.channels={d.channels} is invalid: must be 1 or 3")
    if d.get("n_train") is not None and d.val_size >= d.n_train:
        raise AdvrwError(f"dataset.val_size={d.val_size} is invalid: must be < dataset.n_train={d.n_train} "
                         "(the validation split is taken from the training set)")


def _channels_last(shape: tuple[int, ...]) -> tuple[int, ...]:
    """HWC of an npz image array (NHW counts as one channel)."""
    return tuple(shape[1:]) + ((1,) if len(shape) == 3 else ())


def _known_images(d) -> tuple[tuple[int, ...] | None, int | None]:
    """(HWC, class count) of the main data set where the config alone tells them, else Nones."""
    if d.name == "synthetic":
        size = int(d.get("image_size") or 32)
        return (size, size, int(d.get("channels") or 3)), int(d.get("num_classes") or 10)
    return None, d.get("num_classes")


def check_data_files(d) -> None:
    """One line naming the file and the problem, or nothing."""
    name = d.name
    root = opt_path(d, "root")
    known, classes = _known_images(d)
    if name in sources.TORCHVISION_NAMES:
        root = root or default_data_root()
        missing = sources.missing_torchvision_files(name, root)
        if missing and not d.get("download", False):
            shown = ", ".join(f"'{p}'" for p in missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
            raise AdvrwError(f"dataset.name={name}: missing {shown} under dataset.root='{root}' and "
                             "dataset.download=false: set dataset.download=true (needs internet) or point "
                             "dataset.root= at a local copy")
    elif name in ("imagefolder", "tinyimagenet"):
        if root is not None:
            archive.source_kind(root)
    elif name == "npz" and root is not None:
        known, classes = _npz_dir(root, classes)
    extra = opt_path(d, "extra_npz")
    if extra is not None:
        info = sources.inspect_npz(Path(extra), "dataset.extra_npz")
        if known is not None and _channels_last(info.shape) != known:
            raise AdvrwError(f"dataset.extra_npz='{extra}' has images {_channels_last(info.shape)} (HWC): must match "
                             f"the {name} images {known}")
        if classes is not None and info.label_max >= classes:
            raise AdvrwError(f"dataset.extra_npz='{extra}' has label {info.label_max}: must be < {classes} "
                             f"({name} classes)")


def _npz_dir(root: Path, num_classes: int | None) -> tuple[tuple[int, ...], int]:
    if not root.is_dir():
        raise AdvrwError(f"dataset.root='{root}' is not a directory: for dataset.name=npz it must hold train.npz "
                         "and test.npz")
    for f in ("train.npz", "test.npz"):
        if not (root / f).is_file():
            raise AdvrwError(f"dataset.root='{root}' has no {f}: for dataset.name=npz it must hold train.npz "
                             "and test.npz")
    train = sources.inspect_npz(root / "train.npz", "dataset.root train.npz")
    test = sources.inspect_npz(root / "test.npz", "dataset.root test.npz")
    if _channels_last(train.shape) != _channels_last(test.shape):
        raise AdvrwError(f"dataset.root='{root}': test.npz images are {_channels_last(test.shape)} but train.npz "
                         f"images are {_channels_last(train.shape)} (HWC): they must match")
    top = max(train.label_max, test.label_max) + 1
    if num_classes is not None and num_classes < top:
        raise AdvrwError(f"dataset.num_classes={num_classes} is invalid: the npz labels go up to {top - 1}")
    k = num_classes if num_classes is not None else (len(train.classes) if train.classes else top)
    return _channels_last(train.shape), max(k, top)
