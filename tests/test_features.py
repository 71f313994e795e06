"""Image features (jaxnet.classic.features) and the two feature/MLP experiments' smoke tests
(on the embedded digits always, on CIFAR-10 when a copy exists)."""
from __future__ import annotations

import json
import os
from functools import partial
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.classic.features import (
    color_histogram_hsv,
    extract_features,
    feature_dataset,
    fit_feature_normalizer,
    hog_features,
    rgb_to_gray,
    rgb_to_hsv,
)
from jaxnet.data import Dataset
from cifar_copy import cifar10_or_skip
from conftest import run_quick_experiment

REPO = Path(__file__).resolve().parents[1]


def _rng_images(n, h=32, w=32, seed=0, dtype=np.uint8):
    rng = np.random.default_rng(seed)
    if dtype == np.uint8:
        return rng.integers(0, 256, (n, h, w, 3)).astype(np.uint8)
    return rng.random((n, h, w, 3)).astype(dtype)


# ------------------------------------------------------------------ HOG

def test_hog_shape_and_dtype():
    x = _rng_images(3)
    f = hog_features(x)
    assert f.shape == (3, 144) and f.dtype == jnp.float32
    assert hog_features(_rng_images(2, 40, 24)).shape == (2, 5 * 3 * 9)  # partial cells dropped
    assert hog_features(x, cell_size=4).shape == (3, 64 * 9)
    assert hog_features(x[..., :1]).shape == (3, 144)                   # one grey channel
    assert np.all(np.asarray(f) >= 0)


def test_hog_constant_image_is_zero():
    x = np.full((2, 32, 32, 3), 137, np.uint8)
    assert np.all(np.asarray(hog_features(x)) == 0)


@pytest.mark.parametrize("bright_left", [True, False])
def test_hog_vertical_edge_lands_in_the_90_degree_bin(bright_left):
    # intensity changes along x only: gx != 0, gy = 0 -> edge direction 90 deg -> bin 4 of 9,
    # whichever side is bright (unsigned orientations)
    x = np.zeros((1, 32, 32, 3), np.float32)
    if bright_left:
        x[:, :, :13] = 200.0
    else:
        x[:, :, 13:] = 200.0
    f = np.asarray(hog_features(x)).reshape(4, 4, 9)        # (cell_row, cell_col, bin)
    # the step from column 12 to 13 lies in cell column 1 (pixels 8..15), every cell row
    assert np.all(f[:, 1, 4] > 0)
    assert np.count_nonzero(f) == 4
    np.testing.assert_allclose(f[:, 1, 4], 200.0 * 8 / 64, rtol=1e-5)   # one pixel per cell row, mean of 64


def test_hog_horizontal_edge_and_course_compat_drop():
    x = np.zeros((1, 32, 32, 3), np.float32)
    x[:, 20:] = 100.0                                      # gy != 0, gx = 0 -> edge at 0 degrees: bin 0
    f = np.asarray(hog_features(x)).reshape(4, 4, 9)
    assert np.all(f[2, :, 0] > 0) and np.count_nonzero(f) == 4
    assert np.array_equal(np.asarray(hog_features(100.0 - x)), np.asarray(hog_features(x)))  # unsigned
    # a bright-left vertical edge has gx < 0 at the step: the course's code drops it
    y = np.zeros((1, 32, 32, 3), np.float32)
    y[:, :, :13] = 200.0
    assert np.all(np.asarray(hog_features(y, course_compat=True)) == 0)
    assert np.asarray(hog_features(y)).sum() > 0


def _course_hog(im):
    """The course's hog_feature (numpy, one image), with the 0.114 blue weight."""
    from scipy.ndimage import uniform_filter

    image = np.dot(im[..., :3], [0.299, 0.587, 0.114])
    sx, sy = image.shape
    gx, gy = np.zeros(image.shape), np.zeros(image.shape)
    gx[:, :-1] = np.diff(image, n=1, axis=1)
    gy[:-1, :] = np.diff(image, n=1, axis=0)
    mag = np.sqrt(gx ** 2 + gy ** 2)
    ori = np.arctan2(gy, gx + 1e-15) * (180 / np.pi) + 90
    hist = np.zeros((sx // 8, sy // 8, 9))
    for i in range(9):
        t = np.where(ori < 20 * (i + 1), ori, 0)
        t = np.where(ori >= 20 * i, t, 0)
        hist[:, :, i] = uniform_filter(np.where(t > 0, mag, 0), size=(8, 8))[4::8, 4::8].T
    return hist.ravel()


def test_hog_course_compat_matches_the_course_code():
    x = _rng_images(3, dtype=np.float32) * 255.0         # continuous values: no ties at bin edges
    # In the last column gx = 0 and the course's float64 atan2(gy, 1e-15) + 90 rounds to 180 or
    # to 180 - ulp depending on gy, keeping or dropping the pixel at random: make it flat there.
    x[:, :, -1] = 128.0
    ref = np.stack([_course_hog(i.astype(np.float64)) for i in x])
    ours = np.asarray(hog_features(x, course_compat=True)).reshape(3, 4, 4, 9).transpose(0, 2, 1, 3).reshape(3, -1)
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-3)


# ------------------------------------------------------------------ colour

def test_rgb_to_hsv_matches_matplotlib():
    import matplotlib.colors

    x = _rng_images(4, 8, 8)
    x[0, 0, 0] = (0, 0, 0)
    x[0, 0, 1] = (50, 50, 50)
    x[0, 0, 2] = (200, 200, 10)                          # red/green tie for max
    ours = np.asarray(rgb_to_hsv(x))
    ref = matplotlib.colors.rgb_to_hsv(x / 255.0)
    np.testing.assert_allclose(ours[..., :2], ref[..., :2], atol=1e-5)
    np.testing.assert_allclose(ours[..., 2] / 255.0, ref[..., 2], atol=1e-6)
    np.testing.assert_allclose(np.asarray(rgb_to_gray(x[:1, :1, :1])), [[[0.0]]], atol=0)


def test_hsv_histogram_sums_to_one_and_red_is_bin_zero():
    x = _rng_images(5)
    h = np.asarray(color_histogram_hsv(x))
    assert h.shape == (5, 10)
    np.testing.assert_allclose(h.sum(axis=1), 1.0, rtol=1e-6)
    red = np.zeros((1, 32, 32, 3), np.uint8)
    red[..., 0] = 255
    np.testing.assert_array_equal(np.asarray(color_histogram_hsv(red))[0], np.eye(10)[0])
    blue = np.zeros((1, 4, 4, 3), np.float32)
    blue[..., 2] = 1.0                                    # hue 2/3 -> bin 6 of 10
    assert int(np.argmax(color_histogram_hsv(blue, nbins=10))) == 6
    assert color_histogram_hsv(x, nbins=25).shape == (5, 25)


def test_hsv_histogram_matches_the_course_code():
    import matplotlib.colors

    x = _rng_images(3, dtype=np.float32) * 255.0
    ref = []
    for im in x:
        bins = np.linspace(0, 255, 11)
        hsv = matplotlib.colors.rgb_to_hsv(im / 255) * 255
        hist, edges = np.histogram(hsv[:, :, 0], bins=bins, density=True)
        ref.append(hist * np.diff(edges))
    np.testing.assert_allclose(np.asarray(color_histogram_hsv(x)), np.stack(ref), atol=1e-6)


# ------------------------------------------------------------------ batching, jit, normalisation

def test_jit_and_batching_equal_unbatched():
    x = _rng_images(7)
    full = extract_features(x, batch_size=100)
    assert full.shape == (7, 154) and full.dtype == np.float32
    np.testing.assert_allclose(extract_features(x, batch_size=3), full, rtol=1e-6, atol=1e-6)
    one_by_one = np.concatenate([extract_features(x[i:i + 1]) for i in range(7)])
    np.testing.assert_allclose(one_by_one, full, rtol=1e-6, atol=1e-6)
    jitted = jax.jit(lambda a: jnp.concatenate([hog_features(a), color_histogram_hsv(a)], axis=1))
    np.testing.assert_allclose(np.asarray(jitted(jnp.asarray(x))), full, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(np.asarray(jax.vmap(lambda im: hog_features(im[None])[0])(jnp.asarray(x))),
                               full[:, :144], rtol=1e-6, atol=1e-6)
    custom = extract_features(x, (partial(color_histogram_hsv, nbins=4),), batch_size=4)
    assert custom.shape == (7, 4)


def test_feature_normalisation_uses_train_stats_only():
    rng = np.random.default_rng(0)
    train = rng.normal(3.0, 2.0, (200, 5)).astype(np.float32)
    train[:, 4] = 7.0                                     # constant column: std replaced by 1
    test = rng.normal(-50.0, 9.0, (30, 5)).astype(np.float32)
    norm = fit_feature_normalizer(train)
    z = norm.apply(train)
    np.testing.assert_allclose(z[:, :4].mean(0), 0, atol=1e-5)
    np.testing.assert_allclose(z[:, :4].std(0), 1, atol=1e-5)
    assert np.all(z[:, 4] == 0)
    np.testing.assert_allclose(norm.apply(test), (test - train.mean(0)) / np.where(train.std(0) > 0, train.std(0), 1),
                               rtol=1e-4, atol=1e-4)
    assert fit_feature_normalizer(train, bias=True).apply(test).shape == (30, 6)
    assert np.all(fit_feature_normalizer(train, bias=True).apply(test)[:, -1] == 1)

    # feature_dataset: the statistics come from x_train; changing val/test does not change them
    x = _rng_images(12)
    y = np.arange(12, dtype=np.int32) % 3
    ds = Dataset(x[:8], y[:8], x[8:10], y[8:10], x[10:], y[10:], classes=("a", "b", "c"))
    fds, n1 = feature_dataset(ds, batch_size=5)
    assert fds.x_train.shape == (8, 1, 1, 154) and fds.x_test.shape == (2, 1, 1, 154)
    other = ds.replace(x_val=np.zeros_like(x[8:10]), x_test=np.full_like(x[10:], 255))
    _, n2 = feature_dataset(other, batch_size=5)
    np.testing.assert_array_equal(n1.mean, n2.mean)
    np.testing.assert_array_equal(n1.std, n2.std)
    np.testing.assert_allclose(fds.x_train.reshape(8, -1).mean(0)[n1.std != 1], 0, atol=1e-4)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="NHWC"):
        hog_features(np.zeros((32, 32, 3)))
    with pytest.raises(ValueError, match="NHWC"):
        color_histogram_hsv(np.zeros((2, 32, 32, 1)))
    with pytest.raises(ValueError, match="smaller than one"):
        hog_features(np.zeros((1, 4, 4, 3)))
    with pytest.raises(ValueError, match="batch_size"):
        extract_features(np.zeros((2, 8, 8, 3)), batch_size=0)
    with pytest.raises(ValueError, match=r"\(N, 5\)"):
        fit_feature_normalizer(np.ones((4, 5))).apply(np.ones((4, 6)))


# ------------------------------------------------------------------ experiments on the embedded digits
# The default suite runs each experiment's --smoke (400 training and 200 test images, one search
# trial, 2 epochs) and checks the files and the structure; the --quick runs and their accuracy
# bars are marked slow (`make test-slow`).

def _two_layer_net_files_and_structure(out, returned, n_train, n_test):
    res = json.loads((out / "results.json").read_text())
    assert res["test_acc"] == returned["test_acc"]
    assert res["data_source"] == "digits" and res["quick"] is True
    assert (res["n_train"], res["n_val"], res["n_test"]) == (n_train, 270, n_test)
    hp = res["hyperparameters"]
    assert hp["augment"] == "none" and res["settings"]["augment"] == "none"   # no mirrored digits
    for fig in ("curves", "weights", "search"):
        assert (out / res["figures"][fig]).read_bytes()[:4] == b"\x89PNG"
    return res, hp


def test_two_layer_net_smoke_on_digits(tmp_path):
    from experiments import two_layer_net as exp

    out = tmp_path / "two_layer_net"
    returned = run_quick_experiment(exp, out, "--smoke")
    res, hp = _two_layer_net_files_and_structure(out, returned, 400, 200)
    assert res["smoke"] is True and hp["epochs"] == 2 == len(res["history"]["val_acc"])
    assert res["search"]["epochs_per_trial"] == 2 and len(res["search"]["results"]) == 1
    for key in ("train_acc", "val_acc", "test_acc"):
        assert 0.0 <= res[key] <= 1.0
    assert res["history"]["train_loss"][-1] < res["history"]["train_loss"][0]


@pytest.mark.slow
def test_two_layer_net_quick_on_digits(tmp_path):
    from experiments import two_layer_net as exp

    out = tmp_path / "two_layer_net"
    returned = run_quick_experiment(exp, out)
    res, hp = _two_layer_net_files_and_structure(out, returned, 1257, 270)
    assert hp["epochs"] == 20 == len(res["history"]["val_acc"]) and res["search"]["epochs_per_trial"] == 5
    # measured with seed 0: val 0.948, test 0.944 (seeds 1, 2: test 0.926, 0.900); chance is 0.1
    assert res["val_acc"] >= 0.88 and res["test_acc"] >= 0.88
    assert res["history"]["train_loss"][-1] < 0.5 * res["history"]["train_loss"][0]


def _features_net_files_and_structure(out, returned):
    res = json.loads((out / "results.json").read_text())
    assert res["test_acc"] == returned["test_acc"]
    assert res["data_source"] == "digits" and res["quick"] is True
    # grey 8x8 images: HOG on 2-pixel cells (4 x 4 cells x 9 bins), no hue histogram
    f = res["features"]
    assert f["hog"]["cell_size"] == 2 and f["hog"]["dims"] == 144 and f["hsv_hue_bins"] == 0 and f["dims"] == 144
    for fig in res["figures"].values():
        assert (out / fig).read_bytes()[:4] == b"\x89PNG"
    return res


def test_features_net_smoke_on_digits(tmp_path):
    from experiments import features_net as exp

    out = tmp_path / "features_net"
    returned = run_quick_experiment(exp, out, "--smoke")
    res = _features_net_files_and_structure(out, returned)
    assert res["smoke"] is True and (res["n_train"], res["n_test"]) == (400, 200)
    assert res["hyperparameters"]["epochs"] == 2 == len(res["history"]["val_acc"])
    assert len(res["linear_svm"]["trials"]) == 1 and res["linear_svm"]["num_iters"] == 50
    for key in ("train_acc", "val_acc", "test_acc"):
        assert 0.0 <= res[key] <= 1.0 and 0.0 <= res["linear_svm"][key] <= 1.0


@pytest.mark.slow
def test_features_net_quick_on_digits(tmp_path):
    from experiments import features_net as exp

    out = tmp_path / "features_net"
    returned = run_quick_experiment(exp, out)
    res = _features_net_files_and_structure(out, returned)
    assert res["hyperparameters"]["epochs"] == 20 == len(res["history"]["val_acc"])
    # measured with seed 0: SVM test 0.937, net test 0.911 (seeds 1, 2: SVM 0.959, 0.944; net 0.944, 0.863)
    assert res["linear_svm"]["test_acc"] >= 0.88 and res["linear_svm"]["val_acc"] >= 0.88
    assert res["test_acc"] >= 0.85 and res["val_acc"] >= 0.85


# ------------------------------------------------------------------ experiments (need the CIFAR-10 copy)

def _cifar_dir() -> str:
    return cifar10_or_skip()


def _run_on_cifar(name, tmp_path, capsys, flag):
    import importlib

    data_dir = _cifar_dir()
    mod = importlib.import_module(f"experiments.{name}")
    out = tmp_path / name
    mod.main(["--data-dir", data_dir, flag, "--out", str(out)])
    res = json.loads((out / "results.json").read_text())
    assert res["experiment"] == name and res["quick"] is True and res["seed"] == 0
    for key in ("train_acc", "val_acc", "test_acc"):
        assert 0.0 <= res[key] <= 1.0
    assert res["hyperparameters"]["hidden"] >= 1 and res["wall_time_s"] > 0
    assert len(res["history"]["val_acc"]) == res["hyperparameters"]["epochs"]
    for fig in res["figures"].values():
        assert (out / fig).stat().st_size > 0
    if name == "two_layer_net":
        assert set(res["figures"]) >= {"curves", "weights"}
    else:
        assert res["features"]["dims"] == 154
        assert 0.0 <= res["linear_svm"]["test_acc"] <= 1.0
    assert "test acc" in capsys.readouterr().out
    return res


# the same runs on the embedded digits are in the default suite; on CIFAR-10 they are slow
@pytest.mark.slow
@pytest.mark.parametrize("name", ["two_layer_net", "features_net"])
def test_experiment_smoke(name, tmp_path, capsys):
    res = _run_on_cifar(name, tmp_path, capsys, "--smoke")
    assert res["smoke"] is True and (res["n_train"], res["n_test"]) == (400, 200)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["two_layer_net", "features_net"])
def test_experiment_quick(name, tmp_path, capsys):
    res = _run_on_cifar(name, tmp_path, capsys, "--quick")
    assert res["val_acc"] > 0.15 and res["test_acc"] > 0.15          # above chance even in 2 epochs
