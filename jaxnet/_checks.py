"""Input validation shared by the reference and manual ops.

Every error names the op, the argument and the shapes involved, so a user can
find the bad call without reading a traceback into XLA.
"""
from __future__ import annotations

from typing import Sequence


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


def check_positive_int(op: str, name: str, value) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"{op}: `{name}` must be a positive int, got {value!r}")
    return value


def check_labels(op: str, scores, labels) -> None:
    check_rank(op, "scores", scores, 2, "(N, C)")
    check_rank(op, "labels", labels, 1, "(N,)")
    if labels.shape[0] != scores.shape[0]:
        raise ValueError(
            f"{op}: `labels` must have one entry per row of `scores`, "
            f"got scores {tuple(scores.shape)} and labels {tuple(labels.shape)}")
    if not (labels.dtype.kind in "iu"):
        raise ValueError(f"{op}: `labels` must be integer class indices, got dtype {labels.dtype}")
