"""experiments.residual: settings, the smallest net's run, the claims and the figure; the
four-net smoke run is slow (make test-slow: four deep nets compile for ~40 s)."""
import json

import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import residual as exp

pytestmark = pytest.mark.xdist_group("exp_residual")


def test_one_run_records_train_and_test_error_per_epoch(monkeypatch):
    monkeypatch.delenv("JAXNET_CIFAR10_DIR", raising=False)           # the embedded digits, whatever the machine has
    args = exp.parse_args(exp.NAME, exp.DESCRIPTION, exp._extra, ["--smoke", "--epochs", "2"])
    ds, source, _ = exp.cifar_or_digits(args, 300)
    r = exp.run_one(8, True, ds, width=4, epochs=2, args=args)
    assert source == "digits" and r["name"] == "plain-8"
    assert len(r["train_error"]) == len(r["test_error"]) == 2
    assert all(0.0 <= e <= 1.0 for e in r["train_error"] + r["test_error"])
    assert r["final_test_error"] == r["test_error"][-1] and r["train_time_s"] > 0


def test_figure_from_runs(tmp_path):
    runs = [{"name": f"{k}-{d}", "plain": k == "plain", "train_error": [0.5, 0.3], "test_error": [0.6, 0.4]}
            for k in ("plain", "resnet") for d in (20, 56)]
    path = exp.plot(runs, str(tmp_path / "r.png"), "t")
    assert open(path, "rb").read(4) == b"\x89PNG"


@pytest.mark.parametrize("flags, message", [
    (["--depths", "20"], "two or more depths"), (["--depths", "21,56"], "6n + 2"), (["--depths", "a,b"], "integers"),
    (["--width", "0"], "--width must be >= 1"), (["--lr", "0"], "--lr must be a finite number > 0"),
    (["--weight-decay", "-1"], "--weight-decay must be a finite number >= 0"),
    (["--n-test", "0"], "--n-test must be >= 1"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)


@pytest.mark.slow
def test_smoke_run_writes_four_nets_and_the_claims(tmp_path):
    res = run_quick_experiment(exp, tmp_path, "--smoke")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in saved["runs"]] == ["plain-8", "plain-14", "resnet-8", "resnet-14"]
    assert set(saved["claims"]) == {"plain_deeper_trains_worse", "resnet_deeper_trains_better"}
    assert (tmp_path / "residual.png").read_bytes()[:4] == b"\x89PNG"
    assert all(np.isfinite(r["final_train_error"]) for r in res["runs"])
