"""Layers take their shapes and input checks from the ops; the combinators' output hook.

Everything here is traced (``jax.eval_shape`` / ``jax.make_jaxpr``) or runs tiny eager
graphs: nothing compiles a whole model.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import functional as F
from jaxnet import nn
from jaxnet.nn import layers as L

KEY = jax.random.key(0, impl="rbg")
S = jax.ShapeDtypeStruct


def _abstract_init(layer, shape):
    return jax.eval_shape(lambda k: layer.init(k, shape), KEY)


def _abstract_apply(layer, shape, train):
    params, state = _abstract_init(layer, shape)
    key = jax.random.key(1, impl="rbg") if train else None

    def run(p, s, x):
        return layer.apply(p, s, x, train=train, key=key)

    return jax.eval_shape(run, params, state, S(shape, jnp.result_type(float)))


# --------------------------------------------------------------------------- init's shapes == apply's shapes

# every layer class, each on a few input shapes (ranks 2 and 4, odd sizes, groups, strides)
SHAPE_CASES = [
    (nn.Affine(5), [(2, 3), (1, 4, 3, 2)]),
    (nn.Affine(2, bias=False), [(3, 7)]),
    (nn.Conv2D(4), [(1, 5, 5, 3), (2, 7, 4, 1)]),
    (nn.Conv2D(6, kernel=(3, 2), stride=2, padding="VALID"), [(1, 9, 7, 2), (1, 4, 5, 3)]),
    (nn.Conv2D(4, kernel=3, stride=2, padding=1, dilation=1, groups=2), [(1, 7, 7, 2), (2, 5, 9, 4)]),
    (nn.Conv2D(4, kernel=3, dilation=2, groups=2), [(2, 6, 5, 4)]),
    (nn.ConvTranspose2D(3, kernel=3, stride=2, padding=1), [(2, 5, 4, 2), (1, 2, 2, 1)]),
    (nn.ConvTranspose2D(2, kernel=(2, 3), stride=(2, 1)), [(1, 3, 3, 1)]),
    (nn.ReLU(), [(3, 5), (1, 2, 2, 3)]),
    (nn.LeakyReLU(0.1), [(1, 7, 3, 2)]),
    (nn.Sigmoid(), [(2, 3)]),
    (nn.Tanh(), [(1, 1)]),
    (nn.ELU(0.5), [(2, 3, 3, 1)]),
    (nn.PReLU(), [(2, 5), (2, 5, 3)]),
    (nn.PReLU(per_channel=False), [(2, 3, 3, 2)]),
    (nn.Maxout(3), [(2, 9), (1, 2, 2, 6)]),
    (nn.MaxPool2D(), [(2, 6, 4, 3), (1, 2, 2, 1)]),
    (nn.MaxPool2D(3, stride=2, padding=1), [(1, 7, 7, 2), (1, 5, 9, 1)]),
    (nn.MaxPool2D(2, padding="VALID"), [(2, 7, 5, 1)]),
    (nn.AvgPool2D(3, 1, "SAME"), [(1, 5, 5, 2), (1, 1, 1, 1)]),
    (nn.AvgPool2D(), [(1, 4, 6, 1)]),
    (nn.GlobalAvgPool(), [(2, 5, 3, 4), (1, 1, 1, 1)]),
    (nn.GlobalMaxPool(), [(2, 5, 3, 4), (1, 1, 1, 1)]),
    (nn.Flatten(), [(3, 2, 5, 2), (2, 3)]),
    (nn.BatchNorm(), [(5, 3), (2, 3, 5, 4)]),
    (nn.LayerNorm(), [(3, 6), (1, 3, 3, 4)]),
    (nn.GroupNorm(2), [(2, 3, 5, 4), (1, 1, 1, 2)]),
    (nn.LocalResponseNorm(3), [(1, 2, 3, 4), (1, 1, 1, 1)]),
    (nn.Dropout(0.3), [(4, 5), (1, 2, 2, 1)]),
    (nn.StochasticDepth(0.3), [(4, 5), (2, 2, 2, 1)]),
    (nn.Reshape((2, -1)), [(3, 8), (1, 2, 2, 3)]),
    (nn.Sequential((nn.Conv2D(4, stride=2), nn.ReLU(), nn.Flatten(), nn.Affine(3))), [(1, 5, 5, 2)]),
    (nn.Residual(nn.Conv2D(8, stride=2), shortcut=nn.Conv2D(8, kernel=1, stride=2)), [(1, 7, 7, 3)]),
    (nn.Parallel((nn.Conv2D(2, kernel=1), nn.MaxPool2D(3, 1, "SAME"))), [(2, 5, 5, 4)]),
]
_CASES = [pytest.param(layer, shape, id=f"{type(layer).__name__}-{i}-{shape}")
          for i, (layer, shapes) in enumerate(SHAPE_CASES) for shape in shapes]


def test_every_layer_class_is_covered():
    covered = {type(layer).__name__ for layer, _ in SHAPE_CASES}
    assert set(L.__all__) - {"Layer", "with_impl"} <= covered


@pytest.mark.parametrize("impl", ["auto", "manual"])
@pytest.mark.parametrize("layer,shape", _CASES)
def test_init_shapes_agree_with_apply(layer, shape, impl):
    layer = nn.with_impl(layer, impl)
    predicted = layer.output_shape(shape)
    params, state = _abstract_init(layer, shape)
    for train in (False, True):
        y, new_state = _abstract_apply(layer, shape, train)
        assert y.shape == predicted
        assert jax.tree.map(lambda a: a.shape, new_state) == jax.tree.map(lambda a: a.shape, state)
    # output_shape is cached per (layer, shape): a second call is the same answer
    assert layer.output_shape(shape) == predicted


def test_unhashable_layer_still_gets_its_shape():
    layer = nn.PReLU(init_alpha=jnp.asarray(0.1))             # an array field: no cache, still traced
    with pytest.raises(TypeError):
        hash(layer)
    assert layer.output_shape((2, 3)) == (2, 3)


# --------------------------------------------------------------------------- a bad input raises the op's error

def _op_error(fn, *args, **kwargs):
    with pytest.raises(ValueError) as info:
        fn(*args, **kwargs)
    return str(info.value)


def test_conv_with_wrong_channel_count_raises_the_ops_error():
    layer = nn.Conv2D(4, kernel=3)
    params, state = layer.init(KEY, (1, 5, 5, 3))
    x = jnp.zeros((1, 5, 5, 2))
    want = _op_error(F.conv2d, x, params["w"], params["b"], stride=1, padding="SAME", impl="auto")
    assert want.startswith("conv2d: channel mismatch")
    for impl in ("auto", "manual"):
        got = _op_error(nn.with_impl(layer, impl).apply, params, state, x, train=False)
        assert got == want


def test_conv_rank_and_groups_errors_are_the_ops():
    want = _op_error(F.conv2d, jnp.zeros((2, 5)), jnp.zeros((3, 3, 5, 3)), impl="auto")
    assert _op_error(nn.Conv2D(3).output_shape, (2, 5)) == want
    assert _op_error(nn.Conv2D(3).init, KEY, (2, 5)) == want
    want = _op_error(F.conv2d, jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 1, 4)), groups=2, impl="auto")
    assert "groups=2 must divide" in want
    assert _op_error(nn.Conv2D(4, groups=2).init, KEY, (1, 4, 4, 3)) == want
    assert "`groups` must be a positive int" in _op_error(nn.Conv2D(4, groups=0).init, KEY, (1, 4, 4, 3))


@pytest.mark.parametrize("layer,op", [(nn.MaxPool2D(7), F.max_pool2d), (nn.AvgPool2D(7), F.avg_pool2d)])
def test_pool_window_larger_than_input_raises_the_ops_error(layer, op):
    want = _op_error(op, jnp.zeros((1, 5, 5, 1)), window=7, impl="auto")
    assert "larger than the padded input" in want
    assert _op_error(layer.init, KEY, (1, 5, 5, 1)) == want
    assert _op_error(layer.output_shape, (1, 5, 5, 1)) == want
    assert _op_error(layer.apply, {}, {}, jnp.zeros((1, 5, 5, 1)), train=False) == want


def test_norm_and_maxout_errors_are_the_ops():
    x = jnp.zeros((1, 2, 2, 4))
    want = _op_error(F.group_norm, x, jnp.ones(4), jnp.zeros(4), groups=3, impl="auto")
    assert _op_error(nn.GroupNorm(3).init, KEY, x.shape) == want
    want = _op_error(F.maxout, jnp.zeros((2, 5)), pieces=2, impl="auto")
    assert _op_error(nn.Maxout(2).init, KEY, (2, 5)) == want
    want = _op_error(F.batch_norm, jnp.zeros((2, 3, 4)), *(jnp.ones(4),) * 4, train=False, impl="auto")
    assert _op_error(nn.BatchNorm().init, KEY, (2, 3, 4)) == want
    assert _op_error(nn.BatchNorm(momentum=2.0).init, KEY, (2, 4)).startswith("batch_norm: `momentum`")
    want = _op_error(F.affine, jnp.zeros((4,)), jnp.zeros((1, 3)), impl="auto")
    assert _op_error(nn.Affine(3).init, KEY, (4,)) == want
    # the dropout rate: the op's rule and wording, under the layer's name
    assert "DROPPING a unit and must be in [0, 1)" in _op_error(nn.Dropout, 1.0)


# --------------------------------------------------------------------------- the output hook

def _tree():
    block = nn.Residual(nn.Sequential((nn.Affine(4), nn.ReLU()), ("fc", "relu")))
    par = nn.Parallel((nn.Affine(2), nn.Tanh()), names=("a", "b"))
    return nn.Sequential((nn.Flatten(), nn.Affine(4), block, par), ("flat", "fc0", "res", "par"))


def _init(model, shape):
    shapes = jax.eval_shape(lambda k: model.init(k, shape), KEY)
    rng = np.random.default_rng(0)
    return jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(a.shape), jnp.float32), shapes)


def test_apply_tapped_reports_every_leaf_and_merge_in_order():
    model = _tree()
    params, state = _init(model, (2, 3))
    x = jnp.asarray(np.random.default_rng(1).standard_normal((2, 3)), jnp.float32)
    seen = []
    y, new_state = nn.apply_tapped(model, params, state, x, train=False,
                                   on_output=lambda path, v: seen.append((path, v.shape)))
    assert [p for p, _ in seen] == ["flat", "fc0", "res/body/fc", "res/body/relu", "res", "par/a", "par/b", "par"]
    assert seen[-1][1] == y.shape == (2, 6)
    y0, state0 = model.apply(params, state, x, train=False)
    np.testing.assert_array_equal(np.asarray(y), np.asarray(y0))
    # the root itself is reported at "" when it is a leaf or a merge
    seen.clear()
    nn.apply_tapped(nn.ReLU(), {}, {}, x, train=False, on_output=lambda p, v: seen.append(p))
    assert seen == [""]
    seen.clear()
    nn.apply_tapped(model["res"], params["res"], state["res"], jnp.zeros((2, 4)), train=False,
                    on_output=lambda p, v: seen.append(p))
    assert seen == ["body/fc", "body/relu", ""]


@dataclasses.dataclass(frozen=True)
class _Custom(nn.Layer):
    """A layer of its own with a Sequential inside: the hook sees it as one leaf."""
    inner: nn.Sequential

    def init(self, key, input_shape):
        return self.inner.init(key, input_shape)

    def output_shape(self, input_shape):
        return self.inner.output_shape(input_shape)

    def apply(self, params, state, x, *, train, key=None):
        return self.inner.apply(params, state, x, train=train, key=key)


def test_a_layer_that_is_not_a_combinator_is_one_leaf():
    model = nn.Sequential((_Custom(nn.Sequential((nn.ReLU(), nn.Tanh()))), nn.ReLU()), ("custom", "relu"))
    params, state = _init(model, (2, 3))
    seen = []
    nn.apply_tapped(model, params, state, jnp.ones((2, 3)), train=False, on_output=lambda p, v: seen.append(p))
    assert seen == ["custom", "relu"]


def test_hook_off_traces_the_same_computation():
    model = nn.Sequential((nn.Affine(4), nn.ReLU(), nn.Affine(2)))
    params, state = _init(model, (2, 3))
    x = jnp.ones((2, 3))

    def by_hand(p, s, x):
        for i, layer in enumerate(model.layers):
            x, _ = layer.apply(p[str(i)], s[str(i)], x, train=False)
        return x

    plain = jax.make_jaxpr(lambda p, s, x: model.apply(p, s, x, train=False)[0])(params, state, x)
    assert str(plain) == str(jax.make_jaxpr(by_hand)(params, state, x))
    nn.intermediates(model, params, state, x)                 # the hook on once ...
    again = jax.make_jaxpr(lambda p, s, x: model.apply(p, s, x, train=False)[0])(params, state, x)
    assert str(again) == str(plain)                            # ... leaves nothing behind


def test_hook_is_off_again_after_an_error():
    model = _tree()
    params, state = _init(model, (2, 3))
    with pytest.raises(ValueError, match=r"intermediates: params has no entry 'fc' for layer 'res/body/fc'"):
        bad = {**params, "res": {"body": {"relu": {}}}}
        nn.intermediates(model, bad, state, jnp.ones((2, 3)))
    from jaxnet.nn.combinators import _TAP
    assert _TAP.get() is None
    # plain apply names the combinator and the missing child
    with pytest.raises(ValueError, match=r"Sequential: params has no entry 'fc' for layer 'fc'"):
        model.apply(bad, state, jnp.ones((2, 3)), train=False)


def test_intermediates_under_jit_match_eager():
    model = _tree()
    params, state = _init(model, (2, 3))
    x = jnp.asarray(np.random.default_rng(2).standard_normal((2, 3)), jnp.float32)
    eager = nn.intermediates(model, params, state, x)
    jitted = jax.jit(nn.intermediates, static_argnums=0, static_argnames="train")(model, params, state, x)
    assert list(jitted) == list(eager)
    for k in eager:
        np.testing.assert_allclose(np.asarray(jitted[k]), np.asarray(eager[k]), rtol=1e-6, atol=1e-6)
