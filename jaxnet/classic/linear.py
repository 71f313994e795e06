"""The course's linear classifier (assignment 1): multiclass SVM and softmax on raw pixels.

Conventions (CS231n A1, row layout):

- rows ``X``: (N, D) float, one flattened image per row; labels ``y``: (N,) int in [0, C);
- weights ``W``: (D, C), scores ``S = X @ W`` (N, C);
- **bias trick**: :func:`add_bias_column` appends a constant 1 to every row, so the last
  row of ``W`` is the bias vector b and ``f(x) = x W + b`` becomes ``f(x) = [x, 1] W``.
  With it, D = H * W * 3 + 1 = 3073 for CIFAR-10;
- loss = mean data loss over the N rows + ``reg * sum(W * W)`` (the A1 convention: the
  whole W, bias row included, is penalised and the penalty's gradient is ``2 * reg * W``).

Every loss returns ``(loss, dW)`` with the course's **hand-derived** gradient (no autodiff):

- SVM: ``dS_ij = 1(margin_ij > 0)`` for j != y_i, ``dS_{i,y_i} = -#violations_i``;
- softmax: ``dS = P - onehot(y)``;
- then ``dW = X.T @ dS / N + 2 reg W``.

``*_naive`` are the course's explicit-loop numpy versions (reference only, slow);
``*_vectorized`` are jitted JAX. :func:`train_linear` is minibatch SGD with a jitted
``lax.scan`` over the iterations.
"""
from __future__ import annotations

import functools
import math
import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet.nn.init import small

__all__ = [
    "add_bias_column", "flatten_images", "linear_features",
    "svm_loss_naive", "svm_loss_vectorized", "softmax_loss_naive", "softmax_loss_vectorized",
    "LOSSES", "train_linear", "predict", "accuracy", "init_weights",
    "class_templates", "plot_templates", "plot_loss_curve",
]


# ------------------------------------------------------------------ features

def flatten_images(x) -> np.ndarray:
    """(N, H, W, C) images -> (N, H * W * C) rows (numpy, float32 unless already float64)."""
    x = np.asarray(x)
    if x.ndim < 2:
        raise ValueError(f"flatten_images: expected a batch (N, ...), got shape {x.shape}")
    out = x.reshape(len(x), -1)
    return out if out.dtype == np.float64 else out.astype(np.float32)


def add_bias_column(X):
    """The bias trick: append a column of ones, (N, D) -> (N, D + 1). numpy or jax in, same out."""
    if X.ndim != 2:
        raise ValueError(f"add_bias_column: expected rows (N, D), got shape {X.shape}")
    xp = jnp if isinstance(X, jax.Array) else np
    return xp.concatenate([X, xp.ones((X.shape[0], 1), X.dtype)], axis=1)


def linear_features(ds, *, normalize: str = "mean_image", scale: float = 255.0, bias: bool = True):
    """The course's preprocessing for the linear classifiers, statistics from train only.

    ds: a :class:`jaxnet.data.Dataset` (uint8 or float NHWC). Steps:
    1. float32 pixels; uint8 data is kept in 0..``scale`` (255 = the course's raw pixels;
       1.0 gives ``to_float``'s [0, 1]);
    2. ``normalize``: "mean_image" subtracts the mean training image (the course);
       "channel" subtracts the per-channel mean and divides by the per-channel std;
       "feature" standardises every pixel of the flattened row (mean and std per
       dimension); "none" leaves the pixels as they are;
    3. flatten to rows and (``bias``) append the ones column.

    Returns ``(X_train, X_val, X_test, info)``, float32 numpy (N, D); info records the steps.
    """
    def to_float(x):
        x = np.asarray(x)
        if x.dtype == np.uint8:
            return x.astype(np.float32) * np.float32(scale / 255.0)
        return x.astype(np.float32)

    xtr, xva, xte = (to_float(x) for x in (ds.x_train, ds.x_val, ds.x_test))
    if normalize == "mean_image":
        mu = xtr.mean(axis=0, dtype=np.float64).astype(np.float32)
        sd = np.float32(1.0)
    elif normalize == "channel":
        mu = xtr.mean(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
        sd = xtr.std(axis=(0, 1, 2), dtype=np.float64).astype(np.float32)
        sd = np.where(sd > 0, sd, np.float32(1.0))
    elif normalize == "feature":
        mu = xtr.mean(axis=0, dtype=np.float64).astype(np.float32)
        sd = xtr.std(axis=0, dtype=np.float64).astype(np.float32)
        sd = np.where(sd > 0, sd, np.float32(1.0))
    elif normalize == "none":
        mu, sd = np.float32(0.0), np.float32(1.0)
    else:
        raise ValueError(f"linear_features: normalize must be 'mean_image', 'channel', 'feature' or 'none', "
                         f"got {normalize!r}")
    out = []
    for x in (xtr, xva, xte):
        rows = flatten_images((x - mu) / sd)
        out.append(add_bias_column(rows) if bias else rows)
    info = {"pixel_scale": scale, "normalize": normalize, "bias_column": bias, "dim": int(out[0].shape[1])}
    return out[0], out[1], out[2], info


def _check(fn, W, X, y):
    if W.ndim != 2 or X.ndim != 2 or y.ndim != 1:
        raise ValueError(f"{fn}: expected W (D, C), X (N, D), y (N,), got W {W.shape}, X {X.shape}, y {y.shape}")
    if X.shape[1] != W.shape[0] or X.shape[0] != y.shape[0]:
        raise ValueError(f"{fn}: shapes disagree: W {W.shape}, X {X.shape}, y {y.shape} "
                         "(need X.shape[1] == W.shape[0] and len(X) == len(y))")


# ------------------------------------------------------------------ naive (numpy, loops)

def svm_loss_naive(W, X, y, reg, *, delta: float = 1.0):
    """Multiclass SVM loss and hand gradient with explicit loops (the course's reference).

    ``L = 1/N sum_i sum_{j != y_i} max(0, s_ij - s_{i,y_i} + delta) + reg * sum(W * W)``.
    W: (D, C), X: (N, D), y: (N,) int. Returns ``(loss: float, dW: np.ndarray (D, C))``.
    Slow: one python iteration per (example, class).
    """
    W, X, y = np.asarray(W), np.asarray(X), np.asarray(y)
    _check("svm_loss_naive", W, X, y)
    dW = np.zeros_like(W)
    num_classes, num_train = W.shape[1], X.shape[0]
    loss = 0.0
    for i in range(num_train):
        scores = X[i].dot(W)
        correct = scores[y[i]]
        for j in range(num_classes):
            if j == y[i]:
                continue
            margin = scores[j] - correct + delta
            if margin > 0:
                loss += margin
                dW[:, j] += X[i]
                dW[:, y[i]] -= X[i]
    loss /= num_train
    dW /= num_train
    loss += reg * np.sum(W * W)
    dW += 2 * reg * W
    return float(loss), dW


def softmax_loss_naive(W, X, y, reg):
    """Softmax (cross-entropy) loss and hand gradient with explicit loops (reference).

    ``L = 1/N sum_i [-s_{i,y_i} + log sum_j exp(s_ij)] + reg * sum(W * W)``, with the
    course's max-shift for stability. Returns ``(loss: float, dW (D, C))``.
    """
    W, X, y = np.asarray(W), np.asarray(X), np.asarray(y)
    _check("softmax_loss_naive", W, X, y)
    dW = np.zeros_like(W)
    num_classes, num_train = W.shape[1], X.shape[0]
    loss = 0.0
    for i in range(num_train):
        scores = X[i].dot(W)
        scores = scores - np.max(scores)
        exp = np.exp(scores)
        total = np.sum(exp)
        loss += np.log(total) - scores[y[i]]
        for j in range(num_classes):
            p = exp[j] / total
            dW[:, j] += (p - (j == y[i])) * X[i]
    loss /= num_train
    dW /= num_train
    loss += reg * np.sum(W * W)
    dW += 2 * reg * W
    return float(loss), dW


# ------------------------------------------------------------------ vectorised (jax, jitted)

def _svm_vec(W, X, y, reg, delta):
    n = X.shape[0]
    scores = X @ W
    correct = jnp.take_along_axis(scores, y[:, None], axis=1)
    is_true = jax.nn.one_hot(y, W.shape[1], dtype=bool)
    margins = jnp.where(is_true, 0, jnp.maximum(0, scores - correct + delta))
    loss = jnp.sum(margins) / n + reg * jnp.sum(W * W)
    violated = (margins > 0).astype(W.dtype)
    dS = violated - is_true.astype(W.dtype) * jnp.sum(violated, axis=1, keepdims=True)
    dW = X.T @ dS / n + 2 * reg * W
    return loss, dW


def _softmax_vec(W, X, y, reg, delta=None):
    del delta
    n = X.shape[0]
    scores = X @ W
    shifted = scores - jnp.max(scores, axis=1, keepdims=True)
    exp = jnp.exp(shifted)
    z = jnp.sum(exp, axis=1, keepdims=True)
    correct = jnp.take_along_axis(shifted, y[:, None], axis=1)[:, 0]
    loss = jnp.sum(jnp.log(z[:, 0]) - correct) / n + reg * jnp.sum(W * W)
    dS = exp / z - jax.nn.one_hot(y, W.shape[1], dtype=W.dtype)
    dW = X.T @ dS / n + 2 * reg * W
    return loss, dW


_svm_vec_jit = jax.jit(_svm_vec)
_softmax_vec_jit = jax.jit(_softmax_vec)


def svm_loss_vectorized(W, X, y, reg, *, delta: float = 1.0):
    """Multiclass SVM loss and hand gradient without loops (jax, jitted).

    Same loss as :func:`svm_loss_naive`. Returns ``(loss: 0-d jax array, dW (D, C))``.
    Gradient: ``dS = 1(margin > 0)`` off the true class, ``-#violations`` on it,
    ``dW = X.T dS / N + 2 reg W``.
    """
    W, X, y = jnp.asarray(W), jnp.asarray(X), jnp.asarray(y)
    _check("svm_loss_vectorized", W, X, y)
    return _svm_vec_jit(W, X, y, reg, delta)


def softmax_loss_vectorized(W, X, y, reg):
    """Softmax loss and hand gradient without loops (jax, jitted): ``dS = P - onehot(y)``.

    Returns ``(loss: 0-d jax array, dW (D, C))``.
    """
    W, X, y = jnp.asarray(W), jnp.asarray(X), jnp.asarray(y)
    _check("softmax_loss_vectorized", W, X, y)
    return _softmax_vec_jit(W, X, y, reg)


LOSSES = {"svm": _svm_vec, "softmax": _softmax_vec}
"""The vectorised (loss, dW) kernels by name, as used by :func:`train_linear`."""


# ------------------------------------------------------------------ training

def init_weights(key_or_seed, dim: int, num_classes: int, *, scale: float = 1e-4, dtype=jnp.float32):
    """The course's ``W = 0.0001 * randn(D, C)`` (small, so the initial loss is at chance)."""
    key = jax.random.PRNGKey(key_or_seed) if isinstance(key_or_seed, int) else key_or_seed
    return small(key, (dim, num_classes), scale=scale, dtype=dtype)     # = scale * jax.random.normal(...)


@functools.partial(jax.jit, static_argnames=("loss", "num_iters", "batch_size"))
def _sgd_scan(W0, X, y, key, learning_rate, reg, delta, lr_decay, *, loss, num_iters, batch_size):
    kernel = LOSSES[loss]
    epoch = max(1, X.shape[0] // batch_size)

    def step(W, inputs):
        k, t = inputs
        idx = jax.random.randint(k, (batch_size,), 0, X.shape[0])   # with replacement, as in A1
        value, dW = kernel(W, X[idx], y[idx], reg, delta)
        lr = learning_rate * lr_decay ** (t // epoch).astype(W.dtype)
        return W - lr * dW, value

    steps = (jax.random.split(key, num_iters), jnp.arange(num_iters))
    return jax.lax.scan(step, W0, steps)


def train_linear(X, y, *, loss: str = "svm", learning_rate: float, reg: float, num_iters: int,
                 batch_size: int = 200, seed: int = 0, num_classes: int | None = None, W0=None,
                 init_scale: float = 1e-4, delta: float = 1.0, lr_decay: float = 1.0):
    """Minibatch SGD on the linear classifier (the course's ``LinearClassifier.train``).

    X: (N, D) rows (bias column already appended if wanted), y: (N,) int labels.
    Each of ``num_iters`` steps samples ``batch_size`` rows with replacement and takes
    ``W -= learning_rate * dW`` with the hand gradient of ``loss`` ("svm" or "softmax").
    The whole loop is one jitted ``lax.scan``; learning_rate / reg / delta are traced, so
    a hyperparameter search compiles once per (loss, num_iters, batch_size, shapes).
    ``lr_decay`` multiplies the learning rate after every epoch (``N // batch_size``
    steps), as in the course's two-layer net; 1.0 (the default) keeps it constant.
    W starts at ``init_scale * randn(D, C)`` from ``seed`` unless W0 is given.

    Returns ``(W, loss_history)``: W (D, C) jax array, loss_history numpy (num_iters,)
    (the minibatch loss *before* each step, regularisation included).
    """
    if loss not in LOSSES:
        raise ValueError(f"train_linear: loss must be one of {sorted(LOSSES)}, got {loss!r}")
    if num_iters < 1 or batch_size < 1:
        raise ValueError(f"train_linear: num_iters and batch_size must be >= 1, got {num_iters}, {batch_size}")
    X, y = jnp.asarray(X), jnp.asarray(y, jnp.int32)
    if X.ndim != 2 or y.shape != (X.shape[0],):
        raise ValueError(f"train_linear: expected X (N, D) and y (N,), got {X.shape} and {y.shape}")
    key, init_key = jax.random.split(jax.random.PRNGKey(seed))
    if W0 is None:
        c = int(num_classes) if num_classes is not None else int(jnp.max(y)) + 1
        W0 = init_weights(init_key, X.shape[1], c, scale=init_scale, dtype=X.dtype)
    W0 = jnp.asarray(W0, X.dtype)
    if W0.shape[0] != X.shape[1]:
        raise ValueError(f"train_linear: W0 {W0.shape} does not match X {X.shape}")
    dt = X.dtype
    W, hist = _sgd_scan(W0, X, y, key, jnp.asarray(learning_rate, dt), jnp.asarray(reg, dt),
                        jnp.asarray(delta, dt), jnp.asarray(lr_decay, dt), loss=loss, num_iters=int(num_iters), batch_size=int(batch_size))
    return W, np.asarray(hist)


@jax.jit
def _predict(W, X):
    return jnp.argmax(X @ W, axis=1)


def predict(W, X, *, chunk: int = 10000) -> np.ndarray:
    """Predicted labels ``argmax_j (X W)_j``: numpy int (N,). Evaluated in row chunks."""
    X = jnp.asarray(X)
    if X.ndim != 2 or X.shape[1] != W.shape[0]:
        raise ValueError(f"predict: X {X.shape} does not match W {W.shape}")
    parts = [np.asarray(_predict(W, X[i:i + chunk])) for i in range(0, X.shape[0], chunk)]
    return np.concatenate(parts) if parts else np.zeros((0,), np.int32)


def accuracy(W, X, y) -> float:
    """Fraction of rows whose predicted label equals y."""
    return float(np.mean(predict(W, X) == np.asarray(y)))


# ------------------------------------------------------------------ visualisation

def class_templates(W, image_shape: Sequence[int] = (32, 32, 3)) -> np.ndarray:
    """Each column of W as an image: float (C, H, W, 3) rescaled to [0, 255] for plotting.

    The bias row is dropped when W has ``prod(image_shape) + 1`` rows. As in the course,
    one min-max over all templates maps W to 0..255, so the classes stay comparable.
    """
    W = np.asarray(W, np.float64)
    h, w, ch = (int(s) for s in image_shape)
    pixels = h * w * ch
    if W.ndim != 2 or W.shape[0] not in (pixels, pixels + 1):
        raise ValueError(f"class_templates: W {W.shape} does not hold {image_shape} images "
                         f"(need {pixels} rows, or {pixels + 1} with the bias row)")
    W = W[:pixels]
    lo, hi = W.min(), W.max()
    scaled = 255.0 * (W - lo) / (hi - lo) if hi > lo else np.zeros_like(W)
    return scaled.T.reshape(W.shape[1], h, w, ch)


def _figure(size):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    fig = Figure(figsize=size, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path


def plot_templates(W, classes: Sequence[str], path, *, image_shape=(32, 32, 3), title: str | None = None) -> str:
    """A PNG grid (2 rows for 10 classes) of the learned class templates. Returns the path."""
    imgs = class_templates(W, image_shape).astype(np.uint8)
    c = len(imgs)
    if len(classes) != c:
        raise ValueError(f"plot_templates: {len(classes)} class names for {c} templates")
    cols = min(c, 5)
    rows = math.ceil(c / cols)
    fig = _figure((2 * cols, 2.2 * rows + (0.4 if title else 0)))
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.axis("off")
        if i < c:
            ax.imshow(imgs[i] if imgs.shape[-1] == 3 else imgs[i, ..., 0], interpolation="nearest",
                      cmap=None if imgs.shape[-1] == 3 else "gray")
            ax.set_title(classes[i])
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def plot_loss_curve(loss_history, path, *, title: str | None = None, smooth: int = 50) -> str:
    """Minibatch loss per iteration (light) with a running mean over ``smooth`` iterations. Returns the path."""
    h = np.asarray(loss_history, np.float64)
    fig = _figure((7, 4))
    ax = fig.add_subplot(1, 1, 1)
    it = np.arange(len(h))
    ax.plot(it, h, alpha=0.35, linewidth=0.8, label="minibatch loss")
    if smooth > 1 and len(h) >= smooth:
        ax.plot(it[smooth - 1:], np.convolve(h, np.ones(smooth) / smooth, mode="valid"),
                label=f"mean of {smooth}")
    ax.set(xlabel="iteration", ylabel="loss", title=title or "Training loss")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return _save(fig, path)
