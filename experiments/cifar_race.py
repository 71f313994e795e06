"""Time to 85 % CIFAR-10 test accuracy: jaxnet against the same training written in PyTorch.

    python -m experiments.cifar_race --data-dir /path/to/cifar10-jpeg.tar.gz [--target 0.85]
                                     [--framework both|jaxnet|torch] [--epochs 16] [--out DIR]

The net and recipe are ``experiments.convnets``'s best net (``nn.fast_convnet``: stem 16, blocks
32/64/128, batch norm, no conv bias; Nesterov SGD 0.9, batch 256, 2-epoch warmup to lr 0.2 then
a cosine over 16 epochs, L2 5e-4 on the conv/affine weights, label smoothing 0.2, 2-pixel random
crops and flips; all 50,000 training images; test accuracy with flip test-time augmentation
after every epoch). jaxnet trains it with ``jaxnet.train.fit`` exactly as that experiment does
(manual backward passes; the oneDNN convolution when the ``cpu-fast`` extra is installed).

The PyTorch run (channels-last, ``torch.nn`` + ``torch.optim.SGD(nesterov=True)``, the
``bench`` extra) replays what jaxnet's run sees:

* the same initial weights (jaxnet's initial ``TrainState``, copied into the torch modules);
* the same batches in the same order (``jaxnet.train.batches`` with the epoch keys ``fit`` uses,
  the last partial batch padded with masked copies);
* the same augmentation (each step's crop offsets and flips drawn from the step key chain that
  ``jaxnet.train``'s step splits, applied in torch as one gather);
* the same per-step learning rate (the optax schedule evaluated per step), the same weight-decay
  mask and the same masked, label-smoothed loss.

(Differences left: torch's running variance is the unbiased one, jaxnet's the biased one; float
rounding.)  Each framework runs in its own process, one after the other, so neither shares the
CPU or an allocator setting with the other: the jaxnet process keeps large malloc blocks on one
heap from its start, as ``jaxnet train`` does (``jaxnet.ops.onednn.keep_large_blocks_at_start``),
the PyTorch process keeps glibc's default (``--torch-malloc jaxnet`` gives it the same setting,
for a like-for-like run). Time to the target = training wall time (steps
only: compilation included, the per-epoch test evaluation excluded) summed to the end of the
first epoch whose flip-TTA test accuracy reaches it; training stops there (``--run-to-end``:
all epochs). Figure ``race.png``: test accuracy against training seconds, both frameworks.

``--quick``: 5,000 training and 1,000 test images, 4 epochs (a throughput comparison: 0.85 is out
of reach there); ``--smoke``: 300 / 200 images, 1 epoch (the test suite's run). Neither stops
at the target.
Bad settings (``--target`` outside (0, 1], ``--epochs`` / ``--threads`` < 1, no PyTorch for the
torch run) end with one line ``experiments.cifar_race: ...`` and exit status 2.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import subprocess
import sys
import time

import numpy as np

from experiments._common import (
    fail, figure, float_normalized, grid_legend, load_data, parse_args, print_table, quick_subset, save_figure, sized,
    write_results,
)

NAME = "cifar_race"
DESCRIPTION = "Time to 85% CIFAR-10 test accuracy: jaxnet vs the same net, recipe and data in PyTorch."
FRAMEWORKS = ("jaxnet", "torch")


def _extra(parser) -> None:
    parser.add_argument("--framework", choices=("both",) + FRAMEWORKS, default="both",
                        help="both (default): each in its own process, jaxnet first, then the comparison")
    parser.add_argument("--target", type=float, default=0.85, help="test accuracy (flip TTA) to reach")
    parser.add_argument("--epochs", type=int, default=None, help="schedule length in epochs (default 16)")
    parser.add_argument("--run-to-end", action="store_true", help="train all epochs instead of stopping at the target")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all CPUs)")
    parser.add_argument("--torch-malloc", choices=("default", "jaxnet"), default="default",
                        help="default: the PyTorch process keeps glibc's malloc as a PyTorch user has it; "
                             "jaxnet: it gets the setting the jaxnet process runs with (one heap for large "
                             "blocks), for a like-for-like comparison")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def check_args(args) -> None:
    """One line and exit 2 for a setting that cannot run (see the module docstring)."""
    if not (0.0 < args.target <= 1.0):
        _fail(f"--target must be an accuracy in (0, 1], got {args.target}")
    for name, v in (("--epochs", args.epochs), ("--threads", args.threads)):
        if v is not None and v < 1:
            _fail(f"{name} must be >= 1, got {v}")
    if args.framework in ("both", "torch"):
        try:
            import torch  # noqa: F401
        except ImportError:
            _fail("the PyTorch run needs torch (the bench extra: `make race` or `make bench` install it, or "
                  "pip install -e '.[bench]'); "
                  "--framework jaxnet runs jaxnet's side alone")


def recipe(args) -> argparse.Namespace:
    """The convnets experiment's arguments for its best net (its defaults), on ``args``' seed/out."""
    from experiments import convnets
    p = argparse.ArgumentParser()
    convnets._extra(p)
    r = p.parse_args([])
    r.seed, r.out, r.flip, r.time_budget = args.seed, args.out, True, float("inf")
    return r


def prepare_data(args):
    """The best net's data: CIFAR-10 train + validation (50,000) for training, the test split,
    float-normalized NHWC (``--quick``: 5,000 / 1,000 images, ``--smoke``: 300 / 200)."""
    ds = load_data(args, val_size=1000)
    if args.quick:   # --smoke implies --quick
        n_train, n_test = (300, 200) if args.smoke else (5000, 1000)
        ds = quick_subset(ds, n_train=n_train, n_test=n_test, seed=args.seed)
        ds = ds.replace(x_val=ds.x_val[:0], y_val=ds.y_val[:0])
    ds = float_normalized(ds)
    return ds.replace(x_train=np.concatenate([ds.x_train, ds.x_val]), y_train=np.concatenate([ds.y_train, ds.y_val]),
                      x_val=ds.x_val[:0], y_val=ds.y_val[:0])


# ---------------------------------------------------------------- jaxnet

def run_jaxnet(args, ds, epochs: int) -> dict:
    from experiments.convnets import run_best
    r = recipe(args)
    out = run_best(r, ds, quick=args.quick, epochs=epochs, stop_at=None if args.run_to_end or args.quick else args.target)
    h = out["history"]
    return {"framework": "jaxnet", "history": {"epoch": h["epoch"], "test_acc": h["test_acc"],
                                               "test_acc_tta": h["test_acc_tta"], "train_loss": h["train_loss"],
                                               "train_time_s": h["train_time_s"], "cum_train_time_s": h["cum_train_time_s"]},
            "first_step_loss": out["first_step_loss"], "images_per_second_median": out["images_per_second_median"],
            "recipe": out["recipe"], "model": out["model"]}


# ---------------------------------------------------------------- what torch replays

def replay_plan(args, ds, epochs: int) -> dict:
    """jaxnet's initial state, schedule, epoch keys and per-step augmentation draws for ``fit``'s
    run of the recipe with key ``args.seed`` (computed before any timing)."""
    import jax

    from experiments.convnets import warmup_cosine_plan
    from jaxnet.nn import fast_convnet
    from jaxnet.optim import decay_mask, make_optimizer
    from jaxnet.train import fit
    from jaxnet.train.state import as_key

    r = recipe(args)
    model = fast_convnet(stem=r.stem, widths=tuple(r.widths), norm=r.norm, impl=r.impl)
    bs, steps, warmup, sched = warmup_cosine_plan(r, len(ds.y_train), epochs)
    opt = make_optimizer("nesterov", sched, weight_decay=r.weight_decay)
    ts = fit(model, ds, optimizer=opt, epochs=0, batch_size=bs, key=r.seed, progress=False).train_state
    data_key = jax.random.split(as_key(r.seed))[1]
    total = epochs * steps
    offsets, flips = augment_draws(ts.key, total, bs, r.crop_padding)
    return {"recipe": r, "params": jax.device_get(ts.params), "state": jax.device_get(ts.state),
            "decay": decay_mask(ts.params), "batch_size": bs, "steps_per_epoch": steps, "epochs": epochs,
            "lr": np.asarray(jax.device_get(jax.vmap(sched)(np.arange(total))), np.float64),
            "epoch_keys": [jax.random.fold_in(data_key, e) for e in range(epochs)],
            "offsets": offsets, "flips": flips}


def augment_draws(key, steps: int, batch: int, padding: int):
    """(offsets (steps, batch, 2) int, flips (steps, batch) bool): what ``jaxnet.train``'s step
    ``t`` draws for ``jaxnet.data.augment`` from the train state's key chain (``next, step =
    split(key)``; ``_, augment = split(step)``; ``crop, flip = split(augment)``)."""
    import jax

    def body(k, _):
        next_key, step_key = jax.random.split(k)
        _, aug_key = jax.random.split(step_key)
        crop_key, flip_key = jax.random.split(aug_key)
        off = jax.random.randint(crop_key, (batch, 2), 0, 2 * padding + 1)
        return next_key, (off, jax.random.bernoulli(flip_key, 0.5, (batch,)))

    _, (off, flip) = jax.jit(lambda k: jax.lax.scan(body, k, None, length=steps))(key)
    return np.asarray(off), np.asarray(flip)


# ---------------------------------------------------------------- torch

def torch_augment(torch, x, offsets, flips, padding: int):
    """x (N, H, W, C) float tensor; offsets (N, 2) ints; flips (N,) bools -> the crops of the
    zero-padded images at those offsets, mirrored where flips: jaxnet.data.augment's result."""
    n, h, w, _ = x.shape
    padded = torch.nn.functional.pad(x, (0, 0, padding, padding, padding, padding))
    off = torch.from_numpy(np.array(offsets, np.int64))
    cols = torch.arange(w)
    cols = torch.where(torch.from_numpy(np.array(flips, bool))[:, None], w - 1 - cols, cols) + off[:, 1:2]   # (N, W)
    rows = torch.arange(h)[None, :] + off[:, 0:1]                                                       # (N, H)
    return padded[torch.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def torch_model(torch, params, state):
    """``fast_convnet``'s torch twin (channels-last), weights and running statistics copied from
    jaxnet's ``params`` / ``state`` trees. Returns (model, {param: decayed?})."""
    tnn = torch.nn

    def t(a):
        return torch.from_numpy(np.array(a, np.float32))

    def conv(p):
        w = np.asarray(p["w"])                       # HWIO
        c = tnn.Conv2d(w.shape[2], w.shape[3], 3, padding=1, bias=False)
        c.weight.data = t(w.transpose(3, 2, 0, 1))
        return c

    def bn(p, s):
        b = tnn.BatchNorm2d(p["gamma"].shape[0], eps=1e-5, momentum=0.1)
        b.weight.data, b.bias.data = t(p["gamma"]), t(p["beta"])
        b.running_mean.data, b.running_var.data = t(s["mean"]), t(s["var"])
        return b

    layers = [conv(params["stem"]["conv"]), bn(params["stem"]["norm"], state["stem"]["norm"]), tnn.ReLU()]
    b = 1
    while f"block{b}" in params:
        p, s = params[f"block{b}"], state[f"block{b}"]
        layers += [conv(p["conv1"]), tnn.MaxPool2d(2), bn(p["norm1"], s["norm1"]), tnn.ReLU(),
                   conv(p["conv2"]), bn(p["norm2"], s["norm2"]), tnn.ReLU()]
        b += 1

    class Net(tnn.Module):
        def __init__(self):
            super().__init__()
            self.features = tnn.Sequential(*layers)
            self.fc = tnn.Linear(*np.asarray(params["fc"]["w"]).shape)
            self.fc.weight.data = t(np.asarray(params["fc"]["w"]).T)
            self.fc.bias.data = t(params["fc"]["b"])

        def forward(self, x):
            return self.fc(torch.amax(self.features(x), dim=(2, 3)))

    net = Net().to(memory_format=torch.channels_last)
    decayed = {id(m.weight) for m in net.modules() if isinstance(m, (tnn.Conv2d, tnn.Linear))}
    return net, decayed


def run_torch(args, ds, plan: dict) -> dict:
    import torch
    import torch.nn.functional as F
    from tqdm.auto import tqdm

    from jaxnet.train import batches

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    r = plan["recipe"]
    net, decayed = torch_model(torch, plan["params"], plan["state"])
    params = list(net.parameters())
    opt = torch.optim.SGD([{"params": [p for p in params if id(p) in decayed], "weight_decay": r.weight_decay},
                           {"params": [p for p in params if id(p) not in decayed], "weight_decay": 0.0}],
                          lr=0.0, momentum=0.9, nesterov=True)
    x_test = torch.from_numpy(np.ascontiguousarray(ds.x_test)).permute(0, 3, 1, 2)
    y_test = torch.from_numpy(ds.y_test.astype(np.int64))
    hist = {k: [] for k in ("epoch", "test_acc", "test_acc_tta", "train_loss", "train_time_s", "cum_train_time_s")}
    cum, first_loss, step = 0.0, None, 0
    epochs = plan["epochs"]
    for epoch in range(epochs):
        net.train()
        losses = []
        t0 = time.perf_counter()
        for xb, yb, mb in batches(ds.x_train, ds.y_train, plan["batch_size"], key=plan["epoch_keys"][epoch]):
            x = torch_augment(torch, torch.from_numpy(xb), plan["offsets"][step], plan["flips"][step], r.crop_padding)
            x = x.permute(0, 3, 1, 2)                      # NCHW view of NHWC memory: channels-last
            y, m = torch.from_numpy(yb.astype(np.int64)), torch.from_numpy(mb)
            for g in opt.param_groups:
                g["lr"] = float(plan["lr"][step])
            opt.zero_grad(set_to_none=True)
            per = F.cross_entropy(net(x), y, reduction="none", label_smoothing=r.label_smoothing)
            loss = (per * m).sum() / m.sum().clamp(min=1.0)
            loss.backward()
            opt.step()
            losses.append(loss.detach())
            step += 1
        dt = time.perf_counter() - t0
        cum += dt
        first_loss = float(losses[0]) if first_loss is None else first_loss
        net.eval()
        with torch.no_grad():
            plain = tta = 0
            for i in range(0, len(y_test), 500):
                xb, yb = x_test[i:i + 500], y_test[i:i + 500]
                s1 = net(xb)
                s2 = net(xb.flip(3))
                plain += int((s1.argmax(1) == yb).sum())
                tta += int(((s1 + s2).argmax(1) == yb).sum())
        n_test = len(y_test)
        for k, v in (("epoch", epoch + 1), ("test_acc", plain / n_test), ("test_acc_tta", tta / n_test),
                     ("train_loss", float(torch.stack(losses).mean())), ("train_time_s", dt),
                     ("cum_train_time_s", cum)):
            hist[k].append(v)
        tqdm.write(f"torch epoch {epoch + 1:2d}: train loss {hist['train_loss'][-1]:.4f} | test {plain / n_test:.4f} "
                   f"(flip TTA {tta / n_test:.4f}) | {cum / 60:.1f} min of training, {len(ds.y_train) / dt:.0f} img/s")
        if not (args.run_to_end or args.quick) and tta / n_test >= args.target and epoch + 1 < epochs:
            tqdm.write(f"stopping: flip-TTA accuracy {tta / n_test:.4f} reached {args.target}")
            break
    ips = [len(ds.y_train) / t for t in hist["train_time_s"]]
    return {"framework": "torch", "history": hist, "first_step_loss": first_loss,
            "images_per_second_median": float(np.median(ips[1:] if len(ips) > 1 else ips)),
            "torch": torch.__version__, "threads": torch.get_num_threads()}


# ---------------------------------------------------------------- comparison

def time_to(result: dict, target: float):
    h = result["history"]
    for a, c in zip(h["test_acc_tta"], h["cum_train_time_s"]):
        if a >= target:
            return c
    return None


def compare(runs: dict, target: float) -> dict:
    t = {fw: time_to(runs[fw], target) for fw in runs}
    out = {"time_to_target_s": t, "target": target}
    if all(v is not None for v in t.values()) and set(t) == set(FRAMEWORKS):
        out["speedup_jaxnet_over_torch"] = t["torch"] / t["jaxnet"]
    return out


def plot(runs: dict, target: float, path: str) -> str:
    """Test accuracy (flip TTA) against training seconds (left) and against epochs (right: the
    two runs of one recipe should track each other), both frameworks, the target dashed."""
    fig = figure((12, 4.5))
    ax_t, ax_e = fig.subplots(1, 2)
    for fw, style in (("jaxnet", "o-"), ("torch", "s-")):
        if fw in runs:
            h = runs[fw]["history"]
            label = "jaxnet (manual backward)" if fw == "jaxnet" else "PyTorch channels-last"
            ax_t.plot([0.0] + h["cum_train_time_s"], [0.1] + h["test_acc_tta"], style, ms=4, label=label)
            ax_e.plot(h["epoch"], h["test_acc_tta"], style, ms=4, label=label)
    for ax in (ax_t, ax_e):
        ax.axhline(target, color="grey", ls="--", lw=1)
        ax.set_ylabel("test accuracy (flip TTA)")
    ax_t.set_xlabel("training seconds (steps only, compilation included)")
    ax_e.set_xlabel("epoch")
    grid_legend([ax_t, ax_e])
    return save_figure(fig, path, f"fast_convnet on CIFAR-10: time to {target:.0%}, the same recipe, weights and data")


def _child(args, framework: str) -> dict:
    """Runs one framework in a fresh process (``--framework X``) and reads its JSON."""
    argv = [sys.executable, "-m", "experiments.cifar_race", "--framework", framework, "--data-dir", args.data_dir,
            "--out", os.path.join(args.out, framework), "--seed", str(args.seed), "--target", str(args.target)]
    for flag, on in (("--smoke", args.smoke), ("--quick", args.quick), ("--run-to-end", args.run_to_end)):
        if on:
            argv.append(flag)
    if args.epochs:
        argv += ["--epochs", str(args.epochs)]
    if args.threads:
        argv += ["--threads", str(args.threads)]
    argv += ["--torch-malloc", args.torch_malloc]
    env = dict(os.environ)
    if framework == "torch":
        env["JAXNET_ONEDNN"] = "0"   # the torch process runs no jaxnet convolution: keep malloc as torch has it
    subprocess.run(argv, check=True, env=env, cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    with open(os.path.join(args.out, framework, "results.json")) as f:
        return json.load(f)["runs"][framework]


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    check_args(args)
    os.makedirs(args.out, exist_ok=True)
    epochs = args.epochs or sized(args, 16, 4, 1)
    if args.framework == "both":
        runs = {fw: _child(args, fw) for fw in FRAMEWORKS}
    else:
        from jaxnet.ops.onednn import keep_large_blocks_at_start
        # as `jaxnet train` runs: large blocks on one heap, set before any thread allocates
        tuned = (args.framework == "jaxnet" or args.torch_malloc == "jaxnet") and keep_large_blocks_at_start()
        malloc = "large blocks on one heap" if tuned else "glibc default"
        ds = prepare_data(args)
        print(f"cifar10: {len(ds.y_train)} training, {len(ds.y_test)} test images; {args.framework}; "
              f"malloc: {malloc}", flush=True)
        if args.framework == "jaxnet":
            runs = {"jaxnet": run_jaxnet(args, ds, epochs)}
            from jaxnet.ops import onednn        # which convolution kernels the run had
            info = onednn.info()
            runs["jaxnet"]["onednn"] = ({"version": info["version"], "conv_algorithm": onednn.conv_algorithm()}
                                        if info["ok"] else {"not used": info["reason"]})
        else:
            runs = {"torch": run_torch(args, ds, replay_plan(args, ds, epochs))}
        runs[args.framework]["malloc"] = malloc
    results = {"runs": runs, "comparison": compare(runs, args.target), "epochs": epochs}
    if args.framework == "both":
        results["figures"] = {"race": os.path.basename(plot(runs, args.target, os.path.join(args.out, "race.png")))}
        c = results["comparison"]
        print_table(["framework", f"time to {args.target} (s)", "img/s (median epoch)", "first-step loss"],
                    [[fw, c["time_to_target_s"][fw] or "not reached", f"{runs[fw]['images_per_second_median']:.0f}",
                      f"{runs[fw]['first_step_loss']:.6f}"] for fw in FRAMEWORKS],
                    title=f"\njaxnet / PyTorch speed-up to {args.target}: "
                          f"{c.get('speedup_jaxnet_over_torch', float('nan')):.2f}x")
    path = write_results(args.out, results, args)
    print(f"\nwrote {path}")
    return results


if __name__ == "__main__":
    main()
