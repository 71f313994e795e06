"""What the convnet learned: first-layer filters, nearest neighbours in feature space, t-SNE.

    python -m experiments.what_learned [--data-dir /path/to/cifar10-jpeg.tar.gz]
                                       [--checkpoint results/convnets/fast_convnet.ckpt] [--quick] [--out DIR]

Reads the ``fast_convnet`` that ``experiments.convnets`` trained (its checkpoint; with
``--quick`` and no checkpoint given, a small net is trained here for a few seconds instead) and
draws the course's three pictures (lecture "Visualizing and understanding"):

1. ``filters.png``: the first layer's filters (stem conv, 3x3x3 each) as RGB images, each
   min-max scaled to [0, 1], enlarged; next to them the mean |w| per input channel.
2. ``neighbours.png``: for ``--queries`` test images, the 6 nearest training images by L2
   distance in the last hidden layer's space (the global max pool's output, the features the
   classifier reads) and, for contrast, in pixel space. Recorded: how often the neighbours'
   label equals the query's label in each space (a k-NN accuracy over 1,000 test images).
3. ``tsne.png``: a 2-D t-SNE (``sklearn.manifold.TSNE``, perplexity 30) of the features of
   ``--tsne-n`` test images coloured by class, with a grid of thumbnails placed by the map.

``--smoke`` (the default test suite's run): 300 training and 200 test images, a t-SNE of 60, 2 queries shown.
"""

from __future__ import annotations

import os

import numpy as np

from experiments._common import (
    Timer, figure, load_data, parse_args, print_table, quick_subset, save_figure, sized, write_results,
)

NAME = "what_learned"
DESCRIPTION = "What the convnet learned: first-layer filters, nearest neighbours, t-SNE of features."
CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def _extra(parser) -> None:
    parser.add_argument("--checkpoint", default=os.path.join("results", "convnets", "fast_convnet.ckpt"),
                        help="the fast_convnet checkpoint written by experiments.convnets")
    parser.add_argument("--queries", type=int, default=None,
                        help="test images shown with their neighbours (default 8; smoke 2)")
    parser.add_argument("--tsne-n", type=int, default=None,
                        help="test images in the t-SNE map (default 2000; quick 300; smoke 60)")


def load_fast_convnet(path: str):
    """``(model, params, state, config)`` from a checkpoint written by experiments.convnets."""
    import jax
    import jax.numpy as jnp

    from jaxnet.nn import fast_convnet
    from jaxnet.train import read_checkpoint

    arrays, config, _, _ = read_checkpoint(path)
    if config.get("model") != "fast_convnet":
        raise ValueError(f"what_learned: {path!r} holds {config.get('model')!r}, not a fast_convnet checkpoint")
    model = fast_convnet(stem=config["stem"], widths=tuple(config["widths"]), norm=config["norm"])
    shape = (1, *config["input_shape"])
    params, state = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), shape))

    def restore(prefix, tree):
        leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
        out = []
        for p, like in leaves:
            name = prefix + jax.tree_util.keystr(p)
            if name not in arrays:
                raise ValueError(f"what_learned: {path!r} has no {name}")
            out.append(jnp.asarray(arrays[name], like.dtype).reshape(like.shape))
        return jax.tree_util.tree_unflatten(treedef, out)

    return model, restore(".params", params), restore(".state", state), config


def feature_fn(model):
    """Jitted ``(params, state, x (N, H, W, C)) -> (N, D)``: every layer but the classifier."""
    import jax

    from jaxnet.nn import Sequential

    body = Sequential(model.layers[:-1], model.names[:-1])

    @jax.jit
    def features(params, state, x):
        p = {k: v for k, v in params.items() if k != model.names[-1]}
        s = {k: v for k, v in state.items() if k != model.names[-1]}
        return body.apply(p, s, x, train=False)[0]

    return features


def batched(fn, x, batch_size=500):
    """``fn`` over ``x`` in batches of ``batch_size``, the last one padded (eval mode treats each
    image alone): one compiled program for every batch and every call."""
    out = []
    for i in range(0, len(x), batch_size):
        xb = x[i:i + batch_size]
        pad = np.zeros((batch_size - len(xb), *xb.shape[1:]), xb.dtype)
        out.append(np.asarray(fn(np.concatenate([xb, pad])))[:len(xb)])
    return np.concatenate(out)


def nearest(queries: np.ndarray, base: np.ndarray, k: int) -> np.ndarray:
    """Indices (Q, k) of the k nearest rows of base (N, D) to each query (Q, D), squared L2."""
    d = (np.sum(queries ** 2, 1)[:, None] - 2 * queries @ base.T + np.sum(base ** 2, 1)[None, :])
    return np.argsort(d, axis=1)[:, :k]


def _show(img):
    img = np.asarray(img, np.float32)
    img = (img - img.min()) / max(float(img.max() - img.min()), 1e-8)
    return img[..., 0] if img.shape[-1] == 1 else img


def plot_filters(w: np.ndarray, path: str) -> str:
    """w (kh, kw, C_in, C_out): one panel per output filter."""
    c_out = w.shape[-1]
    cols = min(8, c_out)
    rows = -(-c_out // cols)
    fig = figure((1.3 * cols, 1.4 * rows + 0.4))
    for i in range(rows * cols):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.axis("off")
        if i < c_out:
            ax.imshow(_show(w[..., i]), interpolation="nearest", cmap=None if w.shape[2] == 3 else "gray")
            ax.set_title(str(i), fontsize=7)
    return save_figure(fig, path, f"first-layer filters ({w.shape[0]}x{w.shape[1]}x{w.shape[2]}), each min-max scaled")


def plot_neighbours(raw_test, raw_train, q_idx, nn_feat, nn_pix, y_test, y_train, names, path):
    q, k = nn_feat.shape
    fig = figure((1.1 * (2 * k + 2), 1.25 * q + 0.6))
    cols = 2 * k + 2
    for r in range(q):
        cells = [(raw_test[q_idx[r]], f"query: {names[y_test[q_idx[r]]]}", "k")]
        cells += [(raw_train[j], names[y_train[j]], "g" if y_train[j] == y_test[q_idx[r]] else "r")
                  for j in nn_feat[r]]
        cells += [None]
        cells += [(raw_train[j], names[y_train[j]], "g" if y_train[j] == y_test[q_idx[r]] else "r")
                  for j in nn_pix[r]]
        for c, cell in enumerate(cells):
            ax = fig.add_subplot(q, cols, r * cols + c + 1)
            ax.axis("off")
            if cell is not None:
                img, label, color = cell
                ax.imshow(_show(img), cmap="gray" if img.shape[-1] == 1 else None)
                ax.set_title(label, fontsize=6, color=color)
    fig.suptitle(f"left: query and its {k} nearest training images in the last hidden layer's space; "
                 f"right: nearest in pixel space (green: same class)", fontsize=9)
    return save_figure(fig, path)


def plot_tsne(emb, labels, raw, names, path) -> str:
    fig = figure((15, 7))
    ax1, ax2 = fig.subplots(1, 2)
    cmap = __import__("matplotlib").colormaps["tab10"]
    for c in range(len(names)):
        m = labels == c
        ax1.scatter(emb[m, 0], emb[m, 1], s=4, color=cmap(c), label=names[c])
    ax1.legend(fontsize=7, markerscale=3, loc="best")
    ax1.set_title("t-SNE of the last hidden layer (test images, coloured by class)")
    ax1.set_xticks([]), ax1.set_yticks([])
    # thumbnails: a G x G grid over the map, each cell shows the image nearest its centre
    g = 20
    lo, hi = emb.min(0), emb.max(0)
    unit = (emb - lo) / np.maximum(hi - lo, 1e-8)
    canvas_px = raw.shape[1]
    canvas = np.ones((g * canvas_px, g * canvas_px, 3), np.float32)
    used = set()
    for i in range(g):
        for j in range(g):
            centre = np.array([(j + 0.5) / g, 1 - (i + 0.5) / g])
            d = np.sum((unit - centre) ** 2, 1)
            n = int(np.argmin(d))
            if d[n] > (1.0 / g) ** 2 or n in used:
                continue
            used.add(n)
            img = _show(raw[n])
            if img.ndim == 2:
                img = np.repeat(img[..., None], 3, -1)
            canvas[i * canvas_px:(i + 1) * canvas_px, j * canvas_px:(j + 1) * canvas_px] = img
    ax2.imshow(canvas)
    ax2.axis("off")
    ax2.set_title("the same map as images (one per grid cell)")
    return save_figure(fig, path)


def _train_quick(ds, seed):
    """A tiny fast_convnet trained for a few epochs (used when --quick has no checkpoint)."""
    from jaxnet.nn import fast_convnet
    from jaxnet.optim import make_optimizer
    from jaxnet.train import fit

    widths = (16, 32) if ds.x_train.shape[1] <= 8 else (16, 32, 64)
    model = fast_convnet(stem=8, widths=widths)
    res = fit(model, ds, optimizer=make_optimizer("adam", 3e-3), epochs=4, batch_size=128, key=seed,
              progress=False)
    return model, res.train_state.params, res.train_state.state


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    from jaxnet.data import load_digits, normalize_dataset, to_float

    q = args.quick
    os.makedirs(args.out, exist_ok=True)
    if args.data_dir:
        ds = load_data(args, val_size=1000)
        source, names = "cifar10", CIFAR_CLASSES
        if q:
            ds = quick_subset(ds, n_train=3000, n_test=500, seed=args.seed)
    else:
        ds = load_digits(seed=args.seed)
        source, names = "digits", tuple(str(i) for i in range(10))
    if args.smoke:
        ds = quick_subset(ds, n_train=300, n_test=200, seed=args.seed)
    raw_train, raw_test = to_float(ds.x_train), to_float(ds.x_test)
    ds = normalize_dataset(ds.replace(x_train=raw_train, x_val=to_float(ds.x_val), x_test=raw_test), "channel")

    if os.path.exists(args.checkpoint):
        model, params, state, config = load_fast_convnet(args.checkpoint)
        where = args.checkpoint
        if tuple(config["input_shape"]) != tuple(ds.x_train.shape[1:]):
            raise SystemExit(f"what_learned: the checkpoint is for inputs {config['input_shape']}, "
                             f"the data is {list(ds.x_train.shape[1:])}")
    elif q:
        model, params, state = _train_quick(ds, args.seed)
        where = "trained here (--quick, no checkpoint)"
    else:
        raise SystemExit(f"what_learned: no checkpoint at {args.checkpoint!r}; run "
                         f"`python -m experiments.convnets` first or pass --checkpoint")
    print(f"model from {where}", flush=True)

    # 1. filters
    w = np.asarray(params["stem"]["conv"]["w"])
    filters_png = plot_filters(w, os.path.join(args.out, "filters.png"))
    channel_mass = np.mean(np.abs(w), axis=(0, 1, 3)).tolist()

    # 2. features, nearest neighbours, k-NN accuracy in feature vs pixel space
    feats = feature_fn(model)
    with Timer() as t_feat:
        f_train = batched(lambda x: feats(params, state, x), ds.x_train)
        f_test = batched(lambda x: feats(params, state, x), ds.x_test)
    rng = np.random.default_rng(args.seed)
    n_eval = min(1000, len(f_test))
    eval_idx = rng.choice(len(f_test), n_eval, replace=False)
    k = 6
    p_train = ds.x_train.reshape(len(ds.x_train), -1)
    p_test = ds.x_test.reshape(len(ds.x_test), -1)
    nn_f = nearest(f_test[eval_idx], f_train, k)
    nn_p = nearest(p_test[eval_idx], p_train, k)
    same_f = float(np.mean(ds.y_train[nn_f] == ds.y_test[eval_idx, None]))
    same_p = float(np.mean(ds.y_train[nn_p] == ds.y_test[eval_idx, None]))
    nq = min(args.queries or sized(args, 8, 8, 2), n_eval)   # smoke: a 2-row figure (112 subplots cost seconds)
    neighbours_png = plot_neighbours(raw_test, raw_train, eval_idx[:nq], nn_f[:nq], nn_p[:nq], ds.y_test,
                                     ds.y_train, names, os.path.join(args.out, "neighbours.png"))

    # 3. t-SNE
    from sklearn.manifold import TSNE

    n_tsne = min(args.tsne_n or sized(args, 2000, 300, 60), len(f_test))
    tsne_idx = rng.choice(len(f_test), n_tsne, replace=False)
    with Timer() as t_tsne:
        emb = TSNE(n_components=2, perplexity=min(30.0, (n_tsne - 1) / 3), init="pca",
                   random_state=args.seed).fit_transform(f_test[tsne_idx].astype(np.float64))
    tsne_png = plot_tsne(emb, ds.y_test[tsne_idx], raw_test[tsne_idx], names, os.path.join(args.out, "tsne.png"))
    # how well the map keeps classes together: 5-NN label agreement in the 2-D map
    nn2 = nearest(emb, emb, 6)[:, 1:]
    tsne_agree = float(np.mean(ds.y_test[tsne_idx][nn2] == ds.y_test[tsne_idx][:, None]))

    results = {
        "data_source": source, "model_from": where, "feature_dim": int(f_train.shape[1]),
        "first_layer": {"shape": list(w.shape), "mean_abs_w_per_input_channel": channel_mass},
        "neighbours": {"k": k, "n_queries_scored": n_eval,
                       "same_label_fraction_features": same_f, "same_label_fraction_pixels": same_p},
        "tsne": {"n": n_tsne, "perplexity": min(30.0, (n_tsne - 1) / 3), "five_nn_same_label_in_map": tsne_agree,
                 "time_s": t_tsne.elapsed},
        "times_s": {"features": t_feat.elapsed, "tsne": t_tsne.elapsed},
        "figures": {"filters": os.path.basename(filters_png), "neighbours": os.path.basename(neighbours_png),
                    "tsne": os.path.basename(tsne_png)},
    }
    path = write_results(args.out, results, args)
    print_table(["space", f"neighbours with the query's label ({k}-NN, {n_eval} test images)"],
                [["last hidden layer", same_f], ["pixels", same_p]])
    print(f"t-SNE: {tsne_agree:.3f} of each point's 5 nearest points in the map share its label")
    print(f"\nwrote {path}, filters.png, neighbours.png, tsne.png")
    return results


if __name__ == "__main__":
    main()
