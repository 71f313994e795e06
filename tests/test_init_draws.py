"""The initializers' eager fast path gives jax.random.normal's numbers bit for bit.

jaxnet.nn.init draws eagerly from one flat, power-of-two-sized jax.random.normal compiled once
per size and dtype, cut to shape and scaled in NumPy (jax.random.normal would compile a kernel
per shape). That rests on JAX's partitionable threefry (element i depends on the key and i
only) and on XLA's eager division by a constant being a multiplication by its reciprocal: if a
JAX release changes either, these tests fail instead of the initial weights silently changing.
"""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.nn import init

SCALED = {
    "small": lambda z, fi, fo: 0.01 * z,
    "xavier": lambda z, fi, fo: z / math.sqrt(fi),
    "glorot_normal": lambda z, fi, fo: z * math.sqrt(2.0 / (fi + fo)),
    "he": lambda z, fi, fo: z * math.sqrt(2.0 / fi),
}
# a matrix, a conv kernel, one element, and both sides of the smallest draw's size (16,384); each
# reference draw compiles its own kernel (what the fast path avoids), so the list stays short
SHAPES = [(3, 5), (3, 3, 4, 8), (1,), (16384,), (16385,)]


def _reference(name, key, shape, dtype):
    fi, fo = init.fans(shape)
    return SCALED[name](jax.random.normal(key, shape, dtype), fi, fo).astype(dtype)


@pytest.mark.parametrize("name", list(SCALED))
def test_eager_draws_equal_jax_random_normal_bit_for_bit(name):
    for key, shapes in ((jax.random.key(0), SHAPES), (jax.random.PRNGKey(7), SHAPES[:2])):
        for shape in shapes:
            got = getattr(init, name)(key, shape)
            want = _reference(name, key, shape, jnp.float32)
            assert got.dtype == want.dtype and got.shape == want.shape
            np.testing.assert_array_equal(got, want, err_msg=f"{name} {shape}")


def test_float64_and_jit_draws(x64):
    key = jax.random.key(1)
    for name in SCALED:
        np.testing.assert_array_equal(getattr(init, name)(key, (4, 9)), _reference(name, key, (4, 9), jnp.float64))
    # a traced key: jax.random itself (every initializer in one program, the references in another)
    got = jax.jit(lambda k: {name: getattr(init, name)(k, (6, 5)) for name in SCALED})(key)
    want = jax.jit(lambda k: {name: _reference(name, k, (6, 5), jnp.float64) for name in SCALED})(key)
    for name in SCALED:
        np.testing.assert_array_equal(got[name], want[name], err_msg=name)


def test_different_keys_and_shapes_give_fresh_numbers():
    a = init.he(jax.random.key(0), (10, 10))
    assert not np.array_equal(a, init.he(jax.random.key(1), (10, 10)))
    assert 0.3 < float(jnp.std(init.xavier(jax.random.key(2), (400, 50)))) * math.sqrt(400) < 1.7


def test_a_concrete_key_closed_over_inside_a_trace():
    """``jax.jit`` / ``jax.eval_shape`` of a function that closes over a concrete key: the flat
    draw is staged there (no NumPy cut), so the initializer draws the shape itself: the eager
    numbers up to the scaling's rounding (XLA may fuse the multiply differently under jit)."""
    key = jax.random.key(3)
    eager = init.he(key, (4, 6))
    np.testing.assert_allclose(jax.jit(lambda: init.he(key, (4, 6)))(), eager, rtol=1e-6)
    assert jax.eval_shape(lambda: init.xavier(key, (2, 3, 5))).shape == (2, 3, 5)
