"""experiments.transfer: the task split, the freezing by optax.multi_transform, the smoke run's
files, and bad flags; fit's init_params (start from given params) and its errors."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import transfer as exp
from jaxnet import nn
from jaxnet.data import Dataset
from jaxnet.train import fit

pytestmark = pytest.mark.xdist_group("exp_transfer")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("transfer_smoke")
    return out, run_quick_experiment(exp, out, "--smoke")


_TRAINED = {"linear probe": {"stem": False, "block1": False, "block2": False, "block3": False, "fc": True},
            "fine-tune last block": {"stem": False, "block1": False, "block2": False, "block3": True, "fc": True}}


def _check_run(out, res, strategies):
    saved = json.loads((out / "results.json").read_text())
    assert [r["strategy"] for r in saved["runs"]] == list(strategies)
    assert saved["n_target_train"] == 5 * 20 and saved["data_source"] == "digits"
    assert (out / "transfer.png").read_bytes()[:4] == b"\x89PNG"
    trained = {r["strategy"]: r["trained_groups"] for r in res["runs"]}
    # multi_transform's frozen groups did not move; the trained ones did
    for s in strategies:
        if s in _TRAINED:
            assert trained[s] == _TRAINED[s], s
        else:
            assert all(trained[s].values()), s
    for r in res["runs"]:
        assert len(r["test_accuracy"]) == 2 and all(0.0 <= a <= 1.0 for a in r["test_accuracy"])
    assert 0.2 < saved["pretrain_test_accuracy"] <= 1.0     # five classes: chance is 0.2
    return saved


def test_smoke_run_files_and_what_each_strategy_trains(smoke):
    out, res = smoke
    saved = _check_run(out, res, exp.SMOKE_STRATEGIES)
    assert saved["claims"] == {}            # the smoke runs neither linear probe nor full fine-tuning


# the four strategies end to end (the default suite runs one, fine-tune last block; labels_for /
# optimizer_for of all four are unit-tested below)
@pytest.mark.slow
def test_smoke_with_every_strategy(tmp_path, monkeypatch):
    monkeypatch.setattr(exp, "SMOKE_STRATEGIES", exp.STRATEGIES)
    res = run_quick_experiment(exp, tmp_path, "--smoke")
    saved = _check_run(tmp_path, res, exp.STRATEGIES)
    assert set(saved["claims"]) == {"linear_probe_beats_scratch", "fine_tuning_beats_scratch"}


def test_split_tasks_relabels_and_counts():
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(10), 30)
    x = rng.standard_normal((300, 4, 4, 1)).astype(np.float32)
    ds = Dataset(x, y, x[:50], y[:50], x[50:], y[50:], classes=tuple("abcdefghij"))
    src, tgt = exp.split_tasks(ds, pretrain_n=100, per_class=7, seed=0)
    assert len(src.y_train) == 100 and set(src.y_train) <= set(range(5))
    assert np.bincount(tgt.y_train).tolist() == [7] * 5 and tgt.classes == tuple("fghij")
    # the relabelled targets are the images of classes 5-9
    for i in range(len(tgt.y_train)):
        j = np.flatnonzero((ds.x_train == tgt.x_train[i]).all(axis=(1, 2, 3)))[0]
        assert ds.y_train[j] == tgt.y_train[i] + 5
    assert set(tgt.y_test) <= set(range(5)) and len(tgt.y_test) == int(np.sum(y[50:] >= 5))


def test_multi_transform_labels_per_strategy():
    params = {"stem": {"w": 1.0}, "block3": {"w": 1.0}, "fc": {"w": 1.0, "b": 1.0}}
    groups = {s: exp.labels_for(s)(params) for s in exp.STRATEGIES}
    assert groups["linear probe"] == {"stem": {"w": "frozen"}, "block3": {"w": "frozen"}, "fc": {"w": "head", "b": "head"}}
    assert groups["fine-tune last block"]["block3"] == {"w": "head"} and groups["fine-tune last block"]["stem"] == {"w": "frozen"}
    assert groups["full fine-tuning"]["stem"] == {"w": "backbone"} and groups["full fine-tuning"]["fc"]["w"] == "head"
    assert all(v == "head" for g in groups["from scratch"].values() for v in g.values())
    opt = exp.optimizer_for("full fine-tuning", 1.0, 0.1, total_steps=10)
    p = jax.tree.map(jnp.asarray, params)
    g = jax.tree.map(jnp.ones_like, p)
    u, _ = opt.update(g, opt.init(p), p)
    # Adam's first step is -lr * sign(g) (up to eps): the backbone moves 0.1 of the head's step
    np.testing.assert_allclose(float(u["stem"]["w"]) / float(u["fc"]["w"]), 0.1, rtol=1e-5)
    u, _ = exp.optimizer_for("linear probe", 1.0, 0.1, 10).update(g, exp.optimizer_for("linear probe", 1.0, 0.1, 10).init(p), p)
    assert float(u["stem"]["w"]) == 0.0 and float(u["fc"]["w"]) != 0.0


@pytest.mark.parametrize("flags, message", [
    (["--per-class", "0"], "--per-class must be >= 1"), (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--backbone-lr-scale", "nan"], "--backbone-lr-scale must be a finite number > 0"),
    (["--per-class", "100000"], "--per-class 100000: class 5 has only"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)


# ------------------------------------------------------------------ fit(init_params=...)

def _tiny():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((40, 4, 4, 1)).astype(np.float32)
    y = (np.arange(40) % 3).astype(np.int32)
    return Dataset(x, y, x[:0], y[:0], x[:10], y[:10], classes=("a", "b", "c")), \
        nn.Sequential((nn.Flatten(), nn.Affine(3)), names=("flat", "fc"))


def test_fit_starts_from_init_params_and_frozen_params_stay():
    ds, model = _tiny()
    p0, s0 = model.init(jax.random.key(5), (8, 4, 4, 1))
    start = jax.tree.map(lambda a: a + 1.0, p0)
    # everything frozen: training leaves the given params exactly as they were
    frozen = fit(model, ds, optimizer=optax.set_to_zero(), epochs=1, batch_size=8, key=0, progress=False,
                 init_params=(start, s0))
    for a, b in zip(jax.tree.leaves(frozen.train_state.params), jax.tree.leaves(start)):
        np.testing.assert_array_equal(a, b)
    # with a real optimizer the run moves from the given params, and differs from a fresh init
    moved = fit(model, ds, optimizer=optax.sgd(0.1), epochs=1, batch_size=40, key=0, progress=False,
                init_params=(start, s0))
    assert not np.array_equal(moved.train_state.params["fc"]["w"], start["fc"]["w"])
    fresh = fit(model, ds, optimizer=optax.sgd(0.1), epochs=1, batch_size=40, key=0, progress=False)
    assert not np.allclose(fresh.train_state.params["fc"]["w"], moved.train_state.params["fc"]["w"])


@pytest.mark.parametrize("bad, needle", [
    (lambda p, s: p, "init_params must be a (params, state) tuple"),
    (lambda p, s: ({"flat": {}}, s), "params do not have the model's structure"),
    (lambda p, s: ({**p, "fc": {**p["fc"], "w": p["fc"]["w"][:3]}}, s), "params['fc']['w'] is float32(3, 3), the model's is float32(16, 3)"),
    (lambda p, s: ({**p, "fc": {**p["fc"], "b": p["fc"]["b"].astype(jnp.int32)}}, s), "params['fc']['b'] is int32(3,)"),
])
def test_fit_init_params_mismatch_is_one_line(bad, needle):
    ds, model = _tiny()
    p0, s0 = model.init(jax.random.key(5), (8, 4, 4, 1))
    with pytest.raises(ValueError) as e:
        fit(model, ds, optimizer=optax.sgd(0.1), epochs=1, batch_size=8, key=0, progress=False, init_params=bad(p0, s0))
    assert str(e.value).startswith("fit: ") and needle in str(e.value) and "\n" not in str(e.value)


def test_train_state_like_is_create_train_state_without_the_weights():
    """fit(init_params=...) starts from train_state_like: the same step, key and shapes as
    create_train_state (whose weights it would throw away), with nothing compiled."""
    from jaxnet.train.state import create_train_state, train_state_like
    model, opt = nn.two_layer_net(hidden=6, num_classes=3), optax.adam(1e-3)
    like = train_state_like(model, opt, 7, (4, 5))
    real = create_train_state(model, opt, 7, (4, 5))
    np.testing.assert_array_equal(jax.random.key_data(like.key) if jnp.issubdtype(like.key.dtype, jax.dtypes.prng_key)
                                  else like.key, jax.random.key_data(real.key) if jnp.issubdtype(
                                      real.key.dtype, jax.dtypes.prng_key) else real.key)
    assert int(like.step) == int(real.step) == 0 and like.step.dtype == real.step.dtype
    for a, b in ((like.params, real.params), (like.state, real.state), (like.opt_state, real.opt_state)):
        assert jax.tree.structure(a) == jax.tree.structure(b)
        assert [(x.shape, x.dtype) for x in jax.tree.leaves(a)] == [(y.shape, y.dtype) for y in jax.tree.leaves(b)]
