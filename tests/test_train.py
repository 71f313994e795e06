"""jaxnet.train: steps, batching, fit, checkpoints, resume, data parallelism, sanity checks; jaxnet.viz curves."""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import sys

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import functional as F
from jaxnet.data import Dataset, load_digits
from jaxnet.optim import make_optimizer
from jaxnet.train import (
    CheckpointError,
    TrainState,
    batches,
    create_train_state,
    evaluate,
    fit,
    initial_loss_check,
    load_checkpoint,
    make_eval_step,
    make_train_step,
    num_batches,
    overfit_small_subset,
    save_checkpoint,
)
from jaxnet.train import checkpoint as checkpoint_module
from jaxnet.train.state import train_state_like

fit_module = sys.modules["jaxnet.train.fit"]  # the package's `fit` attribute is the function
from jaxnet.viz import plot_history


def pseudo_normal(key, index, shape):
    """Cheap stand-in for ``jax.random.normal``: a sine hash of the key bits and ``index``
    (unit variance, uniform). XLA's CPU compile of threefry costs ~0.5 s per shape on a
    2-core machine; the tests create many models and need none of its quality."""
    seed = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
    s = (seed % 10007).astype(jnp.float32)
    i = jnp.arange(int(np.prod(shape)), dtype=jnp.float32)
    u = jnp.sin(i * 12.9898 + s[0] * 78.233 + s[1] * 3.7719 + index * 0.5731) * 43758.5453
    return ((u - jnp.floor(u)).reshape(shape) - 0.5) * math.sqrt(12.0)


@dataclasses.dataclass(frozen=True)
class MLP:
    """Stand-in model with the jaxnet.nn protocol: affine-relu-(dropout)-affine, plus a
    batch-statistics state (running mean of the hidden layer) to exercise ``state``."""

    hidden: int = 32
    num_classes: int = 10
    scale: float = 0.05
    dropout: float = 0.0
    depth: int = 2

    def init(self, key, input_shape):
        d = int(np.prod(input_shape[1:]))
        sizes = [d] + [self.hidden] * (self.depth - 1) + [self.num_classes]
        params = {
            f"fc{i + 1}": {
                "w": self.scale * pseudo_normal(key, i, (sizes[i], sizes[i + 1])),
                "b": jnp.zeros(sizes[i + 1]),
            }
            for i in range(self.depth)
        }
        return params, {"fc1": {"mean": jnp.zeros(self.hidden)}}

    def apply(self, params, state, x, *, train, key=None):
        h = x
        for i in range(self.depth - 1):
            h = F.relu(F.affine(h, params[f"fc{i + 1}"]["w"], params[f"fc{i + 1}"]["b"]))
            if i == 0 and train:
                state = {"fc1": {"mean": 0.9 * state["fc1"]["mean"] + 0.1 * h.mean(0)}}
            if train and self.dropout:
                if key is None:
                    raise ValueError("dropout needs a key when train=True")
                keep = jax.random.bernoulli(jax.random.fold_in(key, i), 1 - self.dropout, h.shape)
                h = jnp.where(keep, h / (1 - self.dropout), 0)
        last = params[f"fc{self.depth}"]
        return F.affine(h, last["w"], last["b"]), state


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def small(digits):
    """203 training and 61 validation digits (neither divisible by the batch sizes used)."""
    return digits.replace(
        x_train=digits.x_train[:203], y_train=digits.y_train[:203],
        x_val=digits.x_val[:61], y_val=digits.y_val[:61],
    )


@pytest.fixture(scope="module")
def adam():
    return make_optimizer("adam", 1e-2)


def tree_equal(a, b):
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)), a, b)


def numpy_logits(params, x):
    """MLP()'s eval-mode forward (affine-relu-affine) in float32 NumPy: the tests' reference,
    without compiling a kernel for every eager jnp op."""
    p = jax.tree.map(np.asarray, params)
    h = np.maximum(np.asarray(x, np.float32).reshape(len(x), -1) @ p["fc1"]["w"] + p["fc1"]["b"], 0)
    return h @ p["fc2"]["w"] + p["fc2"]["b"]


def numpy_cross_entropy(logits, y):
    z = np.asarray(logits, np.float64)
    z = z - z.max(-1, keepdims=True)
    return float(np.mean(np.log(np.exp(z).sum(-1)) - z[np.arange(len(y)), y]))


# ----------------------------------------------------------------------------- batching


def test_batches_pad_mask_and_cover_each_example_once():
    x = np.arange(23, dtype=np.float32).reshape(23, 1, 1, 1)
    y = np.arange(23, dtype=np.int32)
    out = list(batches(x, y, 5, key=0))
    assert len(out) == num_batches(23, 5) == 5
    assert all(xb.shape == (5, 1, 1, 1) and yb.shape == (5,) and m.shape == (5,) for xb, yb, m in out)
    assert all(m.dtype == np.float32 for _, _, m in out)
    masks = np.concatenate([m for _, _, m in out])
    assert masks.sum() == 23 and set(np.unique(masks)) == {0.0, 1.0}
    real = np.concatenate([yb[m == 1] for _, yb, m in out])
    np.testing.assert_array_equal(np.sort(real), y)  # without replacement: each once
    assert not np.array_equal(real, y)  # shuffled
    np.testing.assert_array_equal(real, np.concatenate([yb[m == 1] for _, yb, m in batches(x, y, 5, key=0)]))
    assert not np.array_equal(real, np.concatenate([yb[m == 1] for _, yb, m in batches(x, y, 5, key=1)]))
    # padded rows are real examples (copies), so batch statistics stay sensible
    np.testing.assert_array_equal(out[-1][0][:, 0, 0, 0], out[-1][1].astype(np.float32))

    ordered = list(batches(x, y, 5))
    np.testing.assert_array_equal(np.concatenate([yb[m == 1] for _, yb, m in ordered]), y)
    assert len(list(batches(x, y, 5, pad_last=False))) == 4
    big = list(batches(x, y, 64))  # batch larger than the data: padded, never dropped
    assert len(big) == 1 and big[0][2].sum() == 23
    with pytest.raises(ValueError, match="64.*23"):
        list(batches(x, y, 64, pad_last=False))
    with pytest.raises(ValueError, match="positive int"):
        list(batches(x, y, 0))
    assert list(batches(x[:0], y[:0], 4)) == []


def test_fit_rejects_batch_larger_than_training_set(small, adam):
    with pytest.raises(ValueError, match=r"batch size 500 .*203"):
        fit(MLP(), small, optimizer=adam, epochs=1, batch_size=500, key=0, progress=False)


# ----------------------------------------------------------------------------- steps


def test_masked_loss_ignores_padded_rows(small):
    model, opt = MLP(), make_optimizer("sgd", 0.5)
    ts0 = create_train_state(model, opt, 0, (8, 8, 8, 1))
    step = make_train_step(model, opt, donate=False)
    x, y = small.x_train[:8], small.y_train[:8]
    mask = np.array([1, 1, 1, 1, 1, 0, 0, 0], np.float32)
    garbage_x = x.copy()
    garbage_x[5:] = 100.0 * np.random.default_rng(0).normal(size=garbage_x[5:].shape)
    garbage_y = y.copy()
    garbage_y[5:] = (y[5:] + 3) % 10
    ts_a, m_a = step(ts0, x, y, mask)
    ts_b, m_b = step(ts0, garbage_x, garbage_y, mask)
    # the same 5 real rows as a batch of 5, unpadded (from the same start: the params do not depend on the batch)
    ts_c, m_c = make_train_step(model, opt, donate=False)(ts0, x[:5], y[:5], np.ones(5, np.float32))
    for m in (m_b, m_c):
        np.testing.assert_allclose(m["loss"], m_a["loss"], rtol=1e-6)
        np.testing.assert_allclose(m["grad_norm"], m_a["grad_norm"], rtol=1e-5)
        np.testing.assert_allclose(m["accuracy"], m_a["accuracy"])
    for ts in (ts_b, ts_c):
        jax.tree.map(lambda p, q: np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-7), ts.params, ts_a.params)
    expected = numpy_cross_entropy(numpy_logits(ts0.params, x[:5]), y[:5])     # MLP(): no dropout
    np.testing.assert_allclose(m_a["loss"], expected, rtol=1e-6)
    assert float(m_a["count"]) == 5.0


def test_train_step_metrics_key_donation_and_augmentation(small, adam):
    from jaxnet.data import augment

    model = MLP(dropout=0.5)
    ts = create_train_state(model, adam, 0, (16, 8, 8, 1))
    step = make_train_step(model, adam, augment_fn=functools.partial(augment, crop_padding=1))
    x, y, m = next(batches(small.x_train, small.y_train, 16, key=0))
    params_before, key_before = ts.params, np.asarray(ts.key)
    ts1, metrics = step(ts, x, y, m)
    assert params_before["fc1"]["w"].is_deleted()  # donated
    assert int(ts1.step) == 1 and ts1.step.dtype == jnp.int32
    assert not np.array_equal(np.asarray(ts1.key), key_before)
    assert set(metrics) == {"loss", "accuracy", "learning_rate", "grad_norm", "count", "finite"}
    assert metrics["finite"].dtype == jnp.bool_ and bool(metrics["finite"])
    np.testing.assert_allclose(metrics["learning_rate"], 1e-2, rtol=1e-6)
    assert float(metrics["grad_norm"]) > 0 and 0 <= float(metrics["accuracy"]) <= 1
    ts2, metrics2 = step(ts1, x, y, m)  # fresh dropout and crops: another loss on the same batch
    assert float(metrics2["loss"]) != float(metrics["loss"])


def test_impl_switch_auto_and_manual_agree(small, adam):
    model = MLP()
    x, y, m = next(batches(small.x_train, small.y_train, 16))
    results = []
    for impl in ("auto", "manual"):
        ts = create_train_state(model, adam, 0, (16, 8, 8, 1))
        results.append(make_train_step(model, adam, impl=impl)(ts, x, y, m))
    np.testing.assert_allclose(results[0][1]["loss"], results[1][1]["loss"], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
                 results[0][0].params, results[1][0].params)


def test_no_retrace_across_epochs_partial_batch_and_train_eval_switch(small, adam):
    chex.clear_trace_counter()
    hook = functools.partial(chex.assert_max_traces, n=1)
    # 203 training / 61 validation examples, batch 16: a partial last batch each epoch
    result = fit(MLP(dropout=0.2), small, optimizer=adam, epochs=3, batch_size=16, key=0,
                 progress=False, _trace_hook=hook)
    assert len(result.history["epoch"]) == 3
    # the hook is live: a second shape is a second trace, and it fails
    chex.clear_trace_counter()
    model = MLP()
    step = make_train_step(model, adam, _trace_hook=hook)
    ts = create_train_state(model, adam, 0, (16, 8, 8, 1))
    ts, _ = step(ts, small.x_train[:16], small.y_train[:16], np.ones(16, np.float32))
    with pytest.raises(AssertionError, match="traced > 1"):
        step(ts, small.x_train[:8], small.y_train[:8], np.ones(8, np.float32))
    chex.clear_trace_counter()


def test_eval_step_and_evaluate_match_a_full_batch_computation(small, adam):
    model = MLP()
    ts = create_train_state(model, adam, 3, (16, 8, 8, 1))
    x, y = small.x_val, small.y_val  # 61 examples
    logits = numpy_logits(ts.params, x)
    loss = numpy_cross_entropy(logits, y)
    acc = float(np.mean(np.argmax(logits, -1) == y))
    for bs in (7, 61, 100):
        got_loss, got_acc = evaluate(model, ts.params, ts.state, x, y, bs)
        np.testing.assert_allclose(got_loss, loss, rtol=1e-5)
        assert got_acc == pytest.approx(acc)
    # batch 7: evaluate's program for bs=7 above
    s, c, n = make_eval_step(model)(ts.params, ts.state, x[:7], y[:7], np.r_[np.ones(3), np.zeros(4)].astype(np.float32))
    assert float(n) == 3 and 0 <= float(c) <= 3 and float(s) > 0
    assert all(math.isnan(v) for v in evaluate(model, ts.params, ts.state, x[:0], y[:0], 8))


# ----------------------------------------------------------------------------- fit


def test_fit_history_best_model_metrics_curves_checkpoint(small, adam, tmp_path):
    result = fit(MLP(), small, optimizer=adam, epochs=3, batch_size=32, key=0, out_dir=tmp_path,
                 progress=True)
    h = result.history
    assert h["epoch"] == [1, 2, 3]
    for k in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "images_per_sec", "epoch_time"):
        assert len(h[k]) == 3 and all(np.isfinite(h[k]))
    assert h["train_loss"][-1] < h["train_loss"][0]
    assert h["lr"] == pytest.approx([1e-2] * 3)
    assert result.best_epoch == int(np.argmax(h["val_acc"])) + 1
    assert result.best_val_acc == max(h["val_acc"])
    _, best_acc = evaluate(MLP(), result.best_params, result.best_state, small.x_val, small.y_val, 32)
    assert best_acc == pytest.approx(result.best_val_acc)
    assert int(result.train_state.step) == 3 * num_batches(203, 32)
    # on one device the results are plain arrays (not placed on fit's one-device mesh), so a jitted
    # function fed them and freshly made params compiles one program, not one per placement
    for leaf in jax.tree.leaves((result.best_params, result.best_state, result.train_state)):
        assert not leaf.committed, leaf.sharding
    total = jax.jit(lambda p: sum(jnp.sum(a) for a in jax.tree.leaves(p)))
    total(result.best_params), total(create_train_state(MLP(), adam, 0, (16, 8, 8, 1)).params)
    assert total._cache_size() == 1

    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[1]["val_acc"] == pytest.approx(h["val_acc"][1])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ts, config, extra = load_checkpoint(tmp_path / "checkpoint", result.train_state)
    tree_equal(ts.params, result.train_state.params)
    assert config["batch_size"] == 32 and extra["epoch"] == 3


def test_early_stopping(small, tmp_path):
    # a negligible learning rate: the validation accuracy never improves after epoch 1 (Adam at batch 32:
    # the rate lives in the optimizer state, so this is test_fit_history_...'s compiled step)
    opt = make_optimizer("adam", 1e-12)
    result = fit(MLP(), small, optimizer=opt, epochs=10, batch_size=32, key=0,
                 early_stopping_patience=2, progress=False, out_dir=tmp_path)
    assert result.stopped_early and result.history["epoch"] == [1, 2, 3] and result.best_epoch == 1
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 3
    # resuming a run that stopped early changes nothing
    again = fit(MLP(), small, optimizer=opt, epochs=10, batch_size=32, key=0,
                early_stopping_patience=2, progress=False, out_dir=tmp_path, resume=True)
    assert again.stopped_early and again.history["epoch"] == [1, 2, 3]


def test_a_callback_stops_training_cleanly(small, adam, tmp_path):
    """StopTraining from on_step ends the epoch after that step (its row, validation and
    checkpoint still written); from on_epoch, no further epoch runs; resuming trains no more."""
    from jaxnet.train import StopTraining, read_checkpoint

    # MLP(), the module's Adam, batch 32: test_fit_history_...'s compiled steps
    kw = dict(optimizer=adam, epochs=5, batch_size=32, key=0, progress=False)
    steps_per_epoch = num_batches(203, 32)

    class StopAtStep:
        def __init__(self):
            self.seen, self.epochs = [], []

        def on_step(self, info):
            self.seen.append((info["epoch"], info["step"], int(info["train_state"].step)))
            if (info["epoch"], info["step"]) == (2, 3):
                raise StopTraining("enough")

        def on_epoch(self, info):
            self.epochs.append((info["epoch"], info["stopped_early"], int(info["train_state"].step)))

    cb = StopAtStep()
    res = fit(MLP(), small, callbacks=[cb], out_dir=tmp_path, **kw)
    assert res.stopped_early and res.history["epoch"] == [1, 2]
    assert cb.seen[-1] == (2, 3, steps_per_epoch + 3) and len(cb.seen) == steps_per_epoch + 3
    assert int(res.train_state.step) == steps_per_epoch + 3
    assert cb.epochs == [(1, False, steps_per_epoch), (2, True, steps_per_epoch + 3)]
    assert np.isfinite(res.history["val_acc"][1]) and res.best_epoch in (1, 2)
    _, _, extra, _ = read_checkpoint(tmp_path / "checkpoint")
    assert extra["epoch"] == 2 and extra["stopped_early"]
    again = fit(MLP(), small, resume=True, out_dir=tmp_path, **kw)
    assert again.stopped_early and again.history["epoch"] == [1, 2]
    assert int(again.train_state.step) == steps_per_epoch + 3

    class StopAfterEpoch:
        def on_epoch(self, info):
            if info["epoch"] == 3:
                raise StopTraining

    res = fit(MLP(), small, callbacks=[StopAfterEpoch()], **kw)
    assert res.stopped_early and res.history["epoch"] == [1, 2, 3]
    assert int(res.train_state.step) == 3 * steps_per_epoch
    # without a stop the same run goes on to `epochs`; the first epochs are the same
    full = fit(MLP(), small, **kw)
    assert not full.stopped_early and full.history["epoch"] == [1, 2, 3, 4, 5]
    assert full.history["train_loss"][:3] == res.history["train_loss"]


def test_resume_is_bit_exact_after_a_crash(small, adam, tmp_path, monkeypatch):
    model = MLP(dropout=0.2)            # with dropout, at batch 16: test_no_retrace_...'s program
    kw = dict(optimizer=adam, batch_size=16, key=7, progress=False)
    full = fit(model, small, epochs=4, **kw)

    # crash during epoch 3's validation: the last checkpoint is epoch 2's
    calls = {"n": 0}
    real_eval = fit_module._run_eval

    def crashing_eval(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt("simulated crash")
        return real_eval(*args, **kwargs)

    monkeypatch.setattr(fit_module, "_run_eval", crashing_eval)
    with pytest.raises(KeyboardInterrupt):
        fit(model, small, epochs=4, out_dir=tmp_path, checkpoint_every=2, **kw)
    monkeypatch.setattr(fit_module, "_run_eval", real_eval)
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 2
    jax.clear_caches()

    resumed = fit(model, small, epochs=4, out_dir=tmp_path, checkpoint_every=2, resume=True, **kw)
    for a, b in ((resumed.train_state, full.train_state), (resumed.best_params, full.best_params),
                 (resumed.best_state, full.best_state)):
        tree_equal(a, b)
    for k in ("epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"):
        assert resumed.history[k] == full.history[k], k
    assert resumed.best_epoch == full.best_epoch
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]

    with pytest.raises(CheckpointError, match="batch_size=16.*batch_size=32"):
        fit(model, small, epochs=5, out_dir=tmp_path, resume=True,
            **{**kw, "batch_size": 32})


# ----------------------------------------------------------------------------- checkpoints


@pytest.fixture(scope="module")
def trained(small, adam):
    model = MLP()
    ts = create_train_state(model, adam, 1, (16, 8, 8, 1))
    step = make_train_step(model, adam)
    for x, y, m in batches(small.x_train[:48], small.y_train[:48], 16, key=0):
        ts, _ = step(ts, x, y, m)
    return model, ts


def test_checkpoint_round_trip(trained, adam, tmp_path):
    model, ts = trained
    path = tmp_path / "ck"
    save_checkpoint(path, ts, config={"lr": 0.01, "name": "mlp"}, extra={"history": [1.0, 2.0], "note": "x"})
    target = create_train_state(model, adam, 99, (16, 8, 8, 1))
    restored, config, extra = load_checkpoint(path, target)
    tree_equal(restored, ts)
    assert jax.tree.structure(restored) == jax.tree.structure(ts)
    assert int(restored.step) == 3 and restored.step.dtype == jnp.int32
    assert config == {"lr": 0.01, "name": "mlp"} and extra["note"] == "x" and list(extra["history"]) == [1.0, 2.0]
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)

    # typed PRNG keys are stored as key data and re-wrapped
    typed = ts.replace(key=jax.random.key(5))
    save_checkpoint(path, typed, config={})
    back, _, _ = load_checkpoint(path, target.replace(key=jax.random.key(0)))
    assert jnp.issubdtype(back.key.dtype, jax.dtypes.prng_key)
    np.testing.assert_array_equal(jax.random.key_data(back.key), jax.random.key_data(typed.key))


def test_truncated_and_corrupted_checkpoints_are_detected(trained, tmp_path):
    model, ts = trained
    path = tmp_path / "ck"
    save_checkpoint(path, ts, config={"a": 1})
    blob = path.read_bytes()
    bad = tmp_path / "bad"
    for cut in (0, 10, 60, len(blob) // 2, len(blob) - 1):
        bad.write_bytes(blob[:cut])
        with pytest.raises(CheckpointError, match=r"bad.*truncated"):
            load_checkpoint(bad, ts)
    for pos in (0, 9, 13, 20, 50, 100, len(blob) // 2, len(blob) - 1):
        flipped = bytearray(blob)
        flipped[pos] ^= 0x01
        bad.write_bytes(bytes(flipped))
        with pytest.raises(CheckpointError, match="bad"):
            load_checkpoint(bad, ts)
    flipped = bytearray(blob)
    flipped[-1] ^= 0xFF
    bad.write_bytes(bytes(flipped))
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(bad, ts)
    with pytest.raises(CheckpointError, match="missing"):
        load_checkpoint(tmp_path / "missing", ts)


def test_structure_mismatch_says_what_differs(trained, adam, tmp_path):
    model, ts = trained
    path = tmp_path / "ck"
    save_checkpoint(path, ts, config={})
    # targets as jax.ShapeDtypeStruct trees (train_state_like: the shapes, no init compiled): only
    # the structure, shapes and dtypes are compared
    deeper = train_state_like(MLP(depth=3), adam, 0, (16, 8, 8, 1))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path, deeper)
    msg = str(err.value)
    assert "ck" in msg and "missing from the checkpoint: .params['fc3']['w']" in msg
    assert "shape mismatch at .params['fc2']['w']: checkpoint (32, 10), target (32, 32)" in msg
    assert ".opt_state" in msg  # the optimizer's moments differ too

    narrower = train_state_like(MLP(hidden=16), adam, 0, (16, 8, 8, 1))
    with pytest.raises(CheckpointError, match=r"shape mismatch at \.params\['fc1'\]\['w'\]: checkpoint \(64, 32\), target \(64, 16\)"):
        load_checkpoint(path, narrower)
    other_opt = train_state_like(model, make_optimizer("sgd", 0.1), 0, (16, 8, 8, 1))
    with pytest.raises(CheckpointError, match="unexpected in the checkpoint: .opt_state"):
        load_checkpoint(path, other_opt)


def test_crash_mid_write_keeps_the_old_checkpoint(trained, tmp_path, monkeypatch):
    model, ts = trained
    path = tmp_path / "ck"
    save_checkpoint(path, ts, config={"version": "old"})
    old_bytes = path.read_bytes()
    calls = {"n": 0}
    real_write = checkpoint_module._write

    def dying_write(f, data):
        calls["n"] += 1
        if calls["n"] == 3:  # the payload: write half of it, then die
            f.write(data[: len(data) // 2])
            raise OSError("disk full (simulated)")
        real_write(f, data)

    monkeypatch.setattr(checkpoint_module, "_write", dying_write)
    newer = ts.replace(step=ts.step + 100)
    with pytest.raises(OSError, match="simulated"):
        save_checkpoint(path, newer, config={"version": "new"})
    monkeypatch.setattr(checkpoint_module, "_write", real_write)

    def failing_replace(src, dst):
        raise OSError("rename failed (simulated)")

    monkeypatch.setattr(checkpoint_module.os, "replace", failing_replace)
    with pytest.raises(OSError, match="rename failed"):
        save_checkpoint(path, newer, config={"version": "new"})
    monkeypatch.undo()

    assert path.read_bytes() == old_bytes
    assert sorted(os.listdir(tmp_path)) == ["ck"]  # no partial or temporary file left
    restored, config, _ = load_checkpoint(path, ts)
    assert config == {"version": "old"} and int(restored.step) == int(ts.step)


# ----------------------------------------------------------------------------- data parallelism
# fit on 8 forced host devices equals fit on one: test_parallel.py (one subprocess with its tensor-parallel
# checks, test_data_and_tensor_parallel_on_eight_host_devices_match_one_device)


# ----------------------------------------------------------------------------- sanity checks and curves


def test_initial_loss_check(small, adam):
    # MLP(scale=s)'s initial weights, from MLP()'s (scale 0.05, the program other tests compile) rescaled
    base = create_train_state(MLP(), adam, 0, (16, 8, 8, 1))
    for scale, small_loss in ((1e-3, True), (3.0, False)):
        params = jax.tree.map(lambda a: a * np.float32(scale / MLP.scale), base.params)
        loss, expected, ok = initial_loss_check(MLP(scale=scale), params, base.state, small.x_val, small.y_val, 10)
        assert expected == pytest.approx(math.log(10))
        if small_loss:
            assert ok and abs(loss - expected) < 1e-3
        else:
            assert not ok and loss > 3


def test_overfit_small_subset_reaches_full_accuracy(digits):
    acc = overfit_small_subset(MLP(hidden=64), digits, n=20, epochs=60, learning_rate=1e-2)
    assert acc == 1.0


def test_plot_history_writes_two_panel_png(tmp_path):
    history = {"epoch": [1, 2, 3], "train_loss": [2.0, 1.0, 0.5], "val_loss": [float("nan")] * 3,
               "train_acc": [0.3, 0.6, 0.8], "val_acc": [0.25, 0.5, None]}
    path = plot_history(history, tmp_path / "sub" / "curves.png")
    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="train_loss"):
        plot_history({"loss": [1.0]}, tmp_path / "x.png")


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_digits_mlp_reaches_high_validation_accuracy(digits, tmp_path):
    result = fit(MLP(hidden=128, dropout=0.1), digits, optimizer=make_optimizer("adam", 3e-3),
                 epochs=40, batch_size=32, key=0, out_dir=tmp_path, early_stopping_patience=10,
                 progress=False)
    assert result.best_val_acc > 0.95
    _, test_acc = evaluate(MLP(hidden=128, dropout=0.1), result.best_params, result.best_state,
                           digits.x_test, digits.y_test, 128)
    assert test_acc > 0.93
