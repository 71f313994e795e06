"""experiments.vit on the embedded digits (no CIFAR-10 needed).

The default suite runs it with ``--smoke`` (300 training and 200 test images, a one-layer
ViT, 2 epochs) and checks the files, the history, the rollout maps and the side-by-side
bookkeeping; the ``--quick`` run and its accuracy claim are marked slow (``make test-slow``).
"""

import json

import numpy as np
import pytest

from conftest import run_quick_experiment
from experiments import vit as exp

pytestmark = pytest.mark.xdist_group("exp_vit")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("vit_smoke")
    return out, run_quick_experiment(exp, out, "--smoke")


def test_smoke_files_and_history(smoke):
    out, results = smoke
    for name in ("results.json", "vit_vs_convnet.png", "attention_rollout.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "vit" and saved["data_source"] == "digits" and saved["smoke"] is True
    v = saved["vit"]
    assert v["recipe"]["epochs"] == 2 and len(v["history"]["test_acc"]) == 2
    assert "patch=2, depth=1" in v["model"] and v["impl"] == "manual"
    assert all(0.0 <= a <= 1.0 for a in v["history"]["test_acc"])
    assert np.all(np.diff(v["history"]["cum_train_time_s"]) > 0)
    assert v["history"]["train_loss"][-1] < v["history"]["train_loss"][0]      # it learns
    assert saved["convnet_at_equal_time"] is None                              # digits: no convnet curve


def test_rollout_maps_are_normalised_patch_grids():
    from jaxnet.data import load_digits
    from types import SimpleNamespace

    import jax

    args = SimpleNamespace(patch=2, depth=2, features=8, heads=2, ff_hidden=16, pool="mean", impl="manual")
    model = exp.build_model(args)
    x = np.asarray(load_digits(seed=0).x_test[:3], np.float32)
    # any weights will do: the shapes of init's, drawn by NumPy (an eager init compiles every small op)
    rng = np.random.default_rng(0)
    shapes, _ = jax.eval_shape(lambda k: model.init(k, x.shape), jax.random.key(0))
    params = jax.tree.map(lambda a: (0.3 * rng.standard_normal(a.shape)).astype(a.dtype), shapes)
    maps = exp.rollout_maps(model, params, x)
    assert maps.shape == (3, 4, 4)
    np.testing.assert_allclose(maps.max(axis=(1, 2)), 1.0, rtol=1e-6)
    assert np.all(maps > 0)


def test_convnet_at_equal_time():
    conv = {"history": {"test_acc": [0.5, 0.6, 0.7], "cum_train_time_s": [60, 120, 180]}}
    assert exp._convnet_at(conv, 130) == {"test_acc": 0.6, "minutes": 2.0}
    assert exp._convnet_at(conv, 30)["test_acc"] is None


@pytest.mark.slow
def test_quick_run_learns_the_digits(tmp_path):
    res = run_quick_experiment(exp, tmp_path)
    assert res["vit"]["final"] > 0.5


@pytest.mark.parametrize("flags, message", [
    (["--depth", "0"], "depth"),
    (["--heads", "7"], "divisible by num_heads=7"),
    (["--patch", "3"], "patch=3 must divide"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr"),
    (["--label-smoothing", "1.5"], "--label-smoothing"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        exp.main(["--smoke", "--out", str(tmp_path), *flags])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("experiments.vit: ") and message in err[0], err
