"""The `Dataset` container and deterministic splitting helpers (numpy, host side).

Images are NHWC everywhere; labels are int32 class indices.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
from sklearn.model_selection import KFold

from jaxnet.data.errors import DataError

__all__ = ["Dataset", "train_val_test_split", "split_indices", "kfold_indices", "subsample"]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Train/val/test splits of an image classification data set.

    x_*: (N, H, W, C) images (float32 or uint8, as documented by the loader), finite;
    y_*: (N,) integer labels in [0, len(classes)). Any split may be empty (N = 0).
    Construction (and `replace`) refuses anything else with a `DataError` naming the
    split: mismatched shapes, non-integer or out-of-range labels, NaN or inf pixels.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: tuple[str, ...]
    name: str = "dataset"

    def __post_init__(self) -> None:
        object.__setattr__(self, "classes", tuple(self.classes))
        for split in ("train", "val", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if x.ndim != 4 or y.ndim != 1 or len(x) != len(y):
                raise DataError(
                    f"Dataset({self.name!r}): x_{split} must be (N, H, W, C) and y_{split} (N,), "
                    f"got x_{split} {x.shape} and y_{split} {y.shape}"
                )
            if x.shape[1:] != self.x_train.shape[1:]:
                raise DataError(
                    f"Dataset({self.name!r}): x_{split} images {x.shape[1:]} differ from "
                    f"x_train images {self.x_train.shape[1:]}"
                )
            self._check_labels(f"y_{split}", y)
            self._check_finite(f"x_{split}", x)

    def _check_labels(self, field: str, y) -> None:
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"Dataset({self.name!r}): {field} has dtype {y.dtype}; labels must be integers")
        if len(y):
            lo, hi = int(y.min()), int(y.max())
            if lo < 0 or hi >= self.num_classes:
                raise DataError(
                    f"Dataset({self.name!r}): {field} holds label {lo if lo < 0 else hi}, but num_classes is "
                    f"{self.num_classes} (labels must be in [0, {self.num_classes}))"
                )

    def _check_finite(self, field: str, x) -> None:
        """One NaN pixel makes training NaN: refuse them (two reductions, no copy, when clean)."""
        if not np.issubdtype(x.dtype, np.floating) or x.size == 0:
            return
        if np.isfinite(x.min()) and np.isfinite(x.max()):  # min and max propagate NaN
            return
        bad = ~np.isfinite(np.asarray(x))
        first = tuple(int(i) for i in np.unravel_index(np.argmax(bad), x.shape))
        raise DataError(
            f"Dataset({self.name!r}): {field} holds {int(bad.sum())} non-finite value(s) (NaN or inf), "
            f"the first at index {first}"
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(H, W, C) of one image."""
        return tuple(self.x_train.shape[1:])

    def replace(self, **changes) -> "Dataset":
        """A copy with some fields replaced (validated again)."""
        return dataclasses.replace(self, **changes)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, train={self.x_train.shape}, val={self.x_val.shape}, "
            f"test={self.x_test.shape}, dtype={self.x_train.dtype}, classes={self.num_classes})"
        )


def _count(fn: str, what: str, value: float | int, n: int) -> int:
    """A fraction in [0, 1) or an int count -> a number of examples out of n."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        count = int(value)
    elif 0.0 <= float(value) < 1.0:
        count = int(round(float(value) * n))
    else:
        raise ValueError(f"{fn}: {what}={value!r} must be a fraction in [0, 1) or an int count")
    if not 0 <= count <= n:
        raise ValueError(f"{fn}: {what}={value!r} asks for {count} of {n} examples")
    return count


def _stratified_take(y, count: int, rng: np.random.Generator) -> np.ndarray:
    """Positions (into y) of `count` examples, each class contributing in proportion to
    its size (largest-remainder rounding, ties broken at random)."""
    classes, inverse, sizes = np.unique(y, return_inverse=True, return_counts=True)
    share = count * sizes / len(y)
    take = np.floor(share).astype(int)
    left = count - take.sum()
    if left:
        order = np.lexsort((rng.random(len(classes)), -(share - take)))
        take[order[:left]] += 1
    members = [rng.permutation(np.flatnonzero(inverse == c))[:k] for c, k in enumerate(take)]
    return np.concatenate(members)


def _split_off(idx, y, count, rng, stratify):
    """Split index array `idx` into (rest, part), both sorted, with len(part) == count."""
    if count == 0:
        return idx, idx[:0]
    pos = _stratified_take(y[idx], count, rng) if stratify else rng.permutation(len(idx))[:count]
    mask = np.zeros(len(idx), bool)
    mask[pos] = True
    return idx[~mask], idx[mask]


def split_indices(y, *, val_fraction=0.15, test_fraction=0.15, seed=0, stratify=True):
    """Index arrays (train_idx, val_idx, test_idx), each sorted int64, for labels y (N,).

    Fractions are of all N examples (an int means a count; a fraction is rounded).
    Deterministic in `seed`. With stratify=True each class gives each split its
    proportional share (largest-remainder rounding), so any split size works.
    """
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"split_indices: y must be (N,), got shape {y.shape}")
    n = len(y)
    n_val = _count("split_indices", "val_fraction", val_fraction, n)
    n_test = _count("split_indices", "test_fraction", test_fraction, n)
    if n_val + n_test > n:
        raise ValueError(f"split_indices: val ({n_val}) + test ({n_test}) exceed the {n} examples")
    rng = np.random.default_rng(seed)
    rest, test_idx = _split_off(np.arange(n), y, n_test, rng, stratify)
    train_idx, val_idx = _split_off(rest, y, n_val, rng, stratify)
    return train_idx, val_idx, test_idx


def train_val_test_split(x, y, *, val_fraction=0.15, test_fraction=0.15, seed=0, stratify=True):
    """Split (x (N, ...), y (N,)) into (x_train, y_train, x_val, y_val, x_test, y_test).

    See `split_indices`; order within each split follows the original order.
    """
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"train_val_test_split: x {x.shape} and y {y.shape} differ in length")
    tr, va, te = split_indices(
        y, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, stratify=stratify
    )
    return x[tr], y[tr], x[va], y[va], x[te], y[te]


def kfold_indices(n: int, k: int, *, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """k shuffled folds over range(n): a list of (train_idx, val_idx) int arrays.

    Every index appears in exactly one val_idx; fold sizes differ by at most one.
    """
    if not 2 <= k <= n:
        raise ValueError(f"kfold_indices: need 2 <= k <= n, got k={k}, n={n}")
    folds = KFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros((n, 1)))
    return [(np.asarray(tr), np.asarray(va)) for tr, va in folds]


def subsample(x, y, n: int, *, seed: int = 0):
    """A random subset (x[idx], y[idx]) of n examples, without replacement, deterministic in seed."""
    x, y = np.asarray(x), np.asarray(y)
    if len(x) != len(y):
        raise ValueError(f"subsample: x {x.shape} and y {y.shape} differ in length")
    if not 0 <= n <= len(x):
        raise ValueError(f"subsample: n={n} must be in [0, {len(x)}] for x of shape {x.shape}")
    idx = np.random.default_rng(seed).permutation(len(x))[:n]
    return x[idx], y[idx]
