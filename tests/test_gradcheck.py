"""Numerical gradients, the course's relative error, and reports."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.gradcheck import (check_grads, compare, numerical_gradient, numerical_vjp, rel_error,
                              sparse_numerical_gradient)
from jaxnet.gradcheck.report import scaled_rel_error
from conftest import normal


def test_numerical_gradient_of_known_functions(x64):
    x = jnp.linspace(-1.0, 2.0, 7)
    g = numerical_gradient(lambda v: jnp.sum(v ** 3), (x,))
    # round-off bound: eps * |f| / h ~ 2e-16 * 12 / 1e-5 ~ 3e-10 absolute
    np.testing.assert_allclose(g, 3 * x ** 2, rtol=1e-8, atol=1e-9)
    a, b = jnp.array([[1.0, 2.0], [3.0, 4.0]]), jnp.array([0.5, -1.5])
    ga, gb = numerical_gradient(lambda a, b: jnp.sum(jnp.sin(a @ b)), (a, b), argnums=(0, 1))
    ea, eb = jax.grad(lambda a, b: jnp.sum(jnp.sin(a @ b)), argnums=(0, 1))(a, b)
    assert rel_error(ga, ea) < 1e-8 and rel_error(gb, eb) < 1e-8


def test_numerical_vjp_matches_autodiff_vjp(x64):
    x = normal(jax.random.PRNGKey(0), (3, 4))
    ct = normal(jax.random.PRNGKey(1), (3, 4))
    num = numerical_vjp(jnp.tanh, (x,), ct)
    ana = jax.vjp(jnp.tanh, x)[1](ct)[0]
    assert rel_error(num, ana) < 1e-7


def test_sparse_gradient_agrees_with_dense(x64):
    w = normal(jax.random.PRNGKey(2), (30, 20))
    f = lambda w: jnp.sum(jnp.tanh(w) ** 2)
    idx, vals = sparse_numerical_gradient(f, (w,), jax.random.PRNGKey(3), num_checks=25)
    assert idx.shape == (25,) and len(set(np.asarray(idx).tolist())) == 25
    dense = jax.grad(f)(w).ravel()[idx]
    assert rel_error(vals, dense) < 1e-7


def test_numerical_gradient_rejects_integer_inputs(x64):
    with pytest.raises(TypeError, match="dtype"):
        numerical_gradient(lambda v: jnp.sum(v), (jnp.arange(3),))


def test_rel_error_is_the_course_definition():
    a, b = np.array([1.0, 0.0, 2.0]), np.array([1.1, 0.0, 2.0])
    assert rel_error(a, b) == pytest.approx(0.1 / 2.1)
    assert rel_error(np.zeros(3), np.zeros(3)) == 0.0
    assert rel_error(np.array([0.0]), np.array([1e-9])) == pytest.approx(1e-9 / 1e-8)  # the 1e-8 floor
    with pytest.raises(ValueError, match="shapes differ"):
        rel_error(np.zeros(2), np.zeros(3))


def test_scaled_rel_error_only_relaxes_entries_far_below_the_tensor_scale():
    a = np.array([1.0, 0.0])
    assert scaled_rel_error(a, np.array([1.0, 1e-11])) < 1e-7        # FD round-off on an exact zero
    assert rel_error(a, np.array([1.0, 1e-11])) > 1e-4
    assert scaled_rel_error(a, np.array([1.01, 0.0])) == pytest.approx(0.01 / 2.01)   # judged as before


def test_compare_reports_worst_index_per_argument():
    a = [np.zeros((2, 3)), np.ones(4)]
    b = [np.zeros((2, 3)), np.ones(4)]
    b[0][1, 2] = 0.5
    rep = compare(a, b, ["w", "b"], "demo")
    assert rep.args[0].worst_index == (1, 2)
    assert rep.args[0].max_abs_error == pytest.approx(0.5)
    assert rep.args[1].max_rel_error == 0.0
    text = str(rep)
    assert "demo" in text and "worst index" in text and "(1, 2)" in text


def test_check_grads_on_a_small_model(x64):
    from jaxnet import functional as F
    k = jax.random.split(jax.random.PRNGKey(0), 3)
    x, w = normal(k[0], (5, 4)), normal(k[1], (4, 3))
    y = jnp.array([0, 1, 2, 1, 0])
    rep = check_grads(lambda w: F.softmax_cross_entropy(F.tanh(F.affine(x, w), impl="manual"), y,
                                                         impl="manual"), (w,))
    assert rep.max_rel_error < 1e-7
