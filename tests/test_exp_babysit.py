"""experiments.babysitting on the embedded digits: learning-rate diagnostics, update/weight
ratios and the course's sanity checks (initial loss, overfit 20 examples).

Every claim holds at the ``--smoke`` size (300 images), which the default suite runs; the same
checks on the ``--quick`` run (1,000 images) are marked slow (``make test-slow``)."""

import json
import math
from pathlib import Path

import numpy as np
import pytest


def test_babysitting_smoke_on_digits(tmp_path, monkeypatch, capsys):
    saved = _run_and_check(tmp_path, monkeypatch, capsys, "--smoke")
    assert saved["smoke"] is True and saved["protocol"]["n_train"] == 300


@pytest.mark.slow
def test_babysitting_quick_on_digits(tmp_path, monkeypatch, capsys):
    _run_and_check(tmp_path, monkeypatch, capsys, "--quick")


def _run_and_check(tmp_path, monkeypatch, capsys, flag):
    monkeypatch.delenv("JAXNET_CIFAR10_DIR", raising=False)
    from experiments import babysitting

    out = babysitting.main([flag, "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["quick"] is True and saved["experiment"] == "babysitting"
    assert saved["data_source"] == "digits" and out["data_source"] == "digits"

    runs = saved["learning_rates"]
    tiny, good, huge = runs["tiny"], runs["good"], runs["huge"]
    assert tiny["learning_rate"] < good["learning_rate"] < huge["learning_rate"]
    # tiny lr: the loss barely moves; huge: explodes (early break); good: goes down
    assert abs(tiny["final_over_initial"] - 1.0) < 0.05 and not tiny["early_break"]
    assert huge["early_break"] and huge["exploded"] and huge["steps"] < tiny["steps"]
    assert saved["summary"]["huge_early_break"] is True
    assert not good["early_break"] and good["final_over_initial"] < 0.9
    assert good["final_loss"] < tiny["final_loss"]
    assert len(good["loss_curve"]) == good["steps"] > 0

    ratios = saved["update_ratio"]["median_per_layer"]
    assert set(ratios) == {"fc1", "fc2", "fc3"}
    for name, r in ratios.items():
        assert r is not None and math.isfinite(r) and r > 0, name
        per_step = np.asarray(saved["update_ratio"]["per_step"][name], dtype=float)
        assert len(per_step) == good["steps"] and np.all(np.isfinite(per_step)) and np.all(per_step > 0)

    assert saved["overfit_small_subset"]["train_accuracy"] == 1.0
    init = saved["initial_loss"]
    assert abs(init["value"] - math.log(10)) <= 0.1 * math.log(10) and init["ok_10pct"]

    for name in ("update_ratios.png", "learning_rates.png"):
        path = tmp_path / name
        assert path.is_file() and path.stat().st_size > 1000
        assert Path(saved["figures"][Path(name).stem]).resolve() == path.resolve()
    printed = capsys.readouterr().out
    assert "early break" in printed and "update / weight ratio" in printed
    return saved
