"""experiments.cifar_race: the PyTorch run replays jaxnet's run exactly (augmentation draws,
initial weights, first step), and the smoke run on a small CIFAR-10 in the official python
format that the test writes (random images: what is checked is the bookkeeping and the replay,
not an accuracy).

The torch-side tests need the ``bench`` extra (torch) and skip without it, saying so; the
jaxnet side, the draws and the bad settings run everywhere."""

import json

import jax
import numpy as np
import pytest

from experiments import cifar_race as race
from test_data import _official_tree

pytestmark = pytest.mark.xdist_group("exp_cifar_race")


def _oracle_augment(x, offsets, flips, padding):
    """NumPy: zero-pad, crop at each image's offsets, mirror where flips."""
    n, h, w, _ = x.shape
    padded = np.pad(x, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    out = np.stack([padded[i, o[0]:o[0] + h, o[1]:o[1] + w] for i, o in enumerate(offsets)])
    return np.where(np.asarray(flips)[:, None, None, None], out[:, :, ::-1], out)


def test_augment_draws_are_what_the_train_step_draws():
    """The augmented batches inside make_train_step's jitted step (captured with a debug
    callback) equal the NumPy crop/flip of augment_draws' offsets and flips, step after step."""
    import optax

    from jaxnet.data import augment
    from jaxnet.nn import fast_convnet
    from jaxnet.train import create_train_state, make_train_step

    seen = []

    def spy(key, x):
        out = augment(key, x, crop_padding=2, flip=True)
        jax.debug.callback(lambda a: seen.append(np.asarray(a)), out)
        return out

    model = fast_convnet(stem=4, widths=(8,))
    ts = create_train_state(model, optax.sgd(0.01), 3, (6, 8, 8, 3))
    offsets, flips = race.augment_draws(ts.key, 3, 6, 2)
    assert offsets.shape == (3, 6, 2) and flips.shape == (3, 6)
    assert offsets.min() >= 0 and offsets.max() <= 4 and 0 < flips.sum() < flips.size
    step = make_train_step(model, optax.sgd(0.01), augment_fn=spy)
    x = np.random.default_rng(0).standard_normal((6, 8, 8, 3)).astype(np.float32)
    y, mask = np.zeros(6, np.int32), np.ones(6, np.float32)
    for _ in range(3):
        ts, m = step(ts, x, y, mask)
        jax.block_until_ready(m)
    assert len(seen) == 3
    for t in range(3):
        np.testing.assert_array_equal(seen[t], _oracle_augment(x, offsets[t], flips[t], 2))


@pytest.mark.parametrize("argv, needle", [
    (["--target", "0"], "--target must be an accuracy in (0, 1], got 0.0"),
    (["--target", "1.5"], "--target must be an accuracy in (0, 1], got 1.5"),
    (["--epochs", "0"], "--epochs must be >= 1, got 0"),
    (["--threads", "0"], "--threads must be >= 1, got 0"),
])
def test_bad_settings_one_line(argv, needle, capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        race.main(["--framework", "jaxnet", "--out", str(tmp_path), *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err == f"experiments.cifar_race: {needle}"


def test_unknown_torch_malloc_is_an_argparse_error(capsys, tmp_path):
    with pytest.raises(SystemExit) as e:
        race.main(["--framework", "jaxnet", "--torch-malloc", "tcmalloc", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "argument --torch-malloc: invalid choice: 'tcmalloc'" in capsys.readouterr().err


def test_torch_run_without_torch_one_line(monkeypatch, capsys, tmp_path):
    import sys
    monkeypatch.setitem(sys.modules, "torch", None)   # import torch raises ImportError
    with pytest.raises(SystemExit) as e:
        race.main(["--framework", "torch", "--out", str(tmp_path)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("experiments.cifar_race: the PyTorch run needs torch") and "\n" not in err


def test_missing_data_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.delenv("JAXNET_CIFAR10_DIR", raising=False)
    with pytest.raises(SystemExit) as e:
        race.main(["--framework", "jaxnet", "--smoke", "--out", str(tmp_path)])
    assert e.value.code == 2
    assert "CIFAR-10 not found" in capsys.readouterr().err


# ---------------------------------------------------------------- torch side (bench extra)

@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is in the bench extra (make bench): the PyTorch side skips")


def test_torch_augment_matches_the_oracle(torch):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((5, 8, 8, 3)).astype(np.float32)
    offsets, flips = rng.integers(0, 5, (5, 2)), rng.random(5) < 0.5
    got = race.torch_augment(torch, torch.from_numpy(x), offsets, flips, 2).numpy()
    np.testing.assert_array_equal(got, _oracle_augment(x, offsets, flips, 2))


@pytest.mark.parametrize("train", [False, True])
def test_torch_twin_computes_jaxnet_forward(torch, train):
    """The torch twin with jaxnet's initial weights gives jaxnet's logits (eval: running
    statistics; train: batch statistics), float32."""
    from jaxnet.nn import fast_convnet
    model = fast_convnet(stem=8, widths=(16, 32))
    params, state = model.init(jax.random.key(0), (4, 16, 16, 3))
    x = np.random.default_rng(2).standard_normal((4, 16, 16, 3)).astype(np.float32)
    want, _ = model.apply(params, state, x, train=train)
    net, decayed = race.torch_model(torch, jax.device_get(params), jax.device_get(state))
    net.train(train)
    with torch.no_grad():
        got = net(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    np.testing.assert_allclose(got, np.asarray(want), rtol=2e-4, atol=2e-5)
    assert len(decayed) == 6   # five convs and the affine weight: what jaxnet.optim.decay_mask decays


@pytest.fixture(scope="module")
def cifar_tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("cifar_py")
    _official_tree(root, rows=(260, 260, 260, 260, 260), n_test=200)
    return root


@pytest.fixture(scope="module")
def smoke_runs(torch, cifar_tree, tmp_path_factory):
    out = tmp_path_factory.mktemp("race")
    runs = {}
    for fw in race.FRAMEWORKS:
        res = race.main(["--smoke", "--framework", fw, "--data-dir", str(cifar_tree), "--out", str(out / fw)])
        runs[fw] = res["runs"][fw]
    return out, runs


def test_smoke_replay_first_step_and_bookkeeping(smoke_runs):
    out, runs = smoke_runs
    # the same weights, batch, augmentation, learning rate and loss: the same first-step loss
    a, b = runs["jaxnet"]["first_step_loss"], runs["torch"]["first_step_loss"]
    assert np.isfinite(a) and abs(a - b) <= 1e-5 * abs(a), (a, b)
    for fw, r in runs.items():
        h = r["history"]
        assert h["epoch"] == [1] and len(h["test_acc_tta"]) == 1, fw
        assert 0.0 <= h["test_acc"][0] <= 1.0 and h["cum_train_time_s"][0] > 0, fw
        saved = json.loads((out / fw / "results.json").read_text())
        assert saved["runs"][fw]["first_step_loss"] == r["first_step_loss"]


def test_compare_and_plot(smoke_runs, tmp_path):
    _, runs = smoke_runs
    fake = {fw: {"history": {"test_acc_tta": acc, "cum_train_time_s": t}}
            for fw, acc, t in (("jaxnet", [0.5, 0.86], [10.0, 20.0]), ("torch", [0.6, 0.84, 0.9], [15, 30, 45]))}
    c = race.compare(fake, 0.85)
    assert c["time_to_target_s"] == {"jaxnet": 20.0, "torch": 45}
    assert c["speedup_jaxnet_over_torch"] == pytest.approx(2.25)
    assert race.compare(fake, 0.95)["time_to_target_s"] == {"jaxnet": None, "torch": None}
    assert "speedup_jaxnet_over_torch" not in race.compare(fake, 0.95)
    path = race.plot(runs, 0.85, str(tmp_path / "race.png"))
    assert (tmp_path / "race.png").stat().st_size > 0 and path.endswith("race.png")
