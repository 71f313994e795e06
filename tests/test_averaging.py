"""jaxnet.train.averaging: EMA / Polyak averaging of params, ensembles of models, fit(ema_decay=)."""

from __future__ import annotations

import dataclasses

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.data import load_digits
from jaxnet.optim import make_optimizer
from jaxnet.train import (
    CheckpointError,
    ema_decay_at,
    ema_init,
    ema_update,
    ensemble_member_probs,
    ensemble_predict,
    evaluate,
    evaluate_ensemble,
    fit,
    polyak_average,
    polyak_update,
)


def tree(seed: int, scale: float = 1.0):
    r = np.random.default_rng(seed)
    return {
        "fc1": {"w": jnp.asarray(scale * r.normal(size=(5, 3)), jnp.float32),
                "b": jnp.asarray(scale * r.normal(size=(3,)), jnp.float32)},
        "fc2": {"w": jnp.asarray(scale * r.normal(size=(3, 2)), jnp.float32)},
    }


def assert_tree_close(a, b, **kw):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), **kw), a, b)


# ----------------------------------------------------------------------------- EMA / Polyak

def test_ema_update_math_and_limits():
    ema, p = tree(0), tree(1)
    for d in (0.0, 0.3, 0.9, 0.999, 1.0):
        out = ema_update(ema, p, d)
        expect = jax.tree.map(lambda e, x: d * np.asarray(e, np.float64) + (1 - d) * np.asarray(x), ema, p)
        assert_tree_close(out, expect, rtol=1e-6, atol=1e-6)
        jax.tree.map(lambda o, e: (o.dtype == e.dtype) or pytest.fail("dtype changed"), out, ema)
    jax.tree.map(np.testing.assert_array_equal, ema_update(ema, p, 0.0), p)  # decay 0: the params
    jax.tree.map(np.testing.assert_array_equal, ema_update(ema, p, 1.0), ema)  # decay 1: unchanged
    assert_tree_close(ema_init(p), p, rtol=0, atol=0)


def test_ema_of_a_constant_stays_and_repeated_updates_converge_geometrically():
    p, e0 = tree(2), tree(3)
    e = ema_init(p)
    for _ in range(5):
        e = ema_update(e, p, 0.9)
    assert_tree_close(e, p, rtol=1e-6, atol=1e-7)
    e = e0
    for _ in range(20):
        e = ema_update(e, p, 0.5)
    # e_n - p = 0.5^n (e_0 - p)
    expect = jax.tree.map(lambda a, b: b + 0.5 ** 20 * (a - b), e0, p)
    assert_tree_close(e, expect, rtol=1e-5, atol=1e-6)


def test_ema_warmup_variant():
    assert float(ema_decay_at(0.999, 0)) == pytest.approx(0.1)
    assert float(ema_decay_at(0.999, 10)) == pytest.approx(11 / 20)
    assert float(ema_decay_at(0.9, 10_000)) == pytest.approx(0.9)
    e, p = tree(0), tree(1)
    assert_tree_close(ema_update(e, p, 0.999, step=0), ema_update(e, p, 0.1), rtol=1e-6, atol=1e-7)
    assert_tree_close(ema_update(e, p, 0.5, step=1000), ema_update(e, p, 0.5), rtol=1e-6, atol=1e-7)


def test_ema_update_is_jittable_and_traced_once():
    calls = {"n": 0}

    @jax.jit
    @chex.assert_max_traces(n=1)
    def step(e, p, d, k):
        calls["n"] += 1
        return ema_update(e, p, d, step=k)

    e, p = tree(0), tree(1)
    for k in range(3):
        e = step(e, p, jnp.float32(0.9), jnp.int32(k))
    expect = tree(0)
    for k in range(3):
        expect = ema_update(expect, p, 0.9, step=k)
    assert_tree_close(e, expect, rtol=1e-6, atol=1e-7)
    assert calls["n"] == 1


def test_polyak_running_mean_and_average():
    trees = [tree(i) for i in range(4)]
    mean = jax.tree.map(lambda *xs: np.mean(np.stack([np.asarray(x, np.float64) for x in xs]), axis=0), *trees)
    avg = ema_init(trees[0])
    for i, t in enumerate(trees[1:], start=1):
        avg = polyak_update(avg, t, i)
    assert_tree_close(avg, mean, rtol=1e-6, atol=1e-6)
    assert_tree_close(polyak_average(trees), mean, rtol=1e-6, atol=1e-6)
    jax.tree.map(np.testing.assert_array_equal, polyak_update(trees[0], trees[1], 0), trees[1])


def test_averaging_errors_name_the_function_and_shapes():
    a = tree(0)
    b = {"fc1": {"w": jnp.zeros((5, 4)), "b": jnp.zeros(3)}, "fc2": {"w": jnp.zeros((3, 2))}}
    with pytest.raises(ValueError, match=r"ema_update: leaf .*fc1.*w.* \(5, 3\) in ema but \(5, 4\)"):
        ema_update(a, b, 0.9)
    with pytest.raises(ValueError, match="ema_update: ema and params have different tree structures"):
        ema_update(a, {"fc1": a["fc1"]}, 0.9)
    with pytest.raises(ValueError, match=r"ema_update: decay must be in \[0, 1\]"):
        ema_update(a, a, 1.5)
    with pytest.raises(ValueError, match="polyak_average: params_list is empty"):
        polyak_average([])
    with pytest.raises(ValueError, match="polyak_update: count must be >= 0"):
        polyak_update(a, a, -1)


# ----------------------------------------------------------------------------- ensembles

@dataclasses.dataclass(frozen=True)
class Linear:
    """x (N, 4, 4, 1) -> flatten -> affine (16 -> 3); state: a counter (unused at eval)."""

    def init(self, key, input_shape):
        return {"w": jax.random.normal(key, (16, 3)), "b": jnp.zeros(3)}, {"n": jnp.zeros(())}

    def apply(self, params, state, x, *, train, key=None):
        return x.reshape(len(x), -1) @ params["w"] + params["b"], state


def members_and_data(k=3, n=23):
    model = Linear()
    members = []
    for i in range(k):
        p, s = model.init(jax.random.key(i), (1, 4, 4, 1))
        members.append((p, s))
    r = np.random.default_rng(0)
    x = r.normal(size=(n, 4, 4, 1)).astype(np.float32)
    y = r.integers(0, 3, size=n).astype(np.int32)
    return model, members, x, y


def by_hand(model, params, state, x):
    """Linear's softmax probabilities in float64 NumPy (eagerly, every jnp op would compile a kernel)."""
    logits = np.asarray(x, np.float64).reshape(len(x), -1) @ np.asarray(params["w"], np.float64) + np.asarray(params["b"])
    z = np.exp(logits - logits.max(-1, keepdims=True))
    return z / z.sum(-1, keepdims=True)


def test_ensemble_probs_are_the_mean_of_member_probs_and_padding_is_exact():
    model, members, x, y = members_and_data()
    hand = np.stack([by_hand(model, p, s, x) for p, s in members])
    for bs in (23, 5, 7, 64):  # 23 = one full batch, others pad the last batch
        per = ensemble_member_probs(model, members, x, bs)
        assert per.shape == (3, 23, 3) and per.dtype == np.float32
        np.testing.assert_allclose(per, hand, rtol=1e-5, atol=1e-7)
        probs = ensemble_predict(model, members, x, bs)
        assert probs.shape == (23, 3) and probs.dtype == np.float32
        np.testing.assert_allclose(probs, hand.mean(0), rtol=1e-5, atol=1e-7)
        np.testing.assert_allclose(probs.sum(-1), 1.0, rtol=1e-5)
    full = ensemble_predict(model, members, x, 23)
    np.testing.assert_allclose(ensemble_predict(model, members, x, 4), full, rtol=1e-6, atol=1e-7)


def test_ensemble_of_identical_members_is_the_member():
    model, members, x, y = members_and_data(k=1)
    one = members[0]
    np.testing.assert_allclose(ensemble_predict(model, [one] * 4, x, 8), ensemble_predict(model, [one], x, 8),
                               rtol=1e-6, atol=1e-7)
    res = evaluate_ensemble(model, [one] * 4, x, y, 8)
    assert res["member_acc"] == [res["member_acc"][0]] * 4
    assert res["ensemble_acc"] == pytest.approx(res["member_acc"][0]) == pytest.approx(res["mean_member_acc"])
    assert res["ensemble_gain"] == pytest.approx(0.0, abs=1e-12)
    assert res["ensemble_nll"] == pytest.approx(res["member_nll"][0], rel=1e-5)


def test_evaluate_ensemble_accuracies_by_hand():
    model, members, x, y = members_and_data(k=4, n=31)
    res = evaluate_ensemble(model, members, x, y, 8)
    hand = np.stack([by_hand(model, p, s, x) for p, s in members])
    member_acc = (hand.argmax(-1) == y).mean(1)
    np.testing.assert_allclose(res["member_acc"], member_acc)
    assert res["ensemble_acc"] == pytest.approx(float((hand.mean(0).argmax(-1) == y).mean()))
    assert res["mean_member_acc"] == pytest.approx(member_acc.mean())
    assert res["best_member_acc"] == pytest.approx(member_acc.max())
    assert res["num_members"] == 4 and res["n"] == 31
    nll = -np.log(hand.mean(0)[np.arange(31), y]).mean()
    assert res["ensemble_nll"] == pytest.approx(nll, rel=1e-5)
    # the NLL of the averaged probabilities is at most the members' mean NLL (Jensen)
    assert res["ensemble_nll"] <= np.mean(res["member_nll"]) + 1e-9


def test_ensemble_errors():
    model, members, x, y = members_and_data()
    with pytest.raises(ValueError, match="ensemble_member_probs: members is empty"):
        ensemble_predict(model, [], x, 8)
    with pytest.raises(ValueError, match="single pair"):
        ensemble_predict(model, members[0], x, 8)
    with pytest.raises(ValueError, match="batch_size must be a positive int"):
        ensemble_predict(model, members, x, 0)
    with pytest.raises(ValueError, match=r"evaluate_ensemble: need x \(N, ...\) and y \(N,\), "
                                         r"got x \(23, 4, 4, 1\) and y \(22,\)"):
        evaluate_ensemble(model, members, x, y[:-1], 8)
    with pytest.raises(ValueError, match=r"labels must be in \[0, 3\)"):
        evaluate_ensemble(model, members, x, y + 5, 8)
    bad = ({"w": jnp.zeros((16, 4)), "b": jnp.zeros(3)}, members[0][1])
    with pytest.raises(ValueError, match=r"members\[1\] params"):
        ensemble_predict(model, [members[0], bad], x, 8)


# ----------------------------------------------------------------------------- fit(ema_decay=)

@pytest.fixture(scope="module")
def small():
    d = load_digits()
    return d.replace(x_train=d.x_train[:150], y_train=d.y_train[:150], x_val=d.x_val[:50], y_val=d.y_val[:50])


@dataclasses.dataclass(frozen=True)
class MLP:
    hidden: int = 16

    def init(self, key, input_shape):
        d = int(np.prod(input_shape[1:]))
        k1, k2 = jax.random.split(key)
        return ({"fc1": {"w": 0.1 * jax.random.normal(k1, (d, self.hidden)), "b": jnp.zeros(self.hidden)},
                 "fc2": {"w": 0.1 * jax.random.normal(k2, (self.hidden, 10)), "b": jnp.zeros(10)}}, {})

    def apply(self, params, state, x, *, train, key=None):
        h = jax.nn.relu(x.reshape(len(x), -1) @ params["fc1"]["w"] + params["fc1"]["b"])
        return h @ params["fc2"]["w"] + params["fc2"]["b"], state


def test_fit_ema_is_the_recurrence_does_not_change_training_and_resumes_exactly(small, tmp_path):
    """One step per epoch (batch = the 64 training examples), so the params after each epoch
    are the params after each step and the EMA can be recomputed by hand."""
    model, opt = MLP(), make_optimizer("adam", 1e-2)
    data = small.replace(x_train=small.x_train[:64], y_train=small.y_train[:64])
    kw = dict(optimizer=opt, batch_size=64, key=1, progress=False)
    full = fit(model, data, epochs=3, ema_decay=0.95, **kw)
    # resumed one epoch at a time: the same final params and EMA, bit for bit
    chain = [fit(model, data, epochs=0, **kw).train_state.params]
    for e in (1, 2, 3):
        r = fit(model, data, epochs=e, ema_decay=0.95, out_dir=tmp_path, resume=e > 1, **kw)
        chain.append(r.train_state.params)
    jax.tree.map(np.testing.assert_array_equal, r.ema_params, full.ema_params)
    jax.tree.map(np.testing.assert_array_equal, r.train_state.params, full.train_state.params)
    # the k-th update uses decay min(0.95, k / (9 + k)), from the initial params (NumPy, float64)
    chain = [jax.tree.map(lambda a: np.asarray(a, np.float64), c) for c in chain]
    ema = chain[0]
    for k in (1, 2, 3):
        d = min(0.95, k / (9 + k))
        ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, chain[k])
    assert_tree_close(full.ema_params, ema, rtol=1e-5, atol=1e-6)
    assert max(jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                                            full.ema_params, full.train_state.params))) > 0
    # without the EMA: the same training, no ema_params, and a checkpoint that cannot resume with one
    plain = fit(model, data, epochs=3, out_dir=tmp_path / "plain", **kw)
    assert plain.ema_params is None
    jax.tree.map(np.testing.assert_array_equal, plain.train_state.params, full.train_state.params)
    assert plain.history["train_loss"] == full.history["train_loss"]
    with pytest.raises(CheckpointError, match="no EMA"):
        fit(model, data, epochs=4, ema_decay=0.9, out_dir=tmp_path / "plain", resume=True, **kw)
    with pytest.raises(ValueError, match=r"fit: ema_decay must be None or a float in \[0, 1\)"):
        fit(model, data, epochs=1, ema_decay=1.0, **kw)
