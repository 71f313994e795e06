"""experiments.regularization on the embedded digits (no CIFAR-10 needed): files written, gaps
consistent with the accuracies and the histories, the baseline shared by the sweeps and the
ensemble, regularization lowering the training fit, the ensemble at least as good as the mean
member, the EMA numbers consistent.

The default suite runs ``--smoke`` (300 images, 2 epochs, L2 0 only, dropout 0 / 0.5, 2 members:
every part and figure, four trainings) and checks what holds at any size: the files
and their structure, the bookkeeping (gaps, histories, the shared baseline, the ensemble's and
the EMA's arithmetic, Jensen for the ensemble's NLL) and that every run's loss goes down. The
``--quick`` run (seven trainings of 12 epochs) and its claims about the numbers are marked slow
(``make test-slow``)."""

import json
import math

import numpy as np
import pytest

from conftest import run_quick_experiment
from experiments import regularization as exp


# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker, so its runs (module
# fixtures) are built once; groups are handed out before single tests.
pytestmark = pytest.mark.xdist_group("exp_regularization")

FIGURES = ("regularization_sweeps.png", "regularization_gap.png", "regularization_ensemble.png")


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("regularization_smoke")
    results = run_quick_experiment(exp, out, "--smoke")
    return results, out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("regularization")
    results = run_quick_experiment(exp, out)
    return results, out


def test_smoke_run_files_bookkeeping_and_shared_baseline(smoke_run):
    results, out = smoke_run
    for name in ("results.json", *FIGURES):
        assert (out / name).is_file() and (out / name).stat().st_size > 10_000, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "regularization" and saved["quick"] is True and saved["smoke"] is True
    assert saved["data_source"] == "digits"
    p = saved["protocol"]
    assert (p["n_train"], p["epochs"], p["members"]) == (300, 2, 2)
    assert [e["value"] for e in saved["sweeps"]["l2"]] == p["l2_values"] == [0.0]
    assert [e["value"] for e in saved["sweeps"]["dropout"]] == p["dropout_values"] == [0.0, 0.5]
    assert [e["value"] for e in saved["sweeps"]["augment"]] == [False, True]
    assert p["augment"] == {"crop_padding": 1, "flip": False}
    assert saved["figures"] == {k: f"regularization_{k}.png" for k in ("sweeps", "gap", "ensemble")}
    # baseline, dropout, augment, 1 more ensemble member
    assert set(saved["runs"]) == {"baseline", "dropout=0.5", "augment", "seed=1"}
    _check_gaps_and_histories(results)
    _check_shared_baseline(results, [0, 1])
    _check_ensemble_arithmetic(results)
    _check_ema_arithmetic(results)


@pytest.mark.slow
def test_quick_run_writes_files(quick_run):
    results, out = quick_run
    for name in ("results.json", *FIGURES):
        assert (out / name).is_file() and (out / name).stat().st_size > 10_000, name
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "regularization" and saved["quick"] is True
    assert saved["data_source"] == "digits"
    assert set(saved["sweeps"]) == {"l2", "dropout", "augment"}
    p = saved["protocol"]
    assert [e["value"] for e in saved["sweeps"]["l2"]] == p["l2_values"] == [0.0, 1e-2, 1e-1]
    assert [e["value"] for e in saved["sweeps"]["dropout"]] == p["dropout_values"] == [0.0, 0.5]
    assert [e["value"] for e in saved["sweeps"]["augment"]] == [False, True]
    assert p["augment"] == {"crop_padding": 1, "flip": False}  # digits: crops only, no flips
    assert saved["figures"] == {"sweeps": "regularization_sweeps.png", "gap": "regularization_gap.png",
                                "ensemble": "regularization_ensemble.png"}
    # baseline, 2 L2, 1 dropout, augment, 2 more ensemble members
    assert len(saved["runs"]) == 7 and "baseline" in saved["runs"]


def all_entries(results):
    return [(kind, e) for kind, entries in results["sweeps"].items() for e in entries]


def _check_gaps_and_histories(results):
    p = results["protocol"]
    for kind, e in all_entries(results):
        for key in ("train_acc", "val_acc", "test_acc", "ema_val_acc", "ema_test_acc", "running_train_acc"):
            assert 0.0 <= e[key] <= 1.0 and math.isfinite(e[key]), (kind, e["value"], key)
        assert e["gap"] == pytest.approx(e["train_acc"] - e["val_acc"], abs=1e-12)
        h = e["history"]
        assert h["epoch"] == list(range(1, p["epochs"] + 1))
        # the final params' validation accuracy is the last epoch's (another batch size: <= 1 example off)
        assert abs(e["val_acc"] - h["val_acc"][-1]) <= 1 / p["n_val"] + 1e-9, (kind, e["value"])
        assert e["running_train_acc"] == h["train_acc"][-1]
        assert e["best_val_acc"] == pytest.approx(max(h["val_acc"]))
        assert h["val_acc"][e["best_epoch"] - 1] == pytest.approx(e["best_val_acc"])
        assert h["train_loss"][-1] < h["train_loss"][0] and h["train_loss"][-1] < math.log(10)
    runs = results["runs"]
    for kind, e in all_entries(results):
        assert runs[e["run"]]["gap"] == e["gap"] and runs[e["run"]]["test_acc"] == e["test_acc"]


def _check_shared_baseline(results, seeds):
    firsts = [results["sweeps"][k][0] for k in ("l2", "dropout", "augment")]
    for e in firsts:
        assert e["run"] == "baseline"
        assert (e["l2"], e["dropout"], e["augment"], e["seed"]) == (0.0, 0.0, False, 0)
        assert e["history"] == firsts[0]["history"] and e["test_acc"] == firsts[0]["test_acc"]
    ens = results["ensemble"]
    assert ens["seeds"] == seeds
    assert ens["member_test_acc"][0] == pytest.approx(firsts[0]["test_acc"], abs=1e-12)
    assert ens["ema_member_test_acc"][0] == pytest.approx(firsts[0]["ema_test_acc"], abs=1e-12)
    for s, acc in zip(ens["seeds"][1:], ens["member_test_acc"][1:]):
        assert results["runs"][f"seed={s}"]["test_acc"] == pytest.approx(acc, abs=1e-12)


def _check_ensemble_arithmetic(results):
    ens = results["ensemble"]
    assert len(ens["member_test_acc"]) == results["protocol"]["members"]
    assert ens["mean_member_test_acc"] == pytest.approx(np.mean(ens["member_test_acc"]))
    assert ens["best_member_test_acc"] == pytest.approx(max(ens["member_test_acc"]))
    assert ens["ensemble_gain"] == pytest.approx(ens["ensemble_test_acc"] - ens["mean_member_test_acc"])
    # averaging probabilities never raises the NLL above the members' mean (Jensen)
    assert ens["ensemble_test_nll"] <= np.mean(ens["member_test_nll"]) + 1e-9


def _check_ema_arithmetic(results):
    ema = results["ema"]
    assert ema["decay"] == 0.995
    assert {r["run"] for r in ema["per_run"]} == set(results["runs"])
    for r in ema["per_run"]:
        run = results["runs"][r["run"]]
        assert r["ema_gain"] == pytest.approx(run["ema_test_acc"] - run["test_acc"], abs=1e-12)
    assert ema["mean_gain"] == pytest.approx(np.mean([r["ema_gain"] for r in ema["per_run"]]))
    assert ema["runs_improved"] + ema["runs_worse"] <= len(ema["per_run"])


@pytest.mark.slow
def test_gaps_are_consistent_with_accuracies_and_histories(quick_run):
    _check_gaps_and_histories(quick_run[0])


@pytest.mark.slow
def test_baseline_is_shared_by_the_sweeps_and_the_ensemble(quick_run):
    _check_shared_baseline(quick_run[0], [0, 1, 2])


@pytest.mark.slow
def test_regularization_lowers_the_training_fit_and_the_gap(quick_run):
    results, _ = quick_run
    base = results["runs"]["baseline"]
    assert base["gap"] > 0 and base["train_acc"] > 0.98  # the unregularized net overfits the digits
    strongest = results["sweeps"]["l2"][-1]
    assert strongest["value"] == 0.1
    assert strongest["train_acc"] < base["train_acc"] and strongest["gap"] < base["gap"]
    drop = results["sweeps"]["dropout"][-1]
    assert drop["train_acc"] < base["train_acc"] and drop["gap"] < base["gap"]
    # dropout and augmentation add noise during training: the running training accuracy drops
    aug = results["sweeps"]["augment"][-1]
    for e in (drop, aug):
        assert e["running_train_acc"] < base["running_train_acc"] - 0.02, e["run"]


@pytest.mark.slow
def test_ensemble_at_least_as_good_as_the_mean_member(quick_run):
    results, _ = quick_run
    ens = results["ensemble"]
    assert results["protocol"]["members"] == 3
    _check_ensemble_arithmetic(results)
    # on val + test together the ensemble is at least as good as the mean member; on each split
    # alone at most one example worse (the digits' members agree on almost every test image, so
    # a platform's rounding of one probability must not fail the test)
    assert (ens["ensemble_test_acc"] + ens["ensemble_val_acc"]
            >= ens["mean_member_test_acc"] + ens["mean_member_val_acc"])
    n_test, n_val = results["protocol"]["n_test"], results["protocol"]["n_val"]
    assert ens["ensemble_test_acc"] >= ens["mean_member_test_acc"] - 1 / n_test - 1e-12
    assert ens["ensemble_val_acc"] >= ens["mean_member_val_acc"] - 1 / n_val - 1e-12
    assert ens["ema_ensemble_test_acc"] >= ens["ema_mean_member_test_acc"] - 1 / n_test - 1e-12


@pytest.mark.slow
def test_ema_numbers_are_consistent(quick_run):
    results, _ = quick_run
    _check_ema_arithmetic(results)
    for r in results["ema"]["per_run"]:
        run = results["runs"][r["run"]]
        assert run["ema_test_acc"] > 0.85, r  # the average of the late iterates is a good model too


def test_sweeps_must_include_the_baseline(tmp_path):
    with pytest.raises(SystemExit, match="must include 0"):
        exp.main(["--quick", "--out", str(tmp_path), "--l2", "1e-3,1e-2"])
