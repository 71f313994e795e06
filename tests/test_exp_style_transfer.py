"""experiments.style_transfer: one smoke run (digits net, grey 16-px images), its files and
structural facts, the recording loop against jaxnet.understand.style_transfer, the bad flags."""
import json
import math
import types

import jax
import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import style_transfer as exp

pytestmark = pytest.mark.xdist_group("exp_understand")


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("style_transfer")
    res = run_quick_experiment(exp, out, "--smoke")
    return out, res, json.loads((out / "results.json").read_text())


def test_smoke_run_writes_curves_grid_claims_and_figures(smoke):
    out, res, saved = smoke
    assert saved["source"] == "digits" and saved["content_shape"][-1] == 1       # grey for the 1-channel net
    assert min(saved["content_shape"][:2]) == 16
    for name in ("adam", "adam_lr3", "lbfgs"):
        r = saved["runs"][name]
        curves = r["curves"]
        assert set(curves) == {"total", "content", "style", "tv"} and len(curves["total"]) == 4
        np.testing.assert_allclose(np.array(curves["content"]) + curves["style"] + curves["tv"], curves["total"],
                                   rtol=1e-5)
        assert abs(curves["content"][0]) <= 1e-6 * curves["total"][0]       # starts from the content image
        assert math.isfinite(r["final_loss"]) and r["time_s"] > 0
    assert len(saved["grid"]) == 9
    assert all(g["content_error"] >= 0 and g["style_error"] >= 0 and g["tv_relative"] >= 0 for g in saved["grid"])
    assert saved["runs"]["lbfgs"]["final_loss"] < saved["runs"]["lbfgs"]["initial_loss"]
    assert set(saved["claims"]) == {"both_optimisers_lower_the_loss", "adam_course_lr3_lowers_the_loss",
                                    "lbfgs_lower_loss_than_adam_same_steps",
                                    "higher_style_ratio_lower_style_error", "higher_style_ratio_higher_content_error",
                                    "higher_tv_weight_smoother_image"}
    for name in ("style_transfer.png", "style_losses.png", "style_grid.png"):
        assert (out / name).read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("optimizer", ["adam", pytest.param("lbfgs", marks=pytest.mark.slow)])
def test_recording_loop_is_the_library_loop(optimizer):
    """L-BFGS's check is in make test-slow (two line-search programs to compile, ~10 s)."""
    from jaxnet import understand as U
    from jaxnet.nn import Conv2D, ReLU, Sequential

    # the loop does not care which net: two conv layers named as the experiment's (cheap to compile),
    # the weights drawn by NumPy (an eager init compiles every small op)
    model = Sequential((Conv2D(2), ReLU(), Conv2D(3)), ("stem", "relu", "block1"))
    rng = np.random.default_rng(0)
    shapes, state = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), (1, 8, 8, 1)))
    params = jax.tree.map(lambda a: (0.5 * rng.standard_normal(a.shape)).astype(np.float32), shapes)
    net = types.SimpleNamespace(model=model, params=params, state={k: {} for k in state})
    content, style = rng.normal(size=(1, 8, 10, 1)).astype(np.float32), rng.normal(size=(1, 9, 8, 1)).astype(np.float32)
    problem = exp.Problem(net, content, style, "block1", ("stem", "block1"), ratio=10.0, tv=0.5)
    clip = (-2.0, 2.0)
    _, curves, _, _ = exp.optimise(problem, content, optimizer=optimizer, iterations=3, lr=0.5, clip=clip)
    w = problem.raw_weights()
    ref = U.style_transfer(model, params, state, content, style, content_layer="block1",
                           style_layers=("stem", "block1"), style_weights=w["style_weights"],
                           content_weight=w["content_weight"], tv_weight=w["tv_weight"], num_iterations=3,
                           optimizer=optimizer, learning_rate=0.5, decayed_lr=0.5 / 30, decay_lr_at=2, clip=clip)
    np.testing.assert_allclose(curves[:, 0], np.asarray(ref.losses), rtol=1e-5)


@pytest.mark.parametrize("flags, message", [
    (["--size", "0"], "--size must be >= 1"),
    (["--ratio", "-1"], "--ratio must be a finite number > 0"),
    (["--content", "/nonexistent/x.jpg"], "--content: load_image: no image file at '/nonexistent/x.jpg'"),
    (["--style-layers", "stem,fc"], "--style-layers: 'fc' is not a feature layer"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
