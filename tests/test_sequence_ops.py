"""Sequence ops: word_embedding, temporal_affine, temporal_softmax_cross_entropy (both paths).

The float64 gradient audit, the float32 extremes and the NumPy oracles run from the
registry (tests/test_audit.py, test_float32_extremes.py, test_oracle.py); here: the
conventions, masks, out-of-range indices and labels, transforms and the input errors.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxnet
from jaxnet import functional as F
from jaxnet.ops import losses

PATHS = ("autodiff", "manual")


def _rng(seed=0):
    return np.random.default_rng(seed)


# ------------------------------------------------------------------------------------------ embedding

@pytest.mark.parametrize("impl", PATHS)
def test_embedding_gathers_rows_and_scatter_adds_repeated_indices(impl, x64):
    r = _rng(1)
    idx = jnp.array([[1, 0, 1], [2, 1, 1]])
    w = jnp.asarray(r.standard_normal((4, 3)))
    dout = jnp.asarray(r.standard_normal((2, 3, 3)))
    out, vjp = jax.vjp(lambda w: F.word_embedding(idx, w, impl=impl), w)
    np.testing.assert_array_equal(out, np.asarray(w)[np.asarray(idx)])
    (dw,) = vjp(dout)
    want = np.zeros((4, 3))
    for pos in np.ndindex(2, 3):
        want[int(idx[pos])] += np.asarray(dout)[pos]
    np.testing.assert_allclose(dw, want, rtol=1e-14, atol=1e-14)
    assert np.all(np.asarray(dw)[3] == 0)          # a word not used gets no gradient
    assert np.count_nonzero(want[1]) and np.allclose(want[1], np.asarray(dout)[[0, 0, 1, 1], [0, 2, 1, 2]].sum(0))


def test_embedding_any_index_shape_jit_and_vmap():
    w = jnp.arange(12.0).reshape(6, 2)
    for idx in (jnp.array([3]), jnp.array([[[1, 2]], [[5, 0]]])):
        for impl in PATHS:
            out = jax.jit(lambda i, w: F.word_embedding(i, w, impl=impl))(idx, w)
            assert out.shape == idx.shape + (2,)
            np.testing.assert_array_equal(out, np.asarray(w)[np.asarray(idx)])
    batch = jnp.array([[0, 1], [4, 5]])
    g = jax.vmap(lambda i: jax.grad(lambda w: jnp.sum(F.word_embedding(i, w, impl="manual") ** 2))(w))(batch)
    assert g.shape == (2, 6, 2)
    np.testing.assert_allclose(g[1, 4], 2 * w[4])
    assert np.all(np.asarray(g[1, :4]) == 0)


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("jit", [False, True])
def test_embedding_out_of_range_index_gives_nan_row_and_no_gradient(impl, jit):
    w = jnp.arange(10.0).reshape(5, 2)
    idx = jnp.array([[0, 5, 2], [-1, 4, 2]])

    def f(w):
        return F.word_embedding(idx, w, impl=impl)

    run = jax.jit(f) if jit else f
    out = np.asarray(run(w))
    bad = np.array([[False, True, False], [True, False, False]])
    assert np.all(np.isnan(out[bad])) and np.all(np.isfinite(out[~bad]))
    np.testing.assert_array_equal(out[~bad], np.asarray(w)[np.asarray(idx)[~bad]])
    # the bad positions have no row of w: dw is the valid positions' scatter-add only
    dw = jax.grad(lambda w: jnp.sum(jnp.where(jnp.isnan(f(w)), 0, f(w))))(w)
    np.testing.assert_array_equal(dw, [[1, 1], [0, 0], [2, 2], [0, 0], [1, 1]])


@pytest.mark.parametrize("impl", PATHS)
def test_checked_reports_an_out_of_range_index(impl):
    w = jnp.ones((5, 2))
    f = jax.jit(losses.checked(lambda i, w: F.word_embedding(i, w, impl=impl)))
    err, _ = f(jnp.array([[0, 1], [7, 2]]), w)
    with pytest.raises(Exception, match=r"word_embedding: index 7 at flat position 2 is outside \[0, 5\)"):
        err.throw()
    err, out = f(jnp.array([[0, 1], [4, 2]]), w)
    assert err.get() is None and out.shape == (2, 2, 2)


# ------------------------------------------------------------------------------------ temporal affine

@pytest.mark.parametrize("impl", PATHS)
def test_temporal_affine_is_the_affine_map_at_every_step(impl, x64):
    r = _rng(2)
    x, w, b = (jnp.asarray(r.standard_normal(s)) for s in ((3, 4, 5), (5, 2), (2,)))
    y = F.temporal_affine(x, w, b, impl=impl)
    for t in range(4):
        np.testing.assert_allclose(y[:, t], np.asarray(x[:, t]) @ np.asarray(w) + np.asarray(b), rtol=1e-13)
    assert F.temporal_affine(x, w, None, impl=impl).shape == (3, 4, 2)
    dout = jnp.asarray(r.standard_normal((3, 4, 2)))
    g = jax.vjp(lambda *a: F.temporal_affine(*a, impl=impl), x, w, b)[1](dout)
    g_ref = jax.vjp(lambda *a: F.affine(a[0].reshape(12, 5), a[1], a[2]).reshape(3, 4, 2), x, w, b)[1](dout)
    for a, e in zip(g, g_ref):
        np.testing.assert_allclose(a, e, rtol=1e-13, atol=1e-14)


def test_temporal_affine_under_vmap_and_jit_matches_both_paths(x64):
    r = _rng(3)
    x, w, b = (jnp.asarray(r.standard_normal(s)) for s in ((2, 3, 2, 4), (4, 3), (3,)))

    def loss(impl):
        return jax.jit(jax.vmap(jax.grad(lambda x, w: jnp.sum(jnp.sin(F.temporal_affine(x, w, b, impl=impl))),
                                         argnums=(0, 1)), in_axes=(0, None)))

    for a, m in zip(loss("autodiff")(x, w), loss("manual")(x, w)):
        np.testing.assert_allclose(a, m, rtol=1e-13, atol=1e-14)


# ------------------------------------------------------------------------------ temporal softmax loss

def _scores_labels(r, n=3, t=4, v=5):
    return jnp.asarray(r.standard_normal((n, t, v))), jnp.asarray(r.integers(0, v, (n, t)))


@pytest.mark.parametrize("impl", PATHS)
def test_temporal_loss_sums_kept_tokens_and_divides_by_n_not_by_token_count(impl, x64):
    r = _rng(4)
    scores, labels = _scores_labels(r)
    mask = jnp.array([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]], bool)
    loss = float(jax.jit(lambda s: F.temporal_softmax_cross_entropy(s, labels, mask, impl=impl))(scores))
    keep = np.asarray(mask)
    flat_s, flat_l = np.asarray(scores)[keep], np.asarray(labels)[keep]
    # the mean over kept tokens (PyTorch's ignore_index convention) times count / N
    mean_over_tokens = float(F.softmax_cross_entropy(jnp.asarray(flat_s), jnp.asarray(flat_l)))
    np.testing.assert_allclose(loss, mean_over_tokens * keep.sum() / 3, rtol=1e-13)
    assert abs(loss - mean_over_tokens) > 0.1          # the two conventions differ here


@pytest.mark.parametrize("impl", PATHS)
def test_temporal_loss_padding_is_ignored_and_gets_zero_gradient(impl, x64):
    r = _rng(5)
    scores, labels = _scores_labels(r, n=2, t=5)
    mask = jnp.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    padded = jnp.asarray(scores).at[0, 3:].set(1e3 * jnp.asarray(r.standard_normal((2, 5))))
    f = jax.jit(lambda s, m: F.temporal_softmax_cross_entropy(s, labels, m, impl=impl))
    np.testing.assert_allclose(f(padded, mask), f(scores, mask), rtol=1e-14)
    g = jax.jit(jax.grad(f))(padded, mask)
    assert np.all(np.asarray(g[0, 3:]) == 0)
    # the kept part's gradient: that of the same loss on row 0 cut to length 3, scaled by its N
    g0 = jax.jit(jax.grad(lambda s: F.temporal_softmax_cross_entropy(s, labels[:1, :3], impl=impl)))(scores[:1, :3])
    np.testing.assert_allclose(g[0, :3], np.asarray(g0[0]) / 2, rtol=1e-12, atol=1e-15)
    # None == all kept; a 0/1 float mask == the bool one
    np.testing.assert_allclose(f(scores, None), f(scores, jnp.ones((2, 5), bool)), rtol=1e-15)
    np.testing.assert_allclose(f(scores, mask.astype(jnp.float32)), f(scores, mask.astype(bool)), rtol=1e-15)


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("jit", [False, True])
def test_temporal_loss_out_of_range_label_nan_at_kept_positions_only(impl, jit):
    r = _rng(6)
    scores, _ = _scores_labels(r, n=2, t=3, v=4)
    scores = scores.astype(jnp.float32)
    mask = jnp.array([[1, 1, 0], [1, 1, 1]], bool)

    def f(s, labels):
        return F.temporal_softmax_cross_entropy(s, labels, mask, impl=impl)

    vg = jax.value_and_grad(f)
    vg = jax.jit(vg) if jit else vg
    # a bad id (-1, 4) where the mask is off is never read
    loss, g = vg(scores, jnp.array([[0, 3, -1], [1, 2, 0]]))
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(g)))
    loss, g = vg(scores, jnp.array([[0, 4, -1], [-2, 2, 0]]))
    g = np.asarray(g)
    assert np.isnan(float(loss))
    bad = np.array([[False, True, False], [True, False, False]])
    assert np.all(np.isnan(g[bad])) and np.all(np.isfinite(g[~bad]))


@pytest.mark.parametrize("impl", PATHS)
def test_checked_reports_an_out_of_range_label(impl):
    scores = jnp.zeros((2, 3, 4))
    f = jax.jit(losses.checked(lambda s, l, m: F.temporal_softmax_cross_entropy(s, l, m, impl=impl)))
    mask = jnp.array([[1, 1, 0], [1, 1, 1]])
    err, _ = f(scores, jnp.array([[0, 1, 9], [2, 3, 0]]), mask)
    assert err.get() is None                             # the 9 is masked out
    err, _ = f(scores, jnp.array([[0, 1, 9], [2, 3, 4]]), mask)
    with pytest.raises(Exception, match=r"temporal_softmax_cross_entropy: label 4 at flat position 5 "
                                        r"is outside \[0, 4\)"):
        err.throw()


@pytest.mark.parametrize("impl", PATHS)
def test_temporal_loss_float32_at_logits_100_and_1e4(impl):
    labels = jnp.array([[0, 1]])
    vg = jax.jit(jax.value_and_grad(lambda s: F.temporal_softmax_cross_entropy(s, labels, impl=impl)))
    for big in (100.0, 1e4):
        right = jnp.zeros((1, 2, 3), jnp.float32).at[0, 0, 0].set(big).at[0, 1, 1].set(big)
        wrong = jnp.zeros((1, 2, 3), jnp.float32).at[0, 0, 2].set(big).at[0, 1, 2].set(big)
        for s, want in ((right, 0.0), (wrong, 2 * big), (-right, 2 * (big + np.log(2)))):
            loss, g = vg(s)
            np.testing.assert_allclose(float(loss), want, rtol=1e-6, atol=1e-6)
            assert np.all(np.isfinite(np.asarray(g)))
            np.testing.assert_allclose(np.asarray(g).sum(axis=-1), 0, atol=1e-6)


def test_temporal_loss_paths_agree_under_vmap(x64):
    r = _rng(7)
    scores = jnp.asarray(r.standard_normal((3, 2, 4, 5)))
    labels = jnp.asarray(r.integers(0, 5, (3, 2, 4)))
    mask = jnp.asarray(r.integers(0, 2, (3, 2, 4)).astype(bool))
    grads = [jax.jit(jax.vmap(jax.grad(lambda s, l, m: F.temporal_softmax_cross_entropy(s, l, m, impl=impl))))(
        scores, labels, mask) for impl in PATHS]
    np.testing.assert_allclose(grads[0], grads[1], rtol=1e-13, atol=1e-15)


# ------------------------------------------------------------------------------------------- errors

# NumPy inputs in jnp's default dtypes (float32, int32): each jnp.zeros / jnp.ones of a new shape compiles a kernel
def _ones(*shape):
    return np.ones(shape, np.float32)


def _zeros(*shape):
    return np.zeros(shape, np.float32)


def _ints(*shape):
    return np.zeros(shape, np.int32)


ERRORS = [
    (lambda: F.word_embedding(_zeros(2, 3), _ones(5, 4)),
     r"word_embedding: `idx` must be integer word indices, got dtype float32 with shape \(2, 3\)"),
    (lambda: F.word_embedding(np.array(3, np.int32), _ones(5, 4)),
     r"word_embedding: `idx` must have rank >= 1, got shape \(\)"),
    (lambda: F.word_embedding(_ints(2, 3), _ones(5)),
     r"word_embedding: `w` must have rank 2 \(\(V, D\)\), got shape \(5,\)"),
    (lambda: F.temporal_affine(_ones(2, 3), _ones(3, 4)),
     r"temporal_affine: `x` must have rank 3 \(\(N, T, D\)\), got shape \(2, 3\)"),
    (lambda: F.temporal_affine(_ones(2, 3, 5), _ones(4, 2)),
     r"temporal_affine: `x` \(2, 3, 5\) has D=5 features per step but `w` \(4, 2\) expects D=4"),
    (lambda: F.temporal_affine(_ones(2, 3, 4), _ones(4, 2), _ones(3)),
     r"temporal_affine: `b` must have shape \(2,\) to match `w` \(4, 2\), got \(3,\)"),
    (lambda: F.temporal_softmax_cross_entropy(_ones(2, 5), _ints(2)),
     r"temporal_softmax_cross_entropy: `scores` must have rank 3 \(\(N, T, V\)\), got shape \(2, 5\)"),
    (lambda: F.temporal_softmax_cross_entropy(_ones(2, 3, 5), _zeros(2, 3)),
     r"temporal_softmax_cross_entropy: `labels` must be integer word indices, got dtype float32"),
    (lambda: F.temporal_softmax_cross_entropy(_ones(2, 3, 5), _ints(2, 4)),
     r"temporal_softmax_cross_entropy: `labels` must have shape \(N, T\) = \(2, 3\) to match `scores` "
     r"\(2, 3, 5\), got \(2, 4\)"),
    (lambda: F.temporal_softmax_cross_entropy(_ones(2, 3, 5), _ints(2, 3), _ones(3, 2)),
     r"temporal_softmax_cross_entropy: `mask` must have shape \(N, T\) = \(2, 3\) like `labels`, got \(3, 2\)"),
]


@pytest.mark.parametrize("impl", PATHS)
@pytest.mark.parametrize("call,message", ERRORS)
def test_bad_inputs_give_one_line_errors_naming_op_and_shapes(call, message, impl):
    with jaxnet.use_impl(impl):
        with pytest.raises(ValueError, match=message) as info:
            call()
    assert "\n" not in str(info.value)
