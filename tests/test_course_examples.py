"""The course's own worked examples as tests."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import functional as F
from jaxnet import manual, ops
from jaxnet.ops import conv_output_size


def test_add_multiply_graph(x64):
    f = lambda x, y, z: (x + y) * z
    assert f(-2.0, 5.0, -4.0) == -12.0
    dx, dy, dz = jax.grad(f, argnums=(0, 1, 2))(-2.0, 5.0, -4.0)
    assert (dx, dy, dz) == (-4.0, -4.0, 3.0)


@pytest.mark.parametrize("impl", ["auto", "manual"])
def test_sigmoid_neuron(x64, impl):
    w = jnp.array([2.0, -3.0, -3.0])
    x = jnp.array([-1.0, -2.0])
    f = lambda w, x: F.sigmoid(w[0] * x[0] + w[1] * x[1] + w[2], impl=impl)
    assert f(w, x) == pytest.approx(0.7310585786, abs=1e-9)
    dw, dx = jax.grad(f, argnums=(0, 1))(w, x)
    np.testing.assert_allclose(dx, [0.3932238664, -0.5898357996], atol=1e-9)
    np.testing.assert_allclose(dw, [-0.1966119332, -0.3932238664, 0.1966119332], atol=1e-9)


@pytest.mark.parametrize("impl", ["auto", "manual"])
def test_staged_computation(x64, impl):
    def f(x, y):
        sig = lambda v: F.sigmoid(v, impl=impl)
        return (x + sig(y)) / (sig(x) + (x + y) ** 2)
    assert f(3.0, -4.0) == pytest.approx(1.54564, abs=1e-5)
    dx, dy = jax.grad(f, argnums=(0, 1))(3.0, -4.0)
    assert dx == pytest.approx(2.05957, abs=1e-5)
    assert dy == pytest.approx(1.59223, abs=1e-5)


def test_conv_output_sizes_from_the_notes():
    assert conv_output_size(7, 3, stride=1) == 5
    assert conv_output_size(7, 3, stride=2) == 3
    with pytest.raises(ValueError, match="stride 3 does not fit"):
        conv_output_size(7, 3, stride=3)
    assert conv_output_size(7, 3, stride=1, pad=1) == 7
    assert conv_output_size(32, 3, stride=1) == 30
    for f, p in [(3, 1), (5, 2), (7, 3)]:                   # "same" padding P = (F - 1) / 2
        assert conv_output_size(32, f, pad=p) == 32


@pytest.mark.parametrize("conv", [ops.conv2d, manual.conv2d])
def test_conv_stride_that_does_not_fit_is_rejected(conv):
    x, w = jnp.zeros((1, 7, 7, 3)), jnp.zeros((3, 3, 3, 2))
    assert conv(x, w, stride=1).shape == (1, 5, 5, 2)
    assert conv(x, w, stride=2).shape == (1, 3, 3, 2)
    with pytest.raises(ValueError, match=r"conv2d: stride 3 does not fit along H.*\(1, 7, 7, 3\)"):
        conv(x, w, stride=3)


def test_conv_layer_example_32x32x3_ten_5x5_filters():
    x, w, b = jnp.zeros((1, 32, 32, 3)), jnp.zeros((5, 5, 3, 10)), jnp.zeros((10,))
    assert manual.conv2d(x, w, b, stride=1, padding=2).shape == (1, 32, 32, 10)
    assert w.size + b.size == 760


def test_loss_at_chance_and_the_svm_facts(x64):
    scores, labels = jnp.zeros((4, 10)), jnp.array([0, 3, 5, 9])
    for impl in ("auto", "manual"):
        assert F.softmax_cross_entropy(scores, labels, impl=impl) == pytest.approx(math.log(10))
        assert F.svm_hinge(scores, labels, impl=impl) == pytest.approx(9.0)          # (C - 1) * Delta
    s = jnp.array([[-96.8, 437.9, 61.95]])                                          # S3's worked example
    assert F.svm_hinge(s, jnp.array([0])) == pytest.approx(695.45)
    s2 = jnp.array([[3.2, 5.1, -1.7], [1.3, 4.9, 2.0], [2.2, 2.5, -3.1]])           # cat/car/frog slide
    per_example = [float(F.svm_hinge(s2[i:i + 1], jnp.array([i]))) for i in range(3)]
    np.testing.assert_allclose(per_example, [2.9, 0.0, 12.9], atol=1e-9)
    assert float(F.svm_hinge(s2, jnp.array([0, 1, 2]))) == pytest.approx(5.27, abs=0.01)


@pytest.mark.parametrize("impl", ["auto", "manual"])
def test_softmax_is_stable_for_huge_scores(x64, impl):
    s = jnp.array([[123.0, 456.0, 789.0]])
    loss = F.softmax_cross_entropy(s, jnp.array([2]), impl=impl)
    assert np.isfinite(float(loss)) and float(loss) == pytest.approx(0.0, abs=1e-12)
    g = jax.grad(lambda s: F.softmax_cross_entropy(s, jnp.array([0]), impl=impl))(s)
    assert np.all(np.isfinite(g)) and float(g[0, 0]) == pytest.approx(-1.0)
