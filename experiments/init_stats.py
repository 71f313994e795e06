"""Initialization and activation statistics, the course's deep-net experiment.

    python -m experiments.init_stats [--quick] [--out DIR]

A fully connected net of ``--layers`` (default 10) hidden layers of ``--hidden`` (default 500)
units, fed ``--n`` (default 1000) x ``--hidden`` standard-normal inputs, biases zero, built from
``jaxnet.functional`` ops with the hand-written backward (``affine``, ``tanh``, ``relu`` with
``impl="manual"``) and weights from ``jaxnet.nn.init``:

=================  ===========  =========================================  ===========================
setting            activation   weights                                    course's claim
=================  ===========  =========================================  ===========================
``tanh_0.01``      tanh         ``small``: ``0.01 * N(0, 1)``               activations -> 0, grads vanish
``tanh_1.0``       tanh         ``small(scale=1)``: ``N(0, 1)``             saturate at +-1, local grads ~0
``tanh_xavier``    tanh         ``xavier``: ``N(0, 1) / sqrt(fan_in)``      stable
``relu_xavier``    relu         ``xavier``                                  std ~ / sqrt(2) per layer -> 0
``relu_he``        relu         ``he``: ``N(0, 1) * sqrt(2 / fan_in)``      stable
=================  ===========  =========================================  ===========================

Per layer: the mean and std of the activations (the course's figure), a histogram, the
fraction of saturated tanh units (``|h| > 0.99``) or dead ReLU outputs (``h == 0``), and
the gradients from backpropagating a standard-normal upstream gradient ``dL/dh_L ~ N(0, 1)``
layer by layer through each op's ``jax.vjp`` (the manual backward): the Frobenius norm of
``dL/dW_l``, its ratio to ``||W_l||``, and the std of ``dL/dh_l`` (the signal reaching that layer).

Note on the gradients: ``dL/dW_l = h_{l-1}^T dz_l`` is the product of the forward signal
below layer l and the backward signal above it, so when both shrink by the same factor per
layer (tanh 0.01, ReLU Xavier) *every* layer's weight gradient is small by about the same
total factor, and the last/first weight-grad ratio stays near 1; the vanishing shows in the
absolute level (``grad_vs_reference``: mean weight-grad norm over the stable setting's for the
same non-linearity) and in ``dL/dh_l``, which shrinks towards the input.

Checks (``checks`` in ``results.json``, each a boolean with the numbers it compares):

- ``tanh_0.01``: last-layer std < 1e-3 x first, per-layer std ratio (geometric mean) < 0.5,
  and weight grads < 1e-3 x Xavier-tanh's (vanish);
- ``tanh_1.0``: > 80 % of |activations| > 0.95 in every layer and the mean local gradient
  ``1 - h^2`` < 0.1 in every layer (saturated: gradients through tanh ~0);
- ``tanh_xavier``: last std within 0.25-4x of the first, every layer's std in [0.1, 1], and the
  last layers' std ratio > 0.85 (a slow, not exponential, decay; tanh contracts: std ~ 1/sqrt(2l));
- ``relu_xavier``: last std < 0.1 x first and per-layer std ratio in [0.6, 0.8] (1/sqrt(2));
- ``relu_he``: last std within 0.5-2x of the first and per-layer std ratio in [0.9, 1.1].

``--quick``: 10 layers of 200 units on 300 inputs (the same depth, so the same claims hold):
a few seconds. Outputs in ``--out``: ``results.json``, ``histograms.png`` (rows = settings,
columns = layers, as in the lecture) and ``stats.png`` (mean / std / weight-grad norm /
``dL/dh`` std per layer, log scale where it matters); a table is printed. ``--data-dir`` is
accepted (common option) and ignored: the inputs are random.
"""

from __future__ import annotations

import math
import os

import numpy as np

from experiments._common import Timer, figure, parse_args, print_table, save_figure, write_results

NAME = "init_stats"
BINS = 50
# name -> (activation, initializer name, initializer kwargs, label)
SETTINGS = {
    "tanh_0.01": ("tanh", "small", {"scale": 0.01}, "tanh, W ~ 0.01 N(0,1)"),
    "tanh_1.0": ("tanh", "small", {"scale": 1.0}, "tanh, W ~ 1.0 N(0,1)"),
    "tanh_xavier": ("tanh", "xavier", {}, "tanh, Xavier 1/sqrt(fan_in)"),
    "relu_xavier": ("relu", "xavier", {}, "ReLU, Xavier 1/sqrt(fan_in)"),
    "relu_he": ("relu", "he", {}, "ReLU, He sqrt(2/fan_in)"),
}
REFERENCE = {"tanh": "tanh_xavier", "relu": "relu_he"}


def _extra(parser) -> None:
    parser.add_argument("--layers", type=int, default=10, help="hidden layers (default 10)")
    parser.add_argument("--hidden", type=int, default=None, help="units per layer = input dim (default 500; quick 200)")
    parser.add_argument("--n", type=int, default=None, help="number of random inputs (default 1000; quick 300)")


# ---------------------------------------------------------------- the experiment

def run_setting(x, layers: int, hidden: int, activation: str, init_name: str, init_kwargs: dict, key,
                dout_key) -> dict:
    """Forward ``layers`` x (affine -> activation) on x, then backprop dL/dh_L ~ N(0, 1).

    Returns per-layer lists (mean, std, saturation / dead fraction, histogram, weight-grad
    norms, dL/dh std) plus the last activations' summary.
    """
    import jax
    import jax.numpy as jnp

    from jaxnet import functional as F
    from jaxnet.nn import init as nninit

    init = nninit.get_initializer(init_name)
    act = {"tanh": F.tanh, "relu": F.relu}[activation]

    def layer(h, w, b):
        return act(F.affine(h, w, b, impl="manual"), impl="manual")

    keys = jax.random.split(key, layers)
    weights = [init(k, (hidden, hidden), hidden, hidden, **init_kwargs) for k in keys]
    bias = jnp.zeros((hidden,), x.dtype)

    h, acts, vjps = x, [], []
    for w in weights:
        h, vjp = jax.vjp(layer, h, w, bias)
        acts.append(h)
        vjps.append(vjp)

    dh = jax.random.normal(dout_key, h.shape, h.dtype)  # upstream gradient at the last layer
    grad_w = [None] * layers
    dh_std = [None] * layers
    for l in range(layers - 1, -1, -1):
        dh_std[l] = float(jnp.std(dh))  # dL/dh_l, the signal arriving at layer l's output
        dh, dw, _ = vjps[l](dh)
        grad_w[l] = float(jnp.linalg.norm(dw))

    out = {"mean": [], "std": [], "hist_counts": [], "hist_edges": [], "grad_w_norm": grad_w,
           "grad_w_rel": [g / float(jnp.linalg.norm(w)) for g, w in zip(grad_w, weights)],
           "dh_std": dh_std, "input_grad_std": float(jnp.std(dh))}
    if activation == "tanh":
        out.update(sat_frac_099=[], sat_frac_095=[], local_grad_mean=[])
        hist_range = (-1.0, 1.0)
    else:
        out.update(dead_frac=[])
        first = np.asarray(acts[0])
        hist_range = (0.0, float(np.quantile(first[first > 0], 0.995)) if np.any(first > 0) else 1.0)
    for a in acts:
        a = np.asarray(a, np.float64)
        out["mean"].append(float(a.mean()))
        out["std"].append(float(a.std()))
        if activation == "tanh":
            counts, edges = np.histogram(a, bins=BINS, range=hist_range)
            out["sat_frac_099"].append(float(np.mean(np.abs(a) > 0.99)))
            out["sat_frac_095"].append(float(np.mean(np.abs(a) > 0.95)))
            out["local_grad_mean"].append(float(np.mean(1.0 - a * a)))
        else:
            # ReLU: the exact zeros dominate; histogram the positive part, report the zeros apart.
            counts, edges = np.histogram(a[a > 0], bins=BINS, range=hist_range)
            out["dead_frac"].append(float(np.mean(a == 0)))
        out["hist_counts"].append(counts.tolist())
        out["hist_edges"].append(edges.tolist())
    return out


def _geo_ratio(std: list) -> float:
    """Geometric mean of std[l+1] / std[l] over the layers."""
    if len(std) < 2 or std[0] <= 0 or std[-1] <= 0:
        return 0.0
    return float((std[-1] / std[0]) ** (1.0 / (len(std) - 1)))


def summarize(stats: dict) -> dict:
    """Per-setting summary numbers, the course's checks, and the gradient comparison."""
    summary = {}
    for name, s in stats.items():
        std, g = s["std"], s["grad_w_norm"]
        ref = stats.get(REFERENCE[SETTINGS[name][0]])
        summary[name] = {
            "first_std": std[0], "last_std": std[-1], "last_over_first_std": std[-1] / std[0] if std[0] else 0.0,
            "std_ratio_per_layer": _geo_ratio(std),
            "first_grad_w": g[0], "last_grad_w": g[-1], "last_over_first_grad_w": g[-1] / g[0] if g[0] else None,
            "mean_grad_w": float(np.mean(g)),
            "grad_vs_reference": float(np.mean(g) / np.mean(ref["grad_w_norm"])) if ref else None,
            "dh_first_over_last": s["dh_std"][0] / s["dh_std"][-1] if s["dh_std"][-1] else None,
        }

    checks = {}

    def add(name, claim, ok, **numbers):
        checks[name] = {"claim": claim, "ok": bool(ok), **numbers}

    if "tanh_0.01" in stats:
        s, m = stats["tanh_0.01"], summary["tanh_0.01"]
        add("tanh_0.01", "activations collapse to 0 layer by layer; weight gradients vanish",
            m["last_over_first_std"] < 1e-3 and m["std_ratio_per_layer"] < 0.5
            and (m["grad_vs_reference"] is None or m["grad_vs_reference"] < 1e-3),
            last_over_first_std=m["last_over_first_std"], std_ratio_per_layer=m["std_ratio_per_layer"],
            grad_vs_reference=m["grad_vs_reference"],
            thresholds="last/first std < 1e-3, per-layer ratio < 0.5, grads < 1e-3 x tanh_xavier")
    if "tanh_1.0" in stats:
        s = stats["tanh_1.0"]
        add("tanh_1.0", "almost all neurons saturated at -1 / +1; gradients through tanh ~0",
            min(s["sat_frac_095"]) > 0.8 and max(s["local_grad_mean"]) < 0.1,
            min_sat_frac_095=min(s["sat_frac_095"]), min_sat_frac_099=min(s["sat_frac_099"]),
            max_local_grad_mean=max(s["local_grad_mean"]),
            thresholds="> 80% of |h| > 0.95 in every layer, mean(1 - h^2) < 0.1 in every layer")
    if "tanh_xavier" in stats:
        s, m = stats["tanh_xavier"], summary["tanh_xavier"]
        tail = s["std"][-1] / s["std"][-2] if len(s["std"]) > 1 else 1.0
        add("tanh_xavier", "reasonable: activations keep a usable spread through all layers",
            0.25 <= m["last_over_first_std"] <= 4 and min(s["std"]) >= 0.1 and max(s["std"]) <= 1 and tail > 0.85,
            last_over_first_std=m["last_over_first_std"], min_std=min(s["std"]), last_layer_ratio=tail,
            thresholds="last/first std in [0.25, 4], every std in [0.1, 1], last layers' ratio > 0.85")
    if "relu_xavier" in stats:
        m = summary["relu_xavier"]
        add("relu_xavier", "Xavier breaks with ReLU: std shrinks ~1/sqrt(2) per layer toward 0",
            m["last_over_first_std"] < 0.1 and 0.6 <= m["std_ratio_per_layer"] <= 0.8,
            last_over_first_std=m["last_over_first_std"], std_ratio_per_layer=m["std_ratio_per_layer"],
            thresholds="last/first std < 0.1, per-layer ratio in [0.6, 0.8]")
    if "relu_he" in stats:
        m = summary["relu_he"]
        add("relu_he", "He init keeps ReLU activations stable",
            0.5 <= m["last_over_first_std"] <= 2 and 0.9 <= m["std_ratio_per_layer"] <= 1.1,
            last_over_first_std=m["last_over_first_std"], std_ratio_per_layer=m["std_ratio_per_layer"],
            thresholds="last/first std in [0.5, 2], per-layer ratio in [0.9, 1.1]")
    return summary, checks


# ---------------------------------------------------------------- figures (Agg, no pyplot)

def plot_histograms(stats: dict, path: str) -> str:
    """The lecture's figure: one row per setting, one histogram per layer."""
    names = list(stats)
    layers = len(stats[names[0]]["std"])
    fig = figure((1.6 * layers + 1.5, 1.7 * len(names) + 0.8))
    axes = fig.subplots(len(names), layers, squeeze=False)
    for r, name in enumerate(names):
        s = stats[name]
        for l in range(layers):
            ax = axes[r, l]
            edges = np.asarray(s["hist_edges"][l])
            counts = np.asarray(s["hist_counts"][l])
            ax.stairs(counts, edges, fill=True, color="tab:blue")
            ax.set_xlim(edges[0], edges[-1])
            ax.set_yticks([])
            ax.tick_params(axis="x", labelsize=6)
            note = f"std {s['std'][l]:.2g}"
            if "dead_frac" in s:
                note += f"\n0s {100 * s['dead_frac'][l]:.0f}%"
            ax.text(0.97, 0.95, note, transform=ax.transAxes, ha="right", va="top", fontsize=6)
            if r == 0:
                ax.set_title(f"layer {l + 1}", fontsize=8)
            if l == 0:
                ax.set_ylabel(SETTINGS[name][3], fontsize=7)
    fig.suptitle("activation histograms per layer (ReLU rows: positive part; exact zeros as '0s')", fontsize=9)
    fig.subplots_adjust(left=0.04, right=0.99, bottom=0.04, top=0.92, wspace=0.15, hspace=0.35)
    fig.savefig(path, format="png")
    return path


def plot_stats(stats: dict, path: str) -> str:
    """Mean, std (log), weight-grad norm (log) and dL/dh std (log) per layer, one line per setting."""
    fig = figure((16, 4))
    ax_mean, ax_std, ax_grad, ax_dh = fig.subplots(1, 4)
    for name, s in stats.items():
        layers = np.arange(1, len(s["std"]) + 1)
        kw = dict(marker="o", markersize=3, label=SETTINGS[name][3])
        ax_mean.plot(layers, s["mean"], **kw)
        ax_std.plot(layers, s["std"], **kw)
        ax_grad.plot(layers, s["grad_w_norm"], **kw)
        ax_dh.plot(layers, s["dh_std"], **kw)
    ax_mean.set(title="activation mean", xlabel="layer")
    ax_mean.set_yscale("symlog", linthresh=1e-3)
    ax_std.set(title="activation std", xlabel="layer", yscale="log")
    ax_grad.set(title="||dL/dW|| per layer", xlabel="layer", yscale="log")
    ax_dh.set(title="std of dL/dh (upstream ~ N(0,1) at the top)", xlabel="layer", yscale="log")
    for ax in (ax_mean, ax_std, ax_grad, ax_dh):
        ax.grid(True, alpha=0.3)
    ax_std.legend(fontsize=7)
    return save_figure(fig, path)


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(NAME, "Activation and gradient statistics of a deep tanh / ReLU net under "
                            "different weight initializations (course section 9).", _extra, argv)
    quick = args.quick
    layers = args.layers
    hidden = args.hidden or (200 if quick else 500)
    n = args.n or (300 if quick else 1000)
    if layers < 2 or hidden < 1 or n < 2:
        raise SystemExit(f"experiments.{NAME}: need --layers >= 2, --hidden >= 1, --n >= 2")

    import jax

    os.makedirs(args.out, exist_ok=True)
    key = jax.random.PRNGKey(args.seed)
    kx, kw, kd = jax.random.split(key, 3)
    x = jax.random.normal(kx, (n, hidden))
    print(f"init statistics: {layers} layers x {hidden} units, {n} standard-normal inputs (seed {args.seed})",
          flush=True)

    stats, timings = {}, {}
    for name, (activation, init_name, init_kwargs, _) in SETTINGS.items():
        with Timer() as t:
            # The same weight draws (up to scale) and the same upstream gradient for every setting.
            stats[name] = run_setting(x, layers, hidden, activation, init_name, init_kwargs, kw, kd)
        timings[f"{name}_s"] = t.elapsed
    summary, checks = summarize(stats)

    with Timer() as t:
        figures = [plot_histograms(stats, os.path.join(args.out, "histograms.png")),
                   plot_stats(stats, os.path.join(args.out, "stats.png"))]
    timings["figures_s"] = t.elapsed

    results = {
        "protocol": {"layers": layers, "hidden": hidden, "n": n, "inputs": "N(0, 1)", "bias": "zeros",
                     "ops": "jaxnet.functional affine/tanh/relu, impl='manual'",
                     "upstream_gradient": "dL/dh_L ~ N(0, 1), backpropagated through each layer's vjp",
                     "histogram_bins": BINS,
                     "settings": {k: {"activation": v[0], "init": v[1], "init_kwargs": v[2], "label": v[3]}
                                  for k, v in SETTINGS.items()}},
        "stats": stats,
        "summary": summary,
        "checks": checks,
        "all_checks_ok": all(c["ok"] for c in checks.values()),
        "timings_s": timings,
        "figures": [os.path.basename(f) for f in figures],
    }
    path = write_results(args.out, results, args)

    print_table(["layer"] + list(stats),
                [[l + 1] + [stats[k]["std"][l] for k in stats] for l in range(layers)],
                title="\nactivation std per layer")
    print_table(["layer"] + list(stats),
                [[l + 1] + [stats[k]["grad_w_norm"][l] for k in stats] for l in range(layers)],
                title="\n||dL/dW|| per layer (upstream gradient ~ N(0,1))")
    print_table(
        ["setting", "std L1", f"std L{layers}", "last/first std", "ratio/layer", "gradW last/first",
         "gradW vs ref", "dL/dh L1/L_last", "check"],
        [[k, m["first_std"], m["last_std"], m["last_over_first_std"], m["std_ratio_per_layer"],
          m["last_over_first_grad_w"], m["grad_vs_reference"], m["dh_first_over_last"],
          "ok" if checks.get(k, {}).get("ok") else "FAIL"] for k, m in summary.items()],
        title="\nsummary (gradW vs ref: mean ||dL/dW|| over tanh_xavier's / relu_he's)",
    )
    print(f"\nwrote {path} and {', '.join(results['figures'])}")
    return results


if __name__ == "__main__":
    main()
