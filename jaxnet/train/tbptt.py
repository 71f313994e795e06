"""Truncated backpropagation through time (TBPTT) for recurrent language models.

A long stream laid out as ``(N, T_total)`` contiguous rows (:func:`jaxnet.data.batchify`) is
processed in chunks of ``K`` steps. Each chunk starts from the recurrent state the previous
chunk ended with (the *carry*: any pytree, e.g. ``h`` or ``(h, c)``), so the forward pass sees
the whole history, while the gradient is cut at the chunk boundary: the carry returned by a
step has been passed through ``lax.stop_gradient``, so no gradient ever flows into an earlier
chunk. With ``K = T_total`` (one chunk) this is full BPTT.

The model is ``apply(params, carry, x) -> (logits, new_carry)`` with ``x`` int32 ``(N, K)``,
``logits`` float ``(N, K, V)`` and ``new_carry`` of the same structure as ``carry``.
The loss of a chunk is the mean cross entropy per character in nats:
``sum_{n,t} -log softmax(logits[n, t])[y[n, t]] / (N K)``. Bits per character = nats / ln 2.

* :func:`make_tbptt_step` -> jitted ``step(params, opt_state, carry, x, y) ->
  (params, opt_state, new_carry, loss)``; ``new_carry`` is stop-gradient'ed.
* :func:`make_tbptt_eval` -> jitted ``eval(params, carry, x, y) -> (nll_sum, new_carry)``.
* :func:`evaluate_bpc`: bits per character of a whole ``(N, L)`` stream, state carried.
* :func:`train_tbptt`: the loop (epochs over the stream, the state reset to ``init_carry`` at
  the start of each epoch, a tqdm bar, a time budget, periodic validation bpc) ->
  :class:`TBPTTResult`.
"""
from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

__all__ = ["make_tbptt_step", "make_tbptt_eval", "evaluate_bpc", "train_tbptt", "TBPTTResult",
           "chunk_loss", "LN2"]

LN2 = math.log(2.0)


def _nll_sum(logits: jax.Array, y: jax.Array) -> jax.Array:
    """Sum over all positions of ``-log softmax(logits)[y]``; logits ``(N, K, V)`` (computed in
    at least float32), y int ``(N, K)``."""
    logits = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    logp = jax.nn.log_softmax(logits, axis=-1)
    return -jnp.sum(jnp.take_along_axis(logp, y[..., None].astype(jnp.int32), axis=-1))


def chunk_loss(apply: Callable, params: Any, carry: Any, x: jax.Array, y: jax.Array):
    """``(mean nats per character, new_carry)`` of one chunk ``x, y`` int ``(N, K)``.

    The returned carry is *not* stop-gradient'ed (the caller decides where to cut)."""
    logits, new_carry = apply(params, carry, x)
    return _nll_sum(logits, y) / (y.shape[0] * y.shape[1]), new_carry


def make_tbptt_step(apply: Callable, optimizer: optax.GradientTransformation) -> Callable:
    """A jitted TBPTT step.

    ``step(params, opt_state, carry, x, y) -> (params, opt_state, new_carry, loss)``: the loss
    of the chunk (mean nats per character) from ``carry``, its gradient w.r.t. ``params`` only
    (``carry`` is an input, so nothing flows into earlier chunks), one optimizer update, and
    ``new_carry = lax.stop_gradient(final state)`` for the next chunk.
    """

    def step(params, opt_state, carry, x, y):
        (loss, new_carry), grads = jax.value_and_grad(
            lambda p: chunk_loss(apply, p, carry, x, y), has_aux=True)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        params = optax.apply_updates(params, updates)
        return params, opt_state, jax.lax.stop_gradient(new_carry), loss

    return jax.jit(step)


def make_tbptt_eval(apply: Callable) -> Callable:
    """A jitted ``eval(params, carry, x, y) -> (nll_sum in nats, new_carry)`` of one chunk."""

    def ev(params, carry, x, y):
        logits, new_carry = apply(params, carry, x)
        return _nll_sum(logits, y), new_carry

    return jax.jit(ev)


def evaluate_bpc(apply: Callable, params: Any, init_carry: Callable[[int], Any], stream: np.ndarray,
                 k: int, *, eval_fn: Callable | None = None) -> float:
    """Bits per character of a whole ``(N, L)`` stream, chunk by chunk with the state carried.

    ``init_carry(N)`` is the state at the start of every row. Every target of the full windows
    (``(L - 1) // k`` chunks, see :func:`jaxnet.data.bptt_chunks`) is scored once.
    """
    from jaxnet.data.text import bptt_chunks

    ev = eval_fn or make_tbptt_eval(apply)
    carry = init_carry(stream.shape[0])
    total, count = 0.0, 0
    for x, y in bptt_chunks(stream, k):
        nll, carry = ev(params, carry, jnp.asarray(x, jnp.int32), jnp.asarray(y, jnp.int32))
        total += float(nll)
        count += y.size
    return total / count / LN2


@dataclasses.dataclass
class TBPTTResult:
    """What :func:`train_tbptt` returns.

    ``params``, ``opt_state``: after the last step. ``steps``: updates made. ``epochs_started``.
    ``train_losses``: mean nats/char of each step. ``history``: validation points, a dict of
    lists ``step``, ``train_time_s`` (training seconds so far, validation excluded), ``train_cpu_s``
    (their CPU seconds), ``val_bpc``.
    ``train_time_s``: seconds spent in training steps (``train_cpu_s``: their process CPU seconds); ``eval_time_s``: in validation;
    ``cpu_time_s``: process CPU seconds of the whole call; ``wall_time_s``: its wall time.
    ``stopped_by_budget``: the time budget ended the run. ``compile_time_s``: compiling the step
    (ahead of time, before the first update; not part of ``train_time_s``).
    """

    params: Any
    opt_state: Any
    steps: int
    epochs_started: int
    train_losses: list
    history: dict
    train_time_s: float
    eval_time_s: float
    cpu_time_s: float
    wall_time_s: float
    stopped_by_budget: bool
    compile_time_s: float
    train_cpu_s: float


def train_tbptt(
    apply: Callable,
    params: Any,
    optimizer: optax.GradientTransformation,
    init_carry: Callable[[int], Any],
    train_stream: np.ndarray,
    k: int,
    *,
    epochs: int = 1,
    max_steps: int | None = None,
    time_budget_s: float | None = None,
    val_stream: np.ndarray | None = None,
    val_every: int | None = None,
    val_every_s: float | None = None,
    progress: bool = True,
    desc: str = "tbptt",
    eval_fn: Callable | None = None,
    budget_clock: str = "wall",
) -> TBPTTResult:
    """Train ``apply``'s ``params`` on a ``(N, T_total)`` stream by TBPTT in chunks of ``k``.

    Each epoch starts from ``init_carry(N)`` and walks the stream's full windows in order,
    carrying the (stop-gradient'ed) state. The run ends after ``epochs`` epochs, ``max_steps``
    updates, or when the training time (validation excluded) reaches ``time_budget_s``,
    whichever comes first; ``budget_clock="cpu"`` counts the budget in process CPU seconds of the
    training steps (``time.process_time``: all threads, so up to the core count per wall
    second; steadier than wall time when other programs share the cores). Validation bpc (:func:`evaluate_bpc` on ``val_stream``) is measured
    at step 0, every ``val_every`` steps and/or every ``val_every_s`` training seconds, and at
    the end (``eval_fn``: a :func:`make_tbptt_eval` of ``apply`` to reuse, e.g. for the test
    split afterwards, so it is compiled once). The step is compiled ahead of time (``jit(...).lower(...).compile()``) before the
    clock starts, so the budget is spent on updates; the compile time is reported separately.
    """
    from jaxnet.data.text import bptt_chunks

    if epochs < 1:
        raise ValueError(f"train_tbptt: epochs must be >= 1, got {epochs}")
    if budget_clock not in ("wall", "cpu"):
        raise ValueError(f"train_tbptt: budget_clock must be 'wall' or 'cpu', got {budget_clock!r}")
    if time_budget_s is not None and not (time_budget_s > 0):
        raise ValueError(f"train_tbptt: time_budget_s must be > 0, got {time_budget_s}")
    step_fn = make_tbptt_step(apply, optimizer)
    if eval_fn is None and val_stream is not None:
        eval_fn = make_tbptt_eval(apply)
    opt_state = optimizer.init(params)
    n_rows = train_stream.shape[0]
    per_epoch = (train_stream.shape[1] - 1) // k
    total = per_epoch * epochs if max_steps is None else min(max_steps, per_epoch * epochs)

    wall0, cpu0 = time.perf_counter(), time.process_time()
    train_time = train_cpu = eval_time = 0.0
    history = {"step": [], "train_time_s": [], "train_cpu_s": [], "val_bpc": []}
    losses: list[float] = []
    steps, epochs_started, stopped = 0, 0, False
    last_val_step, last_val_time = -1, 0.0

    def validate():
        nonlocal eval_time, last_val_step, last_val_time
        if eval_fn is None or last_val_step == steps:
            return
        t = time.perf_counter()
        bpc = evaluate_bpc(apply, params, init_carry, val_stream, k, eval_fn=eval_fn)
        eval_time += time.perf_counter() - t
        history["step"].append(steps)
        history["train_time_s"].append(train_time)
        history["train_cpu_s"].append(train_cpu)
        history["val_bpc"].append(bpc)
        last_val_step, last_val_time = steps, train_time

    try:
        from tqdm.auto import tqdm
        bar = tqdm(total=total, desc=desc, disable=not progress, leave=False, mininterval=2.0)
    except ImportError:  # pragma: no cover - tqdm is a dependency
        bar = None
    t = time.perf_counter()
    x0 = jnp.zeros((n_rows, k), jnp.int32)
    step_fn = step_fn.lower(params, opt_state, init_carry(n_rows), x0, x0).compile()
    compile_time = time.perf_counter() - t
    validate()
    done = False
    for _ in range(epochs):
        epochs_started += 1
        carry = init_carry(n_rows)
        for x, y in bptt_chunks(train_stream, k):
            t, c = time.perf_counter(), time.process_time()
            params, opt_state, carry, loss = step_fn(params, opt_state, carry, jnp.asarray(x, jnp.int32),
                                                     jnp.asarray(y, jnp.int32))
            loss = float(loss)  # waits for the step
            train_time += time.perf_counter() - t
            train_cpu += time.process_time() - c
            losses.append(loss)
            steps += 1
            if bar is not None:
                bar.update(1)
                if steps % 20 == 0:
                    bar.set_postfix(loss=f"{loss / LN2:.3f} bpc", refresh=False)
            if time_budget_s is not None and (train_cpu if budget_clock == "cpu" else train_time) >= time_budget_s:
                stopped = done = True
            elif max_steps is not None and steps >= max_steps:
                done = True
            if (val_every and steps % val_every == 0) or (val_every_s and train_time - last_val_time >= val_every_s):
                validate()
            if done:
                break
        if done:
            break
    validate()
    if bar is not None:
        bar.close()
    return TBPTTResult(
        params=params, opt_state=opt_state, steps=steps, epochs_started=epochs_started,
        train_losses=losses, history=history, train_time_s=train_time, eval_time_s=eval_time,
        cpu_time_s=time.process_time() - cpu0, wall_time_s=time.perf_counter() - wall0,
        stopped_by_budget=stopped, compile_time_s=compile_time, train_cpu_s=train_cpu,
    )
