"""k-nearest-neighbour classification (CS231n assignment 1), as pure jit-compiled functions.

Inputs are float arrays of shape (N, D); anything with more axes (e.g. NHWC images) is
flattened to (N, prod(rest)) and integer pixels are cast to float32 first, so uint8
never wraps around in ``a - b``. Labels are int class indices in ``[0, num_classes)``.

Distances
---------
The course's three L2 implementations are kept as teaching references; they agree to
float32 rounding (tested):

- :func:`l2_distances_two_loops`: a Python loop over test rows *and* over training rows,
  one (jitted) pair distance per ``(i, j)``: N_test x N_train dispatches. Only for tiny
  inputs (tens x hundreds of rows); it exists to be timed against the others.
- :func:`l2_distances_one_loop`: a Python loop over test rows, each row against all
  training rows at once (broadcasting).
- :func:`l2_distances_vectorized`: no loop, ``sqrt(max(||a||^2 - 2 a.b + ||b||^2, 0))``
  with one matrix product (full float32 matmul precision, also on GPUs). The clamp at 0
  removes the small negative values that cancellation can produce for near-identical rows.
  Memory: the whole (N_test, N_train) matrix plus the product.

:func:`pairwise_distances` is the fast default: the vectorised formula applied to chunks
of ``chunk_size`` test rows inside one compiled ``jax.lax.map``, so the temporaries stay
at about ``chunk_size x N_train`` floats (256 x 50,000 x 4 B = 51 MB) whatever N_test is;
the returned matrix itself is N_test x N_train floats (10,000 x 50,000 = 2 GB), which is
why the classifiers below never build it. :func:`l1_distances` (sum of absolute
differences) is chunked the same way and additionally walks the training rows in blocks so
that the ``|a - b|`` temporary stays under ~2^24 floats (64 MB).

Classification
--------------
:func:`nearest_neighbors` returns, per test row, the k nearest training rows (distances
ascending, indices) by computing one chunk of distances at a time and keeping only its
``jax.lax.top_k``: peak memory is ``chunk_size x N_train`` floats + ``N_test x k``, never
the full matrix. Ranking for L2 uses squared distances (same order, no sqrt).

Tie rules (both tested):

- equal distances: the training row with the lower index comes first (``jax.lax.top_k``
  is stable in that sense);
- the vote: :func:`majority_vote` counts the k neighbours' labels and returns the most
  frequent one; a tie between labels goes to the **smallest label**, exactly as the
  course's ``np.argmax(np.bincount(closest_y))``.

:func:`knn_predict` = nearest neighbours + vote; :func:`predict_from_distances` is the
course's ``predict_labels`` on a precomputed distance matrix; :func:`cross_validate_k`
chooses k by f-fold cross-validation, computing each fold's neighbours once (for the
largest k) and scoring every k from the same sorted neighbour list.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "l2_distances_two_loops",
    "l2_distances_one_loop",
    "l2_distances_vectorized",
    "l1_distances",
    "pairwise_distances",
    "nearest_neighbors",
    "majority_vote",
    "predict_from_distances",
    "knn_predict",
    "cross_validate_k",
    "CVResult",
    "METRICS",
]

METRICS = ("l2", "l1")
DEFAULT_CHUNK = 256
_L1_BLOCK_FLOATS = 1 << 24  # cap on the (chunk, train block, D) |a - b| temporary
_HIGHEST = jax.lax.Precision.HIGHEST


# ---------------------------------------------------------------- input checks

def _flat(fn: str, name: str, x) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"{fn}: {name} must be (N, D) (or (N, ...) to flatten), got shape {x.shape}")
    if x.ndim > 2:
        x = x.reshape(x.shape[0], -1)
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    return x


def _pair(fn: str, x_test, x_train) -> tuple[jax.Array, jax.Array]:
    x_test, x_train = _flat(fn, "x_test", x_test), _flat(fn, "x_train", x_train)
    if x_test.shape[1] != x_train.shape[1]:
        raise ValueError(
            f"{fn}: x_test rows have {x_test.shape[1]} features but x_train rows have "
            f"{x_train.shape[1]} (shapes {x_test.shape} and {x_train.shape})"
        )
    dtype = jnp.result_type(x_test.dtype, x_train.dtype)
    return x_test.astype(dtype), x_train.astype(dtype)


def _check_metric(fn: str, metric: str) -> str:
    if metric not in METRICS:
        raise ValueError(f"{fn}: metric={metric!r} is not one of {METRICS}")
    return metric


def _check_chunk(fn: str, chunk_size) -> int:
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise ValueError(f"{fn}: chunk_size must be a positive int, got {chunk_size!r}")
    return int(chunk_size)


def _check_k(fn: str, k, n_train: int) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= n_train:
        raise ValueError(f"{fn}: k must be an int in [1, {n_train}] (the number of training rows), got {k!r}")
    return int(k)


def _labels(fn: str, y, n: int, num_classes: int | None) -> tuple[jax.Array, int]:
    y = np.asarray(y)
    if y.shape != (n,):
        raise ValueError(f"{fn}: y_train must be ({n},) to match x_train, got shape {y.shape}")
    if n and (not np.issubdtype(y.dtype, np.integer) or y.min() < 0):
        raise ValueError(f"{fn}: y_train must hold non-negative int labels, got dtype {y.dtype}")
    if num_classes is None:
        num_classes = int(y.max()) + 1 if n else 1
    elif n and y.max() >= num_classes:
        raise ValueError(f"{fn}: label {int(y.max())} >= num_classes={num_classes}")
    return jnp.asarray(y, jnp.int32), int(num_classes)


# ---------------------------------------------------------------- the course's three L2 versions

@jax.jit
def _l2_pair(a, b):
    return jnp.sqrt(jnp.sum((a - b) ** 2))


@jax.jit
def _l2_row(a, x_train):
    return jnp.sqrt(jnp.sum((x_train - a[None, :]) ** 2, axis=1))


def l2_distances_two_loops(x_test, x_train) -> jax.Array:
    """(N_test, N_train) L2 distances with two Python loops (test rows x training rows).

    One jitted pair kernel ``sqrt(sum((a - b)**2))`` per (i, j), i.e. N_test * N_train
    dispatches: a teaching reference, **only for tiny inputs** (e.g. 50 x 500 takes
    seconds where :func:`l2_distances_vectorized` takes milliseconds).
    """
    x_test, x_train = _pair("l2_distances_two_loops", x_test, x_train)
    n_test, n_train = x_test.shape[0], x_train.shape[0]
    if n_test == 0 or n_train == 0:
        return jnp.zeros((n_test, n_train), x_test.dtype)
    test_rows, train_rows = list(x_test), list(x_train)
    dists = [[_l2_pair(a, b) for b in train_rows] for a in test_rows]
    return jnp.stack([jnp.stack(row) for row in dists])


def l2_distances_one_loop(x_test, x_train) -> jax.Array:
    """(N_test, N_train) L2 distances with one Python loop over test rows.

    Each row is a jitted broadcast ``sqrt(sum((x_train - x_test[i])**2, axis=1))``:
    N_test dispatches, memory N_train x D per row. A teaching reference.
    """
    x_test, x_train = _pair("l2_distances_one_loop", x_test, x_train)
    n_test, n_train = x_test.shape[0], x_train.shape[0]
    if n_test == 0 or n_train == 0:
        return jnp.zeros((n_test, n_train), x_test.dtype)
    return jnp.stack([_l2_row(a, x_train) for a in list(x_test)])


def _sq_l2(x_test, x_train):
    """Squared L2 via ||a||^2 - 2 a.b + ||b||^2, clamped at 0 (traceable, unjitted)."""
    t = jnp.sum(x_test * x_test, axis=1)[:, None]
    r = jnp.sum(x_train * x_train, axis=1)[None, :]
    cross = jnp.matmul(x_test, x_train.T, precision=_HIGHEST)
    return jnp.maximum(t - 2.0 * cross + r, 0.0)


@jax.jit
def _l2_vectorized(x_test, x_train):
    return jnp.sqrt(_sq_l2(x_test, x_train))


def l2_distances_vectorized(x_test, x_train) -> jax.Array:
    """(N_test, N_train) L2 distances with no loop: sqrt(max(||a||^2 - 2ab + ||b||^2, 0)).

    One jitted matmul; memory is the full (N_test, N_train) matrix. For large inputs use
    :func:`pairwise_distances`, which applies the same formula in chunks.
    """
    return _l2_vectorized(*_pair("l2_distances_vectorized", x_test, x_train))


# ---------------------------------------------------------------- chunked engine

def _map_chunks(fn, x, chunk: int):
    """Apply fn to (chunk, D) slices of x (N, D) with lax.map; pads the last chunk and
    returns fn's outputs concatenated along axis 0 and cut back to N rows."""
    n = x.shape[0]
    c = max(1, min(chunk, n))
    pad = (-n) % c
    xs = jnp.pad(x, ((0, pad), (0, 0))).reshape(-1, c, x.shape[1])
    out = jax.lax.map(fn, xs)
    return jax.tree_util.tree_map(lambda o: o.reshape(-1, *o.shape[2:])[:n], out)


def _l1_block(xc, x_train):
    """(c, N_train) L1 distances for one test chunk, walking x_train in blocks so the
    (c, block, D) |a - b| temporary stays under _L1_BLOCK_FLOATS floats."""
    n_train, d = x_train.shape
    block = max(1, min(n_train, _L1_BLOCK_FLOATS // max(1, xc.shape[0] * d)))
    if block >= n_train:
        return jnp.sum(jnp.abs(xc[:, None, :] - x_train[None, :, :]), axis=-1)
    out = _map_chunks(lambda tb: jnp.sum(jnp.abs(xc[:, None, :] - tb[None, :, :]), axis=-1).T,
                      x_train, block)  # (N_train, c)
    return out.T


def _chunk_dists(xc, x_train, metric: str, squared: bool):
    if metric == "l1":
        return _l1_block(xc, x_train)
    d2 = _sq_l2(xc, x_train)
    return d2 if squared else jnp.sqrt(d2)


@partial(jax.jit, static_argnames=("metric", "chunk_size", "squared"))
def _pairwise(x_test, x_train, metric, chunk_size, squared):
    return _map_chunks(lambda xc: _chunk_dists(xc, x_train, metric, squared), x_test, chunk_size)


def pairwise_distances(x_test, x_train, *, metric: str = "l2", chunk_size: int = DEFAULT_CHUNK,
                       squared: bool = False) -> jax.Array:
    """(N_test, N_train) distances, computed ``chunk_size`` test rows at a time (jitted).

    metric: "l2" (vectorised formula, clamped at 0; ``squared=True`` skips the sqrt) or
    "l1" (sum of absolute differences; ``squared`` is ignored). Temporaries stay at about
    ``chunk_size x N_train`` floats; the result itself is N_test x N_train floats.
    """
    fn = "pairwise_distances"
    x_test, x_train = _pair(fn, x_test, x_train)
    _check_metric(fn, metric)
    chunk_size = _check_chunk(fn, chunk_size)
    if x_test.shape[0] == 0 or x_train.shape[0] == 0:
        return jnp.zeros((x_test.shape[0], x_train.shape[0]), x_test.dtype)
    return _pairwise(x_test, x_train, metric, chunk_size, bool(squared and metric == "l2"))


def l1_distances(x_test, x_train, *, chunk_size: int = 64) -> jax.Array:
    """(N_test, N_train) L1 distances sum_p |a_p - b_p|, chunked (see module docstring)."""
    return pairwise_distances(x_test, x_train, metric="l1", chunk_size=chunk_size)


# ---------------------------------------------------------------- neighbours and votes

@partial(jax.jit, static_argnames=("k", "metric", "chunk_size"))
def _nearest(x_test, x_train, k, metric, chunk_size):
    def one_chunk(xc):
        d = _chunk_dists(xc, x_train, metric, squared=True)
        neg, idx = jax.lax.top_k(-d, k)
        return -neg, idx

    d, idx = _map_chunks(one_chunk, x_test, chunk_size)
    return (jnp.sqrt(d) if metric == "l2" else d), idx


def nearest_neighbors(x_train, x_test, k: int, *, metric: str = "l2",
                      chunk_size: int = DEFAULT_CHUNK) -> tuple[jax.Array, jax.Array]:
    """The k nearest training rows of every test row, without the full distance matrix.

    Returns (distances (N_test, k) ascending, indices (N_test, k) int32 into x_train).
    Equal distances: the lower training index first. Peak memory about
    ``chunk_size x N_train`` floats.
    """
    fn = "nearest_neighbors"
    x_test, x_train = _pair(fn, x_test, x_train)
    _check_metric(fn, metric)
    chunk_size = _check_chunk(fn, chunk_size)
    k = _check_k(fn, k, x_train.shape[0])
    if x_test.shape[0] == 0:
        return jnp.zeros((0, k), x_test.dtype), jnp.zeros((0, k), jnp.int32)
    return _nearest(x_test, x_train, k, metric, chunk_size)


@partial(jax.jit, static_argnames=("num_classes",))
def majority_vote(neighbor_labels, num_classes: int) -> jax.Array:
    """The most frequent label in each row of ``neighbor_labels`` (N, k) -> (N,) int32.

    Tie rule: among equally frequent labels the **smallest label** wins (like the course's
    ``np.argmax(np.bincount(closest_y))``). To vote with the first k' < k neighbours pass
    ``neighbor_labels[:, :k']``.
    """
    counts = jnp.sum(jax.nn.one_hot(neighbor_labels, num_classes, dtype=jnp.int32), axis=-2)
    return jnp.argmax(counts, axis=-1).astype(jnp.int32)


def predict_from_distances(dists, y_train, k: int = 1, *, num_classes: int | None = None) -> jax.Array:
    """The course's ``predict_labels``: labels (N_test,) from a (N_test, N_train) distance
    matrix by a majority vote of the k smallest entries per row (same tie rules as
    :func:`knn_predict`)."""
    fn = "predict_from_distances"
    dists = jnp.asarray(dists)
    if dists.ndim != 2:
        raise ValueError(f"{fn}: dists must be (N_test, N_train), got shape {dists.shape}")
    y, num_classes = _labels(fn, y_train, dists.shape[1], num_classes)
    k = _check_k(fn, k, dists.shape[1])
    _, idx = jax.lax.top_k(-dists, k)
    return majority_vote(y[idx], num_classes)


def knn_predict(x_train, y_train, x_test, *, k: int = 1, metric: str = "l2",
                chunk_size: int = DEFAULT_CHUNK, num_classes: int | None = None) -> jax.Array:
    """k-NN labels (N_test,) int32: majority vote of the k nearest training rows.

    Never builds the full distance matrix (see :func:`nearest_neighbors`). Ties: equal
    distances favour the lower training index; equal vote counts the smallest label.
    ``num_classes`` defaults to ``max(y_train) + 1``.
    """
    fn = "knn_predict"
    x_train = _flat(fn, "x_train", x_train)
    y, num_classes = _labels(fn, y_train, x_train.shape[0], num_classes)
    _, idx = nearest_neighbors(x_train, x_test, k, metric=metric, chunk_size=chunk_size)
    return majority_vote(y[idx], num_classes)


# ---------------------------------------------------------------- cross-validation

class CVResult(NamedTuple):
    """Cross-validation of k: ``accuracies[i, f]`` is the accuracy of k = ks[i] on fold f."""

    ks: tuple[int, ...]
    accuracies: np.ndarray  # (len(ks), folds)
    mean: np.ndarray  # (len(ks),)
    std: np.ndarray  # (len(ks),)
    best_k: int  # highest mean accuracy; ties -> the smallest k

    def as_dict(self) -> dict:
        return {
            "ks": list(self.ks),
            "accuracies": self.accuracies.tolist(),
            "mean": self.mean.tolist(),
            "std": self.std.tolist(),
            "best_k": self.best_k,
        }


def cross_validate_k(x, y, ks, *, folds: int = 5, seed: int = 0, metric: str = "l2",
                     chunk_size: int = DEFAULT_CHUNK, num_classes: int | None = None) -> CVResult:
    """Choose k by ``folds``-fold cross-validation on (x (N, ...), y (N,)).

    Folds come from :func:`jaxnet.data.kfold_indices` (shuffled with ``seed``). For each
    fold the max(ks) nearest neighbours of the held-out rows are found once and every k
    is scored from that same sorted list. Returns a :class:`CVResult`.
    """
    from jaxnet.data.splits import kfold_indices

    fn = "cross_validate_k"
    x = _flat(fn, "x", x)
    y_np = np.asarray(y)
    y_all, num_classes = _labels(fn, y_np, x.shape[0], num_classes)
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError(f"{fn}: ks is empty")
    splits = kfold_indices(x.shape[0], folds, seed=seed)
    smallest_train = min(len(tr) for tr, _ in splits)
    for k in ks:
        _check_k(fn, k, smallest_train)
    kmax = max(ks)
    acc = np.zeros((len(ks), folds))
    for f, (tr, va) in enumerate(splits):
        _, idx = nearest_neighbors(x[tr], x[va], kmax, metric=metric, chunk_size=chunk_size)
        nb = y_all[tr][idx]  # (n_val, kmax) labels, nearest first
        y_val = y_all[va]
        for i, k in enumerate(ks):
            pred = majority_vote(nb[:, :k], num_classes)
            acc[i, f] = float(jnp.mean(pred == y_val))
    mean, std = acc.mean(axis=1), acc.std(axis=1)
    best_k = min(ks[i] for i in np.flatnonzero(mean == mean.max()))  # ties -> smallest k
    return CVResult(ks=ks, accuracies=acc, mean=mean, std=std, best_k=best_k)
