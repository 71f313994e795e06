"""Jitted train and eval steps, and fixed-shape batching with a mask.

Every batch has the same shape ``(batch_size, ...)``: the last partial batch is padded
and a float mask (1 = real example, 0 = padding) marks the real rows. Losses and
accuracies are masked means, so padded rows contribute nothing to the loss, the
metrics or (for models without cross-example layers) the gradient. With fixed shapes
and ``train`` bound statically in two separate jitted functions, each is traced once
per run, whatever the number of epochs or a partial last batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import Any, Optional, Union

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxnet._impl import use_impl
from jaxnet.train.parallel import (
    jit_data_parallel, jit_sharded, model_parallel_size, param_shardings, replicated_sharding,
    train_state_shardings,
)
from jaxnet.train.state import TrainState

__all__ = [
    "default_loss",
    "per_example_loss",
    "masked_mean",
    "make_train_step",
    "make_eval_step",
    "batches",
    "num_batches",
]

Array = jax.Array


def default_loss(scores: Array, labels: Array) -> Array:
    """``jaxnet.functional.softmax_cross_entropy`` (mean over the batch; impl from the context)."""
    from jaxnet.functional import softmax_cross_entropy

    return softmax_cross_entropy(scores, labels)


def per_example_loss(loss_fn: Callable, scores: Array, labels: Array) -> Array:
    """(N,) losses from a batch-mean ``loss_fn(scores (N, C), labels (N,)) -> scalar``,
    by calling it on batches of one under ``vmap`` (works for ``custom_vjp`` losses)."""
    return jax.vmap(lambda s, t: loss_fn(s[None], t[None]))(scores, labels)


def masked_mean(values: Array, mask: Array) -> Array:
    """``sum(values * mask) / max(sum(mask), 1)``; values and mask (N,)."""
    return jnp.sum(values * mask) / jnp.maximum(jnp.sum(mask), 1.0)


def _impl_context(impl: Optional[str]):
    return use_impl(impl) if impl is not None else contextlib.nullcontext()


def _learning_rate(opt_state: Any) -> Array:
    try:
        from jaxnet.optim import current_learning_rate

        return jnp.asarray(current_learning_rate(opt_state), jnp.float32)
    except (ImportError, ValueError):
        return jnp.asarray(jnp.nan, jnp.float32)


def step_core(forward: Callable, optimizer: optax.GradientTransformation, loss_fn: Callable,
              augment_fn: Optional[Callable], ts: TrainState, x: Array, y: Array, mask: Array,
              adversarial_fn: Optional[Callable] = None):
    """One training update, shared by :func:`make_train_step` and ``make_stats_step`` (traced
    inside their ``jit``): split the key, augment, [adversarial examples], forward + masked loss,
    gradient, optimizer.

    forward: ``(params, state, x, key) -> (logits (B, C), new_state, aux)``; ``aux`` is passed
    through (e.g. every layer's output). adversarial_fn: None, or
    ``(key, params, state, x, y, mask) -> (x, y, mask)`` (e.g. a
    :class:`jaxnet.understand.Adversarial` bound to the model), run after augmentation with the
    key ``fold_in(step_key, 1)`` (the other keys are unchanged). Returns ``(new_ts, metrics, grads, aux)``.
    """
    next_key, step_key = jax.random.split(ts.key)
    dropout_key, augment_key = jax.random.split(step_key)
    mask = mask.astype(jnp.float32)
    if augment_fn is not None:
        x = augment_fn(augment_key, x)
    if adversarial_fn is not None:
        x, y, mask = adversarial_fn(jax.random.fold_in(step_key, 1), ts.params, ts.state, x, y, mask)

    def objective(params):
        logits, new_state, aux = forward(params, ts.state, x, dropout_key)
        loss = masked_mean(per_example_loss(loss_fn, logits, y), mask)
        return loss, (logits, new_state, aux)

    (loss, (logits, new_state, aux)), grads = jax.value_and_grad(objective, has_aux=True)(ts.params)
    updates, opt_state = optimizer.update(grads, ts.opt_state, ts.params)
    params = optax.apply_updates(ts.params, updates)
    correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
    grad_norm = optax.tree.norm(grads).astype(jnp.float32)
    metrics = {
        "loss": loss.astype(jnp.float32),
        "accuracy": masked_mean(correct, mask),
        "learning_rate": _learning_rate(opt_state),
        "grad_norm": grad_norm,
        "count": jnp.sum(mask),
        # one fused scalar test on values the step computes anyway: no extra pass over the grads
        "finite": jnp.isfinite(loss) & jnp.isfinite(grad_norm),
    }
    new_ts = ts.replace(step=ts.step + 1, params=params, state=new_state, opt_state=opt_state, key=next_key)
    return new_ts, metrics, grads, aux


def make_train_step(
    model: Any,
    optimizer: optax.GradientTransformation,
    *,
    loss_fn: Optional[Callable] = None,
    impl: Optional[str] = None,
    augment_fn: Optional[Callable[[Array, Array], Array]] = None,
    mesh: Any = None,
    donate: bool = True,
    _trace_hook: Optional[Callable[[Callable], Callable]] = None,
    adversarial: Any = None,
) -> Callable:
    """A jitted ``train_step(ts, x, y, mask) -> (ts, metrics)``.

    Args:
      model: ``apply(params, state, x, *, train, key) -> (logits, state)``; hashable.
      optimizer: optax transformation; ``update(grads, opt_state, params)``.
      loss_fn: ``loss_fn(scores (B, C), labels (B,)) -> scalar batch mean``; default
        :func:`default_loss` (softmax cross-entropy). The step uses its masked mean.
      impl: ``"auto" | "manual"`` (autodiff or hand-written): the default backward path of every op traced in the step
        (``jaxnet.use_impl``); None keeps the current default.
      augment_fn: ``augment_fn(key, x) -> x`` applied to the batch inside the step
        (e.g. ``jaxnet.data.augment``), with a fresh key each step.
      mesh: a ``jax.sharding.Mesh`` (:mod:`jaxnet.train.parallel`): batch sharded over
        its ``"data"`` axis, ts replicated; on a mesh with a ``"model"`` axis, the
        transformer weights and their optimizer state split over it
        (:func:`~jaxnet.train.parallel.train_state_shardings`). None: plain ``jax.jit``.
      donate: donate ``ts`` (argument 0): its buffers are reused for the new state, so
        the ``ts`` passed in must not be used after the call.
      _trace_hook: testing hook; wraps the python step before ``jit``, e.g.
        ``functools.partial(chex.assert_max_traces, n=1)``.
      adversarial: None, or a :class:`jaxnet.understand.Adversarial`: each batch (after
        augmentation) is replaced by, or joined with, its adversarial examples for the current
        params (see there). None leaves the step exactly as without it.

    The step: x (B, ...) as given (float32 numpy), y (B,) int32, mask (B,) float32 0/1.
    The key in ``ts`` is split each step for dropout (``apply(..., key=)``) and augmentation.
    metrics: float32 scalars ``loss`` (masked mean), ``accuracy`` (masked), ``learning_rate``
    (the rate this update applied, :func:`jaxnet.optim.current_learning_rate`; NaN when the
    optimizer does not expose it), ``grad_norm`` (global L2 norm of the gradient), ``count``
    (real examples in the batch), and the bool scalar ``finite``: the loss and the gradient's
    norm are finite (False when any gradient entry is NaN or inf, or the norm overflows).
    The metrics stay on the device; :func:`jaxnet.train.fit` fetches them once per epoch.
    """
    loss_fn = default_loss if loss_fn is None else loss_fn

    def forward(params, state, x, key):
        logits, new_state = model.apply(params, state, x, train=True, key=key)
        return logits, new_state, None

    adversarial_fn = None
    if adversarial is not None:
        def adversarial_fn(key, params, state, x, y, mask):
            return adversarial(model, key, params, state, x, y, mask)

    def train_step(ts: TrainState, x: Array, y: Array, mask: Array):
        with _impl_context(impl):
            new_ts, metrics, _, _ = step_core(forward, optimizer, loss_fn, augment_fn, ts, x, y, mask,
                                              adversarial_fn=adversarial_fn)
            return new_ts, metrics

    fn = _trace_hook(train_step) if _trace_hook is not None else train_step
    donate_argnums = (0,) if donate else ()
    if mesh is not None and model_parallel_size(mesh) > 1:
        repl = replicated_sharding(mesh)
        return jit_sharded(fn, mesh, shardings_of=lambda ts: (train_state_shardings(ts, mesh, optimizer),),
                           out_shardings_of=lambda sh: (sh[0], repl), num_batch_args=3,
                           donate_argnums=donate_argnums)
    if mesh is not None:
        return jit_data_parallel(
            fn, mesh, num_replicated_args=1, num_batch_args=3, donate_argnums=donate_argnums
        )
    return jax.jit(fn, donate_argnums=donate_argnums)


def make_eval_step(
    model: Any,
    *,
    loss_fn: Optional[Callable] = None,
    impl: Optional[str] = None,
    mesh: Any = None,
    _trace_hook: Optional[Callable[[Callable], Callable]] = None,
) -> Callable:
    """A jitted ``eval_step(params, state, x, y, mask) -> (sum_loss, num_correct, count)``.

    Runs ``model.apply(..., train=False)``; x (B, ...), y (B,) int32, mask (B,) float32.
    Returns float32 scalars summed over the real (mask = 1) rows only, so that a data set
    is evaluated exactly by summing over its padded batches. ``loss_fn``, ``impl``,
    ``mesh`` and ``_trace_hook`` as in :func:`make_train_step`.
    """
    loss_fn = default_loss if loss_fn is None else loss_fn

    def eval_step(params: Any, state: Any, x: Array, y: Array, mask: Array):
        with _impl_context(impl):
            mask = mask.astype(jnp.float32)
            logits, _ = model.apply(params, state, x, train=False)
            losses = per_example_loss(loss_fn, logits, y)
            correct = (jnp.argmax(logits, axis=-1) == y).astype(jnp.float32)
            return (
                jnp.sum(losses * mask).astype(jnp.float32),
                jnp.sum(correct * mask),
                jnp.sum(mask),
            )

    fn = _trace_hook(eval_step) if _trace_hook is not None else eval_step
    if mesh is not None and model_parallel_size(mesh) > 1:
        repl = replicated_sharding(mesh)
        return jit_sharded(
            fn, mesh, num_batch_args=3, out_shardings_of=lambda sh: repl,
            shardings_of=lambda params, state: (param_shardings(params, mesh),
                                                jax.tree.map(lambda _: repl, state)))
    if mesh is not None:
        return jit_data_parallel(fn, mesh, num_replicated_args=2, num_batch_args=3)
    return jax.jit(fn)


def _check_batch_size(batch_size: Any) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive int, got {batch_size!r}")
    return int(batch_size)


def num_batches(n: int, batch_size: int, *, pad_last: bool = True) -> int:
    """How many batches :func:`batches` yields for n examples."""
    batch_size = _check_batch_size(batch_size)
    return -(-n // batch_size) if pad_last else n // batch_size


def _permutation(key: Union[int, Array], n: int) -> np.ndarray:
    """A permutation of range(n) from numpy's PCG64 seeded with the key's bits (no device work,
    nothing to compile, the same on every platform)."""
    if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
        seed = [int(key)]
    else:
        if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        seed = np.asarray(key, np.uint32).ravel().tolist()
    return np.random.default_rng(seed).permutation(n)


def batches(
    x: np.ndarray,
    y: np.ndarray,
    batch_size: int,
    *,
    key: Union[None, int, Array] = None,
    pad_last: bool = True,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Fixed-shape batches ``(x_b (B, ...), y_b (B,), mask (B,) float32)`` over (x (N, ...), y (N,)).

    key None: in order (evaluation). key given (int seed or PRNG key): one pass over a random
    permutation (numpy's generator seeded with the key's bits), i.e. sampling without
    replacement; derive a fresh key per epoch, e.g. ``jax.random.fold_in(data_key, epoch)``.
    pad_last True: the last partial batch is completed with copies of examples from the
    start of the pass (real images, so batch statistics stay sensible) whose mask is 0;
    every example is seen exactly once. False: a last partial batch is dropped.
    N = 0 yields nothing. ValueError if pad_last is False and B > N (nothing to yield).
    """
    batch_size = _check_batch_size(batch_size)
    n = len(x)
    if len(y) != n:
        raise ValueError(f"batches: x has {n} examples but y has {len(y)}")
    if not pad_last and batch_size > n:
        raise ValueError(
            f"batches: batch size {batch_size} is larger than the {n} examples and pad_last=False"
        )
    if n == 0:
        return
    order = None if key is None else _permutation(key, n)
    steps = num_batches(n, batch_size, pad_last=pad_last)
    ones = np.ones(batch_size, np.float32)
    for i in range(steps):
        start, stop = i * batch_size, (i + 1) * batch_size
        if stop <= n:
            if order is None:
                yield x[start:stop], y[start:stop], ones
            else:
                idx = order[start:stop]
                yield x[idx], y[idx], ones
        else:
            base = np.arange(n) if order is None else order
            idx = np.resize(base, stop)[start:stop]  # wraps around to the start of the pass
            mask = (np.arange(start, stop) < n).astype(np.float32)
            yield x[idx], y[idx], mask
