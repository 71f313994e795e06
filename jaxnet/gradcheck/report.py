"""Relative errors, per-argument comparison reports, and plain-text tables."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import numpy as np

REL_FLOOR = 1e-8   # the course's guard against 0 / 0
SCALE_FLOOR = 1e-3  # scaled_rel_error: entries are judged against >= 1e-3 of the tensor's largest


def rel_error(a, b) -> float:
    """The course's relative error: ``max |a - b| / max(1e-8, |a| + |b|)``, elementwise then max.

    Accepts arrays or pytrees of arrays (the max over all leaves).  Reading
    (course): > 1e-2 wrong; < 1e-4 fine with kinks; < 1e-7 "you should be happy".
    """
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(la) != len(lb):
        raise ValueError(f"rel_error: the trees have {len(la)} and {len(lb)} leaves")
    worst = 0.0
    for x, y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            raise ValueError(f"rel_error: shapes differ: {x.shape} vs {y.shape}")
        if x.size:
            worst = max(worst, float(np.max(np.abs(x - y) / np.maximum(REL_FLOOR, np.abs(x) + np.abs(y)))))
    return worst


def _norm_rel(x, y) -> float:
    scale = max(float(np.max(np.abs(x))), float(np.max(np.abs(y))))
    return float(np.max(np.abs(x - y))) / scale if scale > 0 else 0.0


def norm_rel_error(a, b) -> float:
    """The largest difference relative to the tensor's scale: ``max |a - b| / max(|a|, |b|)``.

    Per tensor (leaf), then the max over leaves; 0 when both tensors are all zeros.
    It complements :func:`rel_error`: one entry off by ``r`` times the tensor's
    largest entry reads ``r`` here wherever the entry is, while ``rel_error``
    reads ``r / 2`` at the largest entry (``|d| / (|a| + |b|)``); entries far
    below the scale are judged more strictly by ``rel_error``.
    """
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    if len(la) != len(lb):
        raise ValueError(f"norm_rel_error: the trees have {len(la)} and {len(lb)} leaves")
    worst = 0.0
    for x, y in zip(la, lb):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.shape != y.shape:
            raise ValueError(f"norm_rel_error: shapes differ: {x.shape} vs {y.shape}")
        if x.size:
            worst = max(worst, _norm_rel(x, y))
    return worst


def _scaled(x, y):
    mag = np.abs(x) + np.abs(y)
    return np.abs(x - y) / np.maximum(np.maximum(REL_FLOOR, SCALE_FLOOR * mag.max()), mag)


def scaled_rel_error(a, b) -> float:
    """:func:`rel_error` with the floor raised to 1e-3 of each tensor's largest ``|a| + |b|``.

    Used against finite differences: their absolute round-off, about
    ``eps * |f| / h ~ 1e-10`` in float64, would make an entry whose true
    gradient is exactly 0 look 1e-2 "wrong" under the course's 1e-8 floor.
    Entries at the tensor's scale are still judged exactly as by rel_error.
    """
    worst = 0.0
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        if x.size:
            worst = max(worst, float(_scaled(x, y).max()))
    return worst


@dataclasses.dataclass(frozen=True)
class ArgReport:
    """How two gradients of one argument differ."""
    name: str
    shape: tuple
    max_rel_error: float
    max_abs_error: float
    worst_index: tuple
    max_scaled_error: float = 0.0
    norm_error: float = 0.0      # norm_rel_error: max |a - b| / the tensor's scale

    @classmethod
    def of(cls, name, a, b) -> "ArgReport":
        a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
        if a.shape != b.shape:
            raise ValueError(f"compare: `{name}` shapes differ: {a.shape} vs {b.shape}")
        if a.size == 0:
            return cls(name, a.shape, 0.0, 0.0, ())
        rel = np.abs(a - b) / np.maximum(REL_FLOOR, np.abs(a) + np.abs(b))
        worst = np.unravel_index(int(np.argmax(rel)), a.shape)
        return cls(name, a.shape, float(rel.max()), float(np.abs(a - b).max()), tuple(int(i) for i in worst),
                   float(_scaled(a, b).max()), _norm_rel(a, b))


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A per-argument report of ``a`` against ``b`` (e.g. manual vs numeric)."""
    label: str
    args: tuple

    @property
    def max_rel_error(self) -> float:
        return max((r.max_rel_error for r in self.args), default=0.0)

    @property
    def max_scaled_error(self) -> float:
        return max((r.max_scaled_error for r in self.args), default=0.0)

    @property
    def max_norm_error(self) -> float:
        return max((r.norm_error for r in self.args), default=0.0)

    def passed(self, tol: float) -> bool:
        return self.max_rel_error <= tol

    def table(self) -> str:
        rows = [[r.name, "x".join(map(str, r.shape)) or "scalar", f"{r.max_rel_error:.2e}",
                 f"{r.max_scaled_error:.2e}", f"{r.norm_error:.2e}", f"{r.max_abs_error:.2e}", str(r.worst_index)]
                for r in self.args]
        return f"{self.label}\n" + format_table(
            ["arg", "shape", "max rel", "max scaled rel", "max |d| / scale", "max abs", "worst index"], rows)

    __str__ = table


def compare(a: Sequence, b: Sequence, names: Sequence[str] | None = None, label: str = "") -> Comparison:
    """Compare two sequences of gradients argument by argument."""
    a, b = list(a), list(b)
    if len(a) != len(b):
        raise ValueError(f"compare: {len(a)} gradients against {len(b)}")
    names = list(names) if names is not None else [f"arg{i}" for i in range(len(a))]
    return Comparison(label, tuple(ArgReport.of(n, x, y) for n, x, y in zip(names, a, b)))


def format_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain monospace table (also valid Markdown)."""
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    line = lambda cells: "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths)) + " |"
    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep] + [line(r) for r in rows])
