"""experiments.rnn_gradient_flow: the --quick run (float64). The linear RNN's state gradients
follow the exact power law r^(T-t); the tanh RNN at r = 0.9 shrinks at least by 0.9 per step;
at r = 1.1 the linear RNN's gradients grow; the LSTM's decay more slowly than the RNN's at 0.9;
norm clipping caps the update and keeps its direction."""
import json
import math

import numpy as np
import pytest

from conftest import run_quick_experiment
from experiments import rnn_gradient_flow as exp

# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker, so its quick run (a module
# fixture) is built once; groups are handed out before single tests.
pytestmark = pytest.mark.xdist_group("exp_rnn_gradient_flow")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rnn_gradient_flow")
    return run_quick_experiment(exp, out), out


def test_files_written(quick_run):
    results, out = quick_run
    assert (out / "rnn_gradient_flow.png").stat().st_size > 0
    saved = json.loads((out / "results.json").read_text())
    assert saved["experiment"] == "rnn_gradient_flow" and saved["quick"] is True
    assert set(saved["rnn"]) == {f"{r:g}" for r in exp.RADII}
    T = saved["protocol"]["T"]
    for r in saved["rnn"].values():
        assert len(r["tanh_norms"]) == len(r["linear_norms"]) == T + 1


def test_linear_rnn_follows_the_exact_power_law(quick_run):
    results, _ = quick_run
    T = results["protocol"]["T"]
    for key, r in results["rnn"].items():
        rad = r["radius"]
        assert r["spectral_radius"] == pytest.approx(rad, rel=1e-10)
        assert r["largest_singular_value"] == pytest.approx(rad, rel=1e-10)
        n = np.asarray(r["linear_norms"])
        np.testing.assert_allclose(n, n[-1] * rad ** (T - np.arange(T + 1.0)), rtol=1e-10, err_msg=key)
        assert r["linear_factor"] == pytest.approx(rad, rel=1e-9)
    assert results["rnn"]["0.9"]["linear_ratio_h0_hT"] == pytest.approx(0.9 ** T, rel=1e-9)
    assert results["rnn"]["1.1"]["linear_ratio_h0_hT"] == pytest.approx(1.1 ** T, rel=1e-9)
    assert results["rnn"]["1.1"]["linear_ratio_h0_hT"] > 10  # grows


def test_tanh_rnn_at_0_9_decays_geometrically(quick_run):
    results, _ = quick_run
    n = np.asarray(results["rnn"]["0.9"]["tanh_norms"])
    # ||W_h^T diag(tanh') g|| <= 0.9 ||g||: every step back shrinks the norm by 0.9 or more
    assert np.all(n[:-1] <= 0.9 * n[1:] * (1 + 1e-12))
    assert results["rnn"]["0.9"]["tanh_factor"] < 0.9
    assert n[0] < 1e-3 * n[-1]


def test_lstm_decays_more_slowly_than_the_rnn_at_0_9(quick_run):
    results, _ = quick_run
    rnn = results["rnn"]["0.9"]
    for key, l_ in results["lstm"].items():
        assert l_["h_factor"] > rnn["tanh_factor"], key
        assert l_["ratio_h0_hT"] > 10 * rnn["tanh_ratio_h0_hT"], key
        assert 0 < l_["mean_forget_gate"] < 1
    fb = sorted(results["lstm"].values(), key=lambda l_: l_["forget_bias"])
    assert [l_["mean_forget_gate"] for l_ in fb] == sorted(l_["mean_forget_gate"] for l_ in fb)


def test_norm_clipping_caps_the_update_and_keeps_direction(quick_run):
    results, _ = quick_run
    c = results["protocol"]["clip_norm"]
    for kind, rows in results["clipping"].items():
        for r in rows:
            assert r["update_norm_norm"] == pytest.approx(min(r["grad_norm"], c), rel=1e-9), (kind, r)
            assert r["cosine_norm"] == pytest.approx(1.0, abs=1e-12), (kind, r)
            if r["grad_norm"] > 10 * c:  # clipping each element at c turns the update
                assert r["cosine_value"] < 0.99, (kind, r)
    lin = [r["grad_norm"] for r in results["clipping"]["linear"]]
    assert all(b > a for a, b in zip(lin, lin[1:]))  # exploding with the length


def test_manual_path_agrees(quick_run):
    results, _ = quick_run
    check = results["manual_vs_autodiff"]
    if results["ops"] != "jaxnet.functional":
        assert check is None
        return
    assert check and all(math.isfinite(v) and v < 1e-10 for v in check.values()), check


def test_bad_flags_exit_with_one_line(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        exp.main(["--quick", "--out", str(tmp_path), "--forget-biases", "x,y"])
    assert e.value.code == 2
    assert "--forget-biases" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        exp.main(["--quick", "--out", str(tmp_path), "--clip-norm", "0"])


def test_committed_full_run():
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    full = json.loads((root / "docs" / "results" / "rnn_gradient_flow.json").read_text())
    assert full["quick"] is False and full["protocol"]["T"] >= 50
    for r in full["rnn"].values():
        assert r["linear_max_rel_err"] < 1e-12
    assert full["rnn"]["0.9"]["tanh_factor"] < 0.9 < full["rnn"]["1.1"]["linear_factor"]
    assert all(l_["h_factor"] > full["rnn"]["0.9"]["tanh_factor"] for l_ in full["lstm"].values())
    assert (root / "docs" / "img" / "sequence" / "rnn_gradient_flow.png").is_file()
