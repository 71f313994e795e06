"""Layers, combinators, models, initializers and summary (jaxnet.nn)."""
from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from jaxnet import functional as F
from jaxnet import nn
from jaxnet.nn import init as I

# Threefry keys: an eager ``init`` draws through jaxnet.nn.init's flat draw, compiled once per size
# bucket and dtype (a new shape does not compile a new sampler).
KEY = jax.random.key(0)


def _key(seed):
    return jax.random.key(seed)


def _x(shape, seed=1, dtype=None):
    """Standard normal input from numpy (no compile), in the current default float dtype."""
    return jnp.asarray(np.random.default_rng(seed).standard_normal(shape), dtype or jnp.result_type(float))


def _run(layer, shape, *, train=False, seed=1):
    """init + one jitted apply (jit compiles once; eager custom_vjp ops compile op by op, slower)."""
    params, state = layer.init(KEY, shape)
    apply = jax.jit(lambda p, s, x, k: layer.apply(p, s, x, train=train, key=k if train else None))
    y, new_state = apply(params, state, _x(shape, seed), _key(7))
    return params, state, y, new_state


# --------------------------------------------------------------------------- output_shape == real shape

LAYER_CASES = [
    (nn.Affine(7), (1, 5)),
    (nn.Affine(3, bias=False), (3, 4, 5, 2)),
    (nn.Conv2D(4), (2, 7, 5, 3)),
    (nn.Conv2D(6, kernel=(3, 2), stride=2, padding="VALID"), (1, 9, 7, 2)),
    (nn.Conv2D(4, kernel=3, stride=2, padding=1), (1, 7, 7, 2)),
    (nn.Conv2D(4, kernel=3, dilation=2, groups=2), (2, 6, 5, 4)),
    (nn.Conv2D(5, kernel=1, bias=False), (1, 3, 1, 2)),
    (nn.ConvTranspose2D(3, kernel=3, stride=2, padding=1), (2, 5, 4, 2)),
    (nn.ConvTranspose2D(2, kernel=2, stride=2), (1, 3, 3, 1)),
    (nn.ReLU(), (3, 5)),
    (nn.LeakyReLU(0.1), (1, 7, 3, 2)),
    (nn.Sigmoid(), (2, 3)),
    (nn.Tanh(), (1, 1)),
    (nn.ELU(0.5), (2, 3, 3, 1)),
    (nn.PReLU(), (2, 5, 3)),
    (nn.PReLU(per_channel=False), (2, 3, 3, 2)),
    (nn.Maxout(3), (2, 9)),
    (nn.MaxPool2D(), (2, 6, 4, 3)),
    (nn.MaxPool2D(3, stride=2, padding=1), (1, 7, 7, 2)),
    (nn.MaxPool2D(2, padding="VALID"), (2, 7, 5, 1)),
    (nn.AvgPool2D(3, 1, "SAME"), (1, 5, 5, 2)),
    (nn.AvgPool2D(), (1, 4, 6, 1)),
    (nn.GlobalAvgPool(), (2, 5, 3, 4)),
    (nn.GlobalMaxPool(), (2, 5, 3, 4)),
    (nn.Flatten(), (3, 2, 5, 2)),
    (nn.BatchNorm(), (5, 3)),
    (nn.BatchNorm(), (2, 3, 5, 4)),
    (nn.LayerNorm(), (3, 6)),
    (nn.LayerNorm(), (1, 3, 3, 4)),
    (nn.GroupNorm(2), (2, 3, 5, 4)),
    (nn.Dropout(0.3), (4, 5)),
    (nn.Sequential((nn.Conv2D(4, stride=2), nn.ReLU(), nn.Flatten(), nn.Affine(3))), (1, 5, 5, 2)),
    (nn.Residual(nn.Sequential((nn.Conv2D(3), nn.ReLU()))), (2, 5, 3, 3)),
    (nn.Residual(nn.Conv2D(8, stride=2), shortcut=nn.Conv2D(8, kernel=1, stride=2)), (1, 7, 7, 3)),
    (nn.Parallel((nn.Conv2D(2, kernel=1), nn.Conv2D(3, kernel=5), nn.MaxPool2D(3, 1, "SAME"))), (2, 5, 5, 4)),
    (nn.Parallel((nn.Affine(4), nn.Affine(4)), combine="sum"), (3, 2)),
]


# one case per family (dense, conv, conv transpose, activation, pool, global pool, flatten, norm, dropout,
# combinator) in the default suite; the rest of the sweep is slow
_LAYER_DEFAULT = {0, 3, 7, 9, 14, 18, 21, 23, 24, 26, 29, 30, 31, 33, 35}
_LAYER_PARAMS = [pytest.param(*c, marks=() if i in _LAYER_DEFAULT else pytest.mark.slow)
                 for i, c in enumerate(LAYER_CASES)]


@pytest.mark.parametrize("layer,shape", _LAYER_PARAMS, ids=lambda v: type(v).__name__ if not isinstance(v, tuple) else str(v))
def test_layer_output_shape_matches_real_output(layer, shape):
    predicted = layer.output_shape(shape)
    modal = isinstance(layer, (nn.BatchNorm, nn.Dropout, nn.Sequential, nn.Residual, nn.Parallel))
    for train in ((False, True) if modal else (False,)):
        _, state, y, new_state = _run(layer, shape, train=train)
        assert y.shape == predicted
        assert jax.tree_util.tree_structure(new_state) == jax.tree_util.tree_structure(state)
    assert np.all(np.isfinite(np.asarray(y)))


MODEL_CASES = [
    ("two_layer", dict(hidden=7), (1, 8, 8, 1)),
    ("fc", dict(hidden_dims=(6, 5), normalization="batchnorm", dropout=0.2), (3, 7, 5, 1)),
    ("fc", dict(hidden_dims=(4,), normalization="layernorm", activation="tanh"), (2, 13)),
    ("three_layer_convnet", dict(num_filters=4, filter_size=3, hidden_dim=6), (2, 7, 7, 3)),
    ("convnet", dict(channels=(4, 8)), (2, 8, 8, 1)),
    ("convnet", dict(channels=(4, 8), norm="groupnorm", groups=2, pool="avg"), (1, 32, 32, 3)),
    ("convnet", dict(channels=(4, 4, 4), norm=None, head="flatten", dropout=0.5, convs_per_block=2), (2, 9, 11, 2)),
    ("fast_convnet", dict(stem=4, widths=(4, 8)), (2, 8, 8, 3)),
    ("fast_convnet", dict(stem=4, widths=(4, 8, 8), norm="groupnorm", groups=2), (1, 32, 32, 3)),
]


# one configuration per model family in the default suite; the other configurations are slow
_MODEL_DEFAULT = {0, 1, 3, 4, 7}


@pytest.mark.parametrize("name,kwargs,shape", [pytest.param(*c, marks=() if i in _MODEL_DEFAULT else pytest.mark.slow)
                                               for i, c in enumerate(MODEL_CASES)])
def test_model_output_shape_matches_real_output(name, kwargs, shape):
    model = nn.get_model(name, num_classes=5, **kwargs)
    assert model.output_shape(shape) == (shape[0], 5)
    params, state, y, _ = _run(model, shape, train=True)
    assert y.shape == (shape[0], 5)
    # every intermediate output too, via the summary's arithmetic shapes
    rows = {r.path: r.output_shape for r in nn.summary(model, shape).rows}
    x = _x(shape)
    for lname, layer in zip(model.names, model.layers):
        predicted = layer.output_shape(x.shape)
        x, _ = jax.jit(functools.partial(layer.apply, train=False))(params[lname], state[lname], x)
        assert x.shape == predicted
        if lname in rows:                                 # leaf layers of the top level
            assert x.shape == rows[lname]


@settings(max_examples=25, deadline=None, derandomize=True)
@given(h=st.integers(1, 9), w=st.integers(1, 9), k=st.integers(1, 4), s=st.integers(1, 3),
       d=st.integers(1, 2), pad=st.sampled_from(["SAME", "VALID"]))
def test_conv_and_pool_output_shape_property(h, w, k, s, d, pad):
    shape = (1, h, w, 2)
    for layer in (nn.Conv2D(3, kernel=k, stride=s, dilation=d, padding=pad),
                  nn.MaxPool2D(k, stride=s, padding=pad)):
        def real(x):                # the shape the real init + apply produce (traced, not compiled)
            p, s = layer.init(KEY, x.shape)
            return layer.apply(p, s, x, train=False)[0]

        x = jax.ShapeDtypeStruct(shape, jnp.float32)
        try:
            predicted = layer.output_shape(shape)
        except ValueError:          # window larger than the input: the real op must refuse too
            with pytest.raises(ValueError):
                jax.eval_shape(real, x)
            continue
        assert jax.eval_shape(real, x).shape == predicted


def test_shape_errors_are_clear():
    with pytest.raises(ValueError, match="conv2d: `x` must have rank 4"):     # the op's own check
        nn.Conv2D(3).output_shape((2, 5))
    with pytest.raises(ValueError, match=r"Sequential\['conv'\] \(Conv2D\) with input \(5, 12\)"):
        nn.Sequential((nn.Flatten(), nn.Conv2D(3)), names=("flat", "conv")).init(KEY, (5, 3, 4))
    with pytest.raises(ValueError, match="stride 2 does not fit"):
        nn.MaxPool2D(2).init(KEY, (1, 5, 5, 1))
    with pytest.raises(ValueError, match="group_norm: groups=3"):
        nn.GroupNorm(3).init(KEY, (1, 2, 2, 4))
    with pytest.raises(ValueError, match="names must be unique"):
        nn.Sequential((nn.ReLU(), nn.ReLU()), names=("a", "a"))
    with pytest.raises(ValueError, match="impl must be one of"):
        nn.ReLU(impl="fast")


# --------------------------------------------------------------------------- params naming

def _shapes(tree):
    return jax.tree_util.tree_map(lambda a: tuple(a.shape), tree)


def test_params_are_nested_dicts_with_documented_names():
    p, s = nn.Affine(4).init(jax.random.PRNGKey(0), (2, 3, 2))       # raw uint32 keys work like typed ones
    assert _shapes(p) == {"w": (6, 4), "b": (4,)} and s == {}
    p, _ = nn.Affine(4, bias=False).init(KEY, (2, 3))
    assert set(p) == {"w"}
    p, _ = nn.Conv2D(8, kernel=(3, 5), groups=2).init(KEY, (1, 6, 6, 4))
    assert _shapes(p) == {"w": (3, 5, 2, 8), "b": (8,)}
    p, _ = nn.ConvTranspose2D(5, 2, 2).init(KEY, (1, 3, 3, 4))
    assert _shapes(p) == {"w": (2, 2, 4, 5), "b": (5,)}
    p, s = nn.BatchNorm().init(KEY, (2, 4, 4, 3))
    assert _shapes(p) == {"gamma": (3,), "beta": (3,)} and _shapes(s) == {"mean": (3,), "var": (3,)}
    np.testing.assert_array_equal(s["mean"], 0.0)
    np.testing.assert_array_equal(s["var"], 1.0)
    np.testing.assert_array_equal(p["gamma"], 1.0)
    np.testing.assert_array_equal(p["beta"], 0.0)
    for norm in (nn.LayerNorm(), nn.GroupNorm(3)):
        p, s = norm.init(KEY, (2, 4, 4, 6))
        assert _shapes(p) == {"gamma": (6,), "beta": (6,)} and s == {}
    p, _ = nn.PReLU().init(KEY, (2, 5))
    assert _shapes(p) == {"alpha": (5,)}
    np.testing.assert_array_equal(p["alpha"], 0.25)
    for stateless in (nn.ReLU(), nn.Flatten(), nn.MaxPool2D(), nn.Dropout(0.5), nn.GlobalAvgPool()):
        assert stateless.init(KEY, (1, 4, 4, 2)) == ({}, {})

    p, s = nn.small_convnet(channels=(4, 8), num_classes=3).init(KEY, (1, 8, 8, 1))
    assert set(p) == {"block1", "block2", "gap", "fc"}
    assert _shapes(p["block2"]["conv1"]) == {"w": (3, 3, 4, 8)}          # no bias before batch norm
    assert _shapes(s["block1"]["norm1"]) == {"mean": (4,), "var": (4,)}
    assert _shapes(p["fc"]) == {"w": (8, 3), "b": (3,)}
    p, s = nn.fully_connected_net((6, 5), num_classes=3, normalization="batchnorm").init(KEY, (1, 4))
    assert [k for k in p if p[k]] == ["fc1", "norm1", "fc2", "norm2", "fc3"]
    assert _shapes(p["fc2"]) == {"w": (6, 5), "b": (5,)}
    p, _ = nn.Residual(nn.Conv2D(2), shortcut=nn.Conv2D(2, kernel=1)).init(KEY, (1, 3, 3, 1))
    assert set(p) == {"body", "shortcut"}
    p, _ = nn.Sequential((nn.Affine(2), nn.ReLU()), names=("dense", "act")).init(KEY, (1, 3))
    assert set(p) == {"dense", "act"}


# --------------------------------------------------------------------------- initializers

def test_fans_affine_and_conv():
    assert I.fans((784, 100)) == (784, 100)
    assert I.fans((3, 5, 4, 7)) == (3 * 5 * 4, 3 * 5 * 7)
    assert I.fans((10,)) == (10, 10)


@pytest.mark.parametrize("name,shape,std", [
    ("he", (3, 3, 64, 128), math.sqrt(2 / (9 * 64))),
    ("xavier", (1000, 400), math.sqrt(1 / 1000)),
    ("glorot_normal", (600, 200), math.sqrt(2 / 800)),
    ("small", (500, 300), 0.01),
])
def test_initializer_std_empirically(name, shape, std):
    w = np.asarray(I.get_initializer(name)(_key(3), shape))
    assert w.shape == shape and w.dtype == np.float32
    assert abs(w.std() / std - 1) < 0.02
    assert abs(w.mean()) < 0.02 * std


def test_initializers_use_the_layer_fan_in_and_zero_biases():
    p, _ = nn.Affine(400, w_init="he").init(KEY, (1, 4, 4, 8))       # fan_in = 128
    assert abs(float(p["w"].std()) / math.sqrt(2 / 128) - 1) < 0.03
    np.testing.assert_array_equal(p["b"], 0.0)
    p, _ = nn.Conv2D(256, kernel=3, w_init="xavier").init(KEY, (1, 5, 5, 16))   # fan_in = 144
    assert abs(float(p["w"].std()) * 12 - 1) < 0.03
    np.testing.assert_array_equal(I.zeros(KEY, (3, 4)), 0.0)
    with pytest.raises(ValueError, match="unknown initializer 'kaiming'.*'he'"):
        I.get_initializer("kaiming")
    with pytest.raises(ValueError, match="unknown initializer"):
        nn.Affine(3, w_init="bogus").init(KEY, (1, 2))


def test_zero_init_keeps_hidden_units_identical():
    """The course's symmetry pitfall: with W = 0 every hidden unit gets the same gradient."""
    def train(init):
        model = nn.fully_connected_net((6,), num_classes=3, init=init, activation="sigmoid")
        params, state = model.init(KEY, (8, 5))
        x, y = _x((8, 5)), jnp.arange(8) % 3

        def loss(p):
            return F.softmax_cross_entropy(model.apply(p, state, x, train=True)[0], y)

        step = jax.jit(lambda params: jax.tree_util.tree_map(lambda p, g: p - 0.5 * g, params,
                                                             jax.grad(loss)(params)))
        for _ in range(3):
            params = step(params)
        return params

    p = train("zeros")
    w1, w2 = np.asarray(p["fc1"]["w"]), np.asarray(p["fc2"]["w"])
    assert np.abs(w1).max() > 1e-4 and np.abs(w2).max() > 1e-3            # it did learn something...
    np.testing.assert_allclose(w1, np.repeat(w1[:, :1], 6, axis=1), rtol=1e-6, atol=0)  # ...but all hidden
    np.testing.assert_allclose(w2, np.repeat(w2[:1], 6, axis=0), rtol=1e-6, atol=0)     # units are the same
    p = train("he")
    assert np.abs(np.asarray(p["fc1"]["w"]) - np.asarray(p["fc1"]["w"])[:, :1]).max() > 1e-2


# --------------------------------------------------------------------------- dropout & batch norm

def test_dropout_needs_key_in_train_and_is_identity_in_eval():
    layer = nn.Dropout(0.25)
    x = _x((200, 50)) + 3.0
    with pytest.raises(ValueError, match=r"Dropout\(rate=0.25\).*key"):
        layer.apply({}, {}, x, train=True)
    y, _ = layer.apply({}, {}, x, train=False)
    assert y is x
    y, _ = layer.apply({}, {}, x, train=True, key=_key(4))
    y, x = np.asarray(y), np.asarray(x)
    dropped = y == 0
    assert abs(dropped.mean() - 0.25) < 0.02                               # rate = probability of DROPPING
    np.testing.assert_allclose(y[~dropped], x[~dropped] / 0.75, rtol=1e-6)
    with pytest.raises(ValueError, match="DROPPING"):
        nn.Dropout(1.0)
    with pytest.raises(TypeError, match="Python bool"):
        layer.apply({}, {}, x, train=jnp.array(True))
    # a model with dropout passes the missing key down and fails clearly too
    model = nn.fully_connected_net((4,), dropout=0.5)
    params, state = model.init(KEY, (2, 3))
    with pytest.raises(ValueError, match="Dropout"):
        model.apply(params, state, _x((2, 3)), train=True)


@pytest.mark.parametrize("shape", [(16, 3), (4, 3, 5, 2)])
def test_batchnorm_train_updates_state_eval_uses_running_stats(shape):
    # NumPy inputs and references; the layer's calls jitted but for the one checking that eval returns the
    # state object itself (eagerly, each op of each call would compile its own kernel)
    layer = nn.BatchNorm(momentum=0.8)
    apply = jax.jit(layer.apply, static_argnames="train")
    params, state = layer.init(KEY, shape)
    x = (2.0 * np.asarray(_x(shape)) + 1.5).astype(np.float32)
    axes = tuple(range(len(shape) - 1))
    y, new = jax.tree.map(np.asarray, apply(params, state, x, train=True))
    np.testing.assert_allclose(new["mean"], 0.2 * x.mean(axes), rtol=1e-5)
    np.testing.assert_allclose(new["var"], 0.8 + 0.2 * x.var(axes), rtol=1e-5)
    np.testing.assert_allclose(y.mean(axes), 0.0, atol=1e-5)               # batch statistics in train mode
    np.testing.assert_allclose(y.std(axes), 1.0, atol=1e-3)

    running = {"mean": np.array([0.5, -1.0, 2.0][: shape[-1]], np.float32),
               "var": np.array([4.0, 0.25, 1.0][: shape[-1]], np.float32)}
    params = {"gamma": np.full(shape[-1], 2.0, np.float32), "beta": np.full(shape[-1], 0.1, np.float32)}
    y_eval, same = layer.apply(params, running, x, train=False)
    assert same is running                                                 # eval leaves the state alone
    expect = 2.0 * (x - running["mean"]) / np.sqrt(running["var"] + 1e-5) + 0.1
    np.testing.assert_allclose(y_eval, expect, rtol=1e-5, atol=1e-5)
    # eval output of one example does not depend on the rest of the batch; train output does
    y1, _ = apply(params, running, x[:1], train=False)
    np.testing.assert_allclose(y1, np.asarray(y_eval)[:1], rtol=1e-6)
    yt1, _ = apply(params, running, x[:2], train=True)
    yt, _ = apply(params, running, x, train=True)
    assert not np.allclose(np.asarray(yt1)[:1], np.asarray(yt)[:1], atol=1e-3)


# --------------------------------------------------------------------------- combinators

def test_sequential_folds_keys_per_layer():
    seq = nn.Sequential((nn.Dropout(0.5), nn.Dropout(0.5)))
    x = jnp.ones((4, 64))
    key = _key(11)
    y, _ = seq.apply({"0": {}, "1": {}}, {"0": {}, "1": {}}, x, train=True, key=key)
    m0, _ = nn.Dropout(0.5).apply({}, {}, x, train=True, key=jax.random.fold_in(key, 0))
    m1, _ = nn.Dropout(0.5).apply({}, {}, x, train=True, key=jax.random.fold_in(key, 1))
    assert not np.array_equal(m0 != 0, m1 != 0)                            # different masks per layer
    np.testing.assert_array_equal(y, m0 * m1)                              # exactly fold_in(key, i) for child i
    y2, _ = seq.apply({"0": {}, "1": {}}, {"0": {}, "1": {}}, x, train=True, key=_key(12))
    assert not np.array_equal(y, y2)


def test_residual_and_parallel_values_and_errors():
    body, short = nn.Conv2D(8, stride=2, impl="auto"), nn.Conv2D(8, kernel=1, stride=2, impl="auto")
    res = nn.Residual(body, shortcut=short)
    x = _x((2, 6, 6, 4))
    p, s = res.init(KEY, x.shape)
    y, _ = res.apply(p, s, x, train=False)
    np.testing.assert_allclose(y, body.apply(p["body"], {}, x, train=False)[0]
                               + short.apply(p["shortcut"], {}, x, train=False)[0], rtol=1e-6)
    with pytest.raises(ValueError, match=r"Residual: body output shape \(2, 6, 6, 8\) does not match the input"):
        nn.Residual(nn.Conv2D(8)).init(KEY, (2, 6, 6, 4))
    with pytest.raises(ValueError, match="Residual: body output shape"):
        nn.Residual(nn.Conv2D(8)).output_shape((2, 6, 6, 4))

    par = nn.Parallel((nn.Conv2D(2, kernel=1), nn.MaxPool2D(3, 1, "SAME")), names=("c", "pool"))
    p, s = par.init(KEY, x.shape)
    y, _ = par.apply(p, s, x, train=False)
    np.testing.assert_allclose(y[..., 2:], F.max_pool2d(x, window=3, stride=1, padding="SAME"))
    with pytest.raises(ValueError, match="combine='sum'"):
        nn.Parallel((nn.Affine(2), nn.Affine(3)), combine="sum").init(KEY, (1, 4))


def test_with_impl_is_recursive_and_models_are_hashable():
    model = nn.Sequential((nn.Residual(nn.Sequential((nn.Conv2D(2), nn.ReLU()))), nn.Flatten(), nn.Affine(3)))
    manual = nn.with_impl(model, "manual")
    impls = []

    def collect(layer):
        for f in dataclasses.fields(layer):
            v = getattr(layer, f.name)
            if f.name == "impl":
                impls.append(v)
            for c in (v if isinstance(v, tuple) else (v,)):
                if isinstance(c, nn.Layer):
                    collect(c)

    collect(manual)
    assert impls == ["manual"] * 3
    assert manual != model and hash(nn.with_impl(model, "manual")) == hash(manual)
    impls.clear()
    collect(nn.small_convnet(impl="auto"))
    assert len(impls) >= 7 and set(impls) == {"auto"}


# --------------------------------------------------------------------------- manual == auto

GRAD_MODELS = [
    ("two_layer", dict(hidden=7), (4, 6, 6, 1)),
    ("fc", dict(hidden_dims=(6, 5), normalization="batchnorm", dropout=0.3), (5, 7)),
    ("fc", dict(hidden_dims=(5,), normalization="layernorm", activation="elu"), (3, 2, 3)),
    ("three_layer_convnet", dict(num_filters=3, filter_size=3, hidden_dim=5), (2, 6, 6, 2)),
    ("convnet", dict(channels=(4, 4)), (3, 8, 8, 1)),
    ("convnet", dict(channels=(4,), norm="groupnorm", groups=2, pool="avg", dropout=0.2), (2, 7, 7, 2)),
    # regression: max pool after group norm under jit (the winner is recorded in the forward pass)
    ("convnet", dict(channels=(4,), norm="groupnorm", groups=2), (5, 6, 6, 2)),
    ("fast_convnet", dict(stem=3, widths=(4, 4)), (3, 8, 8, 2)),
    ("fast_convnet", dict(stem=4, widths=(4,), norm="groupnorm", groups=2), (2, 6, 6, 3)),
]


# one configuration per model family in the default suite (with the group-norm + max-pool regression);
# the other configurations are slow
_GRAD_DEFAULT = {0, 1, 3, 6, 7}


@pytest.mark.parametrize("name,kwargs,shape", [pytest.param(*c, marks=() if i in _GRAD_DEFAULT else pytest.mark.slow)
                                               for i, c in enumerate(GRAD_MODELS)])
def test_manual_and_auto_give_same_loss_and_grads(name, kwargs, shape):
    with jax.enable_x64(True):
        x = _x(shape, dtype=jnp.float64)
        y = jnp.arange(shape[0]) % 4
        results = {}
        for impl in ("manual", "auto"):
            model = nn.get_model(name, num_classes=4, impl=impl, **kwargs)
            params, state = model.init(KEY, shape)
            assert params[model.names[-1]]["w"].dtype == jnp.float64

            def loss(p):
                scores, new_state = model.apply(p, state, x, train=True, key=_key(5))
                return F.softmax_cross_entropy(scores, y, impl=impl), new_state

            (value, new_state), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params)
            results[impl] = (value, grads, new_state)
        (lm, gm, sm), (la, ga, sa) = results["manual"], results["auto"]
        np.testing.assert_allclose(lm, la, rtol=1e-10, atol=1e-10)
        assert jax.tree_util.tree_structure(gm) == jax.tree_util.tree_structure(ga)
        for a, b in zip(jax.tree_util.tree_leaves(gm), jax.tree_util.tree_leaves(ga)):
            assert np.abs(np.asarray(b)).max() > 0 or a.size == 0
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-10)
        for a, b in zip(jax.tree_util.tree_leaves(sm), jax.tree_util.tree_leaves(sa)):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- jit & vmap

def test_jit_matches_eager_and_model_is_a_static_argument():
    model = nn.small_convnet(channels=(4,), num_classes=3, impl="auto")   # auto: eager manual ops compile slowly
    shape = (3, 8, 8, 1)
    params, state = model.init(KEY, shape)
    x = _x(shape)
    eager, eager_state = model.apply(params, state, x, train=True)

    @jax.jit
    def fwd(p, s, x):
        return model.apply(p, s, x, train=True)

    jitted, jitted_state = fwd(params, state, x)
    np.testing.assert_allclose(jitted, eager, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(jitted_state["block1"]["norm1"]["mean"], eager_state["block1"]["norm1"]["mean"],
                               rtol=1e-5, atol=1e-6)

    traces = []

    def fwd_any(m, p, s, x):
        traces.append(1)
        return m.apply(p, s, x, train=False)[0]

    static_fwd = jax.jit(fwd_any, static_argnums=0)
    a = static_fwd(model, params, state, x)
    b = static_fwd(nn.small_convnet(channels=(4,), num_classes=3, impl="auto"), params, state, x)  # equal model: no retrace
    assert len(traces) == 1
    np.testing.assert_array_equal(a, b)


def test_vmap_per_example_gradients_equal_single_example_gradients():
    # no batch norm (it mixes examples)
    model = nn.small_convnet(channels=(4,), num_classes=3, norm="groupnorm", groups=2, pool="max")
    shape = (5, 6, 6, 2)
    params, state = model.init(KEY, (1,) + shape[1:])
    xs, ys = _x(shape), jnp.arange(5) % 3

    def loss(p, x, y):
        scores, _ = model.apply(p, state, x[None], train=True)
        return F.softmax_cross_entropy(scores, y[None])

    xs, ys = np.asarray(xs), np.asarray(ys)          # NumPy: slicing them compiles nothing
    per_example = jax.tree.map(np.asarray, jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(params, xs, ys))
    single_grad = jax.jit(jax.grad(loss))
    for i in range(shape[0]):
        single = single_grad(params, xs[i], ys[i])
        for a, b in zip(jax.tree_util.tree_leaves(per_example), jax.tree_util.tree_leaves(single)):
            np.testing.assert_allclose(a[i], b, rtol=1e-4, atol=1e-6)
    # and their mean is the batch gradient
    def batch_loss(p):
        return F.softmax_cross_entropy(model.apply(p, state, xs, train=True)[0], ys)
    batch_grad = jax.jit(jax.grad(batch_loss))(params)
    for a, b in zip(jax.tree_util.tree_leaves(per_example), jax.tree_util.tree_leaves(batch_grad)):
        np.testing.assert_allclose(a.mean(0), b, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- summary & registry

# Parameter counts by hand from each architecture (weights + biases + norm gamma/beta), with 5 classes.
HAND_COUNTS = [
    64 * 7 + 7 + 7 * 5 + 5,                                        # two_layer: 8x8x1 -> 7 -> 5
    (35 * 6 + 6 + 2 * 6) + (6 * 5 + 5 + 2 * 5) + (5 * 5 + 5),     # fc: 35 -> 6 (BN) -> 5 (BN) -> 5
    (13 * 4 + 4 + 2 * 4) + (4 * 5 + 5),                            # fc: 13 -> 4 (LN) -> 5
    (3 * 3 * 3 * 4 + 4) + (3 * 3 * 4 * 6 + 6) + (6 * 5 + 5),     # conv 3x3x3->4, 2x2 pool: 3x3x4 -> 6 -> 5
]


@pytest.mark.parametrize("case,true_params", list(zip(MODEL_CASES, HAND_COUNTS)))
def test_summary_totals_equal_true_parameter_count(case, true_params):
    name, kwargs, shape = case
    model = nn.get_model(name, num_classes=5, **kwargs)
    params, state = model.init(KEY, shape)
    summ = nn.summary(model, shape)
    assert summ.total_params == true_params == nn.count_params(params)
    assert sum(r.params for r in summ.rows) == true_params
    assert summ.total_state == sum(a.size for a in jax.tree_util.tree_leaves(state))
    assert summ.output_shape == (shape[0], 5)
    assert summ.rows[-1].output_shape == (shape[0], 5)
    assert all(r.activation_bytes == 4 * math.prod(r.output_shape) for r in summ.rows)
    text = str(summ)
    assert f"total params: {true_params:,}" in text and summ.rows[0].path in text


def test_summary_counts_nested_params_by_hand():
    model = nn.small_convnet(channels=(8, 16), num_classes=10)
    summ = nn.summary(model, (128, 32, 32, 3))
    by_path = {r.path: r for r in summ.rows}
    assert by_path["block1/conv1"].params == 3 * 3 * 3 * 8
    assert by_path["block2/conv1"].params == 3 * 3 * 8 * 16
    assert by_path["block2/norm1"].params == 32 and by_path["block2/norm1"].state == 32
    assert by_path["block1/pool"].output_shape == (128, 16, 16, 8)
    assert by_path["fc"].params == 16 * 10 + 10
    assert summ.total_params == 216 + 16 + 1152 + 32 + 170


def test_get_model_registry():
    assert set(nn.MODELS) == {"two_layer", "fc", "three_layer_convnet", "convnet", "fast_convnet", "vit"}
    with pytest.raises(ValueError, match=r"unknown model 'resnet'.*'convnet'.*'fc'"):
        nn.get_model("resnet")
    with pytest.raises(ValueError, match="normalization"):
        nn.get_model("fc", normalization="groupnorm")
    m = nn.get_model("three_layer_convnet")
    assert m.output_shape((2, 32, 32, 3)) == (2, 10)
    assert nn.summary(m, (1, 32, 32, 3)).total_params == 7 * 7 * 3 * 32 + 32 + 16 * 16 * 32 * 100 + 100 + 1010


@pytest.mark.parametrize("name,kwargs,shape", [
    ("two_layer", {}, (64, 8, 8, 1)), ("fc", dict(normalization="batchnorm"), (64, 8, 8, 1)),
    ("three_layer_convnet", dict(num_filters=8), (64, 8, 8, 1)), ("convnet", {}, (64, 8, 8, 1)),
])
def test_untrained_models_start_near_ln_c(name, kwargs, shape):
    """The course's sanity check: with small final weights, the initial loss is about ln(C)."""
    from jaxnet.train import initial_loss_check
    model = nn.get_model(name, num_classes=10, **kwargs)
    params, state = model.init(KEY, shape)
    x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    y = np.arange(shape[0]) % 10
    loss, expected, ok = initial_loss_check(model, params, state, x, y, 10)
    assert abs(loss - np.log(10)) < 0.05 * np.log(10), (loss, expected)
    assert ok


def test_global_max_pool_values_and_gradient():
    x = np.random.default_rng(3).standard_normal((2, 3, 4, 5)).astype(np.float32)
    # the gradient of each (image, channel) goes to its maximum only (NumPy reference)
    flat = x.reshape(2, 12, 5)
    want = (np.arange(12)[None, :, None] == np.argmax(flat, axis=1)[:, None, :]) * np.arange(5.0, dtype=np.float32)
    for impl in ("manual", "auto"):
        layer = nn.GlobalMaxPool(impl=impl)
        y, _ = layer.apply({}, {}, x, train=False)
        np.testing.assert_array_equal(y, np.max(x, axis=(1, 2)))
        g = jax.jit(jax.grad(lambda v: jnp.sum(layer.apply({}, {}, v, train=False)[0] * jnp.arange(5.0))))(x)
        np.testing.assert_array_equal(g, want.reshape(x.shape))
    with pytest.raises(ValueError, match=r"GlobalMaxPool.*\(N, H, W, C\)"):
        nn.GlobalMaxPool().output_shape((2, 3))


def test_fast_convnet_names_params_and_errors():
    model = nn.fast_convnet()
    params, _ = model.init(KEY, (1, 32, 32, 3))
    assert list(params) == ["stem", "block1", "block2", "block3", "pool", "fc"]
    assert set(params["block1"]) == {"conv1", "pool", "norm1", "relu1", "conv2", "norm2", "relu2"}
    assert "b" not in params["block1"]["conv1"]          # the norm's beta is the bias
    assert nn.count_params(params) == 292954
    with pytest.raises(ValueError, match="groups=3 must divide"):
        nn.fast_convnet(norm="groupnorm", groups=3)
    with pytest.raises(ValueError, match="norm must be"):
        nn.fast_convnet(norm="layernorm")
    with pytest.raises(ValueError, match="widths"):
        nn.fast_convnet(widths=())
