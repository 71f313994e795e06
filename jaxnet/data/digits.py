"""scikit-learn's embedded handwritten digits: 1,797 real 8x8 grey images, no download."""

from __future__ import annotations

import numpy as np
from sklearn import datasets

from jaxnet.data.splits import Dataset, split_indices

__all__ = ["load_digits"]


def load_digits(*, seed: int = 0, val_fraction: float = 0.15, test_fraction: float = 0.15) -> Dataset:
    """The digits as a `Dataset`, split stratified and deterministically by `seed`.

    x_*: float32 (N, 8, 8, 1) in [0, 1] (pixel / 16); y_*: int32 in 0..9;
    classes ("0", ..., "9").
    """
    raw = datasets.load_digits()
    x = (raw.images / 16.0).astype(np.float32)[..., None]
    y = raw.target.astype(np.int32)
    tr, va, te = split_indices(y, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed)
    return Dataset(
        x_train=x[tr], y_train=y[tr], x_val=x[va], y_val=y[va], x_test=x[te], y_test=y[te],
        classes=tuple(str(c) for c in range(10)), name="digits",
    )
