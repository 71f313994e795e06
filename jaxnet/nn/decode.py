"""Decoding from a step function: greedy, temperature sampling and beam search, all compiled.

Every decoder is generic over one step of a model::

    step(tokens, carry) -> (logits, carry)

tokens: (B,) int, the previous token of each sequence; logits: (B, V) float,
unnormalised scores of the next token; carry: any pytree whose leaves have the
batch on their leading axis (an RNN's h, an LSTM's (h, c), a stack's tuple of
those, a transformer's key/value cache).  The decoders run the steps in one
``lax.scan`` under ``jax.jit`` (no Python loop per token): the compiled program
does not grow with ``max_len``, and a second call with the same ``step``,
``max_len`` (and ``beam_size``), array shapes and dtypes reuses the compiled
code.  ``step`` is a static argument, compared by identity: build it once
(e.g. ``functools.partial(model_step, params)`` would be a new object on every
call; pass the parameters through the carry or jit the caller instead).

Outputs: ``tokens`` (B, max_len) int32, the generated tokens (the start token
not included).  When ``end`` is given, a sequence stops at its first ``end``
(which is kept) and every later position holds ``pad``; the step is still
called for finished sequences (fed ``end``) but its output is ignored.

* :func:`greedy`: ``argmax`` at every step.
* :func:`sample`: ``categorical(logits / temperature)`` at every step, one key
  per step from ``fold_in(key, t)``.
* :func:`beam_search`: the ``beam_size`` highest-scoring partial sequences
  (summed log-probabilities) kept at every step; a finished beam stays in the
  beam with its score unchanged.  At the end the beams are ranked by
  ``score / lp(length)`` with the GNMT length penalty
  ``lp(L) = ((5 + L) / 6) ** length_penalty`` (L counts the tokens up to and
  including ``end``; ``length_penalty=0`` ranks by the summed log-probability).
"""
from __future__ import annotations

import functools
import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jaxnet._checks import check_number, check_positive_int, is_int

__all__ = ["greedy", "sample", "beam_search"]


# --------------------------------------------------------------------------------------------- checks

def _check_token(fn, name, value, optional=False):
    if value is None and optional:
        return None
    if not is_int(value):
        raise ValueError(f"{fn}: `{name}` must be an int token id, got {value!r}")
    return int(value)


def _check_start(fn, start):
    if isinstance(start, (list, tuple)):
        start = np.asarray(start)
    if not hasattr(start, "dtype") or not hasattr(start, "shape"):
        raise ValueError(f"{fn}: `start` must be an integer array of shape (B,), got {type(start).__name__}")
    if start.ndim != 1 or start.dtype.kind not in "iu":
        raise ValueError(f"{fn}: `start` must be an integer array of shape (B,), got shape "
                         f"{tuple(start.shape)} and dtype {start.dtype}")
    if start.shape[0] < 1:
        raise ValueError(f"{fn}: `start` must hold at least one sequence, got shape {tuple(start.shape)}")
    return jnp.asarray(start, jnp.int32)


def _check_step(fn, step, carry, start, end, pad):
    """Trace ``step`` once abstractly: logits (B, V), carry of the same structure and shapes. Returns V."""
    if not callable(step):
        raise ValueError(f"{fn}: `step` must be callable step(tokens (B,), carry) -> (logits (B, V), carry), "
                         f"got {type(step).__name__}")
    b = start.shape[0]
    for leaf in jax.tree_util.tree_leaves(carry):
        if jnp.ndim(leaf) < 1 or jnp.shape(leaf)[0] != b:
            raise ValueError(f"{fn}: every leaf of `carry` must have the batch B={b} (from `start` "
                             f"{tuple(start.shape)}) on its leading axis, got a leaf of shape {jnp.shape(leaf)}")
    try:
        out = jax.eval_shape(step, start, carry)
    except ValueError as e:
        raise ValueError(f"{fn}: `step` failed on tokens {tuple(start.shape)}: {e}") from None
    if not (isinstance(out, tuple) and len(out) == 2):
        raise ValueError(f"{fn}: `step` must return (logits, carry), got {type(out).__name__}")
    logits, new_carry = out
    if len(logits.shape) != 2 or logits.shape[0] != b or not jnp.issubdtype(logits.dtype, jnp.floating):
        raise ValueError(f"{fn}: `step` must return float logits of shape (B, V) with B={b}, got "
                         f"{tuple(logits.shape)} {logits.dtype}")
    old = jax.tree_util.tree_map(lambda a: (jnp.shape(a), jnp.result_type(a)), carry)
    new = jax.tree_util.tree_map(lambda a: (tuple(a.shape), a.dtype), new_carry)
    if jax.tree_util.tree_structure(carry) != jax.tree_util.tree_structure(new_carry) or \
            jax.tree_util.tree_leaves(old, is_leaf=lambda x: isinstance(x, tuple)) != \
            jax.tree_util.tree_leaves(new, is_leaf=lambda x: isinstance(x, tuple)):
        raise ValueError(f"{fn}: `step` must return a carry with the structure, shapes and dtypes of the one "
                         f"it was given")
    v = logits.shape[1]
    if end is not None and not 0 <= end < v:
        raise ValueError(f"{fn}: `end` must be a token id in [0, {v}) for logits of shape "
                         f"{tuple(logits.shape)}, got {end}")
    return v


def _check_common(fn, step, carry, start, max_len, end, pad):
    max_len = check_positive_int(fn, "max_len", max_len)
    end = _check_token(fn, "end", end, optional=True)
    pad = _check_token(fn, "pad", pad)
    start = _check_start(fn, start)
    _check_step(fn, step, carry, start, end, pad)
    return start, max_len, end, pad


# ------------------------------------------------------------------------------------ greedy & sample

def _decode_loop(step, carry, start, max_len, end, pad, choose, keys):
    """tokens (B, max_len): ``choose(logits, key_t)`` at every step, ``pad`` after ``end``."""
    b = start.shape[0]

    def body(state, key_t):
        tok, carry, done = state
        logits, carry = step(tok, carry)
        nxt = choose(logits, key_t).astype(jnp.int32)
        out = jnp.where(done, pad, nxt)
        if end is not None:
            nxt = jnp.where(done, end, nxt)            # finished rows keep feeding `end`
            done = done | (nxt == end)
        return (nxt, carry, done), out

    init = (start, carry, jnp.zeros((b,), bool))
    _, toks = lax.scan(body, init, keys, length=max_len)
    return jnp.swapaxes(toks, 0, 1)


@functools.partial(jax.jit, static_argnames=("step", "max_len", "end", "pad"))
def _greedy(step, carry, start, *, max_len, end, pad):
    return _decode_loop(step, carry, start, max_len, end, pad, lambda logits, _: jnp.argmax(logits, axis=-1), None)


def greedy(step: Callable, carry: Any, start, max_len: int, end: Optional[int] = None, *, pad: int = 0):
    """The most likely next token at every step.

    step: ``step(tokens (B,), carry) -> (logits (B, V), carry)``.  carry: any
    pytree, batch on the leading axis of every leaf.  start: (B,) int, the
    first input token of each sequence.  max_len: the number of tokens to
    generate (>= 1).  end: the end token (None: never stop early).  pad: the
    token written after ``end``.  Returns tokens (B, max_len) int32.
    """
    start, max_len, end, pad = _check_common("greedy", step, carry, start, max_len, end, pad)
    return _greedy(step, carry, start, max_len=max_len, end=end, pad=pad)


@functools.partial(jax.jit, static_argnames=("step", "max_len", "end", "pad"))
def _sample(step, carry, start, key, temperature, *, max_len, end, pad):
    keys = jax.vmap(lambda t: jax.random.fold_in(key, t))(jnp.arange(max_len))

    def choose(logits, k):
        return jax.random.categorical(k, logits.astype(jnp.result_type(float)) / temperature, axis=-1)

    return _decode_loop(step, carry, start, max_len, end, pad, choose, keys)


def sample(step: Callable, carry: Any, start, max_len: int, key, temperature: float = 1.0,
           end: Optional[int] = None, *, pad: int = 0):
    """Sample the next token from ``softmax(logits / temperature)`` at every step.

    Arguments as :func:`greedy`, plus key: a PRNG key (step t uses
    ``fold_in(key, t)``) and temperature: a number > 0 (1: the model's
    distribution; towards 0: greedy; above 1: flatter).  A new temperature does
    not recompile.  Returns tokens (B, max_len) int32.
    """
    temperature = check_number("sample", "temperature", temperature, low=0.0, low_open=True)
    start, max_len, end, pad = _check_common("sample", step, carry, start, max_len, end, pad)
    return _sample(step, carry, start, key, jnp.asarray(temperature, jnp.result_type(float)),
                   max_len=max_len, end=end, pad=pad)


# ---------------------------------------------------------------------------------------- beam search

def _length_penalty(length, alpha):
    return ((5.0 + length) / 6.0) ** alpha


@functools.partial(jax.jit, static_argnames=("step", "max_len", "beam_size", "end", "pad"))
def _beam_search(step, carry, start, length_penalty, *, max_len, beam_size, end, pad):
    b, k = start.shape[0], beam_size
    dt = jnp.result_type(float)
    neg_inf = jnp.array(-jnp.inf, dt)
    tile = lambda a: jnp.repeat(a, k, axis=0)                           # (B, ...) -> (B*K, ...), row b*K + j

    def regather(a, parent):                                              # (B*K, ...) by parent beam (B, K)
        a = a.reshape((b, k) + a.shape[1:])
        idx = parent.reshape((b, k) + (1,) * (a.ndim - 2))
        return jnp.take_along_axis(a, idx, axis=1).reshape((b * k,) + a.shape[2:])

    def body(state, t):
        tok, carry, scores, done, length, hist = state
        logits, carry = step(tok, carry)
        v = logits.shape[-1]
        logp = jax.nn.log_softmax(logits.astype(dt), axis=-1).reshape(b, k, v)
        stay = jnp.where(jnp.arange(v) == 0, 0.0, neg_inf).astype(dt)   # a finished beam: one way on, +0
        cand = scores[..., None] + jnp.where(done[..., None], stay, logp)
        top, flat = lax.top_k(cand.reshape(b, k * v), k)
        parent, word = flat // v, (flat % v).astype(jnp.int32)
        was_done = jnp.take_along_axis(done, parent, axis=1)
        hist = jnp.take_along_axis(hist, parent[..., None], axis=1)
        hist = hist.at[:, :, t].set(jnp.where(was_done, pad, word))
        length = jnp.take_along_axis(length, parent, axis=1) + jnp.where(was_done, 0, 1)
        if end is not None:
            word = jnp.where(was_done, end, word)
            done = was_done | (word == end)
        else:
            done = was_done
        carry = jax.tree_util.tree_map(lambda a: regather(a, parent), carry)
        return (word.reshape(b * k), carry, top, done, length, hist), None

    scores = jnp.where(jnp.arange(k) == 0, 0.0, neg_inf).astype(dt) * jnp.ones((b, 1), dt)
    init = (tile(start), jax.tree_util.tree_map(tile, carry), scores, jnp.zeros((b, k), bool),
            jnp.zeros((b, k), jnp.int32), jnp.full((b, k, max_len), pad, jnp.int32))
    (_, _, scores, _, length, hist), _ = lax.scan(body, init, jnp.arange(max_len))
    ranked = scores / _length_penalty(length.astype(dt), length_penalty)
    ranked = jnp.where(jnp.isneginf(scores), neg_inf, ranked)
    order = jnp.argsort(-ranked, axis=1, stable=True)
    return (jnp.take_along_axis(hist, order[..., None], axis=1), jnp.take_along_axis(ranked, order, axis=1),
            jnp.take_along_axis(length, order, axis=1))


def beam_search(step: Callable, carry: Any, start, end: Optional[int], max_len: int, beam_size: int,
                length_penalty: float = 0.0, *, pad: int = 0, return_all: bool = False):
    """Beam search over ``step``: the ``beam_size`` best partial sequences kept at every step.

    Arguments as :func:`greedy`; end may be None (every beam runs max_len
    steps).  beam_size: K >= 1 (K = 1 is greedy decoding).  length_penalty:
    alpha >= 0 of the final ranking ``score / ((5 + L) / 6) ** alpha``, where
    score is the summed log-softmax of the chosen tokens and L the generated
    length (``end`` included); 0 ranks by the summed log-probability.  The
    carry's leaves are repeated K times along the batch axis (row b*K + j is
    beam j of sequence b), so ``step`` sees B*K rows.

    Returns ``(tokens (B, max_len) int32, scores (B,))`` for the best beam of
    each sequence; with ``return_all=True``, ``(tokens (B, K, max_len),
    scores (B, K), lengths (B, K))``, best first.  Scores are the ranking
    values (the log-probability divided by the length penalty; -inf for a beam
    slot that was never filled, when fewer than K sequences exist).
    """
    beam_size = check_positive_int("beam_search", "beam_size", beam_size)
    length_penalty = check_number("beam_search", "length_penalty", length_penalty, low=0.0)
    start, max_len, end, pad = _check_common("beam_search", step, carry, start, max_len, end, pad)
    _check_step("beam_search", step, jax.tree_util.tree_map(lambda a: jnp.repeat(a, beam_size, axis=0), carry),
                jnp.repeat(start, beam_size), end, pad)
    tokens, scores, lengths = _beam_search(step, carry, start, jnp.asarray(length_penalty, jnp.result_type(float)),
                                           max_len=max_len, beam_size=beam_size, end=end, pad=pad)
    if return_all:
        return tokens, scores, lengths
    return tokens[:, 0], scores[:, 0]
