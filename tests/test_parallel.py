"""Tensor parallelism (heads and hidden units over a "model" mesh axis) and several processes
(jax.distributed on localhost, CPU collectives): each gives the numbers of one device."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxnet import nn
from jaxnet.train.parallel import MODEL_AXIS, make_mesh, param_shardings, tensor_parallel_specs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# `--dist loadgroup` (pyproject.toml): the module runs on one xdist worker, so its 8-device subprocess (a module
# fixture: data and tensor parallelism, and the one-process reference run of the two-process test) runs once.
pytestmark = pytest.mark.xdist_group("parallel")

# `jaxnet train` as the two-process test runs it (and its one-process reference): the fc net, batch 256 (5 steps
# an epoch: the processes' startup and compiles are the cost, not the steps), a constant rate (the same
# schedule whatever the number of epochs)
TRAIN = ["train", "--model", "fc", "--batch-size", "256", "--no-progress", "--schedule", "constant"]


def _env(devices: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


# ----------------------------------------------------------------------------- the layout (no devices needed)


def test_tensor_parallel_specs_follow_the_megatron_layout():
    model = nn.TransformerDecoder(depth=1, num_heads=2, ff_hidden=16)
    params, _ = model.init(jax.random.PRNGKey(0), (1, 3, 8))
    specs = tensor_parallel_specs(params)
    layer = specs["0"]
    for attn in ("self_attn", "cross_attn"):
        for name in ("query", "key", "value"):
            assert layer[attn][name] == {"w": P(None, MODEL_AXIS), "b": P(MODEL_AXIS)}
        assert layer[attn]["out"] == {"w": P(MODEL_AXIS, None), "b": P()}
    assert layer["ff"] == {"fc1": {"w": P(None, MODEL_AXIS), "b": P(MODEL_AXIS)},
                           "fc2": {"w": P(MODEL_AXIS, None), "b": P()}}
    norms = [v for k, v in layer.items() if k.startswith("norm")]
    assert norms and all(n == {"gamma": P(), "beta": P()} for n in norms)
    # a dict that merely contains "fc1"/"fc2" among other keys is not a feed-forward block
    assert tensor_parallel_specs({"fc1": {"w": np.zeros((2, 2)), "b": np.zeros(2)},
                                  "fc2": {"w": np.zeros((2, 2)), "b": np.zeros(2)},
                                  "fc3": {"w": np.zeros((2, 2)), "b": np.zeros(2)}})["fc1"]["w"] == P()


def test_model_parallel_bad_values_are_one_line_errors():
    with pytest.raises(ValueError, match="model_parallel must be a positive int"):
        make_mesh(model_parallel=0)
    with pytest.raises(ValueError, match="model_parallel must be a positive int"):
        make_mesh(model_parallel=True)
    n = len(jax.devices())
    with pytest.raises(ValueError, match=f"model_parallel={n + 1} does not divide the {n} devices"):
        make_mesh(model_parallel=n + 1)


# ----------------------------------------------------------------------------- 8 forced CPU devices

# the test run's compilation cache (conftest.py), if any: `evaluate` below compiles the eval step that
# fit compiled already (another jitted function, the same program)
_RUN_CACHE = textwrap.dedent(
    """
    import os, jax
    if os.environ.get("JAXNET_TEST_RUN_CACHE", "0") != "0":
        jax.config.update("jax_compilation_cache_dir", os.environ["JAXNET_TEST_RUN_CACHE"])
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    """
)

# The two-process test's reference: `jaxnet train` in one process on 2 of the 8 devices, 1 epoch (float32,
# before the tensor-parallel part turns on float64); its files in REF_OUT.
_REF_SCRIPT = textwrap.dedent(
    """
    from jaxnet.cli import main as _cli
    assert _cli(TRAIN + ["--out", REF_OUT, "--epochs", "1", "--devices", "2"]) == 0
    print("REF-OK")
    """
)

# Data parallelism (test_train's MLP, float32): fit on all 8 devices equals fit on one. Run first, in the
# same process as the tensor-parallel checks below (one python + jax start instead of two).
_DP_SCRIPT = textwrap.dedent(
    """
    import sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, TESTS)
    from test_train import MLP
    from jaxnet.data import load_digits
    from jaxnet.optim import make_optimizer
    from jaxnet.train import evaluate, fit, make_mesh, shard_batch, replicate

    assert len(jax.devices()) == 8, jax.devices()
    mesh = make_mesh()
    x = np.zeros((16, 8, 8, 1), np.float32)
    sharded = shard_batch(x, mesh)
    assert len(sharded.addressable_shards) == 8
    assert sharded.addressable_shards[0].data.shape == (2, 8, 8, 1)
    assert replicate({"w": jnp.ones(3)}, mesh)["w"].sharding.is_fully_replicated
    try:
        shard_batch(np.zeros((6, 2), np.float32), mesh)
        raise SystemExit("no error for 6 examples on 8 devices")
    except ValueError as e:
        assert "6" in str(e) and "8 devices" in str(e), e

    data = load_digits()
    data = data.replace(x_train=data.x_train[:200], y_train=data.y_train[:200],
                        x_val=data.x_val[:50], y_val=data.y_val[:50])
    opt = make_optimizer("momentum", 0.05)
    kw = dict(optimizer=opt, epochs=2, batch_size=24, key=3, progress=False)
    many = fit(MLP(dropout=0.2), data, devices=None, **kw)
    one = fit(MLP(dropout=0.2), data, devices=[jax.devices()[1]], **kw)
    w = many.train_state.params["fc1"]["w"]
    assert w.sharding.is_fully_replicated and len(w.sharding.device_set) == 8
    for a, b in zip(jax.tree.leaves(many.train_state), jax.tree.leaves(one.train_state)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(many.history["val_loss"], one.history["val_loss"], rtol=1e-5)
    try:
        fit(MLP(), data, devices=None, **{**kw, "batch_size": 12})
        raise SystemExit("no error for batch 12 on 8 devices")
    except ValueError as e:
        assert "batch size 12" in str(e), e
    # the replicated results feed the single-device helpers as they are
    loss8, acc8 = evaluate(MLP(), many.best_params, many.best_state, data.x_val, data.y_val, 7)
    loss1, acc1 = evaluate(MLP(), one.best_params, one.best_state, data.x_val, data.y_val, 7)
    np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
    print("PARALLEL-OK", many.history["val_acc"])
    """
)

_TP_SCRIPT = textwrap.dedent(
    """
    import jax, numpy as np
    jax.config.update("jax_enable_x64", True)   # float64: the partitioned sums agree to ~1e-12
    from jax.sharding import PartitionSpec as P
    from jaxnet import nn
    from jaxnet.data import load_digits
    from jaxnet.optim import make_optimizer
    from jaxnet.train import fit, evaluate
    from jaxnet.train.parallel import make_mesh, param_shardings
    assert len(jax.devices()) == 8
    import dataclasses
    full = load_digits()     # a slice: 4 steps (the sums compared are the same; compiling is the cost)
    data = dataclasses.replace(full, x_train=full.x_train[:256], y_train=full.y_train[:256], x_val=full.x_val[:64],
                               y_val=full.y_val[:64], x_test=full.x_test[:64], y_test=full.y_test[:64])
    model = nn.VisionTransformer(10, patch=4, depth=1, features=16, num_heads=4, ff_hidden=32)
    kw = dict(epochs=1, batch_size=64, key=0, progress=False)
    sgd = make_optimizer("momentum", 0.05)
    one = fit(model, data, optimizer=sgd, devices=1, **kw)
    for devices, m in LAYOUTS:     # (8, 4): 2 x 4 (one head per device), (8, 8): 1 x 8 (heads straddle devices)
        run = fit(model, data, optimizer=sgd, devices=devices, model_parallel=m, **kw)
        ts = run.train_state
        # the weights and their momentum are split: each device holds 1/m of them
        q = ts.params["encoder"]["0"]["attn"]["query"]["w"]
        fc2 = ts.params["encoder"]["0"]["ff"]["fc2"]["w"]
        assert q.sharding.spec == P(None, "model") and q.addressable_shards[0].data.shape == (16, 16 // m)
        assert fc2.addressable_shards[0].data.shape == (32 // m, 16)
        trace = [x for x in jax.tree.leaves(ts.opt_state) if getattr(x, "shape", None) == (32, 16)]
        assert trace and all(x.addressable_shards[0].data.shape == (32 // m, 16) for x in trace)
        assert len(q.sharding.device_set) == devices
        for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ts), jax.tree.leaves(one.train_state)):
            assert a.dtype == b.dtype
            np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-9, atol=1e-12,
                                       err_msg=f"{devices} devices / {m}: {jax.tree_util.keystr(path)}")
        np.testing.assert_allclose(run.history["val_loss"], one.history["val_loss"], rtol=1e-10)
        np.testing.assert_allclose(run.history["train_loss"], one.history["train_loss"], rtol=1e-10)
    l1 = evaluate(model, one.best_params, one.best_state, data.x_test, data.y_test, 64)
    l8 = evaluate(model, jax.device_get(run.best_params), run.best_state, data.x_test, data.y_test, 64)
    np.testing.assert_allclose(l8, l1, rtol=1e-10)
    # a width that cannot be split m ways: one line naming the parameter
    wide = nn.VisionTransformer(10, patch=4, depth=1, features=20, num_heads=4, ff_hidden=40)
    try:
        fit(wide, data, optimizer=sgd, devices=8, model_parallel=8, **kw)
        raise SystemExit("no error for features 20 over 8 devices")
    except ValueError as e:
        assert "tensor parallel: parameter ['encoder']['0']['attn']" in str(e) and "20" in str(e), e
    # a batch not divisible by the data-parallel groups (8 / 2 = 4)
    try:
        fit(model, data, optimizer=sgd, devices=8, model_parallel=2, **{**kw, "batch_size": 30})
        raise SystemExit("no error for batch 30 on 4 data-parallel groups")
    except ValueError as e:
        assert "batch size 30" in str(e) and "4 data-parallel groups" in str(e), e
    print("TP-OK", one.history["val_acc"])
    """
)


def _eight_devices(layouts, ref_out=None):
    """One python process on 8 forced CPU devices: with ``ref_out``, first data parallelism and the
    two-process test's one-process reference run, then the tensor-parallel checks for ``layouts``."""
    script = (f"LAYOUTS = {layouts!r}\nTESTS = {os.path.join(REPO, 'tests')!r}\nTRAIN = {TRAIN!r}\n"
              f"REF_OUT = {str(ref_out)!r}\n" + _RUN_CACHE
              + (_DP_SCRIPT + _REF_SCRIPT if ref_out is not None else "") + _TP_SCRIPT)
    return subprocess.run([sys.executable, "-c", script], env=_env(8), capture_output=True, text=True,
                          timeout=600, cwd=REPO)


@pytest.fixture(scope="module")
def eight_devices(tmp_path_factory):
    """The default suite's 8-device process (one python + jax start for three checks): data parallelism,
    the reference run (its folder returned), tensor parallelism 1 x 8."""
    ref = tmp_path_factory.mktemp("single")
    return _eight_devices([(8, 8)], ref), ref


# each layout compiles its own sharded train step (~10 s on a 2-core CPU): the default suite runs 1 x 8
# (heads straddle devices, the harder split), in the process of the eight_devices fixture; the slow tier
# 2 x 4 (one head per device) in its own
@pytest.mark.parametrize("layouts", [[(8, 8)], pytest.param([(8, 4)], marks=pytest.mark.slow)],
                         ids=["1x8", "2x4"])
def test_data_and_tensor_parallel_on_eight_host_devices_match_one_device(layouts, request):
    if layouts == [(8, 8)]:
        proc, _ = request.getfixturevalue("eight_devices")
    else:
        proc = _eight_devices(layouts)
    assert proc.returncode == 0 and "TP-OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]
    assert ("PARALLEL-OK" in proc.stdout) == (layouts == [(8, 8)]), proc.stdout


# ----------------------------------------------------------------------------- two processes


def _train(out, *extra, env, process=None, port=None):
    cmd = [sys.executable, "-m", "jaxnet", *TRAIN, "--out", str(out), *extra]
    if process is not None:
        cmd += ["--coordinator", f"localhost:{port}", "--num-processes", "2", "--process-id", str(process)]
    return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=REPO)


def _two_processes(out, *extra, cache=None):
    port, env = _free_port(), _env(1)
    if cache is not None:           # the runs share a compilation cache, as a user's runs do
        env["JAXNET_COMPILATION_CACHE"] = str(cache)
    procs = [_train(out, *extra, env=env, process=i, port=port) for i in (0, 1)]
    outs = [p.communicate(timeout=300) for p in procs]
    for p, (so, se) in zip(procs, outs):
        assert p.returncode == 0, so + se[-3000:]
    return outs


def _metrics(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [{k: v for k, v in r.items() if k not in ("images_per_sec", "epoch_time")} for r in rows]


# `jaxnet train` processes (~8 s each on a 2-core CPU): the default suite trains one epoch both ways (two
# processes here; the one-process run on 2 devices is the eight_devices fixture's, in its process); the slow
# tier adds --resume to a second epoch (five processes)
@pytest.mark.parametrize("resume", [False, pytest.param(True, marks=pytest.mark.slow)], ids=["train", "resume"])
def test_two_processes_train_and_resume_like_one_process_on_two_devices(tmp_path, resume, request):
    """`jaxnet train` under jax.distributed (2 processes x 1 CPU device, gloo collectives):
    the same metrics as one process on 2 devices; only process 0 writes; --resume continues."""
    multi, single = tmp_path / "multi", tmp_path / "single"
    cache = tmp_path / "xla-cache"
    epochs = 2 if resume else 1
    (so0, _), (so1, _) = _two_processes(multi, "--epochs", "1", cache=cache)
    assert "test accuracy" in so0 and "test accuracy" not in so1           # process 1 prints no result
    assert sorted(os.listdir(multi)) == ["checkpoint", "curves.png", "metrics.jsonl", "summary.json"]
    if resume:
        _two_processes(multi, "--epochs", "2", "--resume", cache=cache)   # reads the programs compiled above
        p = _train(single, "--epochs", str(epochs), env=_env(2))   # uninterrupted (constant rate: same schedule)
        assert p.wait(timeout=300) == 0, p.stderr.read()
    else:
        proc, single = request.getfixturevalue("eight_devices")
        assert proc.returncode == 0 and "REF-OK" in proc.stdout, proc.stdout + proc.stderr[-4000:]
    got, want = _metrics(multi), _metrics(single)
    assert [r["epoch"] for r in got] == list(range(1, epochs + 1)) and len(want) == epochs
    for g, w in zip(got, want):
        for k in w:
            assert g[k] == pytest.approx(w[k], rel=1e-5), (k, g, w)
    with open(multi / "summary.json") as f:
        summary = json.load(f)
    assert summary["processes"] == 2 and summary["devices"] == 2


@pytest.mark.parametrize("args, message", [
    (["--coordinator", "localhost:1234"], "go together"),
    (["--coordinator", "localhost", "--num-processes", "2", "--process-id", "0"], "HOST:PORT"),
    (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "2"], "--process-id must be in 0..1"),
    (["--coordinator", "localhost:1", "--num-processes", "0", "--process-id", "0"], "--num-processes must be >= 1"),
    (["--model-parallel", "0"], "--model-parallel must be >= 1"),
    (["--devices", "3", "--model-parallel", "2"], "--model-parallel 2 does not divide --devices 3"),
    (["--devices", "4", "--model-parallel", "2", "--batch-size", "7"], "not divisible by the 2 data-parallel"),
    (["--coordinator", "localhost:1", "--num-processes", "2", "--process-id", "0", "--coordinator-timeout", "0"],
     "--coordinator-timeout must be >= 1"),
])
def test_parallel_flags_bad_values_are_one_line(tmp_path, args, message, capsys):
    """Checked before jax starts, in the command's own process (in-process here: the same
    `jaxnet.cli.main`; the subprocess path is test_coordinator_flags_...'s)."""
    from jaxnet.cli import main
    with pytest.raises(SystemExit) as e:
        main(["train", "--out", str(tmp_path / "r"), *args])
    assert e.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], lines


def test_coordinator_flags_bad_values_and_unreachable_coordinator(tmp_path):
    def train(*args):
        return subprocess.run([sys.executable, "-m", "jaxnet", "train", "--out", str(tmp_path / "r"), *args],
                              capture_output=True, text=True, cwd=REPO, timeout=120)

    # (a bad --coordinator-timeout is refused before jax starts: test_parallel_flags_bad_values_are_one_line)
    dist = ["--num-processes", "2", "--process-id"]
    port = _free_port()
    proc = train("--coordinator", f"localhost:{port}", *dist, "1", "--coordinator-timeout", "1")
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"jaxnet: error: --coordinator localhost:{port}: no coordinator answered within 1 s (Connection refused); "
        f"start process 0 there, or raise --coordinator-timeout"]
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        proc = train("--coordinator", f"localhost:{taken}", *dist, "0")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert f"process 0 cannot listen on port {taken}" in proc.stderr
