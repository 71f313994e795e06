"""experiments.pixelcnn on the embedded binarised digits.

The default suite runs it once with ``--smoke`` (300 training images, one hidden masked layer
of 8 features, 2 epochs) and checks the files, the history, the NLL bookkeeping, the samples
and the baseline; the ``--quick`` run's claim (the PixelCNN's test NLL beats independent
pixels) is marked slow (``make test-slow``).
"""

import json
import math

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import pixelcnn as exp

pytestmark = pytest.mark.xdist_group("exp_pixelcnn")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("pixelcnn_smoke")
    return out, run_quick_experiment(exp, out, "--smoke", "--no-judge")   # the judge: tests/test_exp_vae.py


def test_smoke_files_history_and_nll(smoke):
    out, results = smoke
    for name in ("results.json", "pixelcnn_curves.png", "pixelcnn_samples.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "pixelcnn" and saved["smoke"] is True and saved["num_dims"] == 64
    assert saved["model"] == "pixelcnn(features=8, num_layers=1, kernel=7, hidden_kernel=3)"
    h = saved["history"]
    assert h["epoch"] == [1, 2] and len(h["val_nll"]) == len(h["test_nll"]) == 2
    assert h["train_nll"][-1] < h["train_nll"][0]                          # it learns
    assert saved["best_epoch"] == 1 + int(np.argmin(h["val_nll"]))         # kept on validation
    assert saved["val_nll_nats"] == pytest.approx(min(h["val_nll"]), rel=1e-6)
    t = saved["test"]
    assert t["nll_nats"] == pytest.approx(h["test_nll"][saved["best_epoch"] - 1], rel=1e-5)
    assert t["bits_per_dim"] == pytest.approx(t["nll_nats"] / (64 * math.log(2)), rel=1e-6)
    assert 0 < saved["baseline"]["bits_per_dim"] < 1
    s = saved["samples"]
    assert s["n"] == 64 and s["binary"] and 0 < s["mean"] < 1
    assert saved["vae_reference"] is None and saved["judge"] is None
    assert "beats_independent_pixels" in saved["claims"]


def test_vae_reference_needs_a_digits_run_of_the_same_seed(tmp_path):
    run = {"data_source": "digits", "seed": 0, "model": "mlp_vae(...)",
           "test": {"nelbo_nats": 20.0, "bits_per_dim": 0.45, "iwae_nll_nats": 19.0, "iwae_bits_per_dim": 0.43,
                    "iw_samples": 500}}
    path = tmp_path / "vae.json"
    path.write_text(json.dumps(run))
    ref = exp.vae_reference(str(path), 0)
    assert ref["nelbo_nats"] == 20.0 and ref["iw_samples"] == 500
    assert exp.vae_reference(str(path), 1) is None
    path.write_text(json.dumps({**run, "data_source": "cifar10"}))
    assert exp.vae_reference(str(path), 0) is None
    assert exp.vae_reference(str(tmp_path / "missing.json"), 0) is None


@pytest.mark.slow
def test_quick_run_beats_independent_pixels(tmp_path):
    res = run_quick_experiment(exp, tmp_path)
    assert res["claims"]["beats_independent_pixels"], (res["test"], res["baseline"])
    assert res["test"]["nll_nats"] < res["baseline"]["nll_nats"] - 5            # by a margin, nats per image
    assert res["samples"]["binary"] and res["samples"]["n"] == 270
    j = res["judge"]                                   # the real judge (experiments/_judge.py)
    assert j["n"] == 270 and [r["images"] for r in j["rows"]][0] == "PixelCNN samples (binary)"


@pytest.mark.parametrize("flags, message", [
    (["--epochs", "0"], "--epochs must be >= 1"),
    (["--features", "0"], "--features must be >= 1"),
    (["--layers", "-1"], "--layers must be >= 0"),
    (["--kernel", "4"], "--kernel must be an odd int"),
    (["--hidden-kernel", "0"], "--hidden-kernel must be an odd int"),
    (["--lr", "nan"], "--lr must be a finite number > 0"),
    (["--samples", "0"], "--samples must be >= 1"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
