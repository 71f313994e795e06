"""experiments.segmentation on the digit scenes (no CIFAR-10 needed).

The default suite runs it with ``--smoke`` (48 scenes of 32x32, width 4, one conv per stage, 2 epochs) and checks the
files, the bookkeeping and that both variants learn; the ``--quick`` run and its claim (both
variants beat the all-background floor) are marked slow (``make test-slow``).
"""
import json

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import segmentation as exp

pytestmark = pytest.mark.xdist_group("exp_segmentation")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("segmentation_smoke")
    return out, run_quick_experiment(exp, out, "--smoke")


def test_smoke_files_and_results(smoke):
    out, results = smoke
    for name in ("results.json", "segmentation_masks.png", "segmentation_curves.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "segmentation" and saved["smoke"] is True
    assert saved["data"] == {"n_train": 48, "n_val": 16, "n_test": 16, "size": 32, "num_classes": 11,
                             "source": "digits"}
    k = 11
    # the learned variant has exactly the two C x C 4x4 transposed-conv filter banks (and biases) more
    assert saved["learned"]["n_params"] - saved["bilinear"]["n_params"] == 2 * (16 * k * k + k)
    for v in exp.VARIANTS:
        r = saved[v]
        assert len(r["history"]["train_loss"]) == 2 and len(r["history"]["val_miou"]) == 2
        assert r["history"]["train_loss"][-1] < r["history"]["train_loss"][0], v      # it learns
        assert 0.0 <= r["miou"] <= 1.0 and 0.0 <= r["pixel_accuracy"] <= 1.0
        assert len(r["per_class_iou"]) == k
        assert np.all(np.diff(r["history"]["cum_train_time_s"]) > 0)
    w = np.asarray(saved["class_weights"])
    assert w.shape == (k,) and np.argmin(w) == 0                  # the background, most frequent, weighs least
    floor = saved["floor_all_background"]
    # predicting background everywhere: IoU 0 for every digit class present, so mIoU = background IoU / classes seen
    assert 0.0 < floor["miou"] < 0.5 < floor["pixel_accuracy"] < 1.0
    assert saved["claims"]["learned_minus_bilinear_miou"] == pytest.approx(
        saved["learned"]["miou"] - saved["bilinear"]["miou"])


def test_bilinear_kernel_is_bilinear_upsampling_away_from_the_border():
    import jax
    import jax.numpy as jnp

    from jaxnet import functional as F

    x = np.random.default_rng(0).standard_normal((1, 5, 6, 3)).astype(np.float32)
    w = exp.bilinear_kernel(3)

    @jax.jit
    def both(v):
        return (F.conv2d_transpose(v, jnp.asarray(w), stride=2, padding=1),
                F.upsample_bilinear(v, scale=2))

    t, b = (np.asarray(a) for a in both(jnp.asarray(x)))
    assert t.shape == b.shape == (1, 10, 12, 3)
    np.testing.assert_allclose(t[:, 1:-1, 1:-1], b[:, 1:-1, 1:-1], rtol=1e-5, atol=1e-6)
    assert not np.allclose(t[:, 0], b[:, 0])          # the border: zero padding vs clamping


def test_class_weights_average_one_per_pixel():
    sem = np.array([[0, 0, 0, 1], [0, 0, 2, 2]])
    w = exp.class_weights(sem, 4)
    freq = np.array([5, 1, 2, 0]) / 8
    np.testing.assert_allclose(np.sum(freq * w), 1.0, rtol=1e-6)
    np.testing.assert_allclose(w[1] / w[0], np.sqrt(5), rtol=1e-6)
    assert w[3] == w[1]                                           # unseen: the rarest seen class's weight
    np.testing.assert_array_equal(exp.class_weights(sem, 4, "none"), np.ones(4))


@pytest.mark.slow
def test_quick_run_beats_the_all_background_floor(tmp_path):
    res = run_quick_experiment(exp, tmp_path)
    assert res["claims"]["both_beat_the_all_background_floor"]
    for v in exp.VARIANTS:
        assert res[v]["miou"] > 2 * res["floor_all_background"]["miou"], v


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--n-train", "0"], "--n-train must be >= 1"),
    (["--width", "0"], "--width must be >= 1"),
    (["--convs", "0"], "--convs must be >= 1"),
    (["--batch-size", "-2"], "--batch-size must be >= 1"),
    (["--size", "30"], "--size must be a multiple of 4 in [32, 512]"),
    (["--size", "1024"], "--size must be a multiple of 4"),
    (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
