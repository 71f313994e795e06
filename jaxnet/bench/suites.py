"""The benchmarks behind ``jaxnet bench``.

1. ``ops``: each manual op against its autodiff twin, forward + backward, jitted.
2. ``train_step``: one Adam step of the issue's convnet (3 x [conv3x3-relu-maxpool2],
   32/64/128 channels, affine to 10, batch 128, 32x32x3) in jaxnet (manual and
   autodiff backward), flax.linen and, when torch is installed, PyTorch eager
   (NCHW and channels-last).
   ``train_step_bn``: the same net with batch norm, 3 x [conv3x3-BN-ReLU-maxpool2] (convs
   without bias), the same candidates (flax.linen's BatchNorm with its ``batch_stats``).
3. ``compile``: jit compile time of that step; ``import jaxnet`` + first step wall
   time in a fresh process.
4. ``knn``: the kNN distance matrix's GFLOP/s against a plain matmul's.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet import manual, ops
from jaxnet.bench.timing import Candidate, ratio, time_candidates

BATCH = 128


def _fwd_bwd(op, args, diff, kwargs, out_index=None):
    def f(*d):
        full = list(args)
        for i, v in zip(diff, d):
            full[i] = v
        y = op(*full, **kwargs)
        return y if out_index is None else y[out_index]
    ct = jax.random.normal(jax.random.PRNGKey(9), jax.eval_shape(f, *[args[i] for i in diff]).shape)
    step = jax.jit(lambda *d: jax.vjp(f, *d)[1](ct))
    primals = [args[i] for i in diff]
    return lambda: step(*primals)


def _op_cases():
    k = jax.random.split(jax.random.PRNGKey(0), 8)
    n = lambda i, s, scale=1.0: scale * jax.random.normal(k[i], s, jnp.float32)
    c64 = n(0, (BATCH, 16, 16, 64))
    return [
        ("conv 3->32 32x32", "conv2d", (n(0, (BATCH, 32, 32, 3)), n(1, (3, 3, 3, 32), 0.1), n(2, (32,))),
         (0, 1, 2), dict(padding=1), None),
        ("conv 64->64 16x16", "conv2d", (c64, n(1, (3, 3, 64, 64), 0.05), n(2, (64,))), (0, 1, 2),
         dict(padding=1), None),
        # the train step's other two convolutions (3->32 at 32x32 is the first row)
        ("conv 32->64 16x16", "conv2d", (n(3, (BATCH, 16, 16, 32)), n(1, (3, 3, 32, 64), 0.05), n(2, (64,))),
         (0, 1, 2), dict(padding=1), None),
        ("conv 64->128 8x8", "conv2d", (n(4, (BATCH, 8, 8, 64)), n(1, (3, 3, 64, 128), 0.05), n(2, (128,))),
         (0, 1, 2), dict(padding=1), None),
        ("max pool 2x2 32x32x32", "max_pool2d", (n(3, (BATCH, 32, 32, 32)),), (0,), dict(window=2), None),
        ("batch norm 16x16x64", "batch_norm", (c64, jnp.ones(64), jnp.zeros(64), jnp.zeros(64), jnp.ones(64)),
         (0, 1, 2), dict(train=True), 0),
        ("layer norm 1024", "layer_norm", (n(4, (BATCH, 1024)), jnp.ones(1024), jnp.zeros(1024)), (0, 1, 2), {}, None),
        ("affine 3072->512", "affine", (n(5, (BATCH, 32, 32, 3)), n(6, (3072, 512), 0.02), jnp.zeros(512)),
         (0, 1, 2), {}, None),
        ("softmax loss 10 classes", "softmax_cross_entropy",
         (n(7, (BATCH, 10)), jnp.arange(BATCH) % 10), (0,), {}, None),
        ("relu 16x16x64", "relu", (c64,), (0,), {}, None),
    ]


def bench_ops(*, blocks=5, reps=3, torch_mod=None) -> list[dict]:
    """Manual vs autodiff, forward + backward, per op (ratio = manual / autodiff time)."""
    import contextlib

    from jaxnet.ops import onednn

    def traced(fn, use_onednn, algorithm=None):   # trace (and compile) now, with or without the oneDNN kernel
        with (contextlib.nullcontext() if use_onednn else onednn.disabled()), \
                (onednn.use_algorithm(algorithm) if algorithm else contextlib.nullcontext()):
            jax.block_until_ready(fn())
        return fn

    def torch_channels_last(args):   # torch.nn.functional.conv2d on channels-last tensors, fwd + bwd
        torch, cl = torch_mod, torch_mod.channels_last
        x, w, b = (np.asarray(a) for a in args)
        xt = torch.tensor(x.transpose(0, 3, 1, 2).copy()).contiguous(memory_format=cl).requires_grad_()
        wt = torch.tensor(w.transpose(3, 2, 0, 1).copy()).contiguous(memory_format=cl).requires_grad_()
        bt = torch.tensor(b.copy(), requires_grad=True)
        ct = torch.randn(torch.nn.functional.conv2d(xt, wt, bt, padding=1).shape).contiguous(memory_format=cl)

        def run():
            for t in (xt, wt, bt):
                t.grad = None
            torch.nn.functional.conv2d(xt, wt, bt, padding=1).backward(ct)
        return Candidate("torch channels-last", run, items=BATCH, sync=lambda o: o)

    def conv_fwd_bwd(op, args, kwargs):   # y and its vjp, both returned: the forward is timed too
        ct = jax.random.normal(jax.random.PRNGKey(9), jax.eval_shape(lambda *a: op(*a, **kwargs), *args).shape)

        def step(*a):
            y, vjp = jax.vjp(lambda *a: op(*a, **kwargs), *a)
            return y, vjp(ct)
        step = jax.jit(step)
        return lambda: step(*args)

    rows = []
    for label, name, args, diff, kwargs, out_index in _op_cases():
        conv = name == "conv2d"     # conv rows: forward + backward (like torch's rows), x, w and b all differentiated
        fb = (lambda op: conv_fwd_bwd(op, args, kwargs)) if conv else (
            lambda op: _fwd_bwd(op, args, diff, kwargs, out_index))
        cands = [Candidate("manual", traced(fb(getattr(manual, name)), not conv), items=BATCH),
                 Candidate("autodiff", fb(getattr(ops, name)), items=BATCH)]
        if conv and onednn.available():   # its default algorithm (Winograd where it applies), and the direct one
            cands.append(Candidate("manual (oneDNN)", traced(fb(manual.conv2d), True), items=BATCH))
            cands.append(Candidate("manual (oneDNN direct)", traced(fb(manual.conv2d), True, "direct"), items=BATCH))
        if conv and torch_mod is not None:
            cands += [_torch_conv(torch_mod, args), torch_channels_last(args)]
        res = time_candidates(cands, blocks=blocks, reps=reps)
        ratios = {"manual/autodiff": ratio(res, "manual", "autodiff")}
        if "torch NCHW" in res:
            ratios["manual/torch NCHW"] = ratio(res, "manual", "torch NCHW")
            ratios["manual/torch channels-last"] = ratio(res, "manual", "torch channels-last")
        if "manual (oneDNN)" in res:
            ratios["manual (oneDNN)/manual"] = ratio(res, "manual (oneDNN)", "manual")
            ratios["manual (oneDNN)/manual (oneDNN direct)"] = ratio(res, "manual (oneDNN)", "manual (oneDNN direct)")
            for t in ("torch NCHW", "torch channels-last"):
                if t in res:
                    ratios[f"manual (oneDNN)/{t}"] = ratio(res, "manual (oneDNN)", t)
        rows.append({"name": f"op: {label}", "candidates": res, "ratios": ratios})
    return rows


def _torch_conv(torch, args):
    x, w, b = (np.asarray(a) for a in args)
    xt = torch.tensor(x.transpose(0, 3, 1, 2).copy(), requires_grad=True)
    wt = torch.tensor(w.transpose(3, 2, 0, 1).copy(), requires_grad=True)
    bt = torch.tensor(b.copy(), requires_grad=True)
    ct = torch.randn(torch.nn.functional.conv2d(xt, wt, bt, padding=1).shape)

    def run():
        for t in (xt, wt, bt):
            t.grad = None
        torch.nn.functional.conv2d(xt, wt, bt, padding=1).backward(ct)
        return None
    return Candidate("torch NCHW", run, items=BATCH, sync=lambda o: o)


# --- the training step ---------------------------------------------------------------------------------

def jaxnet_convnet(impl, batchnorm=False):
    from jaxnet import nn
    layers, names = [], []
    for i, c in enumerate((32, 64, 128), start=1):
        conv = nn.Conv2D(c, kernel=3, padding="SAME", impl=impl, bias=not batchnorm)
        norm = [nn.BatchNorm(impl=impl)] if batchnorm else []
        layers += [conv] + norm + [nn.ReLU(impl=impl), nn.MaxPool2D(2, impl=impl)]
        names += [f"conv{i}"] + ([f"bn{i}"] if batchnorm else []) + [f"relu{i}", f"pool{i}"]
    layers += [nn.Flatten(), nn.Affine(10, impl=impl)]
    names += ["flatten", "fc"]
    return nn.Sequential(tuple(layers), tuple(names))


def _data(seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal((BATCH, 32, 32, 3)).astype(np.float32), rng.integers(0, 10, BATCH).astype(np.int32)


def _jaxnet_step(impl, batchnorm=False):
    import optax

    from jaxnet.train import create_train_state, make_train_step
    model = jaxnet_convnet(impl, batchnorm)
    opt = optax.adam(1e-3)
    step = make_train_step(model, opt, impl=impl)
    # device_put compiles nothing (jnp.asarray / jnp.ones compile small programs: start-up that is harness)
    x, y = (jax.device_put(a) for a in _data())
    mask = jax.device_put(np.ones(BATCH, np.float32))
    holder = {"ts": create_train_state(model, opt, 0, (BATCH, 32, 32, 3))}

    def run():
        holder["ts"], metrics = step(holder["ts"], x, y, mask)
        return metrics["loss"]
    return run, step, holder, (x, y, mask)


def _flax_step(batchnorm=False):
    import flax.linen as fnn
    import optax

    class Net(fnn.Module):
        @fnn.compact
        def __call__(self, x):
            for c in (32, 64, 128):
                x = fnn.Conv(c, (3, 3), padding="SAME", use_bias=not batchnorm)(x)
                if batchnorm:
                    x = fnn.BatchNorm(use_running_average=False, momentum=0.9, epsilon=1e-5)(x)
                x = fnn.max_pool(fnn.relu(x), (2, 2), (2, 2))
            return fnn.Dense(10)(x.reshape(x.shape[0], -1))

    net, opt = Net(), optax.adam(1e-3)
    x, y = (jnp.asarray(a) for a in _data())
    variables = net.init(jax.random.PRNGKey(0), x)
    params, stats = variables["params"], variables.get("batch_stats", {})
    holder = {"p": params, "s": stats, "o": opt.init(params)}

    @jax.jit
    def step(p, s, o, x, y):
        def loss(p):
            if batchnorm:
                logits, new = net.apply({"params": p, "batch_stats": s}, x, mutable=["batch_stats"])
                s2 = new["batch_stats"]
            else:
                logits, s2 = net.apply({"params": p}, x), s
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), s2
        (l, s), g = jax.value_and_grad(loss, has_aux=True)(p)
        u, o = opt.update(g, o, p)
        return optax.apply_updates(p, u), s, o, l

    def run():
        holder["p"], holder["s"], holder["o"], l = step(holder["p"], holder["s"], holder["o"], x, y)
        return l
    return run


def _torch_step(torch, channels_last, batchnorm=False):
    tnn = torch.nn
    torch.manual_seed(0)
    layers = []
    for cin, c in ((3, 32), (32, 64), (64, 128)):
        layers += [tnn.Conv2d(cin, c, 3, padding=1, bias=not batchnorm)]
        layers += [tnn.BatchNorm2d(c, momentum=0.1, eps=1e-5)] if batchnorm else []
        layers += [tnn.ReLU(), tnn.MaxPool2d(2)]
    model = tnn.Sequential(*layers, tnn.Flatten(), tnn.Linear(128 * 4 * 4, 10))
    x, y = _data()
    xt, yt = torch.tensor(x.transpose(0, 3, 1, 2).copy()), torch.tensor(y.astype(np.int64))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        xt = xt.contiguous(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    lossf = tnn.CrossEntropyLoss()

    def run():
        opt.zero_grad(set_to_none=True)
        loss = lossf(model(xt), yt)
        loss.backward()
        opt.step()
        return None
    return run


def bench_train_step(*, blocks=5, reps=3, torch_mod=None, batchnorm=False) -> dict:
    """One Adam step of the benchmark convnet (``batchnorm``: with BN after each conv), every candidate
    timed side by side; images/s ratios."""
    from jaxnet.ops import onednn
    bn = batchnorm
    with onednn.disabled():              # "jaxnet manual": XLA's kernels (traced here, kept by jit)
        manual_xla = _jaxnet_step("manual", bn)[0]
        jax.block_until_ready(manual_xla())
    cands = [Candidate("jaxnet manual", manual_xla, items=BATCH),
             Candidate("jaxnet autodiff", _jaxnet_step("auto", bn)[0], items=BATCH),
             Candidate("flax.linen", _flax_step(bn), items=BATCH)]
    if onednn.available():               # the same step with the oneDNN kernels (the cpu-fast extra)
        cands.insert(1, Candidate("jaxnet manual (oneDNN)", _jaxnet_step("manual", bn)[0], items=BATCH))
        with onednn.use_algorithm("direct"):    # and with its direct convolutions only (no Winograd)
            direct = _jaxnet_step("manual", bn)[0]
            jax.block_until_ready(direct())
        cands.insert(2, Candidate("jaxnet manual (oneDNN direct)", direct, items=BATCH))
    if torch_mod is not None:
        cands += [Candidate("torch NCHW", _torch_step(torch_mod, False, bn), items=BATCH, sync=lambda o: o),
                  Candidate("torch channels-last", _torch_step(torch_mod, True, bn), items=BATCH, sync=lambda o: o)]
    res = time_candidates(cands, blocks=blocks, reps=reps)
    ips = lambda n: res[n]["images_per_second"]
    ratios = {"jaxnet manual / jaxnet autodiff (images/s)": ips("jaxnet manual") / ips("jaxnet autodiff"),
              "jaxnet manual / flax.linen (images/s)": ips("jaxnet manual") / ips("flax.linen")}
    if torch_mod is not None:
        ratios["jaxnet manual / torch NCHW (images/s)"] = ips("jaxnet manual") / ips("torch NCHW")
        ratios["jaxnet manual / torch channels-last (images/s)"] = ips("jaxnet manual") / ips("torch channels-last")
    if "jaxnet manual (oneDNN)" in res:
        for other in ("jaxnet manual (oneDNN direct)", "jaxnet manual", "torch NCHW", "torch channels-last"):
            if other in res:
                ratios[f"jaxnet manual (oneDNN) / {other} (images/s)"] = ips("jaxnet manual (oneDNN)") / ips(other)
    name = "train step: convnet 32/64/128" + (" with batch norm" if bn else "") + ", batch 128, Adam"
    return {"name": name, "candidates": res, "ratios": ratios}


def bench_train_step_default_flags(*, quick=False, batchnorm=False) -> dict:
    """The same step in a fresh process with jaxnet's XLA flags off (``JAXNET_XLA_FLAGS=0``):
    XLA's default CPU lowering, for the flax.linen baseline the issue names."""
    code = ("import json; from jaxnet.bench.suites import bench_train_step; "
            f"print(json.dumps(bench_train_step(blocks={2 if quick else 5}, reps={2 if quick else 3}, "
            f"batchnorm={bool(batchnorm)})))")
    env = {**os.environ, "JAXNET_XLA_FLAGS": "0"}
    env["XLA_FLAGS"] = " ".join(f for f in env.get("XLA_FLAGS", "").split() if "ynn_fusion" not in f)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    row = json.loads(out.stdout.strip().splitlines()[-1])
    row["name"] += " (default XLA flags, separate process)"
    return row


def bench_compile() -> dict:
    """Compile time of the manual train step, and import + first step in a fresh process: the median
    of 5 processes with an empty compilation cache and of 5 with a warm one, wall and CPU time
    (user + system) each, with the load average before and after."""
    _, step, holder, (x, y, mask) = _jaxnet_step("manual")
    t0 = time.perf_counter()
    step.lower(holder["ts"], x, y, mask).compile()
    compile_s = time.perf_counter() - t0
    # each fresh process prints its wall time and its CPU time (user + system, all threads: what
    # the start-up costs, less sensitive than the wall time to other jobs on a shared machine)
    code = ("import time; t0 = time.perf_counter(); import jaxnet; {cache}"
            "from jaxnet.bench.suites import _jaxnet_step; "
            "run = _jaxnet_step('manual')[0]; run().block_until_ready(); import resource; "
            "r = resource.getrusage(resource.RUSAGE_SELF); "
            "print(time.perf_counter() - t0, r.ru_utime + r.ru_stime)")

    def walls(cache_dir, n):
        cache = f"jaxnet.enable_compilation_cache({cache_dir!r}); " if cache_dir else ""
        env = {**os.environ, "JAXNET_COMPILATION_CACHE": cache_dir or "0"}
        out = []
        for _ in range(n):
            res = subprocess.run([sys.executable, "-c", code.format(cache=cache)], capture_output=True, text=True,
                                 check=True, env=env)
            out.append(tuple(float(v) for v in res.stdout.strip().splitlines()[-1].split()))
        return out

    def row(samples):
        return {"median_ms": float(np.median([w for w, _ in samples])) * 1e3,
                "cpu_median_ms": float(np.median([c for _, c in samples])) * 1e3, "samples": len(samples),
                "wall_ms": [w * 1e3 for w, _ in samples], "cpu_ms": [c * 1e3 for _, c in samples]}

    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    cold = walls(None, 5)
    with tempfile.TemporaryDirectory(prefix="jaxnet-bench-cache-") as tmp:
        walls(tmp, 1)  # fills the cache
        warm = walls(tmp, 5)
    return {"name": "compile and start-up",
            "candidates": {"jit compile of the train step": {"median_ms": compile_s * 1e3},
                           "import jaxnet + first step (fresh process)": row(cold),
                           # the same processes' CPU time, as a row of its own so the text report shows it
                           "import jaxnet + first step (fresh process), CPU user+sys":
                               {"median_ms": row(cold)["cpu_median_ms"], "samples": len(cold)},
                           "import jaxnet + first step (fresh process, warm compilation cache)": row(warm)},
            "ratios": {},
            "load_average_1min": {"before": load_before,
                                  "after": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}}


def bench_knn(*, blocks=5, reps=2, quick=False) -> dict:
    """kNN L2 distances (2,000 test x 10,000 train x 3072; ``quick``: 200 x 1,000) GFLOP/s against
    a matmul of the same size."""
    from jaxnet.classic.knn import pairwise_distances
    rng = np.random.default_rng(0)
    n_te, n_tr = (200, 1000) if quick else (2000, 10000)
    te = jnp.asarray(rng.standard_normal((n_te, 3072), np.float32))
    tr = jnp.asarray(rng.standard_normal((n_tr, 3072), np.float32))
    flops = 2.0 * te.shape[0] * tr.shape[0] * te.shape[1]
    mm = jax.jit(lambda a, b: a @ b.T)
    res = time_candidates([
        Candidate("knn pairwise_distances l2", lambda: pairwise_distances(te, tr, metric="l2"), flops=flops),
        Candidate("matmul (same shapes)", lambda: mm(te, tr), flops=flops)], blocks=blocks, reps=reps)
    return {"name": f"kNN distances {n_te} x {n_tr} x 3072", "candidates": res,
            "ratios": {"knn / matmul (GFLOP/s)": res["knn pairwise_distances l2"]["gflops"]
                       / res["matmul (same shapes)"]["gflops"]}}


def environment() -> dict:
    import optax
    env = {"jax": jax.__version__, "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
           "optax": optax.__version__, "numpy": np.__version__, "python": sys.version.split()[0],
           "backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
           "cpu_count": os.cpu_count(), "XLA_FLAGS": os.environ.get("XLA_FLAGS", "")}
    try:
        import flax
        env["flax"] = flax.__version__
    except ImportError:
        pass
    try:
        import torch
        env["torch"] = torch.__version__
        env["torch_threads"] = torch.get_num_threads()
    except ImportError:
        env["torch"] = None
    return env
