"""Sequence layers: Embedding, TemporalAffine, RNN / LSTM / GRU, StackedRNN, Bidirectional.

Small shapes; the recurrences are the ops' (``jaxnet.ops.recurrent``), here the layers'
plumbing: masks, initial and final states, steps, reversal, stacking, impl, errors.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import nn

KEY = jax.random.PRNGKey(0)
CELLS = [nn.RNN, nn.LSTM, nn.GRU]


def _one_cell_default(default):
    """The cells as parameters, ``default`` in the default suite and the others slow: the layer
    plumbing is shared by the cells (each cell's recurrence is test_recurrent_ops')."""
    return [pytest.param(c, id=c.__name__, marks=() if c is default else pytest.mark.slow) for c in CELLS]
MASK = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)     # lengths 3, 5, 1


def _x(shape=(3, 5, 4), seed=1):
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape))


@functools.partial(jax.jit, static_argnums=0)
def _apply_with_state(layer, p, x, m, s):
    return layer.apply_with_state(p, x, mask=m, initial_state=s)


def _run(layer, params, x, mask=None, initial_state=None):
    """``layer.apply_with_state`` compiled as one program (eager, every small op would compile alone);
    one jitted function for the module, so an equal layer at the same shapes reuses its program."""
    return _apply_with_state(layer, params, x, mask, initial_state)


def _zero_params(gates, d, hidden):
    """Params of a cell's shapes, without compiling its init (for the error tests)."""
    return {"wx": np.zeros((d, gates * hidden), np.float32), "wh": np.zeros((hidden, gates * hidden), np.float32),
            "b": np.zeros(gates * hidden, np.float32)}


def _params(layer, input_shape, seed=0):
    """Random params of ``layer``'s structure, shapes and dtypes for the plumbing tests below: the
    tree from ``jax.eval_shape`` of its init (nothing compiled), filled by NumPy with weights of
    scale 1/sqrt(fan-in) and biases of scale 0.5. Each distinct layer's real init compiles its own
    program (a QR for the orthogonal recurrent weights, ~1.5 s on a 2-core CPU); the init is
    tested by the init tests above."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda: layer.init(KEY, input_shape)[0])
    return jax.tree.map(lambda s: (rng.standard_normal(s.shape) * (s.shape[0] ** -0.5 if len(s.shape) == 2 else 0.5))
                        .astype(s.dtype), shapes)


def _h(carry):
    """The hidden state of a carry (the LSTM's is (h, c))."""
    return carry[0] if isinstance(carry, tuple) else carry


# --------------------------------------------------------------------------------- shapes and init

# the same code for every cell (k gate blocks): LSTM (4 blocks) in the default suite, the others slow
@pytest.mark.parametrize("cls,k", [pytest.param(nn.RNN, 1, marks=pytest.mark.slow), (nn.LSTM, 4),
                                   pytest.param(nn.GRU, 3, marks=pytest.mark.slow)])
def test_init_shapes_output_shape_and_weight_init(cls, k, x64):
    layer = cls(6)
    params, state = layer.init(KEY, (2, 5, 4))
    assert state == {}
    assert {n: p.shape for n, p in params.items()} == {"wx": (4, 6 * k), "wh": (6, 6 * k), "b": (6 * k,)}
    for j in range(k):                               # every recurrent block orthogonal
        block = np.asarray(params["wh"][:, 6 * j:6 * (j + 1)])
        np.testing.assert_allclose(block.T @ block, np.eye(6), atol=1e-12)
    assert abs(float(jnp.std(params["wx"])) - 1 / np.sqrt(4)) < 0.25
    assert layer.output_shape((2, 5, 4)) == (2, 5, 6)
    assert cls(6, return_sequences=False).output_shape((2, 5, 4)) == (2, 6)
    y = jax.eval_shape(lambda p, x: cls(6, return_sequences=False).apply(p, {}, x, train=False)[0], params,
                       _x((2, 5, 4)))
    assert y.shape == (2, 6)


def test_lstm_forget_bias_and_other_biases(x64):
    # recurrent_init "zeros" where the biases are checked: the same bias, without compiling a QR
    b = nn.LSTM(3, forget_bias=2.5, recurrent_init="zeros").init(KEY, (1, 2, 4))[0]["b"]
    np.testing.assert_array_equal(b, [0, 0, 0, 2.5, 2.5, 2.5, 0, 0, 0, 0, 0, 0])
    assert np.all(np.asarray(nn.GRU(3, recurrent_init="zeros").init(KEY, (1, 2, 4))[0]["b"]) == 0)
    wh = nn.RNN(3, recurrent_init="zeros").init(KEY, (1, 2, 4))[0]["wh"]
    assert np.all(np.asarray(wh) == 0)


def test_embedding_and_temporal_affine(x64):
    emb = nn.Embedding(7, 3)
    params, _ = emb.init(KEY, (2, 4))
    assert params["w"].shape == (7, 3) and emb.output_shape((2, 4)) == (2, 4, 3)
    assert abs(float(jnp.std(params["w"])) - 0.01) < 0.005
    idx = jnp.array([[0, 6, 2, 2], [1, 1, 5, 3]])
    y, _ = emb.apply(params, {}, idx, train=False)
    np.testing.assert_array_equal(y, np.asarray(params["w"])[np.asarray(idx)])
    aff = nn.TemporalAffine(5)
    p, _ = aff.init(KEY, (2, 4, 3))
    assert p["w"].shape == (3, 5) and p["b"].shape == (5,) and aff.output_shape((2, 4, 3)) == (2, 4, 5)
    out, _ = aff.apply(p, {}, y, train=False)
    np.testing.assert_allclose(out, np.einsum("ntd,dm->ntm", y, p["w"]) + np.asarray(p["b"]), rtol=1e-13)
    assert "b" not in nn.TemporalAffine(5, bias=False).init(KEY, (2, 4, 3))[0]


# --------------------------------------------------------------------------------- masks and state

@pytest.mark.parametrize("cls", _one_cell_default(nn.LSTM))
def test_padded_equals_unpadded_on_the_valid_part(cls, x64):
    layer = cls(3)
    params = _params(layer, (3, 5, 4))
    x = _x()
    run = jax.jit(lambda x, m: _run(layer, params, x, mask=m))
    hs, final = run(x, MASK)
    for i, length in enumerate(MASK.sum(1)):
        alone, alone_final = _run(layer, params, x[i:i + 1, :length])
        np.testing.assert_allclose(hs[i, :length], alone[0], rtol=1e-12, atol=1e-13)
        # padded steps carry the state: every later output repeats the last valid one
        np.testing.assert_allclose(hs[i, length:], np.broadcast_to(alone[0, -1], hs[i, length:].shape), rtol=1e-12)
        for got, want in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(alone_final)):
            np.testing.assert_allclose(got[i], want[0], rtol=1e-12, atol=1e-13)
    last, _ = jax.jit(lambda p, x: cls(3, return_sequences=False).apply(p, {}, x, train=False, mask=MASK))(params, x)
    np.testing.assert_allclose(last, _h(final), rtol=1e-13)


@pytest.mark.parametrize("cls", _one_cell_default(nn.GRU))
def test_state_passing_across_chunks_equals_one_run(cls, x64):
    """Truncated BPTT's forward: the final state of chunk 1 starts chunk 2."""
    layer = cls(3)
    params = _params(layer, (2, 6, 4))
    x = _x((2, 6, 4))
    whole, final = _run(layer, params, x)
    first, carry = _run(layer, params, x[:, :4])
    second, final2 = _run(layer, params, x[:, 4:], initial_state=carry)
    np.testing.assert_allclose(jnp.concatenate([first, second], 1), whole, rtol=1e-12, atol=1e-13)
    for a, b in zip(jax.tree_util.tree_leaves(final), jax.tree_util.tree_leaves(final2)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)
    # an initial state changes the output; zeros == None
    zero = layer.zero_state(2)
    np.testing.assert_allclose(_run(layer, params, x, initial_state=zero)[0], whole, rtol=1e-14)
    moved = jax.tree_util.tree_map(lambda a: a + 0.5, zero)
    assert not np.allclose(_run(layer, params, x, initial_state=moved)[0], whole)


# one cell per carry kind (RNN: an array, LSTM: a pair) and the stack in the default suite; GRU slow
@pytest.mark.parametrize("layer", [nn.RNN(3), nn.LSTM(3), pytest.param(nn.GRU(3), marks=pytest.mark.slow),
                                   nn.StackedRNN((nn.LSTM(3), nn.GRU(2)))],
                         ids=["RNN", "LSTM", "GRU", "Stacked"])
def test_step_scanned_equals_apply(layer, x64):
    params = _params(layer, (2, 5, 4))
    x = _x((2, 5, 4))
    want, final = _run(layer, params, x)

    def body(carry, x_t):
        y, carry = layer.step(params, x_t, carry)
        return carry, y

    carry, ys = jax.jit(lambda c, xs: jax.lax.scan(body, c, xs))(layer.zero_state(2, x.dtype), jnp.swapaxes(x, 0, 1))
    np.testing.assert_allclose(jnp.swapaxes(ys, 0, 1), want, rtol=1e-12, atol=1e-13)
    for a, b in zip(jax.tree_util.tree_leaves(carry), jax.tree_util.tree_leaves(final)):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-13)


# ------------------------------------------------------------------------------------ combinators

def test_reverse_within_length():
    rev = jax.jit(nn.reverse_within_length)       # one program per shape (eagerly, each op compiles alone)
    x = np.arange(10).reshape(2, 5)
    np.testing.assert_array_equal(rev(x, np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])),
                                  [[2, 1, 0, 3, 4], [9, 8, 7, 6, 5]])
    np.testing.assert_array_equal(rev(x, np.array([[1, 0, 1, 1, 0], [0, 0, 0, 0, 0]])),
                                  [[3, 1, 2, 0, 4], [5, 6, 7, 8, 9]])     # holes: valid steps swap among themselves
    np.testing.assert_array_equal(rev(x), x[:, ::-1])
    y = np.arange(30).reshape(2, 5, 3)
    r = rev(y, MASK[:2])
    np.testing.assert_array_equal(rev(r, MASK[:2]), y)
    np.testing.assert_array_equal(r[0, 0], y[0, 2])


# both merges in the default suite; GRU-concat slow
@pytest.mark.parametrize("cls,merge", [(nn.RNN, "sum"), (nn.LSTM, "concat"),
                                       pytest.param(nn.GRU, "concat", marks=pytest.mark.slow)])
def test_bidirectional_against_a_manual_loop(cls, merge, x64):
    bi = nn.Bidirectional(cls(3), merge=merge)
    params = _params(bi, (3, 5, 4))
    x = _x()
    y, (ff, fb) = jax.jit(lambda x: _run(bi, params, x, mask=MASK))(x)
    assert y.shape == ((3, 5, 6) if merge == "concat" else (3, 5, 3))
    cell = cls(3)
    step = jax.jit(cell.step)
    fwd_all, _ = _run(cell, params["forward"], x, mask=MASK)        # padded == unpadded: tested above
    for i, length in enumerate(MASK.sum(1)):
        seq = np.asarray(x[i, :length])
        fwd = fwd_all[i:i + 1, :length]
        # backward direction by hand: run over the reversed valid steps, then flip the outputs back
        rev = [None] * length
        carry = cell.zero_state(1, x.dtype)
        for t in reversed(range(length)):
            h, carry = step(params["backward"], jnp.asarray(seq[t][None]), carry)
            rev[t] = np.asarray(h[0])
        bwd = np.stack(rev)
        want = np.concatenate([fwd[0], bwd], -1) if merge == "concat" else fwd[0] + bwd
        np.testing.assert_allclose(y[i, :length], want, rtol=1e-12, atol=1e-13)
        np.testing.assert_allclose(_h(fb)[i], bwd[0], rtol=1e-12, atol=1e-13)   # after its first step
        np.testing.assert_allclose(_h(ff)[i], fwd[0, -1], rtol=1e-12, atol=1e-13)
    last, _ = _run(nn.Bidirectional(cls(3, return_sequences=False), merge=merge), params, x, mask=MASK)
    want = (jnp.concatenate([_h(ff), _h(fb)], -1) if merge == "concat" else _h(ff) + _h(fb))
    np.testing.assert_allclose(last, want, rtol=1e-13)


def test_stacked_equals_layers_applied_in_turn(x64):
    layers = (nn.LSTM(3), nn.Bidirectional(nn.GRU(3)), nn.RNN(2))
    stack = nn.StackedRNN(layers)
    params = _params(stack, (3, 5, 4))
    assert stack.output_shape((3, 5, 4)) == (3, 5, 2)
    assert nn.StackedRNN(layers, return_sequences=False).output_shape((3, 5, 4)) == (3, 2)
    x = _x()
    y, finals = _run(stack, params, x, mask=MASK)
    h, want_finals = x, []
    for i, layer in enumerate(layers):
        h, f = _run(layer, params[str(i)], h, mask=MASK)
        want_finals.append(f)
    np.testing.assert_allclose(y, h, rtol=1e-13)
    assert len(finals) == 3
    for a, b in zip(jax.tree_util.tree_leaves(finals), jax.tree_util.tree_leaves(want_finals)):
        np.testing.assert_allclose(a, b, rtol=1e-13)
    last, _ = _run(nn.StackedRNN(layers, return_sequences=False), params, x, mask=MASK)
    np.testing.assert_allclose(last, finals[-1], rtol=1e-13)
    # state passing through the stack
    again, _ = _run(stack, params, x, mask=MASK, initial_state=finals)
    assert not np.allclose(again, y)


# ------------------------------------------------------------------------------------ impl and jit

# LSTM and BiLSTM (with_impl through a combinator) in the default suite, RNN and GRU slow: the layers pass
# impl on the same way (the base class), and each op's two backward paths are also held together by the
# float64 gradient audit, test_audit, in the default suite
@pytest.mark.parametrize("layer", [pytest.param(nn.RNN(3), marks=pytest.mark.slow), nn.LSTM(3),
                                   pytest.param(nn.GRU(3), marks=pytest.mark.slow), nn.Bidirectional(nn.LSTM(2))],
                         ids=["RNN", "LSTM", "GRU", "BiLSTM"])
def test_impl_manual_and_autodiff_agree_in_values_and_gradients(layer, x64):
    params = _params(layer, (3, 5, 4))
    x = _x()
    out = {}
    for impl in ("autodiff", "manual"):
        lay = nn.with_impl(layer, impl)

        def loss(p, x):
            y, _ = lay.apply(p, {}, x, train=False, mask=MASK)
            return jnp.sum(jnp.sin(y))

        out[impl] = jax.jit(jax.value_and_grad(loss, argnums=(0, 1)))(params, x)
    for a, b in zip(jax.tree_util.tree_leaves(out["autodiff"]), jax.tree_util.tree_leaves(out["manual"])):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


def test_jit_equals_eager_and_language_model_pipeline():
    emb, lstm, head = nn.Embedding(11, 4), nn.LSTM(6), nn.TemporalAffine(11)
    idx = jnp.array([[1, 5, 3, 0], [2, 2, 9, 10]])
    pe = _params(emb, idx.shape, seed=0)
    pl = _params(lstm, emb.output_shape(idx.shape), seed=1)
    ph = _params(head, lstm.output_shape(emb.output_shape(idx.shape)), seed=2)

    def scores(pe, pl, ph, idx):
        x, _ = emb.apply(pe, {}, idx, train=False)
        h, _ = lstm.apply(pl, {}, x, train=False)
        return head.apply(ph, {}, h, train=False)[0]

    eager = scores(pe, pl, ph, idx)
    assert eager.shape == (2, 4, 11)
    np.testing.assert_allclose(jax.jit(scores)(pe, pl, ph, idx), eager, rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------------------------ errors

ERRORS = [
    (lambda: nn.LSTM(0), ValueError, r"LSTM: `hidden` must be a positive int, got 0"),
    (lambda: nn.GRU(3, return_sequences="yes"), TypeError, r"GRU: `return_sequences` must be a bool"),
    (lambda: nn.RNN(3).init(KEY, (2, 4)), ValueError, r"RNN\(hidden=3\): `input_shape` must be \(N, T, D\), "
                                                      r"got \(2, 4\)"),
    (lambda: nn.RNN(3).output_shape((2, 4, 5, 1)), ValueError, r"RNN\(hidden=3\): `input_shape` must be"),
    (lambda: nn.LSTM(3).apply(_zero_params(4, 5, 3), {}, np.ones((2, 4, 6), np.float32), train=False),
     ValueError, r"LSTM\(hidden=3\): lstm: `wx` must have shape .*\(2, 4, 6\)"),
    (lambda: nn.GRU(3).apply(_zero_params(3, 5, 3), {}, np.ones((2, 4, 5), np.float32), train=False,
                             mask=np.ones((2, 3))),
     ValueError, r"GRU\(hidden=3\): gru: `mask` must have shape \(N, T\) = \(2, 4\)"),
    (lambda: nn.LSTM(3).apply(_zero_params(4, 5, 3), {}, np.ones((2, 4, 5), np.float32), train=False,
                              initial_state=np.zeros((2, 3), np.float32)),
     ValueError, r"LSTM\(hidden=3\): `initial_state` must be a pair \(h0, c0\)"),
    (lambda: nn.Bidirectional(nn.RNN(2), merge="max"), ValueError, r"Bidirectional: `merge` must be 'concat' or 'sum'"),
    (lambda: nn.Bidirectional(nn.Affine(2)), TypeError, r"Bidirectional: layer must be a recurrent layer"),
    (lambda: nn.StackedRNN((nn.RNN(2), nn.ReLU())), TypeError, r"StackedRNN: layer 1 must be a recurrent layer"),
    (lambda: nn.StackedRNN(()), ValueError, r"StackedRNN: `layers` must be a non-empty tuple"),
    (lambda: nn.Embedding(0, 3), ValueError, r"Embedding: `vocab` must be a positive int, got 0"),
    (lambda: nn.Embedding(5, 3).apply({"w": jnp.ones((5, 3))}, {}, jnp.ones((2, 3)), train=False),
     ValueError, r"Embedding\(vocab=5, features=3\): word_embedding: `idx` must be integer word indices"),
    (lambda: nn.TemporalAffine(3).init(KEY, (2, 4)), ValueError, r"temporal_affine: `x` must have rank 3"),
]


@pytest.mark.parametrize("call,kind,message", ERRORS)
def test_errors_name_the_layer_and_shapes(call, kind, message):
    with pytest.raises(kind, match=message) as info:
        call()
    assert "\n" not in str(info.value)
