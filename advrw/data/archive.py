"""ImageFolder and Tiny ImageNet from a folder or a ``.tar.gz``/``.tgz``/``.tar``/``.zip`` archive.

Archives are read member by member with :mod:`tarfile` / :mod:`zipfile` (nothing is extracted
to disk), images are decoded with PIL (in a fork-based process pool for large sets) and stacked
into uint8 NCHW tensors. The result is cached as one ``torch.save`` file under the cache dir,
keyed by the resolved source path, its size and mtime (for folders: every file's relative
path, size and mtime), the kind and the channel count; it is written atomically.
"""

from __future__ import annotations

import hashlib
import io
import logging
import multiprocessing
import os
import re
import signal
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from advrw.data.bundle import RawData
from advrw.core.errors import AdvrwError

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
CACHE_FORMAT = 1
_PARALLEL_MIN = 2000  # fewer images than this are decoded in-process


def is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS)


def _hidden(name: str) -> bool:
    return any(p.startswith(".") or p == "__MACOSX" for p in name.split("/"))


def _norm(name: str) -> str:
    name = name.replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name.lstrip("/")


def source_kind(path: Path, key: str = "dataset.root") -> str:
    """'dir', 'tar' or 'zip'; AdvrwError when ``path`` is missing or none of these."""
    if path.is_dir():
        return "dir"
    if not path.exists():
        raise AdvrwError(f"{key}='{path}' does not exist: must be a folder or a .tar.gz/.tgz/.tar/.zip archive")
    if not os.access(path, os.R_OK):
        raise AdvrwError(f"{key}='{path}' is not readable (permissions)")
    lower = path.name.lower()
    if lower.endswith(".zip") and zipfile.is_zipfile(path):
        return "zip"
    if lower.endswith((".tar.gz", ".tgz", ".tar")) and tarfile.is_tarfile(path):
        return "tar"
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise AdvrwError(f"{key}='{path}' is not a folder or a readable .tar.gz/.tgz/.tar/.zip archive")


def read_tree(path: Path, want: Callable[[str], bool], key: str = "dataset.root") -> dict[str, bytes]:
    """Bytes of every regular file in a folder or archive whose normalised relative name ``want``s.

    Names use ``/`` separators, without a leading ``./``; hidden files and ``__MACOSX`` are skipped.
    """
    kind = source_kind(path, key)
    out: dict[str, bytes] = {}
    try:
        if kind == "dir":
            for dirpath, dirnames, filenames in os.walk(path, followlinks=True):
                dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
                rel_dir = os.path.relpath(dirpath, path)
                for fname in sorted(filenames):
                    name = _norm(fname if rel_dir == "." else f"{rel_dir}/{fname}")
                    if not _hidden(name) and want(name):
                        with open(os.path.join(dirpath, fname), "rb") as fh:
                            out[name] = fh.read()
        elif kind == "tar":
            with tarfile.open(path, "r:*") as tf:
                for member in tf:
                    if not member.isfile():
                        continue
                    name = _norm(member.name)
                    if not _hidden(name) and want(name):
                        fh = tf.extractfile(member)
                        if fh is not None:
                            out[name] = fh.read()
        else:
            with zipfile.ZipFile(path) as zf:
                for info in zf.infolist():
                    if info.is_dir():
                        continue
                    name = _norm(info.filename)
                    if not _hidden(name) and want(name):
                        out[name] = zf.read(info)
    except (OSError, tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise AdvrwError(f"{key}='{path}' cannot be read ({type(err).__name__}: {' '.join(str(err).split())})") from err
    return out


def fingerprint(path: Path) -> str:
    """Identity of a source for the cache key: resolved path + size + mtime (folders: of every file)."""
    resolved = path.resolve()
    if resolved.is_dir():
        h = hashlib.sha256()
        for dirpath, dirnames, filenames in os.walk(resolved, followlinks=True):
            dirnames.sort()
            for fname in sorted(filenames):
                full = os.path.join(dirpath, fname)
                st = os.stat(full)
                h.update(f"{os.path.relpath(full, resolved)}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        return f"dir:{resolved}|{h.hexdigest()}"
    st = resolved.stat()
    return f"file:{resolved}|{st.st_size}|{st.st_mtime_ns}"


# ----------------------------------------------------------------------------------------------
# decoding

_JOB: tuple | None = None  # (blobs, mode, (w, h)) shared with forked workers


def _decode_one(blob: bytes, mode: str) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(blob)) as im:
        if im.mode != mode:
            im = im.convert(mode)
        arr = np.asarray(im)
    return arr


def _decode_range(bounds: tuple[int, int]) -> tuple[int, np.ndarray, tuple[int, str] | None]:
    """Decode images lo..hi of the current job; stops at the first bad one (index, problem)."""
    lo, hi = bounds
    blobs, mode, (w0, h0) = _JOB  # type: ignore[misc]
    c = 1 if mode == "L" else 3
    out = np.zeros((hi - lo, h0, w0, c), dtype=np.uint8)
    for i in range(lo, hi):
        try:
            arr = _decode_one(blobs[i], mode)
        except Exception as err:  # PIL raises many types for broken files
            return lo, out, (i, f"cannot be decoded ({type(err).__name__}: {' '.join(str(err).split())})")
        if arr.shape[0] != h0 or arr.shape[1] != w0:
            return lo, out, (i, f"is {arr.shape[1]}x{arr.shape[0]}")
        out[i - lo] = arr.reshape(h0, w0, c)
    return lo, out, None


def _worker_signals() -> None:
    """A decode worker ignores the parent's handlers: SIGINT is the parent's to act on, SIGTERM
    (the pool closing) just ends the worker -- a forked copy of the run's guard would log a stop."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    for name in ("SIGUSR1", "SIGUSR2"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_DFL)


def _fork_context():
    try:
        return multiprocessing.get_context("fork")
    except ValueError:
        return None


def default_workers() -> int:
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def decode_images(blobs: list[bytes], names: list[str], mode: str, where: str, workers: int | None = None) -> np.ndarray:
    """Decode same-sized images to a uint8 NHWC array (C = 1 for mode 'L', else 3).

    AdvrwError naming the first (in order) file that cannot be decoded or differs in size from
    the first image. ``workers`` > 1 uses a fork-based process pool (default: CPUs, max 8).
    """
    global _JOB
    if not blobs:
        raise AdvrwError(f"{where} has no images")
    try:
        first = _decode_one(blobs[0], mode)
    except Exception as err:
        raise AdvrwError(
            f"image '{names[0]}' in {where} cannot be decoded ({type(err).__name__}): remove or replace it"
        ) from err
    h0, w0 = first.shape[:2]
    n = len(blobs)
    workers = default_workers() if workers is None else max(1, int(workers))
    ctx = _fork_context() if workers > 1 and n >= _PARALLEL_MIN else None
    if ctx is None:
        workers = 1
    chunk = max(64, -(-n // (workers * 8)))
    ranges = [(lo, min(lo + chunk, n)) for lo in range(0, n, chunk)]
    out = np.empty((n, h0, w0, 1 if mode == "L" else 3), dtype=np.uint8)
    bad: list[tuple[int, str]] = []
    _JOB = (blobs, mode, (w0, h0))
    try:
        if ctx is not None:
            with ctx.Pool(workers, initializer=_worker_signals) as pool:
                results = list(pool.imap_unordered(_decode_range, ranges))
        else:
            results = map(_decode_range, ranges)
        for lo, arr, problem in results:
            out[lo : lo + len(arr)] = arr
            if problem is not None:
                bad.append(problem)
    finally:
        _JOB = None
    if bad:
        i, problem = min(bad)
        if problem.startswith("is "):
            raise AdvrwError(
                f"image '{names[i]}' in {where} {problem} (WxH) but '{names[0]}' is {w0}x{h0}: "
                "all images must have the same size"
            )
        raise AdvrwError(f"image '{names[i]}' in {where} {problem}: remove or replace it")
    return out


def _to_tensor(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(arr).permute(0, 3, 1, 2).contiguous()


# ----------------------------------------------------------------------------------------------
# layouts


def _split_prefix(names: list[str], where: str) -> str:
    """The folder (possibly '') that holds both ``train/`` and ``test/`` with class folders of images."""
    found: dict[str, set[str]] = {}
    for name in names:
        parts = name.split("/")
        for i, part in enumerate(parts[:-2]):
            if part in ("train", "test"):
                found.setdefault("/".join(parts[:i]), set()).add(part)
                break
    both = sorted((p for p, s in found.items() if s == {"train", "test"}), key=lambda p: (p.count("/") + (p != ""), p))
    if not both:
        if found:
            prefix = sorted(found)[0]
            lacking = "test" if "test" not in found[prefix] else "train"
            raise AdvrwError(
                f"dataset.root={where} has no {lacking}/ folder next to '{prefix or '.'}/"
                f"{'train' if lacking == 'test' else 'test'}': must hold train/<class>/<image> and test/<class>/<image>"
            )
        raise AdvrwError(
            f"dataset.root={where} has no images in the ImageFolder layout: must hold "
            "{train,test}/<class>/<image>.(jpg|jpeg|png)"
        )
    if len(both) > 1:
        log.warning("%s holds several train/test folders; using '%s'", where, both[0] or ".")
    return both[0]


def _under(names: list[str], base: str) -> list[tuple[str, str, str]]:
    """(class, rest, name) for every image ``base<class>/<rest>``, sorted by (class, rest)."""
    items = []
    for name in names:
        if name.startswith(base) and is_image(name):
            cls, _, rest = name[len(base) :].partition("/")
            if rest:
                items.append((cls, rest, name))
    items.sort()
    return items


def _imagefolder_from_tree(tree: dict[str, bytes], mode: str, where: str, workers: int | None) -> RawData:
    names = [n for n in tree if is_image(n)]
    prefix = _split_prefix(names, where)
    base = f"{prefix}/" if prefix else ""
    train = _under(names, base + "train/")
    test = _under(names, base + "test/")
    classes = sorted({cls for cls, _, _ in train})
    index = {c: i for i, c in enumerate(classes)}
    unknown = sorted({cls for cls, _, _ in test} - index.keys())
    if unknown:
        raise AdvrwError(
            f"dataset.root={where} has test class folder '{unknown[0]}' that train/ lacks: "
            f"test classes must be among {', '.join(classes[:10])}{' ...' if len(classes) > 10 else ''}"
        )
    if not test:
        raise AdvrwError(f"dataset.root={where} has no images under '{base}test/': must hold test/<class>/<image>")
    all_items = train + test
    arr = decode_images([tree[n] for _, _, n in all_items], [n for _, _, n in all_items], mode, where, workers)
    x = _to_tensor(arr)
    y = torch.tensor([index[cls] for cls, _, _ in all_items], dtype=torch.int64)
    k = len(train)
    return RawData(x[:k].clone(), y[:k].clone(), x[k:].clone(), y[k:].clone(), classes)


_ANNOTATIONS = "val/val_annotations.txt"


def _tinyimagenet_from_tree(tree: dict[str, bytes], mode: str, where: str, workers: int | None) -> RawData:
    anns = sorted(
        (n for n in tree if n == _ANNOTATIONS or n.endswith("/" + _ANNOTATIONS)), key=lambda n: (n.count("/"), n)
    )
    if not anns:
        raise AdvrwError(
            f"dataset.root={where} has no {_ANNOTATIONS}: must be the tiny-imagenet-200 layout "
            "(train/<wnid>/images/*.JPEG, val/images/*.JPEG, val/val_annotations.txt)"
        )
    prefix = anns[0][: -len(_ANNOTATIONS)]
    names = [n for n in tree if is_image(n)]
    train = _under(names, prefix + "train/")
    if not train:
        raise AdvrwError(f"dataset.root={where} has no images under '{prefix}train/<wnid>/images/'")
    classes = sorted({cls for cls, _, _ in train})
    index = {c: i for i, c in enumerate(classes)}
    labels: dict[str, str] = {}
    for line in tree[anns[0]].decode("utf-8", "replace").splitlines():
        fields = line.strip().split("\t")
        if len(fields) >= 2 and fields[0]:
            labels[fields[0]] = fields[1]
    val_base = prefix + "val/images/"
    val = sorted(n for n in names if n.startswith(val_base) and "/" not in n[len(val_base) :])
    if not val:
        raise AdvrwError(f"dataset.root={where} has no images under '{val_base}'")
    val_y = []
    for n in val:
        fname = n[len(val_base) :]
        wnid = labels.get(fname)
        if wnid is None:
            raise AdvrwError(f"image '{n}' in {where} is not listed in '{anns[0]}': every val image needs a label")
        if wnid not in index:
            raise AdvrwError(
                f"'{anns[0]}' in {where} labels '{fname}' as {wnid!r}, which has no train/ folder: "
                "labels must be train class wnids"
            )
        val_y.append(index[wnid])
    all_names = [n for _, _, n in train] + val
    arr = decode_images([tree[n] for n in all_names], all_names, mode, where, workers)
    x = _to_tensor(arr)
    k = len(train)
    train_y = torch.tensor([index[cls] for cls, _, _ in train], dtype=torch.int64)
    return RawData(x[:k].clone(), train_y, x[k:].clone(), torch.tensor(val_y, dtype=torch.int64), classes)


def _want_imagefolder(name: str) -> bool:
    return is_image(name)


def _want_tinyimagenet(name: str) -> bool:
    if name.endswith(_ANNOTATIONS):
        return True
    # skip the unlabelled test/images of the official zip
    return is_image(name) and "/test/images/" not in "/" + name


_LAYOUTS = {
    "imagefolder": (_want_imagefolder, _imagefolder_from_tree),
    "tinyimagenet": (_want_tinyimagenet, _tinyimagenet_from_tree),
}


# ----------------------------------------------------------------------------------------------
# cache


def cache_path(kind: str, root: Path, channels: int, cache_dir: Path) -> Path:
    key = f"{kind}|{fingerprint(root)}|c{channels}|v{CACHE_FORMAT}"
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.resolve().name)[:60] or "root"
    return cache_dir / f"{kind}-{stem}-c{channels}-{digest}.pt"


def _load_cache(path: Path) -> RawData | None:
    if not path.is_file():
        return None
    try:
        d = torch.load(path, map_location="cpu", weights_only=True)
        if d.get("format") != CACHE_FORMAT:
            return None
        return RawData(d["train_x"], d["train_y"], d["test_x"], d["test_y"], list(d["classes"]))
    except Exception as err:  # truncated / foreign file: decode again
        log.warning("ignoring unreadable cache %s (%s)", path, type(err).__name__)
        return None


def _save_cache(path: Path, raw: RawData, source: str) -> None:
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            torch.save(
                {
                    "format": CACHE_FORMAT,
                    "source": source,
                    "train_x": raw.train_x,
                    "train_y": raw.train_y,
                    "test_x": raw.test_x,
                    "test_y": raw.test_y,
                    "classes": list(raw.classes),
                },
                fh,
            )
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600
        os.replace(tmp, path)
        tmp = None
        log.info("cached decoded images in %s", path)
    except OSError as err:
        log.warning("could not write cache %s (%s); continuing without it", path, err)
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def load_image_tree(
    kind: str, root: Path, *, channels: int, cache_dir: Path | None, workers: int | None = None
) -> RawData:
    """Load ``kind`` ('imagefolder' or 'tinyimagenet') from a folder or archive, through the cache.

    ``cache_dir=None`` disables the cache.
    """
    want, build = _LAYOUTS[kind]
    source_kind(root)
    mode = "L" if channels == 1 else "RGB"
    cpath = cache_path(kind, root, channels, cache_dir) if cache_dir is not None else None
    if cpath is not None:
        t0 = time.perf_counter()
        raw = _load_cache(cpath)
        if raw is not None:
            log.info("loaded %s from cache %s in %.1fs", root, cpath, time.perf_counter() - t0)
            return raw
    t0 = time.perf_counter()
    tree = read_tree(root, want)
    t1 = time.perf_counter()
    raw = build(tree, mode, f"'{root}'", workers)
    del tree
    log.info(
        "decoded %d+%d images from %s in %.1fs (read %.1fs, decode %.1fs)",
        len(raw.train_y), len(raw.test_y), root, time.perf_counter() - t0, t1 - t0, time.perf_counter() - t1,
    )
    if cpath is not None:
        _save_cache(cpath, raw, str(root.resolve()))
    return raw
