"""Input validation shared by the reference and manual ops.

Every error names the op, the argument and the shapes involved, so a user can
find the bad call without reading a traceback into XLA.
"""
from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np


def check_rank(op: str, name: str, x, ranks: int | Sequence[int], what: str = "") -> None:
    ranks = (ranks,) if isinstance(ranks, int) else tuple(ranks)
    if x.ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        hint = f" ({what})" if what else ""
        raise ValueError(f"{op}: `{name}` must have rank {want}{hint}, got shape {tuple(x.shape)}")


def check_min_rank(op: str, name: str, x, rank: int) -> None:
    if x.ndim < rank:
        raise ValueError(f"{op}: `{name}` must have rank >= {rank}, got shape {tuple(x.shape)}")


def check_shape(op: str, name: str, x, shape: tuple) -> None:
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"{op}: `{name}` must have shape {tuple(shape)}, got {tuple(x.shape)}")


def check_same_shape(op: str, a_name: str, a, b_name: str, b) -> None:
    if tuple(a.shape) != tuple(b.shape):
        raise ValueError(
            f"{op}: `{a_name}` and `{b_name}` must have the same shape, "
            f"got {tuple(a.shape)} and {tuple(b.shape)}")


def is_int(value) -> bool:
    """A Python or NumPy integer, not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def check_positive_int(op: str, name: str, value) -> int:
    """An int >= 1 (Python or NumPy integer), returned as a Python int."""
    if not is_int(value) or value < 1:
        raise ValueError(f"{op}: `{name}` must be a positive int, got {value!r}")
    return int(value)


def check_number(op: str, name: str, value, *, low=None, high=None, low_open=False, high_open=False,
                 what: str = "") -> float:
    """A finite real number (Python or NumPy scalar, not a bool) within the given bounds,
    returned as a Python float; otherwise a one-line ValueError naming the op and the argument."""
    ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
    v = float(value) if ok else math.nan
    ok = ok and math.isfinite(v)
    if ok and low is not None:
        ok = v > low if low_open else v >= low
    if ok and high is not None:
        ok = v < high if high_open else v <= high
    if not ok:
        if low is not None and high is not None:
            desc = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        elif low == 0:
            desc = "a positive number" if low_open else "a non-negative number"
        elif low is not None:
            desc = f"a number {'>' if low_open else '>='} {low:g}"
        else:
            desc = "a number"
        why = " (not a finite number)" if isinstance(value, numbers.Real) and not math.isfinite(float(value)) else ""
        raise ValueError(f"{op}: `{name}`{what} must be {desc}, got {value!r}{why}")
    return v


def check_labels(op: str, scores, labels) -> None:
    check_rank(op, "scores", scores, 2, "(N, C)")
    check_rank(op, "labels", labels, 1, "(N,)")
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"{op}: `labels` must have one entry per row of `scores`, "
            f"got scores {tuple(scores.shape)} and labels {tuple(labels.shape)}")
    if not (labels.dtype.kind in "iu"):
        raise ValueError(f"{op}: `labels` must be integer class indices, got dtype {labels.dtype}")


def labels_in_range(labels, num_classes: int):
    """Bool (N,): True where ``0 <= label < num_classes`` (works on traced arrays)."""
    return (labels >= 0) & (labels < num_classes)
