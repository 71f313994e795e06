"""experiments.wide_deep: the equal-budget nets' counts, stochastic depth in cifar_resnet, the smoke
run's files, bad flags."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import assert_bad_flags_exit, run_quick_experiment
from experiments import wide_deep as exp
from jaxnet.nn import StochasticDepth, zoo

pytestmark = pytest.mark.xdist_group("exp_wide_deep")


def test_the_full_runs_nets_have_about_the_same_parameters():
    counts = [exp.count(zoo.cifar_resnet(d, 10, width=w), (1, 32, 32, 3)) for _, d, w, _ in exp.NETS]
    assert counts == [466_906, 460_548, 481_170, 466_906]
    assert max(counts) / min(counts) < 1.05


def _drops(model):
    out = []

    def walk(layer):
        if isinstance(layer, StochasticDepth):
            out.append(layer.rate)
        for child in getattr(layer, "layers", ()) or ():
            walk(child)
        for name in ("body", "shortcut"):
            if getattr(layer, name, None) is not None:
                walk(getattr(layer, name))

    walk(model)
    return out


def test_stochastic_depth_follows_the_linear_decay_rule():
    assert _drops(zoo.cifar_resnet(14, drop_path=0.5)) == pytest.approx([0.5 * l / 6 for l in range(1, 7)])
    assert _drops(zoo.cifar_resnet(14)) == []
    model = zoo.cifar_resnet(8, 3, width=4, drop_path=0.5)
    params, state = model.init(jax.random.key(0), (6, 8, 8, 3))     # (eager: a jitted init compiles for ~15 s)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((6, 8, 8, 3)), jnp.float32)
    plain = zoo.cifar_resnet(8, 3, width=4)
    # jitted forward passes (eager, each small op compiles alone): eval of both nets, one program for two keys
    eval_out, ref = jax.jit(lambda p, s, x: (model.apply(p, s, x, train=False)[0],
                                             plain.apply(p, s, x, train=False)[0]))(params, state, x)
    train = jax.jit(lambda p, s, x, k: model.apply(p, s, x, train=True, key=k)[0])
    a, b = train(params, state, x, jax.random.key(1)), train(params, state, x, jax.random.key(2))
    np.testing.assert_array_equal(eval_out, ref)          # eval: the identity
    assert not np.allclose(a, b)                           # training: keys drop different blocks
    for bad in (1.0, -0.1, True):
        with pytest.raises(ValueError, match="cifar_resnet: `drop_path` must be a number in"):
            zoo.cifar_resnet(8, drop_path=bad)
    with pytest.raises(ValueError, match="needs the shortcuts"):
        zoo.cifar_resnet(8, plain=True, drop_path=0.1)


def test_one_net_with_stochastic_depth_trains_and_the_figure(tmp_path, monkeypatch):
    monkeypatch.delenv("JAXNET_CIFAR10_DIR", raising=False)           # the embedded digits, whatever the machine has
    args = exp.parse_args(exp.NAME, exp.DESCRIPTION, exp._extra, ["--smoke"])
    ds, source, _ = exp.cifar_or_digits(args, 300)
    model = exp.build(32, 16, 0.2, 10, args)                            # the smoke run's stand-in: ResNet-8 x4
    assert _drops(model) == pytest.approx([0.2 / 3, 0.4 / 3, 0.2])
    r = exp.train_net(model, "deep + stochastic depth", ds, epochs=1, args=args)
    assert source == "digits" and len(r["train_error"]) == len(r["test_error"]) == 1
    assert 0.0 <= r["final_test_error"] <= 1.0 and r["train_time_s"] > 0
    runs = [{**r, "params": exp.count(model, (1, 8, 8, 1))}, {**r, "name": "other", "params": 5}]
    assert open(exp.plot(runs, str(tmp_path / "w.png"), "t"), "rb").read(4) == b"\x89PNG"


# The four-net smoke run compiles four ResNets (~30 s): the slow tier (make test-slow).
@pytest.mark.slow
def test_smoke_run_files(tmp_path):
    res = run_quick_experiment(exp, tmp_path, "--smoke")
    saved = json.loads((tmp_path / "results.json").read_text())
    assert [r["name"] for r in saved["runs"]] == [n for n, *_ in exp.NETS]
    assert [r["drop_path"] for r in saved["runs"]] == [0.0, 0.0, 0.0, 0.2]
    assert set(saved["claims"]) == {"wide_beats_deep_on_test_error", "stochastic_depth_helps_the_deep_net"}
    assert (tmp_path / "wide_deep.png").read_bytes()[:4] == b"\x89PNG"
    assert all(np.isfinite(r["final_test_error"]) and r["params"] > 0 for r in res["runs"])


@pytest.mark.parametrize("flags, message", [
    (["--drop-path", "1"], "--drop-path must be in (0, 1)"), (["--epochs", "0"], "--epochs must be >= 1"),
    (["--lr", "-1"], "--lr must be a finite number > 0"),
])
def test_bad_flags_exit_with_one_line(flags, message, tmp_path, capsys):
    assert_bad_flags_exit(exp, flags, message, tmp_path, capsys)
