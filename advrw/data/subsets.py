"""Every subset advrw takes (``dataset.n_train``/``n_test``/``val_size``, ``eval.n_eval``, ``validation.n``).

One pure function, :func:`take`, so no data set's storage order can decide which classes are
trained on or scored (an ImageFolder or Tiny ImageNet set is stored class by class):

- ``stratified`` (default): ``n // K`` per class, the remainder one each to classes chosen by the
  seed; a class with too few images gives all it has and the rest is spread over the others;
  inside a class the images are a seeded sample;
- ``random``: a seeded uniform sample (the class counts vary);
- ``first``: the first ``n`` in the set's order -- the "first 1000 test points" protocol of
  MAIL / RobustBench on torchvision CIFAR-10. Refused when those ``n`` miss a class, which is
  what a class-ordered set (ImageFolder) gives.

Indices come back sorted, so the canonical order inside the subset is kept. :func:`describe`
records the rule, seed, size and a short hash of the indices for results.json.
"""

from __future__ import annotations

import hashlib

import torch

from advrw.core.errors import AdvrwError

RULES = ("stratified", "random", "first")


def _per_class_counts(sizes: list[int], n: int, gen: torch.Generator) -> list[int]:
    """Water-filling: equal shares, capped by each class's size; leftovers to seed-chosen classes."""
    k = len(sizes)
    counts = [0] * k
    left = n
    open_ = [c for c in range(k) if sizes[c] > 0]
    while left > 0 and open_:
        share, extra = divmod(left, len(open_))
        order = torch.randperm(len(open_), generator=gen).tolist()  # who gets the remainder
        bonus = {open_[i] for i in order[:extra]}
        for c in open_:
            counts[c] += min(share + (c in bonus), sizes[c] - counts[c])
        left = n - sum(counts)
        open_ = [c for c in open_ if counts[c] < sizes[c]]
    return counts


def take(labels: torch.Tensor, n: int | None, *, rule: str = "stratified", seed: int = 0,
         key: str = "n") -> torch.Tensor:
    """Sorted int64 indices of an ``n``-element subset of a set with these ``labels`` (None / n >= len: all)."""
    labels = torch.as_tensor(labels).cpu().long()
    total = len(labels)
    if rule not in RULES:
        raise AdvrwError(f"subset rule {rule!r} is unknown: choose one of {', '.join(RULES)}")
    if n is None or n >= total:
        if n is not None and n > total:
            raise AdvrwError(f"{key}={n} is larger than the set ({total} examples)")
        return torch.arange(total)
    gen = torch.Generator().manual_seed(int(seed))
    if rule == "first":
        idx = torch.arange(n)
        missing = sorted(set(labels.unique().tolist()) - set(labels[:n].unique().tolist()))
        if missing:
            raise AdvrwError(
                f"{key}={n} with subset rule 'first' keeps the first {n} images, which miss "
                f"{len(missing)} of {len(labels.unique())} classes in this set's order (a class-ordered "
                "set such as an ImageFolder): use the stratified rule")
        return idx
    if rule == "random":
        return torch.randperm(total, generator=gen)[:n].sort().values
    classes = labels.unique().tolist()
    members = [(labels == c).nonzero().squeeze(1) for c in classes]
    counts = _per_class_counts([len(m) for m in members], n, gen)
    picked = [m[torch.randperm(len(m), generator=gen)[:k]] for m, k in zip(members, counts)]
    return torch.cat(picked).sort().values


def digest(indices: torch.Tensor) -> str:
    """12 hex characters of SHA-256 over the sorted indices (int64): equal hashes, equal subsets."""
    arr = torch.as_tensor(indices).cpu().long().sort().values.numpy()
    return hashlib.sha256(arr.tobytes()).hexdigest()[:12]


def describe(indices: torch.Tensor, of: int, rule: str, seed: int) -> dict:
    """What results.json records about one subset."""
    n = len(indices)
    return {"rule": "all" if n == of else rule, "seed": int(seed), "n": n, "of": int(of), "hash": digest(indices)}


def eval_subset(labels: torch.Tensor, ev) -> tuple[torch.Tensor, dict]:
    """The test images an evaluation scores: ``eval.n_eval`` by ``eval.subset``, seeded by ``eval.seed``."""
    n, rule, seed = ev.get("n_eval"), ev.get("subset", "stratified"), int(ev.get("seed", 0))
    if n is not None and n > len(labels):
        raise AdvrwError(f"eval.n_eval={n} is larger than the test set ({len(labels)} examples)")
    if rule not in RULES:
        raise AdvrwError(f"eval.subset={rule!r} is unknown: choose one of {', '.join(RULES)}")
    idx = take(labels, n, rule=rule, seed=seed, key="eval.n_eval")
    return idx, describe(idx, len(labels), rule, seed)
