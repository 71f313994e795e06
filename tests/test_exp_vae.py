"""experiments.vae on the embedded digits (no CIFAR-10 needed for the default suite).

The default suite runs it once with ``--smoke`` (300 binarised training digits, a one-layer MLP
VAE with a 2-D latent, 2 epochs) and checks the files, the history, the bounds'
bookkeeping and the baseline; the likelihood pieces are checked against closed forms; the
``--quick`` run's claims (the test ELBO beats independent pixels, IWAE is tighter than the ELBO)
and the CIFAR-10 path are marked slow (``make test-slow``).
"""

import json
import math

import numpy as np
import pytest

from cifar_copy import cifar10_or_skip
from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import vae as exp

pytestmark = pytest.mark.xdist_group("exp_vae")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("vae_smoke")
    return out, run_quick_experiment(exp, out, "--smoke", "--no-judge")   # the judge: its own test below


def test_smoke_files_history_and_bounds(smoke):
    out, results = smoke
    for name in ("results.json", "vae_curves.png", "vae_reconstructions.png", "vae_samples.png",
                 "vae_latent_map.png"):
        assert (out / name).stat().st_size > 0, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "vae" and saved["data_source"] == "digits" and saved["smoke"] is True
    assert saved["likelihood"].startswith("bernoulli") and saved["num_dims"] == 64
    h = saved["history"]
    assert h["epoch"] == [1, 2] and len(h["val_nelbo"]) == len(h["test_nelbo"]) == 2
    assert h["train_loss"][-1] < h["train_loss"][0]                           # it learns
    assert np.allclose(np.add(h["train_recon"], h["train_kl"]), h["train_loss"], rtol=1e-5)
    assert saved["best_epoch"] in (1, 2)
    assert saved["best_epoch"] == 1 + int(np.argmin(h["val_nelbo"]))          # kept on validation
    t = saved["test"]
    assert t["iw_samples"] == 1 and all(math.isfinite(t[k]) for k in t)
    assert t["nelbo_nats"] == pytest.approx(t["recon_nats"] + t["kl_nats"], rel=1e-6)
    assert t["bits_per_dim"] == pytest.approx(t["nelbo_nats"] / (64 * math.log(2)), rel=1e-6)
    assert t["kl_nats"] >= 0 and t["recon_nats"] > 0
    b = saved["baseline"]
    assert 0 < b["bits_per_dim"] < 1 and b["nll_nats"] == pytest.approx(b["bits_per_dim"] * 64 * math.log(2))
    assert saved["model"].endswith("latent_dim=2)") and saved["latent2"]["same_as_model"]    # smoke: L = 2, no twin
    assert saved["latent2"]["test"] == t and len(saved["latent2"]["history"]["epoch"]) == 2
    assert set(saved["claims"]) == {"elbo_beats_independent_pixels", "iwae_at_most_elbo"}
    assert saved["sample_stats"]["n"] == 64 and 0 <= saved["sample_stats"]["mean"] <= 1
    assert saved["judge"] is None                                             # --no-judge


def test_judge_rows_score_the_samples_and_real_images_of_the_same_count(monkeypatch):
    from types import SimpleNamespace

    from experiments import _judge
    calls = []

    class FakeJudge:
        test_accuracy = 0.97

        def score(self, images):
            calls.append(("score", images.shape, float(images.mean())))
            return dict.fromkeys(exp.JUDGE_KEYS, float(images.mean()))

        def real_score(self, n):
            calls.append(("real", n))
            return dict.fromkeys(exp.JUDGE_KEYS, -1.0)

    monkeypatch.setattr(_judge, "load_judge", lambda source, args: FakeJudge())
    samples, real = np.full((5, 8, 8, 1), 0.25), np.ones((9, 8, 8, 1))
    j = exp.judge_scores(SimpleNamespace(seed=0), "digits", samples, "s", ("binarised", real))
    assert j["n"] == 5 and [r["images"] for r in j["rows"]][::2] == ["s", "binarised"]
    assert calls == [("score", (5, 8, 8, 1), 0.25), ("real", 5), ("score", (5, 8, 8, 1), 1.0)]
    assert j["rows"][0]["frechet"] == 0.25 and j["classifier_test_accuracy"] == 0.97
    assert exp.judge_scores(SimpleNamespace(seed=0, no_judge=True), "digits", samples, "s") is None


def test_bernoulli_logp_is_the_librarys_cross_entropy():
    import jax

    from jaxnet import functional as F
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (5, 8, 8, 1)).astype(np.float32)
    x = (rng.random((5, 8, 8, 1)) < 0.4).astype(np.float32)
    mine, lib = jax.jit(lambda lg, x: (exp.bernoulli_logp(lg, x), F.sigmoid_cross_entropy(lg, x)))(logits, x)
    assert mine.shape == (5,) and -float(np.mean(mine)) == pytest.approx(float(lib), rel=1e-5)


def test_discretized_logistic_is_a_distribution_over_256_levels():
    import jax
    grid = (np.arange(256, dtype=np.float32) / 127.5 - 1.0).reshape(256, 1, 1, 1)
    logp = jax.jit(exp.discretized_logistic_logp)                          # one program for the three cases
    # a narrow logistic inside, one past the bottom edge (the edge bin takes the tail), a wide one
    for mean, log_scale, mode in ((0.1, -4.0, 0.1), (-1.2, -3.0, -1.0), (0.3, -2.5, 0.3)):
        lp = np.asarray(logp(grid, np.full_like(grid, mean), np.float32(log_scale)))
        assert lp.shape == (256,)
        assert np.exp(lp.astype(np.float64)).sum() == pytest.approx(1.0, abs=2e-4)
        assert abs(grid.ravel()[np.argmax(lp)] - mode) <= 1.0 / 255         # the mode is the mean's bin


def test_independent_pixel_baselines():
    x_train = np.array([[1, 0], [1, 1], [0, 0]], np.float32).reshape(3, 1, 2, 1)
    x_test = np.array([[1, 0]], np.float32).reshape(1, 1, 2, 1)
    p = np.array([3 / 5, 2 / 5])                        # (ones + 1) / (n + 2)
    assert exp.independent_bernoulli_nll(x_train, x_test) == pytest.approx(-(np.log(p[0]) + np.log(1 - p[1])))
    every_level = np.repeat(np.arange(256, dtype=np.uint8)[:, None], 3, axis=1).reshape(256, 1, 1, 3)
    assert exp.independent_histogram_nll(every_level, every_level[:7]) == pytest.approx(3 * math.log(256))
    assert np.array_equal(exp.binarize(np.array([0.0, 7 / 16, 0.5, 1.0])), [0, 0, 1, 1])


@pytest.mark.slow
def test_quick_run_beats_independent_pixels(tmp_path):
    res = run_quick_experiment(exp, tmp_path)
    assert res["claims"]["elbo_beats_independent_pixels"], (res["test"], res["baseline"])
    assert res["claims"]["iwae_at_most_elbo"]
    j = res["judge"]                                   # the real judge (experiments/_judge.py)
    assert j["n"] == 270 and len(j["rows"]) == 3 and all(math.isfinite(r["frechet"]) for r in j["rows"])
    assert res["test"]["nelbo_nats"] < res["baseline"]["nll_nats"] - 5          # by a margin, nats per image
    assert not res["latent2"]["same_as_model"] and res["latent2"]["model"].endswith("latent_dim=2)")
    assert res["latent2"]["test"]["nelbo_nats"] > res["test"]["nelbo_nats"]     # 2 latents fit worse than 16


@pytest.mark.slow
def test_cifar_smoke_run(tmp_path):
    path = cifar10_or_skip()
    res = exp.main(["--smoke", "--data", "cifar10", "--data-dir", path, "--out", str(tmp_path)])
    assert res["data_source"] == "cifar10" and res["num_dims"] == 3072
    assert 0 < res["test"]["bits_per_dim"] < 16 and 5 < res["baseline"]["bits_per_dim"] < 8.5
    assert (tmp_path / "vae_samples.png").stat().st_size > 0 and not (tmp_path / "vae_latent_map.png").exists()


@pytest.mark.parametrize("flags, message", [
    (["--data", "mnist"], "--data must be one of digits, cifar10"),
    (["--model", "resnet"], "--model must be one of mlp, conv"),
    (["--epochs", "0"], "--epochs"),
    (["--lr", "-1"], "--lr must be a finite number > 0"),
    (["--hidden", "64,0"], "--hidden must be comma-separated positive ints"),
    (["--iw-samples", "0"], "--iw-samples must be >= 1"),
    (["--model", "conv", "--channels", "8,8,8,8"], "need H divisible by 16"),
    (["--data", "cifar10", "--data-dir", "/nonexistent/cifar"], "CIFAR-10 not found"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
