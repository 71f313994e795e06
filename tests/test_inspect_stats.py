"""Per-layer statistics hooks: nn.intermediates / nn.activation_stats and train.make_stats_step."""

from __future__ import annotations

import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnet import nn
from jaxnet.train import (TrainState, flatten_paths, make_stats_step, make_train_step, param_norms,
                          update_ratios)

B, IN = 8, (4, 4, 1)


def _mlp():
    """Tiny net with every kind of randomness/state the step threads: batch norm and dropout."""
    return nn.Sequential((nn.Flatten(), nn.Affine(12), nn.BatchNorm(), nn.ReLU(), nn.Dropout(0.5), nn.Affine(3)),
                         ("flatten", "fc1", "bn1", "relu1", "drop1", "fc2"))


def _tree_model():
    """Nested Sequential + Residual (with dropout inside) + Parallel, to check paths and keys."""
    block = nn.Residual(nn.Sequential((nn.Affine(8), nn.BatchNorm(), nn.ReLU(), nn.Dropout(0.3)),
                                      ("fc", "bn", "relu", "drop")))
    branches = nn.Parallel((nn.Affine(3), nn.Sequential((nn.Affine(2), nn.Tanh()), ("fc", "act"))),
                           names=("a", "b"))
    return nn.Sequential((nn.Flatten(), nn.Affine(8), block, nn.Dropout(0.5), branches, nn.Affine(3)),
                         ("flatten", "fc0", "res", "drop", "par", "head"))


def _numpy_init(model, seed=0):
    """params/state with model.init's shapes filled from numpy (no threefry compile);
    state (batch-norm mean/var) = 1."""
    rng = np.random.default_rng(seed)
    shapes = jax.eval_shape(lambda k: model.init(k, (B,) + IN), jax.random.PRNGKey(0))
    params = jax.tree.map(lambda a: jnp.asarray(0.5 * rng.standard_normal(a.shape), jnp.float32), shapes[0])
    state = jax.tree.map(lambda a: jnp.ones(a.shape, jnp.float32), shapes[1])
    return params, state


def _data(seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((B,) + IN).astype(np.float32)
    y = rng.integers(0, 3, B).astype(np.int32)
    mask = np.ones(B, np.float32)
    mask[-2:] = 0.0  # a padded last batch
    return x, y, mask


@pytest.mark.parametrize("train", [False, True])
def test_intermediates_last_equals_apply(train):
    model = _tree_model()
    params, state = _numpy_init(model)
    x, _, _ = _data()
    key = jax.random.PRNGKey(7) if train else None
    acts = nn.intermediates(model, params, state, x, train=train, key=key)
    y, new_state = model.apply(params, state, x, train=train, key=key)
    y2, new_state2, acts2 = nn.forward_with_intermediates(model, params, state, x, train=train, key=key)
    np.testing.assert_array_equal(np.asarray(y2), np.asarray(y))
    chex.assert_trees_all_equal(new_state2, new_state)
    assert list(acts) == list(acts2) == ["flatten", "fc0", "res/body/fc", "res/body/bn", "res/body/relu",
                                         "res/body/drop", "res", "drop", "par/a", "par/b/fc", "par/b/act", "par",
                                         "head"]
    assert list(acts) == [r.path for r in nn.summary(model, (B,) + IN).rows]
    np.testing.assert_array_equal(np.asarray(acts["head"]), np.asarray(y))
    if train:  # the same dropout masks as apply: the sub-model outputs agree with a direct apply
        sub_key = jax.random.fold_in(jax.random.PRNGKey(7), 2)
        res, _ = model["res"].apply(params["res"], state["res"], acts["fc0"], train=True, key=sub_key)
        np.testing.assert_array_equal(np.asarray(acts["res"]), np.asarray(res))
        assert 0.3 < float(jnp.mean(acts["drop"] == 0)) < 0.7


def test_activation_stats_values_and_mask():
    a = jnp.array([[0.0, 1.0], [2.0, 0.0], [5.0, 5.0]])
    s = jax.jit(nn.activation_stats)({"h": a})["h"]
    np.testing.assert_allclose([s["mean"], s["std"], s["frac_zero"]],
                               [np.mean(a), np.std(np.asarray(a)), 2 / 6], rtol=1e-6)
    m = nn.activation_stats({"h": a}, jnp.array([1.0, 1.0, 0.0]))["h"]  # the last row is padding
    np.testing.assert_allclose([m["mean"], m["std"], m["frac_zero"]],
                               [0.75, np.std([0.0, 1.0, 2.0, 0.0]), 0.5], rtol=1e-6)
    with pytest.raises(ValueError, match=r"activation_stats: mask has shape \(2,\).*batch size 3"):
        nn.activation_stats({"h": a}, jnp.ones(2))
    with pytest.raises(ValueError, match="activation_stats"):
        nn.activation_stats([a])


def test_bad_inputs_raise_clear_errors():
    model = _mlp()
    params, state = _numpy_init(model)
    x, _, _ = _data()
    with pytest.raises(ValueError, match="intermediates: params has no entry 'fc1'"):
        nn.intermediates(model, {k: v for k, v in params.items() if k != "fc1"}, state, x)
    with pytest.raises(ValueError, match=r"intermediates: .*\(8, 5\)"):
        nn.intermediates(model, params, state, x.reshape(B, -1)[:, :5])
    with pytest.raises(TypeError, match="train"):
        nn.intermediates(model, params, state, x, train=1)
    bad = jax.tree.map(lambda a: a, params)
    bad["fc1"]["w"] = jnp.zeros((3, 3))
    with pytest.raises(ValueError, match=r"update_ratios: leaf 'fc1/w' has shape \(16, 12\).*\(3, 3\)"):
        update_ratios(params, bad)
    with pytest.raises(ValueError, match="update_ratios: .*different structures"):
        update_ratios(params, {"fc1": params["fc1"]})


def test_update_ratios_by_hand():
    old = {"fc": {"w": jnp.array([[3.0, 4.0]]), "b": jnp.zeros(2)}}
    new = {"fc": {"w": jnp.array([[3.0, 4.003]]), "b": jnp.array([0.0, 0.1])}}
    r = jax.jit(update_ratios)(old, new)
    np.testing.assert_allclose(float(r["fc/w"]), 0.003 / 5.0, rtol=1e-3)
    assert np.isinf(float(r["fc/b"]))  # a zero bias that moved
    assert list(flatten_paths(old)) == ["fc/b", "fc/w"]  # jax's leaf order
    np.testing.assert_allclose([float(v) for v in param_norms(old).values()], [0.0, 5.0])


def _counting(counter):
    def hook(fn):
        @functools.wraps(fn)
        def wrapped(*args):
            counter.append(1)
            return fn(*args)
        return wrapped
    return hook


@pytest.fixture(scope="module")
def steps():
    """One model / optimizer / initial state; the manual train step, the manual stats step
    (donating, the default) and its trace counter, compiled once for the module."""
    model = _mlp()
    opt = optax.sgd(0.05, momentum=0.9)
    params, state = _numpy_init(model)
    ts0 = TrainState(step=jnp.zeros((), jnp.int32), params=params, state=state, opt_state=opt.init(params),
                     key=jax.random.PRNGKey(0))
    ts0 = ts0.replace(params={**params, "fc1": {**params["fc1"], "b": jnp.zeros_like(params["fc1"]["b"])}})
    ts0 = ts0.replace(opt_state=opt.init(ts0.params))
    traces = []
    return dict(model=model, opt=opt, ts0=ts0, traces=traces,
                step=make_train_step(model, opt, impl="manual", donate=False),
                stats_step=make_stats_step(model, opt, impl="manual", _trace_hook=_counting(traces)))


def _copy(tree):
    """A fresh device copy (through numpy: no compile) to give a donating step."""
    return jax.tree.map(lambda a: jnp.asarray(np.array(a)), tree)


def test_stats_step_matches_train_step(steps):
    step, stats_step = steps["step"], steps["stats_step"]
    ts_a = ts_b = steps["ts0"]
    for seed in (0, 1):  # two batches, one trace
        x, y, mask = _data(seed)
        ts_ref, m_ref = step(ts_a, x, y, mask)
        ts_new, metrics, stats = stats_step(_copy(ts_b), x, y, mask)  # the stats step donates its input
        chex.assert_trees_all_close(ts_new, ts_ref, rtol=1e-6, atol=1e-7)
        chex.assert_trees_all_close(metrics, m_ref, rtol=1e-6, atol=1e-7)
        ps = stats["params"]
        assert set(ps) == {"fc1/w", "fc1/b", "bn1/gamma", "bn1/beta", "fc2/w", "fc2/b"}
        for path, p in flatten_paths(ts_b.params).items():  # update_ratio by hand (numpy, float64)
            new = np.asarray(flatten_paths(ts_new.params)[path], np.float64)
            p = np.asarray(p, np.float64)
            np.testing.assert_allclose(float(ps[path]["param_norm"]), np.linalg.norm(p), rtol=1e-5)
            if np.linalg.norm(p) > 0:
                np.testing.assert_allclose(float(ps[path]["update_ratio"]),
                                           np.linalg.norm(new - p) / np.linalg.norm(p), rtol=1e-4)
        assert np.isinf(float(ps["fc1/b"]["update_ratio"])) == (seed == 0)  # zero bias at init
        total = np.sqrt(sum(float(v["grad_norm"]) ** 2 for v in ps.values()))
        np.testing.assert_allclose(total, float(metrics["grad_norm"]), rtol=1e-5)
        acts = stats["activations"]
        assert list(acts) == ["flatten", "fc1", "bn1", "relu1", "drop1", "fc2"]  # order kept through jit
        assert abs(float(acts["bn1"]["mean"])) < 0.3  # normalised over all 8 rows, reported over the 6 real
        assert 0.3 < float(acts["relu1"]["frac_zero"]) < 0.7
        assert float(acts["drop1"]["frac_zero"]) > float(acts["relu1"]["frac_zero"])
        ts_a, ts_b = ts_ref, ts_new
    assert int(ts_b.step) == 2 and len(steps["traces"]) == 1
    with pytest.raises(ValueError, match=r"stats_step: expected x \(B, ...\), y \(B,\), mask \(B,\)"):
        stats_step(ts_b, x, y[:3], mask)


def test_stats_step_auto_matches_manual(steps):
    """impl="auto" (autodiff backward) gives the manual path's update and statistics."""
    traces = []
    auto = make_stats_step(steps["model"], steps["opt"], impl="auto", donate=False, _trace_hook=_counting(traces))
    x, y, mask = _data(2)
    ts_auto, m_auto, s_auto = auto(steps["ts0"], x, y, mask)
    ts_auto2, _, _ = auto(ts_auto, x, y, mask)
    ts_man, m_man, s_man = steps["stats_step"](_copy(steps["ts0"]), x, y, mask)
    chex.assert_trees_all_close(ts_auto, ts_man, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close((m_auto, s_auto), (m_man, s_man), rtol=1e-4, atol=1e-6)
    assert int(ts_auto2.step) == 2 and len(traces) == 1
