"""jaxnet.train.tbptt: the state is cut at chunk boundaries (gradient of a chunk = the gradient
with the incoming state held constant), carrying the state beats resetting it on a stream whose
structure crosses chunk boundaries, and one chunk of the whole stream is full BPTT.

The model is a tiny tanh RNN written in plain jax.numpy (one-hot inputs), so these tests
exercise the TBPTT machinery alone. Its weights are drawn with NumPy and most reference gradients are
jitted: op by op, jax.random and jax.grad compiled a program per shape and per primitive, most
of these tests' time."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnet.data import batchify
from jaxnet.train import evaluate_bpc, make_tbptt_step, train_tbptt
from jaxnet.train.tbptt import LN2, chunk_loss

V = 4


def rnn_apply(params, h, x):
    """x int (N, K) -> logits (N, K, V), h (N, H)."""
    e = jax.nn.one_hot(x, V, dtype=params["wx"].dtype)

    def body(h, et):
        h = jnp.tanh(et @ params["wx"] + h @ params["wh"] + params["b"])
        return h, h

    h, hs = jax.lax.scan(body, h, jnp.swapaxes(e, 0, 1))
    return jnp.swapaxes(hs, 0, 1) @ params["wo"] + params["bo"], h


def init(seed, hidden, dtype=jnp.float32):
    rng = np.random.default_rng(seed)
    return {
        "wx": jnp.asarray(rng.standard_normal((V, hidden)), dtype),
        "wh": jnp.asarray(rng.standard_normal((hidden, hidden)) / math.sqrt(hidden), dtype),
        "b": jnp.zeros((hidden,), dtype),
        "wo": jnp.asarray(rng.standard_normal((hidden, V)) / math.sqrt(hidden), dtype),
        "bo": jnp.zeros((V,), dtype),
    }


def zeros(hidden, dtype=jnp.float32):
    return lambda n: jnp.zeros((n, hidden), dtype)


def _sgd_grad(params, new_params):
    """With optax.sgd(1.0) an update is params - grad: the gradient the step used."""
    return jax.tree.map(lambda a, b: a - b, params, new_params)


def test_chunk_gradient_holds_the_incoming_state_constant(x64):
    hidden = 5
    params = init(0, hidden, jnp.float64)
    rng = np.random.default_rng(0)
    stream = rng.integers(0, V, size=(3, 13))
    (x1, y1), (x2, y2) = (stream[:, :6], stream[:, 1:7]), (stream[:, 6:12], stream[:, 7:13])
    step = make_tbptt_step(rnn_apply, optax.sgd(1.0))
    opt_state = optax.sgd(1.0).init(params)
    h0 = jnp.zeros((3, hidden), jnp.float64)

    _, _, h1, loss1 = step(params, opt_state, h0, x1, y1)
    # the carry handed on equals the forward state after chunk 1
    _, h1_fwd = jax.jit(rnn_apply)(params, h0, x1)
    np.testing.assert_allclose(h1, h1_fwd, rtol=0, atol=1e-14)
    # the gradient of chunk 2 from the same params: chunk 2's loss with h1 a constant array
    new_params, _, _, loss2 = step(params, opt_state, h1, x2, y2)
    g_step = _sgd_grad(params, new_params)
    h1_const = np.asarray(h1)
    g_manual = jax.jit(jax.grad(lambda p: chunk_loss(rnn_apply, p, jnp.asarray(h1_const), x2, y2)[0]))(params)
    for name in params:
        np.testing.assert_allclose(g_step[name], g_manual[name], rtol=1e-12, atol=1e-14, err_msg=name)

    # ... and not the gradient through the state into chunk 1's parameters (full BPTT over both)
    def through(p):
        _, h = rnn_apply(p, h0, x1)
        return chunk_loss(rnn_apply, p, h, x2, y2)[0]

    g_full = jax.jit(jax.grad(through))(params)
    assert float(jnp.max(jnp.abs(g_full["wh"] - g_step["wh"]))) > 1e-6

    # the returned carry is stop-gradient'ed: nothing flows back through it
    g_carry = jax.jit(jax.grad(lambda p: jnp.sum(step(p, opt_state, h0, x1, y1)[2])))(params)
    for name in params:
        assert float(jnp.max(jnp.abs(g_carry[name]))) == 0.0, name


def test_one_chunk_of_the_whole_stream_is_full_bptt(x64):
    hidden = 4
    params = init(1, hidden, jnp.float64)
    stream = np.random.default_rng(1).integers(0, V, size=(2, 21))
    total = stream.shape[1] - 1
    res = train_tbptt(rnn_apply, params, optax.sgd(1.0), zeros(hidden, jnp.float64), stream, total,
                      max_steps=1, progress=False)
    assert res.steps == 1

    def full_loss(p):  # full BPTT written as a plain loop over every time step
        h = jnp.zeros((2, hidden), jnp.float64)
        nll = 0.0
        for t in range(total):
            h = jnp.tanh(jax.nn.one_hot(stream[:, t], V, dtype=jnp.float64) @ p["wx"] + h @ p["wh"] + p["b"])
            logp = jax.nn.log_softmax(h @ p["wo"] + p["bo"])
            nll = nll - jnp.sum(logp[jnp.arange(2), stream[:, t + 1]])
        return nll / (2 * total)

    g = jax.grad(full_loss)(params)  # eager: the 20 unrolled steps reuse each primitive's program
    g_tbptt = _sgd_grad(params, res.params)
    for name in params:
        np.testing.assert_allclose(g_tbptt[name], g[name], rtol=1e-12, atol=1e-14, err_msg=name)
    assert res.train_losses[0] == pytest.approx(float(full_loss(params)), rel=1e-12)
    # with K < T the first update differs (the gradient is cut at the chunk boundary)
    res_short = train_tbptt(rnn_apply, params, optax.sgd(1.0), zeros(hidden, jnp.float64), stream, 5,
                            max_steps=1, progress=False)
    assert float(jnp.max(jnp.abs(_sgd_grad(params, res_short.params)["wh"] - g["wh"]))) > 1e-6


def _blocks(rng, n_blocks):
    """Blocks [a, b, a + 8] with a in 0..3 and b in 4..7 random (vocabulary of 12): the input
    tells the position in the block; the copy a + 8 needs the character two steps back."""
    a = rng.integers(0, 4, size=n_blocks)
    b = rng.integers(4, 8, size=n_blocks)
    return np.stack([a, b, a + 8], axis=1).reshape(-1)


def test_carrying_the_state_beats_resetting_it():
    """In chunks of K = 2, a third of the chunks start at a block's b: the chunk's first target,
    the copy of a, is predictable only from the previous chunk. Entropy: 4 bits per block of 3
    (1.333 bpc) with the state carried; a model whose state is reset every chunk pays 2 more
    bits on those chunks (at best 1.667 bpc)."""
    global V
    hidden, k, n_rows = 24, 2, 32
    rng = np.random.default_rng(0)
    stream = batchify(_blocks(rng, n_rows * 200), n_rows)
    test_stream = batchify(_blocks(rng, 3000), 8)
    old_v, V = V, 12
    try:
        params0 = init(2, hidden)
        opt = optax.adam(2e-2)
        carried = train_tbptt(rnn_apply, params0, opt, zeros(hidden), stream, k, epochs=3, progress=False)

        # the same number of updates from the same start, the state reset to zeros before every chunk
        step = make_tbptt_step(rnn_apply, opt)
        p, s = params0, opt.init(params0)
        for _ in range(3):
            for c in range((stream.shape[1] - 1) // k):
                x, y = stream[:, c * k:(c + 1) * k], stream[:, c * k + 1:(c + 1) * k + 1]
                p, s, _, _ = step(p, s, jnp.zeros((n_rows, hidden)), x, y)

        bpc_carry = evaluate_bpc(rnn_apply, carried.params, zeros(hidden), test_stream, k)
        # the reset model evaluated as it was trained: every window of k + 1 from a fresh state
        n_win = (test_stream.shape[1] - 1) // k
        windows = np.stack([test_stream[:, c * k:c * k + k + 1] for c in range(n_win)], axis=1)
        bpc_reset = evaluate_bpc(rnn_apply, p, zeros(hidden), windows.reshape(-1, k + 1), k)
    finally:
        V = old_v
    assert carried.steps == 3 * ((stream.shape[1] - 1) // k)
    assert bpc_carry < 4 / 3 + 0.1, bpc_carry
    assert bpc_reset > 4 / 3 + 0.25, bpc_reset
    assert bpc_carry < bpc_reset - 0.2, (bpc_carry, bpc_reset)


def test_time_budget_and_validation_history():
    hidden = 4
    stream = np.random.default_rng(3).integers(0, V, size=(4, 400))
    res = train_tbptt(rnn_apply, init(3, hidden), optax.adam(1e-2), zeros(hidden),
                      stream, 8, epochs=50, time_budget_s=0.2, val_stream=stream[:, :50], val_every=10,
                      progress=False)
    assert res.stopped_by_budget and res.train_time_s >= 0.2
    assert res.steps < 50 * ((400 - 1) // 8)
    h = res.history
    assert h["step"][0] == 0 and h["step"][-1] == res.steps and len(h["step"]) == len(h["val_bpc"])
    assert all(b > 0 and math.isfinite(b) for b in h["val_bpc"])
    assert res.epochs_started >= 1 and len(res.train_losses) == res.steps
    with pytest.raises(ValueError, match="time_budget_s"):
        train_tbptt(rnn_apply, init(3, hidden), optax.adam(1e-2), zeros(hidden),
                    stream, 8, time_budget_s=0.0, progress=False)
    with pytest.raises(ValueError, match="epochs"):
        train_tbptt(rnn_apply, init(3, hidden), optax.adam(1e-2), zeros(hidden),
                    stream, 8, epochs=0, progress=False)
    with pytest.raises(ValueError, match="budget_clock"):
        train_tbptt(rnn_apply, init(3, hidden), optax.adam(1e-2), zeros(hidden),
                    stream, 8, budget_clock="gpu", progress=False)


def test_evaluate_bpc_of_a_uniform_model_is_log2_v():
    params = jax.tree.map(jnp.zeros_like, init(0, 3))
    stream = np.random.default_rng(0).integers(0, V, size=(2, 33))
    assert evaluate_bpc(rnn_apply, params, zeros(3), stream, 8) == pytest.approx(math.log2(V), rel=1e-6)
    assert LN2 == pytest.approx(math.log(2))
