"""The course's sanity checks before a long run: the initial loss, and overfitting a tiny subset."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, Optional, Union

import jax
import numpy as np
import optax

__all__ = ["initial_loss_check", "overfit_small_subset"]


def initial_loss_check(
    model: Any,
    params: Any,
    state: Any,
    x: np.ndarray,
    y: np.ndarray,
    num_classes: int,
    *,
    rtol: float = 0.1,
    batch_size: int = 256,
    impl: Optional[str] = None,
) -> tuple[float, float, bool]:
    """Is the untrained softmax loss about ``ln C``?

    With small weights every score is near 0, the softmax is near uniform (1/C per class)
    and the cross-entropy is near ``ln C`` (2.303 for C = 10). A loss far from it means
    a bug in the loss or an initialisation that is not small.

    x (N, ...) float32, y (N,) int32; evaluated with train=False over all N examples.
    Returns ``(loss, expected=ln C, ok)`` with ``ok = |loss - ln C| <= rtol * ln C``.
    The default tolerance, 10 % (0.23 for C = 10), fits small-weight initialisations: for
    C = 10, i.i.d. scores of standard deviation s give about ``ln C * (1 + 0.19 s**2)``,
    within 10 % up to s = 0.7. A He-initialised network (s near 1) sits about 19 % above
    ``ln C`` without being wrong: pass ``rtol=0.3`` for it.
    """
    from jaxnet.train.fit import evaluate

    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2, got {num_classes}")
    loss, _ = evaluate(model, params, state, x, y, min(batch_size, max(len(x), 1)), impl=impl)
    expected = math.log(num_classes)
    return loss, expected, bool(abs(loss - expected) <= rtol * expected)


def overfit_small_subset(
    model: Any,
    data: Any,
    n: int = 20,
    epochs: int = 100,
    *,
    optimizer: Optional[optax.GradientTransformation] = None,
    learning_rate: float = 1e-3,
    batch_size: Optional[int] = None,
    key: Union[int, jax.Array] = 0,
    impl: Optional[str] = None,
    devices: Any = 1,
    progress: bool = False,
) -> float:
    """Train on ``n`` training examples only and return the accuracy on them (train=False).

    A correct model and training loop should reach 1.0: if not, something (the gradient,
    the update, the loss) is broken. The subset is ``jaxnet.data.subsample`` of
    ``data.x_train`` with the seed 0; the default optimizer is Adam at ``learning_rate``;
    ``batch_size`` defaults to n (full batch). Runs :func:`jaxnet.train.fit` on one
    device with the subset as both training and validation data.
    """
    from jaxnet.data import subsample
    from jaxnet.optim import make_optimizer
    from jaxnet.train.fit import evaluate, fit

    if not 1 <= n <= len(data.x_train):
        raise ValueError(f"n={n} must be in [1, {len(data.x_train)}] (the training-set size)")
    xs, ys = subsample(data.x_train, data.y_train, n, seed=0)
    small = data.replace(x_train=xs, y_train=ys, x_val=xs, y_val=ys, x_test=xs[:0], y_test=ys[:0])
    optimizer = make_optimizer("adam", learning_rate) if optimizer is None else optimizer
    batch_size = n if batch_size is None else batch_size
    result = fit(
        model, small, optimizer=optimizer, epochs=epochs, batch_size=batch_size, key=key,
        impl=impl, progress=progress, devices=devices,
    )
    ts = result.train_state
    _, acc = evaluate(model, ts.params, ts.state, xs, ys, batch_size, impl=impl)
    return acc
