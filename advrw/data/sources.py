"""Loaders for torchvision data sets (MNIST, CIFAR-10/100, SVHN), ``.npz`` files and synthetic data.

Every loader returns a :class:`RawData` of CPU tensors (uint8 NCHW images, int64 labels)
converted from whole arrays, never image by image.
"""

from __future__ import annotations

import gzip
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from advrw._compat import import_torchvision
from advrw.data.bundle import RawData
from advrw.core.errors import AdvrwError

log = logging.getLogger(__name__)

TORCHVISION_NAMES = ("mnist", "cifar10", "cifar100", "svhn")

# Files torchvision needs under dataset.root, per data set (sub-folder, file names).
_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
_EXPECTED: dict[str, tuple[str, tuple[str, ...]]] = {
    "mnist": ("MNIST/raw", _MNIST_FILES),
    "cifar10": (
        "cifar-10-batches-py",
        tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch", "batches.meta"),
    ),
    "cifar100": ("cifar-100-python", ("train", "test", "meta")),
    "svhn": ("", ("train_32x32.mat", "test_32x32.mat")),
}


def _one_line(err: BaseException) -> str:
    text = " ".join(str(err).split())
    return f"{type(err).__name__}: {text[:300]}" if text else type(err).__name__


def missing_torchvision_files(name: str, root: Path) -> list[Path]:
    """The files torchvision needs for ``name`` that are not under ``root`` (MNIST: raw or ``.gz``)."""
    sub, files = _EXPECTED[name]
    folder = root / sub if sub else root
    missing = []
    for f in files:
        path = folder / f
        if path.is_file() or (name == "mnist" and path.with_name(f + ".gz").is_file()):
            continue
        missing.append(path)
    return missing


def _read_idx(path: Path) -> np.ndarray:
    """Read an MNIST idx file (raw or gzip-compressed) into a uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] != 0x08:
        raise AdvrwError(f"MNIST file '{path}' is not a uint8 idx file: re-download it (dataset.download=true)")
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def _mnist_from_idx(root: Path) -> RawData:
    """MNIST straight from ``MNIST/raw`` when some files exist only gzip-compressed."""
    raw = root / "MNIST" / "raw"
    arrays = []
    for f in _MNIST_FILES:
        path = raw / f
        arrays.append(_read_idx(path if path.is_file() else path.with_name(f + ".gz")))
    tx, ty, sx, sy = (torch.from_numpy(a.copy()) for a in arrays)
    tv = import_torchvision()
    return RawData(tx.unsqueeze(1), ty.long(), sx.unsqueeze(1), sy.long(), list(tv.datasets.MNIST.classes))


def _construct(tv, name: str, root: Path, download: bool):
    ds = tv.datasets
    r = str(root)
    if name == "mnist":
        return ds.MNIST(r, train=True, download=download), ds.MNIST(r, train=False, download=download)
    if name == "cifar10":
        return ds.CIFAR10(r, train=True, download=download), ds.CIFAR10(r, train=False, download=download)
    if name == "cifar100":
        return ds.CIFAR100(r, train=True, download=download), ds.CIFAR100(r, train=False, download=download)
    return ds.SVHN(r, split="train", download=download), ds.SVHN(r, split="test", download=download)


def _images(name: str, dataset) -> torch.Tensor:
    data = dataset.data
    if name == "mnist":  # uint8 tensor N x 28 x 28
        t = torch.as_tensor(data)
        return t.reshape(t.shape[0], 1, *t.shape[1:]).to(torch.uint8).contiguous()
    t = torch.from_numpy(np.ascontiguousarray(data))
    if name == "svhn":  # already N x 3 x 32 x 32
        return t.to(torch.uint8).contiguous()
    return t.permute(0, 3, 1, 2).to(torch.uint8).contiguous()  # CIFAR: N x 32 x 32 x 3


def _labels(name: str, dataset) -> torch.Tensor:
    labels = dataset.labels if name == "svhn" else dataset.targets
    return torch.as_tensor(np.asarray(labels), dtype=torch.int64).reshape(-1)


def load_torchvision(name: str, root: Path, download: bool) -> RawData:
    """MNIST / CIFAR-10 / CIFAR-100 / SVHN through torchvision, failing clearly when offline."""
    missing = missing_torchvision_files(name, root)
    hint = "set dataset.download=true (needs internet) or point dataset.root= at a local copy"
    if missing and not download:
        shown = ", ".join(f"'{p}'" for p in missing[:3]) + (f" (+{len(missing) - 3} more)" if len(missing) > 3 else "")
        raise AdvrwError(
            f"dataset.name={name}: missing {shown} under dataset.root='{root}' and dataset.download=false: {hint}"
        )
    if name == "mnist" and not missing and any(not (root / "MNIST" / "raw" / f).is_file() for f in _MNIST_FILES):
        return _mnist_from_idx(root)  # torchvision only reads the uncompressed files
    tv = import_torchvision()
    try:
        if missing:
            log.info("downloading %s into %s", name, root)
            root.mkdir(parents=True, exist_ok=True)
        train, test = _construct(tv, name, root, download=bool(missing))
    except AdvrwError:
        raise
    except Exception as err:  # URLError, OSError, RuntimeError (md5 / not found), scipy missing, ...
        if missing:
            raise AdvrwError(
                f"dataset.name={name}: downloading into dataset.root='{root}' failed ({_one_line(err)}): "
                "dataset.download=true needs internet; check the connection or point dataset.root= at a local copy"
            ) from err
        raise AdvrwError(
            f"dataset.name={name}: the files under dataset.root='{root}' could not be read ({_one_line(err)}): "
            f"they may be corrupted; {hint}"
        ) from err
    classes = list(getattr(train, "classes", None) or [str(i) for i in range(10)])
    return RawData(_images(name, train), _labels(name, train), _images(name, test), _labels(name, test), classes)


@dataclass(frozen=True)
class NpzInfo:
    """What :func:`inspect_npz` learns without reading the images: rows, NHWC shape, label range."""

    rows: int
    shape: tuple[int, ...]  # images as stored: NHWC (or NHW for one channel)
    label_max: int
    classes: list[str] | None


def _npy_header(zf: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    with zf.open(name + ".npy") as fh:
        version = np.lib.format.read_magic(fh)
        read = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
        shape, _, dtype = read(fh)
    return tuple(shape), dtype


def inspect_npz(path: Path, what: str) -> NpzInfo:
    """Check an ``.npz`` of ``image`` (uint8 NHWC or NHW) and ``label`` (N integers >= 0) cheaply:
    image headers and the labels only, so the precheck can do it for every job of a sweep."""
    shown = f"{what}='{path}'"
    if path.is_dir():
        raise AdvrwError(f"{shown} is a directory: must be an .npz file with 'image' and 'label' arrays")
    if not path.is_file():
        raise AdvrwError(f"{shown} does not exist: must be an .npz file with 'image' and 'label' arrays")
    if not zipfile.is_zipfile(path):
        raise AdvrwError(f"{shown} is not an npz archive (numpy.savez writes one): must hold 'image' and 'label'")
    try:
        with zipfile.ZipFile(path) as zf:
            keys = {n.removesuffix(".npy") for n in zf.namelist()}
            if not {"image", "label"} <= keys:
                raise AdvrwError(f"{shown} has arrays {sorted(keys)}: must contain 'image' (uint8 NHWC) and 'label'")
            shape, dtype = _npy_header(zf, "image")
        with np.load(path, allow_pickle=False) as z:
            labels = np.asarray(z["label"])
            classes = [str(c) for c in z["classes"].tolist()] if "classes" in keys else None
    except AdvrwError:
        raise
    except Exception as err:
        raise AdvrwError(f"{shown} cannot be read as .npz ({_one_line(err)})") from err
    if dtype != np.uint8:
        raise AdvrwError(f"{shown} has image dtype {dtype}: must be uint8 NHWC")
    if not (len(shape) == 3 or (len(shape) == 4 and shape[-1] in (1, 3))):
        raise AdvrwError(f"{shown} has image shape {shape}: must be uint8 NHWC with 1 or 3 channels (or NHW)")
    if shape[0] == 0:
        raise AdvrwError(f"{shown} has 0 images: must hold at least one")
    if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer) or labels.shape[0] != shape[0]:
        hint = " (one-hot? store the class indices, e.g. labels.argmax(1))" if labels.ndim == 2 else ""
        raise AdvrwError(f"{shown} has label array {labels.dtype} {labels.shape}: must be a 1-D array of "
                         f"{shape[0]} integer class indices{hint}")
    if labels.min() < 0:
        raise AdvrwError(f"{shown} has label {int(labels.min())}: labels must be >= 0")
    return NpzInfo(int(shape[0]), shape, int(labels.max()), classes)


def read_npz(path: Path, what: str) -> tuple[torch.Tensor, torch.Tensor, list[str] | None]:
    """Read ``image`` (uint8 NHWC, or NHW for one channel) and ``label`` from an ``.npz`` that
    passes :func:`inspect_npz`. Returns uint8 NCHW images, int64 labels and ``classes`` if present.
    ``what`` names the config key in error messages (e.g. ``dataset.extra_npz``).
    """
    info = inspect_npz(path, what)
    with np.load(path, allow_pickle=False) as z:
        images, labels = z["image"], z["label"]
    if images.ndim == 3:
        images = images[..., None]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).contiguous()
    return x, torch.from_numpy(labels.astype(np.int64)), info.classes


def load_npz_dir(root: Path, num_classes: int | None) -> RawData:
    """``root/train.npz`` and ``root/test.npz`` as the main data set."""
    if not root.is_dir():
        raise AdvrwError(f"dataset.root='{root}' is not a directory: for dataset.name=npz it must hold train.npz and test.npz")
    tx, ty, classes = read_npz(root / "train.npz", "dataset.root train.npz")
    sx, sy, _ = read_npz(root / "test.npz", "dataset.root test.npz")
    if tx.shape[1:] != sx.shape[1:]:
        raise AdvrwError(
            f"dataset.root='{root}': test.npz images are {tuple(sx.shape[1:])} but train.npz images are "
            f"{tuple(tx.shape[1:])} (CHW): they must match"
        )
    top = int(max(ty.max().item() if ty.numel() else 0, sy.max().item() if sy.numel() else 0)) + 1
    k = num_classes if num_classes is not None else (len(classes) if classes else top)
    if k < top:
        raise AdvrwError(f"dataset.num_classes={k} is invalid: the npz labels go up to {top - 1}")
    if classes is None or len(classes) != k:
        classes = [str(i) for i in range(k)]
    return RawData(tx, ty, sx, sy, classes)


def make_synthetic(
    num_classes: int, channels: int, image_size: int, n_train: int, n_test: int, seed: int
) -> RawData:
    """A learnable toy set: per-class smooth random pattern + Gaussian noise, quantised to uint8.

    Class prototypes are random values on a coarse grid upsampled bilinearly into [0.2, 0.8];
    each image is its class prototype plus N(0, 0.12^2) pixel noise. Labels are balanced.
    Train and test use independent noise from ``seed``-derived generators.
    """
    coarse = max(2, image_size // 8)
    g = torch.Generator().manual_seed(seed)
    protos = torch.rand(num_classes, channels, coarse, coarse, generator=g)
    protos = F.interpolate(protos, size=(image_size, image_size), mode="bilinear", align_corners=False)
    protos = 0.2 + 0.6 * protos

    def sample(n: int, offset: int) -> tuple[torch.Tensor, torch.Tensor]:
        gen = torch.Generator().manual_seed(seed * 7919 + offset)
        y = (torch.arange(n) % num_classes)[torch.randperm(n, generator=gen)]
        x = protos[y] + 0.12 * torch.randn(n, channels, image_size, image_size, generator=gen)
        return x.clamp_(0, 1).mul_(255).round_().to(torch.uint8), y.long()

    tx, ty = sample(n_train, 1)
    sx, sy = sample(n_test, 2)
    return RawData(tx, ty, sx, sy, [f"class{i}" for i in range(num_classes)])
