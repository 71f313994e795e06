"""Batch norm's running state, and dropout's statistics and determinism."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import functional as F
from conftest import normal

IMPLS = pytest.mark.parametrize("impl", ["auto", "manual"])


@IMPLS
@pytest.mark.parametrize("shape", [(16, 3), (4, 5, 5, 3)])
def test_batch_norm_running_state_update(x64, impl, shape):
    x = 2.0 + 3.0 * normal(jax.random.PRNGKey(0), shape)
    g, b = jnp.ones(3), jnp.zeros(3)
    rm, rv = jnp.array([0.5, -1.0, 0.0]), jnp.array([1.0, 2.0, 0.5])
    y, m2, v2 = F.batch_norm(x, g, b, rm, rv, train=True, momentum=0.9, impl=impl)
    axes = tuple(range(len(shape) - 1))
    bm, bv = x.mean(axes), x.var(axes)          # biased variance, as the course
    np.testing.assert_allclose(m2, 0.9 * rm + 0.1 * bm, rtol=1e-12)
    np.testing.assert_allclose(v2, 0.9 * rv + 0.1 * bv, rtol=1e-12)
    np.testing.assert_allclose(y.mean(axes), 0, atol=1e-10)
    np.testing.assert_allclose(y.var(axes), bv / (bv + 1e-5), rtol=1e-10)
    # eval: the running statistics normalise and come back unchanged
    ye, m3, v3 = F.batch_norm(x, g, b, m2, v2, train=False, impl=impl)
    assert m3 is m2 and v3 is v2
    np.testing.assert_allclose(ye, (x - m2) / jnp.sqrt(v2 + 1e-5), rtol=1e-10)


@IMPLS
def test_batch_norm_running_stats_converge_to_data_stats(impl):
    rm, rv = jnp.zeros(2), jnp.ones(2)
    step = jax.jit(lambda x, rm, rv: F.batch_norm(x, jnp.ones(2), jnp.zeros(2), rm, rv, train=True, impl=impl)[1:])
    for i in range(100):
        x = jnp.array([5.0, -2.0]) + jnp.array([2.0, 0.5]) * normal(jax.random.PRNGKey(i), (256, 2))
        rm, rv = step(x, rm, rv)
    np.testing.assert_allclose(rm, [5.0, -2.0], atol=0.1)
    np.testing.assert_allclose(rv, [4.0, 0.25], rtol=0.1)


@IMPLS
def test_running_stats_carry_no_gradient(impl):
    x = normal(jax.random.PRNGKey(0), (8, 3))
    g = jax.grad(lambda x: jnp.sum(F.batch_norm(x, jnp.ones(3), jnp.zeros(3), jnp.zeros(3), jnp.ones(3),
                                                 train=True, impl=impl)[1]))(x)
    np.testing.assert_array_equal(g, 0)


@IMPLS
@pytest.mark.parametrize("rate", [0.1, 0.5, 0.8])
def test_dropout_statistics(impl, rate):
    x = jnp.ones((1000, 1000), jnp.float32)
    y = F.dropout(x, jax.random.PRNGKey(1), rate=rate, impl=impl)
    dropped = float(jnp.mean(y == 0))
    assert abs(dropped - rate) < 0.005                       # ~10 standard errors at 1e6 draws
    assert abs(float(jnp.mean(y)) - 1.0) < 0.01              # the mean is preserved (inverted dropout)
    np.testing.assert_allclose(np.unique(np.asarray(y)), [0.0, 1.0 / (1 - rate)], rtol=1e-6)


@IMPLS
def test_dropout_is_deterministic_per_key_and_test_time_identity(impl):
    x = normal(jax.random.PRNGKey(0), (64, 32))
    a = F.dropout(x, jax.random.PRNGKey(7), rate=0.5, impl=impl)
    b = F.dropout(x, jax.random.PRNGKey(7), rate=0.5, impl=impl)
    c = F.dropout(x, jax.random.PRNGKey(8), rate=0.5, impl=impl)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(F.dropout(x, None, rate=0.5, train=False, impl=impl), x)


def test_dropout_paths_share_the_mask_and_gradient():
    x = normal(jax.random.PRNGKey(0), (32, 8))
    key = jax.random.PRNGKey(3)
    ya = F.dropout(x, key, rate=0.3, impl="auto")
    ym = F.dropout(x, key, rate=0.3, impl="manual")
    np.testing.assert_array_equal(ya, ym)
    ga = jax.grad(lambda v: jnp.sum(F.dropout(v, key, rate=0.3, impl="auto") ** 2))(x)
    gm = jax.grad(lambda v: jnp.sum(F.dropout(v, key, rate=0.3, impl="manual") ** 2))(x)
    np.testing.assert_allclose(ga, gm, rtol=1e-6)
    np.testing.assert_array_equal(gm == 0, ym == 0)          # dropped units pass no gradient
