"""conv2d_relu (a conv layer and its ReLU as one op) and Sequential's Conv2D + ReLU fusion.

The registry's audit, oracle and float32 passes cover the op like every op; here: it is
``relu(conv2d(...))`` on both paths (plain, strided, dilated, grouped), bad input names the op,
with the oneDNN kernel the forward is one fused custom call (no ReLU pass) and matches the
reference in float32, and ``Sequential`` runs a Conv2D followed by a ReLU of the same impl as it.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import functional as F
from jaxnet import nn
from jaxnet.ops import conv, onednn

GEOMS = (((2, 7, 7, 3), (3, 3, 3, 4), dict(stride=1, padding=1)),
         ((1, 8, 9, 3), (3, 3, 3, 2), dict(stride=2, padding="SAME")),
         ((2, 9, 9, 2), (3, 3, 2, 3), dict(padding="VALID", dilation=2)),
         ((2, 6, 6, 4), (3, 3, 2, 6), dict(padding=1, groups=2)))


def _args(xs, ws, dtype, seed=0):
    r = np.random.default_rng(seed)
    return (r.standard_normal(xs).astype(dtype), (r.standard_normal(ws) / np.sqrt(np.prod(ws[:3]))).astype(dtype),
            r.standard_normal(ws[-1]).astype(dtype))


def _value_and_grads(op, args, kw):
    def f(x, w, b):
        y = op(x, w, b, **kw)
        return jnp.sum(y * jnp.cos(jnp.arange(y.size).reshape(y.shape))), y
    (_, y), g = jax.value_and_grad(f, argnums=(0, 1, 2), has_aux=True)(*args)
    return (y,) + g


def test_both_paths_are_relu_of_conv2d_float64(x64):
    for xs, ws, kw in GEOMS:
        args = _args(xs, ws, np.float64)
        want = _value_and_grads(lambda *a, **k: jnp.where(conv.conv2d(*a, **k) <= 0, 0, conv.conv2d(*a, **k)), args, kw)
        for op in (conv.conv2d_relu, conv.conv2d_relu_manual):
            got = _value_and_grads(op, args, kw)
            assert float(jnp.min(got[0])) == 0.0 and float(jnp.max(got[0])) > 0
            for a, b in zip(got, want):
                np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("impl", ["autodiff", "manual"])
def test_bad_input_is_one_error_naming_the_op(impl):
    x, w, b = _args((1, 5, 5, 2), (3, 3, 2, 2), np.float32)
    for bad, match in (((x[0], w, b), r"conv2d_relu: `x` must have rank 4"), ((x, w[..., :1, :], b), "conv2d_relu: channel mismatch"),
                       ((x, w, b[:1]), r"conv2d_relu: `b` must have shape \(2,\)")):
        with pytest.raises(ValueError, match=match) as e:
            F.conv2d_relu(*bad, impl=impl)
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError, match="conv2d_relu: .*groups"):
        F.conv2d_relu(x, w, b, groups=0, impl=impl)


def test_onednn_runs_the_relu_inside_the_convolution(onednn_kernel):
    for xs, ws, kw in GEOMS[:2]:
        args = _args(xs, ws, np.float32)
        hlo = jax.jit(lambda *a: _value_and_grads(conv.conv2d_relu_manual, a, kw)).lower(*args).as_text()
        assert "jaxnet_onednn_conv_fwd" in hlo and "relu = 1" in hlo
        ref = jax.jit(lambda *a: _value_and_grads(conv.conv2d_relu, a, kw))(*args)
        man = jax.jit(lambda *a: _value_and_grads(conv.conv2d_relu_manual, a, kw))(*args)
        for r, m in zip(ref, man):
            np.testing.assert_allclose(m, r, rtol=1e-4, atol=1e-4 * float(jnp.max(jnp.abs(r))))


def _net(relu_impl="manual"):
    return nn.Sequential((nn.Conv2D(4, impl="manual"), nn.ReLU(impl=relu_impl), nn.MaxPool2D(2, impl="manual"),
                          nn.Flatten(), nn.Affine(3)), ("conv", "relu", "pool", "flat", "fc"))


def test_sequential_fuses_conv_and_relu_with_the_same_values(x64, monkeypatch):
    model = _net()
    params, state = model.init(jax.random.key(0), (2, 6, 6, 3))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 6, 6, 3)))

    def run():
        return jax.value_and_grad(lambda p: jnp.sum(model.apply(p, state, x, train=True)[0] ** 2))(params)
    traced = str(jax.make_jaxpr(lambda p: model.apply(p, state, x, train=True))(params))
    assert "_conv2d_relu" in traced and "relu_manual" not in traced
    l, g = run()
    with monkeypatch.context() as m:
        m.setattr(nn.Conv2D, "fused_with", lambda self, following: None)
        l0, g0 = run()
    np.testing.assert_allclose(l, l0, rtol=1e-12)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g0)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)
    mixed = _net("autodiff")
    traced = str(jax.make_jaxpr(lambda p: mixed.apply(p, state, x, train=True))(params))
    assert "_conv2d_relu" not in traced
