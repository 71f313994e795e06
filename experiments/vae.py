"""VAE on digits and CIFAR-10: ELBO and bits per dimension on the test split, reconstructions,
samples, a 2-D latent map for digits.

    python -m experiments.vae [--data digits|cifar10] [--data-dir PATH] [--quick] [--smoke] [--out DIR]
                              [--model mlp|conv] [--epochs E] [--latent-dim L] [--hidden 256,256]
                              [--channels 32,64,128] [--iw-samples K] [--time-budget S]

The model is :mod:`jaxnet.generative.vae` (``mlp_vae`` / ``conv_vae``, ``reparameterize``,
``elbo``, ``gaussian_kl``), trained with a jitted step and optax's Adam (constant learning
rate, one z sample per image per step); the parameters kept are those of the epoch with the
best validation ELBO, and the test split is scored once with them (no choice looks at it).

Likelihoods (what "bits per dimension" means here):

* ``--data digits`` (default): the embedded 8x8 digits **binarised** (grey level >= 8 of 16 is 1),
  so the library's Bernoulli decoder is an exact likelihood of binary images and the negative
  ELBO is an upper bound of -log p(x) in nats per image; bits/dim divides by 64 ln 2. The same
  binarised split is the one ``experiments.pixelcnn`` scores, so the numbers compare.
* ``--data cifar10``: the 8-bit images with a **discretised logistic** decoder (PixelCNN++'s
  per-sub-pixel likelihood of the 256 levels, the decoder's output the mean on [-1, 1], one
  learned log-scale per colour channel): a proper probability of the 8-bit image, so the
  bits/dim is the usual one (3072 dimensions). The KL is the library's ``gaussian_kl``; the
  reconstruction term is computed here (the library's decoder loss is Bernoulli only).

Both report the negative ELBO on the test split (analytic KL plus the reconstruction term
averaged over ``--iw-samples`` z draws) and, with ``--iw-samples K > 1``, the importance-weighted
bound (IWAE, Burda et al. 2016) ``-log mean_k p(x, z_k) / q(z_k | x)``, a tighter upper bound
of -log p(x). The baseline row is the trivial model "every pixel independent, with the training
split's marginal" (Laplace-smoothed counts): a Bernoulli per pixel on digits, a 256-way
histogram per sub-pixel on CIFAR-10.

Figures in ``--out``: ``vae_curves.png`` (the training loss and the validation/test negative
ELBO per epoch, with the reconstruction and KL parts), ``vae_reconstructions.png`` (test
inputs above their reconstructions at z = mu), ``vae_samples.png`` (decoder means at
z ~ N(0, I)) and, on digits, ``vae_latent_map.png`` (a second VAE with a 2-D latent: the test
means coloured by class, and the decoder's means over a grid of latent points at Gaussian
quantiles). Where ``experiments/_judge.py`` exists, the samples' judge scores and the real
data's reference row are added.

Defaults: digits ``mlp_vae((8, 8, 1), hidden=(256, 256), latent_dim=16)`` and its 2-D twin, trained
side by side (one jitted step for both), 150 epochs of batch 64, Adam 1e-3, 500 z draws per test
image (about a minute); CIFAR-10 ``conv_vae((32, 32, 3), channels=(32, 64, 128), latent_dim=64)``
on the 49,000 training images left after 1,000 for validation, batch 128, Adam 1e-3, at most 30
epochs and stopped before an epoch that would take training past ``--time-budget`` (960 s), 4 z
draws per test image. ``--quick``: 40 digits epochs, 100 z draws (CIFAR-10: 4,000 training, 500
validation, 1,000 test images, 3 epochs); ``--smoke`` (the default suite's run): 300 training
images, a one-layer MLP of 32 with a 2-D latent (so no twin: the latent map is the model's), 2
epochs, one z draw, every program compiled at XLA's optimisation level 0 (compiling is nearly all
its time).
"""

from __future__ import annotations

import functools
import math
import os
import statistics
import time

import numpy as np

from experiments._common import (
    Timer, fail, figure, finish, grid_legend, load_data, parse_args, print_table, quick_subset, save_figure, sized,
)

NAME = "vae"
DESCRIPTION = ("VAE on digits and CIFAR-10: ELBO and bits per dimension on the test split, reconstructions, "
               "samples, a 2-D latent map for digits.")
DATA = ("digits", "cifar10")
MODELS = ("mlp", "conv")
BINARY_THRESHOLD = 0.5          # digits: grey level / 16 >= 0.5 -> 1


def _extra(parser) -> None:
    parser.add_argument("--data", default="digits",
                        help="digits (default: the embedded 8x8 digits, binarised) or cifar10 (--data-dir)")
    parser.add_argument("--model", default=None, help="mlp (default on digits) or conv (default on cifar10)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs (digits 150, quick 40, smoke 2; cifar10 30, quick 3, smoke 1)")
    parser.add_argument("--batch-size", type=int, default=None, help="batch size (digits 64, cifar10 128)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: %(default)s)")
    parser.add_argument("--latent-dim", type=int, default=None, help="latent size L (digits 16, cifar10 64)")
    parser.add_argument("--hidden", default=None, help="MLP hidden sizes, comma-separated (default 256,256)")
    parser.add_argument("--channels", default=None,
                        help="conv VAE channels, comma-separated (default 32,64,128 on cifar10, 16,32 on digits)")
    parser.add_argument("--iw-samples", type=int, default=None,
                        help="z draws per test image for the final ELBO and the IWAE bound (digits 500, "
                             "quick 100; cifar10 4; smoke 1)")
    parser.add_argument("--n-train", type=int, default=None,
                        help="cifar10 training images (default all 49,000 left after the 1,000 for validation)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="stop training before an epoch that would pass this many seconds "
                             "(default 960 on cifar10, none on digits)")
    parser.add_argument("--no-judge", action="store_true", help="skip the sample judge (experiments/_judge.py)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bar")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def _int_list(flag: str, text: str) -> tuple:
    try:
        vals = tuple(int(v) for v in text.split(","))
    except ValueError:
        vals = ()
    if not vals or any(v < 1 for v in vals):
        _fail(f"{flag} must be comma-separated positive ints (e.g. 256,256), got {text!r}")
    return vals


def resolve(args) -> None:
    """Fill the size defaults for the data set and run size, and check every flag (one line on
    stderr and exit status 2 for a bad one, before any data is loaded or anything compiles)."""
    if args.data not in DATA:
        _fail(f"--data must be one of {', '.join(DATA)}, got {args.data!r}")
    cifar = args.data == "cifar10"
    if args.model is None:
        args.model = "conv" if cifar else "mlp"
    if args.model not in MODELS:
        _fail(f"--model must be one of {', '.join(MODELS)}, got {args.model!r}")
    if args.epochs is None:
        args.epochs = sized(args, 30, 3, 1) if cifar else sized(args, 150, 40, 2)
    if args.batch_size is None:
        args.batch_size = 128 if cifar else sized(args, 64, 64, 50)
    if args.latent_dim is None:
        args.latent_dim = 64 if cifar else sized(args, 16, 16, 2)    # smoke: the 2-D model only
    args.hidden = _int_list("--hidden", args.hidden if args.hidden is not None
                            else sized(args, "256,256", "256,256", "32"))
    args.channels = _int_list("--channels", args.channels if args.channels is not None
                              else ("32,64,128" if cifar else "16,32") if not args.smoke else "8,16")
    if args.iw_samples is None:
        args.iw_samples = sized(args, 4, 4, 1) if cifar else sized(args, 500, 100, 1)   # smoke: the per-epoch program
    if args.time_budget is None:
        args.time_budget = sized(args, 960.0, 600.0, 300.0) if cifar else 3600.0
    if args.epochs < 1 or args.batch_size < 1 or args.latent_dim < 1:
        _fail(f"--epochs, --batch-size and --latent-dim must be >= 1 (got {args.epochs}, {args.batch_size}, "
              f"{args.latent_dim})")
    if args.iw_samples < 1:
        _fail(f"--iw-samples must be >= 1, got {args.iw_samples}")
    if not (math.isfinite(args.lr) and args.lr > 0):
        _fail(f"--lr must be a finite number > 0, got {args.lr}")
    if not (args.time_budget > 0):
        _fail(f"--time-budget must be > 0 seconds, got {args.time_budget}")
    if args.n_train is not None and args.n_train < 1:
        _fail(f"--n-train must be >= 1, got {args.n_train}")
    shape = (32, 32, 3) if cifar else (8, 8, 1)
    if args.model == "conv":
        k = 2 ** len(args.channels)
        if shape[0] % k:
            _fail(f"--channels {','.join(map(str, args.channels))}: {len(args.channels)} stride-2 levels need H "
                  f"divisible by {k}, the images are {shape[0]}x{shape[1]}")


# ------------------------------------------------------------------------------------------ data

def binarize(x) -> np.ndarray:
    """Digits in [0, 1] (grey level / 16) -> float32 {0, 1}: 1 where the level is >= 8 of 16."""
    return (np.asarray(x) >= BINARY_THRESHOLD).astype(np.float32)


def binary_digits(seed: int = 0, *, smoke: bool = False):
    """The embedded digits, binarised: its stratified split (1,257 training, 270 validation,
    270 test images), as ``jaxnet.data.load_digits(seed=seed)`` gives it; with ``smoke`` 300
    training and 120 validation/test images."""
    from jaxnet.data import load_digits

    ds = load_digits(seed=seed)
    ds = ds.replace(x_train=binarize(ds.x_train), x_val=binarize(ds.x_val), x_test=binarize(ds.x_test))
    if smoke:
        ds = ds.replace(x_train=ds.x_train[:300], y_train=ds.y_train[:300], x_val=ds.x_val[:120],
                        y_val=ds.y_val[:120], x_test=ds.x_test[:120], y_test=ds.y_test[:120])
    return ds


def cifar_data(args):
    """CIFAR-10 as uint8 with 1,000 validation images, cut for --n-train / --quick."""
    ds = load_data(args, val_size=1000)
    n_train = args.n_train if args.n_train is not None else sized(args, len(ds.y_train), 4000, 500)
    n_test = sized(args, len(ds.y_test), 1000, 200)
    ds = quick_subset(ds, n_train=n_train, n_test=n_test, seed=args.seed)
    if args.quick:
        ds = ds.replace(x_val=ds.x_val[:sized(args, None, 500, 200)], y_val=ds.y_val[:sized(args, None, 500, 200)])
    return ds


def to_model_space(x_uint8) -> np.ndarray:
    """uint8 0..255 -> float32 on [-1, 1] (the discretised logistic's grid, bin width 2/255)."""
    return (np.asarray(x_uint8, np.float32) / 127.5 - 1.0).astype(np.float32)


# ------------------------------------------------------------------------------- likelihoods

def bernoulli_logp(logits, x):
    """log p(x | z) of the Bernoulli decoder, summed over each example's pixels: (..., H, W, C) -> (...)."""
    import jax
    import jax.numpy as jnp
    lp = x * logits - jax.nn.softplus(logits)
    return jnp.sum(lp, axis=tuple(range(-3, 0)))


def discretized_logistic_logp(x, mean, log_scale):
    """log P(x) of 8-bit sub-pixels under a logistic(mean, exp(log_scale)) discretised to the 256
    bins of width 2/255 on [-1, 1], the edge bins taking the tails (PixelCNN++, Salimans et al.
    2017), summed over each example's (H, W, C): x (..., H, W, C) on the grid, mean x's shape,
    log_scale broadcastable -> (...)."""
    import jax
    import jax.numpy as jnp

    log_scale = jnp.maximum(log_scale, -7.0)
    centered = x - mean
    inv_s = jnp.exp(-log_scale)
    plus_in = inv_s * (centered + 1.0 / 255.0)
    min_in = inv_s * (centered - 1.0 / 255.0)
    log_cdf_plus = plus_in - jax.nn.softplus(plus_in)          # log sigmoid(plus_in): the bottom bin
    log_one_minus_cdf_min = -jax.nn.softplus(min_in)          # log (1 - sigmoid(min_in)): the top bin
    cdf_delta = jax.nn.sigmoid(plus_in) - jax.nn.sigmoid(min_in)
    mid_in = inv_s * centered
    log_pdf_mid = mid_in - log_scale - 2.0 * jax.nn.softplus(mid_in)
    log_mid = jnp.where(cdf_delta > 1e-5, jnp.log(jnp.maximum(cdf_delta, 1e-12)), log_pdf_mid - math.log(127.5))
    lp = jnp.where(x < -0.999, log_cdf_plus, jnp.where(x > 0.999, log_one_minus_cdf_min, log_mid))
    return jnp.sum(lp, axis=tuple(range(-3, 0)))


def independent_bernoulli_nll(x_train, x_test) -> float:
    """The trivial baseline on binary images: every pixel independent, Bernoulli with the training
    split's frequency, Laplace-smoothed ((ones + 1) / (n + 2), so no pixel has probability 0 or 1).
    Returns the mean -log p(x) over x_test in nats per image."""
    x_train = np.asarray(x_train, np.float64).reshape(len(x_train), -1)
    x_test = np.asarray(x_test, np.float64).reshape(len(x_test), -1)
    p = (x_train.sum(0) + 1.0) / (len(x_train) + 2.0)
    return float(-np.mean(np.sum(x_test * np.log(p) + (1 - x_test) * np.log1p(-p), axis=1)))


def independent_histogram_nll(x_train_u8, x_test_u8) -> float:
    """The trivial baseline on 8-bit images: every sub-pixel independent, a 256-way histogram of
    the training split at its position (Laplace-smoothed counts + 1). Mean -log p(x) over
    x_test in nats per image."""
    n, d = len(x_train_u8), int(np.prod(x_train_u8.shape[1:]))
    counts = np.zeros(d * 256, np.int64)
    offs = np.arange(d, dtype=np.int64) * 256
    for i in range(0, n, 2000):
        chunk = np.asarray(x_train_u8[i:i + 2000]).reshape(-1, d).astype(np.int64)
        counts += np.bincount((chunk + offs).ravel(), minlength=d * 256)
    logp = np.log((counts.reshape(d, 256) + 1.0) / (n + 256.0))
    test = np.asarray(x_test_u8).reshape(len(x_test_u8), d).astype(np.int64)
    return float(-np.mean(logp[np.arange(d)[None, :], test].sum(axis=1)))


# ------------------------------------------------------------------------------------- model

FAST_COMPILE = {"xla_backend_optimization_level": 0}


def jit(fn, *, fast_compile: bool = False, **kw):
    """``jax.jit``; with ``fast_compile`` XLA's backend optimisation level 0: a program compiled
    about twice as fast that runs about 2.5x slower (for the one-shot programs, and for every
    program under ``--smoke``, where compiling is nearly all the time; the results are the same
    computation)."""
    import jax
    return jax.jit(fn, compiler_options=FAST_COMPILE if fast_compile else None, **kw)


def build_model(args, image_shape, latent_dim=None):
    from jaxnet.generative import conv_vae, mlp_vae
    L = latent_dim or args.latent_dim
    if args.model == "conv":
        return conv_vae(image_shape, channels=args.channels, latent_dim=L)
    return mlp_vae(image_shape, hidden=args.hidden, latent_dim=L)


def describe(args, image_shape, latent_dim) -> str:
    if args.model == "conv":
        return f"conv_vae({image_shape}, channels={args.channels}, latent_dim={latent_dim})"
    return f"mlp_vae({image_shape}, hidden={args.hidden}, latent_dim={latent_dim})"


class Objective:
    """The per-data-set pieces: the training loss (negative ELBO, one z draw) and log p(x | z).

    digits ("bernoulli"): the library's :func:`jaxnet.generative.elbo`; CIFAR-10
    ("discretized_logistic"): the library's ``gaussian_kl`` plus :func:`discretized_logistic_logp`
    with a learned per-channel ``log_scale`` (params ``{"vae": ..., "log_scale": (C,)}``).
    """

    def __init__(self, model, likelihood: str, channels: int):
        self.model, self.likelihood, self.channels = model, likelihood, channels

    def init(self, key, shape):
        import jax.numpy as jnp
        p, s = self.model.init(key, shape)
        params = {"vae": p}
        if self.likelihood == "discretized_logistic":
            params["log_scale"] = jnp.full((self.channels,), -2.0, jnp.float32)
        return params, s

    def logp_x_given_z(self, params, out, x):
        """(K..., N) log p(x | z) for decoder outputs ``out`` (K..., N, H, W, C) and x (N, H, W, C)."""
        if self.likelihood == "bernoulli":
            return bernoulli_logp(out, x)
        return discretized_logistic_logp(x, out, params["log_scale"])

    def loss(self, params, state, x, key):
        """(loss, (metrics, new_state)): the negative ELBO of one z draw, nats per image."""
        from jaxnet import functional as F
        from jaxnet.generative import elbo
        if self.likelihood == "bernoulli":
            return elbo(self.model, params["vae"], state, x, key, train=True)
        out, new_state = self.model.apply(params["vae"], state, x, train=True, key=key)
        recon = -self.logp_x_given_z(params, out.logits, x).mean()
        kl = F.gaussian_kl(out.mu, out.logvar)
        loss = recon + kl
        return loss, ({"loss": loss, "recon": recon, "kl": kl, "elbo": -loss}, new_state)

    def mean_image(self, params, out):
        """Decoder outputs -> displayable images in [0, 1]."""
        import jax
        import jax.numpy as jnp
        if self.likelihood == "bernoulli":
            return jax.nn.sigmoid(out)
        return jnp.clip((out + 1.0) / 2.0, 0.0, 1.0)


_BOUND_FNS: dict = {}


def make_bound_fn(objs, k: int, fast_compile: bool = False):
    """A jitted ``fn(params, states, x, seed, salt) -> (M, 4, N)``: for each of the M models and
    each image, (neg_elbo, recon, kl, neg_iwae) in nats from k z draws of q(z | x):
    neg_elbo = -mean_k log p(x | z_k) + KL (analytic), neg_iwae = -(logsumexp_k log w_k - log k),
    w_k = p(x | z_k) p(z_k) / q(z_k | x)."""
    import jax
    import jax.numpy as jnp

    def one(obj, params, state, x, key):
        model = obj.model
        mu, logvar, _ = model.encode(params["vae"], state, x)
        n, L = mu.shape
        eps = jax.random.normal(key, (k, n, L), mu.dtype)
        z = mu + jnp.exp(0.5 * logvar) * eps
        out = model.decode(params["vae"], state, z.reshape(k * n, L))[0].reshape((k,) + x.shape)
        log_px = obj.logp_x_given_z(params, out, x)                                 # (k, n)
        kl = 0.5 * jnp.sum(mu ** 2 + jnp.exp(logvar) - 1.0 - logvar, axis=-1)      # (n,)
        log_pz = -0.5 * jnp.sum(z ** 2, -1)
        log_qz = -0.5 * jnp.sum(eps ** 2 + logvar, -1)                             # the 2 pi terms cancel
        iwae = jax.scipy.special.logsumexp(log_px + log_pz - log_qz, axis=0) - math.log(k)
        recon = -jnp.mean(log_px, axis=0)
        return jnp.stack([recon + kl, recon, kl, -iwae])

    def fn(params, states, x, seed, salt):
        key = jax.random.fold_in(jax.random.key(seed, impl="rbg"), salt)
        return jnp.stack([one(o, p, s, x, jax.random.fold_in(key, i))
                          for i, (o, p, s) in enumerate(zip(objs, params, states))])

    cache_key = (tuple(id(o) for o in objs), k, fast_compile)     # the same models and k: the same program
    if cache_key not in _BOUND_FNS:
        _BOUND_FNS.clear()
        _BOUND_FNS[cache_key] = (objs, jit(fn, fast_compile=fast_compile))
    return _BOUND_FNS[cache_key][1]


def evaluate(bound_fn, params, states, x, seed: int, salt: int, chunk: int) -> np.ndarray:
    """(M, 4) means over x of bound_fn's per-image values (neg_elbo, recon, kl, neg_iwae), in chunks
    of ``chunk`` (the last one padded, so one program serves every chunk)."""
    n = len(x)
    sums = 0.0
    for i in range(0, n, chunk):
        xb = np.asarray(x[i:i + chunk])
        m = len(xb)
        if m < chunk:
            xb = np.concatenate([xb, np.zeros((chunk - m,) + xb.shape[1:], xb.dtype)])
        vals = np.asarray(bound_fn(params, states, xb, seed, salt * 1000 + i // chunk), np.float64)
        sums = sums + vals[:, :, :m].sum(axis=2)
    return sums / n


def train_vaes(args, objs, labels, data: dict, *, eval_test_each_epoch: bool, chunk: int) -> list:
    """Train the models ``objs`` side by side on the same batches (one jitted step for all: Adam
    is per parameter, so this is M independent trainings) with Adam; after each epoch the
    validation negative ELBO (one z draw per image) of each model picks the parameters kept for
    it. Returns one dict per model: history, kept params/state, best epoch, timing."""
    import jax
    import jax.numpy as jnp
    import optax
    from tqdm.auto import tqdm

    from jaxnet.nn import count_params

    x_tr = data["train"]
    bs = min(args.batch_size, len(x_tr))
    steps = len(x_tr) // bs
    opt = optax.adam(args.lr)
    M = len(objs)

    fast = bool(args.smoke)

    @functools.partial(jit, fast_compile=True)
    def init(seed):
        key = jax.random.key(seed, impl="rbg")
        ps, ss = zip(*[o.init(jax.random.fold_in(key, i), (bs,) + x_tr.shape[1:]) for i, o in enumerate(objs)])
        return tuple(ps), tuple(ss), opt.init(tuple(ps))

    @functools.partial(jit, fast_compile=fast)
    def step(params, states, opt_state, x, seed, counter):
        key = jax.random.fold_in(jax.random.key(seed, impl="rbg"), counter)

        def total(params):
            outs = [o.loss(p, s, x, jax.random.fold_in(key, i))
                    for i, (o, p, s) in enumerate(zip(objs, params, states))]
            return sum(l for l, _ in outs), tuple(aux for _, aux in outs)

        (_, aux), g = jax.value_and_grad(total, has_aux=True)(params)
        metrics = jnp.stack([jnp.stack([m["loss"], m["recon"], m["kl"]]) for m, _ in aux])     # (M, 3)
        updates, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, updates), tuple(s for _, s in aux), opt_state, metrics

    params, states, opt_state = init(args.seed)
    n_params = [int(count_params(p)) for p in params]
    bound1 = make_bound_fn(objs, 1, fast)
    rng = np.random.default_rng(args.seed)
    keys = ("epoch", "train_loss", "train_recon", "train_kl", "val_nelbo", "val_recon", "val_kl", "test_nelbo",
            "epoch_time_s", "cum_train_time_s")
    hists = [{k: [] for k in keys} for _ in objs]
    best = [(math.inf, 0, None, None) for _ in objs]
    cum, stopped, last = 0.0, False, None
    for label, n in zip(labels, n_params):
        print(f"{label}: {n:,} params", flush=True)
    print(f"{args.epochs} epochs x {steps} steps of {bs}, adam lr {args.lr}" + (f" ({M} models side by side)" if M > 1
                                                                              else ""), flush=True)
    bar = tqdm(range(1, args.epochs + 1), desc="vae", disable=args.no_progress or args.quick, leave=False)
    for epoch in bar:
        if last is not None and cum + last > args.time_budget:
            stopped = True
            tqdm.write(f"stopping before epoch {epoch}: it would pass the {args.time_budget:.0f} s budget")
            break
        t0 = time.perf_counter()
        perm = rng.permutation(len(x_tr))
        ms = []
        for s in range(steps):
            params, states, opt_state, m = step(params, states, opt_state, x_tr[perm[s * bs:(s + 1) * bs]],
                                                args.seed, (epoch - 1) * steps + s)
            ms.append(m)
        train = np.mean(np.asarray(jax.device_get(ms), np.float64), axis=0)           # (M, 3)
        val = evaluate(bound1, params, states, data["val"], args.seed, epoch, chunk)   # (M, 4)
        test = (evaluate(bound1, params, states, data["test"], args.seed, 10**5 + epoch, chunk)
                if eval_test_each_epoch else None)  # recorded for the curve only: the kept epoch is chosen on validation
        last = time.perf_counter() - t0
        cum += last
        for i, h in enumerate(hists):
            h["epoch"].append(epoch)
            h["train_loss"].append(train[i, 0])
            h["train_recon"].append(train[i, 1])
            h["train_kl"].append(train[i, 2])
            h["val_nelbo"].append(val[i, 0])
            h["val_recon"].append(val[i, 1])
            h["val_kl"].append(val[i, 2])
            if test is not None:
                h["test_nelbo"].append(test[i, 0])
            h["epoch_time_s"].append(last)
            h["cum_train_time_s"].append(cum)
            if not math.isfinite(train[i, 0]):
                _fail(f"{labels[i]}: the training loss became {train[i, 0]} at epoch {epoch} (try a smaller --lr)")
            if val[i, 0] < best[i][0]:
                best[i] = (val[i, 0], epoch, params[i], states[i])
        bar.set_postfix(train=f"{train[0, 0]:.2f}", val=f"{val[0, 0]:.2f}")
        if not args.quick and (epoch % max(1, args.epochs // 10) == 0 or epoch == 1):
            tqdm.write(f"epoch {epoch:3d} | " + " | ".join(
                f"{lab}: train -ELBO {train[i, 0]:.3f} (recon {train[i, 1]:.3f}, KL {train[i, 2]:.3f}), "
                f"val {val[i, 0]:.3f}" for i, lab in enumerate(labels)) + f" | {cum:.0f} s")
    runs = []
    for i, h in enumerate(hists):
        if not eval_test_each_epoch:
            h.pop("test_nelbo")
        runs.append({"history": h, "best_epoch": best[i][1], "best_val_nelbo": best[i][0], "params": best[i][2],
                     "state": best[i][3], "n_params": n_params[i], "train_time_s": cum, "stopped_at_budget": stopped,
                     "steps_per_epoch": steps, "batch_size": bs})
    return runs


def score_test(args, objs, runs, x_test, num_dims: int, chunk: int) -> list:
    """Each kept model's test bounds with --iw-samples z draws per image (one program for all)."""
    vals = evaluate(make_bound_fn(objs, args.iw_samples, bool(args.smoke)), tuple(r["params"] for r in runs),
                    tuple(r["state"] for r in runs), x_test, args.seed, 7 * 10**5, chunk)
    ln2d = num_dims * math.log(2.0)
    return [{"nelbo_nats": v[0], "recon_nats": v[1], "kl_nats": v[2], "bits_per_dim": v[0] / ln2d,
             "iw_samples": args.iw_samples, "iwae_nll_nats": v[3], "iwae_bits_per_dim": v[3] / ln2d} for v in vals]


def make_outputs_fn(objs, n_samples: int, latent_map: bool):
    """One jitted program for the figures and the judge: the first model's reconstructions (at
    z = mu) and ``n_samples`` decoder means at z ~ N(0, I); with ``latent_map``, the last model's
    (the 2-D one) posterior means of ``x_map`` and its decoder means at the latent points ``grid``."""
    import jax

    @functools.partial(jit, fast_compile=True)
    def fn(params, states, x_recon, x_map, grid, seed):
        o, p, s = objs[0], params[0], states[0]
        key = jax.random.key(seed, impl="rbg")
        recon = o.mean_image(p, o.model.apply(p["vae"], s, x_recon, train=False)[0].logits)
        samples = o.mean_image(p, o.model.sample(p["vae"], s, key, n_samples))
        if not latent_map:
            return recon, samples, None, None
        o2, p2, s2 = objs[-1], params[-1], states[-1]
        mu2 = o2.model.encode(p2["vae"], s2, x_map)[0]
        return recon, samples, mu2, o2.mean_image(p2, o2.model.decode(p2["vae"], s2, grid)[0])

    return fn


# ----------------------------------------------------------------------------------- figures

def _tile(images, rows, cols, pad=1):
    """(N, H, W, C) in [0, 1] -> one (rows*(H+pad)-pad, cols*(W+pad)-pad, C) mosaic, mid-grey gaps."""
    images = np.asarray(images)
    n, h, w, c = images.shape
    out = np.full((rows * (h + pad) - pad, cols * (w + pad) - pad, c), 0.5, np.float32)
    for i in range(min(n, rows * cols)):
        r, q = divmod(i, cols)
        out[r * (h + pad):r * (h + pad) + h, q * (w + pad):q * (w + pad) + w] = images[i]
    return out


def _show(ax, mosaic, title):
    ax.imshow(mosaic.squeeze(-1) if mosaic.shape[-1] == 1 else mosaic, cmap="gray" if mosaic.shape[-1] == 1 else None,
              vmin=0.0, vmax=1.0, interpolation="nearest")
    ax.set_title(title, fontsize=9)
    ax.axis("off")


def plot_curves(run, path, title) -> str:
    h = run["history"]
    fig = figure((11, 4))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(h["epoch"], h["train_loss"], label="train (one z, running)")
    ax1.plot(h["epoch"], h["val_nelbo"], label="validation")
    if "test_nelbo" in h:
        ax1.plot(h["epoch"], h["test_nelbo"], label="test (recorded, not used)", alpha=0.8)
    ax1.axvline(run["best_epoch"], color="0.5", ls=":", lw=1, label=f"kept: epoch {run['best_epoch']}")
    lo = min(min(h["val_nelbo"]), min(h["train_loss"]))
    hi = np.percentile(np.r_[h["train_loss"], h["val_nelbo"]], 90)
    if hi > lo:
        ax1.set_ylim(lo - 0.05 * (hi - lo), hi + 0.1 * (hi - lo))
    ax1.set(xlabel="epoch", ylabel="negative ELBO (nats / image)", title="negative ELBO")
    ax2.plot(h["epoch"], h["train_recon"], label="train reconstruction")
    ax2.plot(h["epoch"], h["val_recon"], label="validation reconstruction")
    ax2b = ax2.twinx()
    ax2b.plot(h["epoch"], h["train_kl"], color="C3", label="train KL (right axis)")
    ax2b.plot(h["epoch"], h["val_kl"], color="C4", ls="--", label="validation KL (right axis)")
    ax2.set(xlabel="epoch", ylabel="-log p(x|z) (nats / image)", title="its two parts")
    ax2b.set_ylabel("KL(q(z|x) || p(z)) (nats / image)")
    grid_legend((ax1,))
    ax2.grid(True, alpha=0.3)
    lines = ax2.get_legend_handles_labels()
    lines2 = ax2b.get_legend_handles_labels()
    ax2.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8)
    return save_figure(fig, path, title)


def plot_reconstructions(inputs, recons, path, title, n=16) -> str:
    fig = figure((10, 2.6))
    ax = fig.subplots()
    _show(ax, _tile(np.concatenate([inputs[:n], recons[:n]]), 2, n), "top: test inputs; bottom: reconstructions at z = mu")
    return save_figure(fig, path, title)


def plot_samples(samples, path, title, reference=None) -> str:
    panels = 2 if reference is not None else 1
    fig = figure((5 * panels, 5.3))
    axes = np.atleast_1d(fig.subplots(1, panels))
    side = int(math.isqrt(len(samples)))
    _show(axes[0], _tile(samples, side, side), "samples (decoder means at z ~ N(0, I))")
    if reference is not None:
        _show(axes[1], _tile(reference, side, side), "real test images")
    return save_figure(fig, path, title)


def plot_latent_map(mu, labels, grid_images, grid_vals, path, title) -> str:
    fig = figure((12, 5.8))
    ax1, ax2 = fig.subplots(1, 2)
    sc = ax1.scatter(mu[:, 0], mu[:, 1], c=labels, cmap="tab10", s=10, vmin=-0.5, vmax=9.5)
    cb = fig.colorbar(sc, ax=ax1, ticks=range(10))
    cb.set_label("digit")
    ax1.set(xlabel="z1", ylabel="z2", title="test images' posterior means mu(x)")
    ax1.grid(True, alpha=0.3)
    m = len(grid_vals)
    _show(ax2, _tile(grid_images[::-1].reshape((m * m,) + grid_images.shape[2:]), m, m),
          f"decoder means on a {m}x{m} grid of z (Gaussian quantiles {grid_vals[0]:.2f} .. {grid_vals[-1]:.2f})")
    return save_figure(fig, path, title)


# -------------------------------------------------------------------------------------- judge

JUDGE_KEYS = ("classifier_score", "confident_fraction", "class_coverage", "frechet")


def judge_scores(args, source: str, samples, sample_label: str, extra_real=None):
    """The sample judge's scores (``experiments/_judge.py``) of ``samples`` (N, H, W, C) in [0, 1]
    and, as reference rows for the same N, of N real held-out images (``judge.real_score``) and
    of ``extra_real`` (label, images) when given. None with ``--no-judge`` or without the judge."""
    if getattr(args, "no_judge", False):
        return None
    try:
        from experiments._judge import load_judge
    except ImportError:
        return None
    judge = load_judge(source, args)
    n = len(samples)
    rows = [{"images": sample_label, **judge.score(np.asarray(samples, np.float32))},
            {"images": f"real held-out {source} images (the judge's reference)", **judge.real_score(n)}]
    if extra_real is not None:
        label, images = extra_real
        rows.append({"images": label, **judge.score(np.asarray(images[:n], np.float32))})
    return {"judge": repr(judge), "classifier_test_accuracy": judge.test_accuracy, "n": n, "rows": rows,
            "note": "jaxnet's own classifier (not Inception): compare only with this judge's other numbers"}


def print_judge(judge) -> None:
    if judge:
        print_table(["images", *JUDGE_KEYS], [[r["images"], *(r[k] for k in JUDGE_KEYS)] for r in judge["rows"]],
                    title=f"\nsample judge ({judge['n']} images each; classifier test accuracy "
                          f"{judge['classifier_test_accuracy']:.4f})")


# --------------------------------------------------------------------------------------- main

def run_digits(args) -> dict:
    ds = binary_digits(args.seed, smoke=args.smoke)
    shape, num_dims = tuple(ds.x_train.shape[1:]), int(np.prod(ds.x_train.shape[1:]))
    print(f"digits, binarised (level >= 8/16): {len(ds.x_train)} training, {len(ds.x_val)} validation, "
          f"{len(ds.x_test)} test images of {shape}", flush=True)
    data = {"train": ds.x_train, "val": ds.x_val, "test": ds.x_test}
    chunk = 64 if args.smoke else 135
    # the model, and its 2-D twin for the latent map (unless the model is 2-D itself, as under --smoke)
    objs = [Objective(build_model(args, shape), "bernoulli", shape[-1])]
    labels = [f"VAE L={args.latent_dim}"]
    if args.latent_dim != 2:
        objs.append(Objective(build_model(args, shape, latent_dim=2), "bernoulli", shape[-1]))
        labels.append("VAE L=2")
    runs = train_vaes(args, objs, labels, data, eval_test_each_epoch=True, chunk=chunk)
    tests = score_test(args, objs, runs, ds.x_test, num_dims, chunk)
    test, test2 = tests[0], tests[-1]
    base = independent_bernoulli_nll(ds.x_train, ds.x_test)

    m = sized(args, 15, 15, 6)
    vals = np.array([statistics.NormalDist().inv_cdf(q) for q in np.linspace(0.05, 0.95, m)], np.float32)
    zz = np.stack(np.meshgrid(vals, vals), -1).reshape(-1, 2)     # row i: z2 = vals[i]; column j: z1 = vals[j]
    n_samples = sized(args, 270, 270, 64)
    recon, samples, mu2, grid = [None if a is None else np.asarray(a) for a in make_outputs_fn(objs, n_samples, True)(
        tuple(r["params"] for r in runs), tuple(r["state"] for r in runs), ds.x_test[:16], ds.x_test, zz,
        args.seed + 1)]
    out = _figures(args, runs[0], ds.x_test, recon, samples, "binarised digits")
    out["figures"]["latent_map"] = os.path.basename(plot_latent_map(
        mu2, ds.y_test, grid.reshape((m, m) + shape), vals, os.path.join(args.out, "vae_latent_map.png"),
        f"VAE with a 2-D latent on binarised digits (test -ELBO {test2['nelbo_nats']:.1f} nats)"))
    judge = judge_scores(args, "digits", samples, "VAE samples (decoder means, grey levels)",
                         ("real held-out digits, binarised", ds.x_val))
    return {"data_source": "digits", "likelihood": "bernoulli (binarised digits: level >= 8 of 16)",
            "n_train": len(ds.x_train), "n_val": len(ds.x_val), "n_test": len(ds.x_test), "image_shape": shape,
            "num_dims": num_dims, "model": describe(args, shape, args.latent_dim),
            "recipe": _recipe(args, runs[0]), "n_params": runs[0]["n_params"], "history": runs[0]["history"],
            "best_epoch": runs[0]["best_epoch"], "train_time_s": runs[0]["train_time_s"],
            "stopped_at_budget": runs[0]["stopped_at_budget"], "test": test,
            "baseline": {"name": "independent Bernoulli pixels, training marginals (Laplace-smoothed)",
                         "nll_nats": base, "bits_per_dim": base / (num_dims * math.log(2.0))},
            "latent2": {"model": describe(args, shape, 2), "n_params": runs[-1]["n_params"],
                        "best_epoch": runs[-1]["best_epoch"], "history": runs[-1]["history"], "test": test2,
                        "same_as_model": len(runs) == 1},
            "judge": judge, "sample_stats": _sample_stats(samples), **out}


def run_cifar(args) -> dict:
    with Timer() as t:
        ds = cifar_data(args)
    base = independent_histogram_nll(ds.x_train, ds.x_test)
    x = {"train": to_model_space(ds.x_train), "val": to_model_space(ds.x_val), "test": to_model_space(ds.x_test)}
    shape, num_dims = tuple(x["train"].shape[1:]), int(np.prod(x["train"].shape[1:]))
    print(f"cifar10 ({args.data_dir}): {len(ds.y_train)} training, {len(ds.y_val)} validation, {len(ds.y_test)} test "
          f"images ({t.elapsed:.1f} s)", flush=True)
    chunk = 100 if args.smoke else 250
    objs = [Objective(build_model(args, shape), "discretized_logistic", shape[-1])]
    runs = train_vaes(args, objs, [f"VAE L={args.latent_dim}"], x, eval_test_each_epoch=False, chunk=chunk)
    test, = score_test(args, objs, runs, x["test"], num_dims, chunk)
    n_samples = sized(args, 2000, 1000, 64)
    recon, samples, _, _ = [None if a is None else np.asarray(a) for a in make_outputs_fn(objs, n_samples, False)(
        tuple(r["params"] for r in runs), tuple(r["state"] for r in runs), x["test"][:16], None, None,
        args.seed + 1)]
    out = _figures(args, runs[0], (x["test"] + 1.0) / 2.0, recon, samples, "CIFAR-10")
    judge = judge_scores(args, "cifar10", samples, "VAE samples (decoder means)")
    return {"data_source": "cifar10",
            "likelihood": "discretized logistic on the 256 levels (per-channel learned scale), 8-bit bits/dim",
            "n_train": len(ds.y_train), "n_val": len(ds.y_val), "n_test": len(ds.y_test), "image_shape": shape,
            "num_dims": num_dims, "model": describe(args, shape, args.latent_dim),
            "recipe": _recipe(args, runs[0]), "n_params": runs[0]["n_params"], "history": runs[0]["history"],
            "best_epoch": runs[0]["best_epoch"], "train_time_s": runs[0]["train_time_s"],
            "stopped_at_budget": runs[0]["stopped_at_budget"], "test": test,
            "learned_log_scale": np.asarray(runs[0]["params"]["log_scale"]).tolist(),
            "baseline": {"name": "independent 256-way histogram per sub-pixel, training marginals (Laplace-smoothed)",
                         "nll_nats": base, "bits_per_dim": base / (num_dims * math.log(2.0))},
            "judge": judge, "sample_stats": _sample_stats(samples), **out}


def _sample_stats(samples) -> dict:
    return {"n": len(samples), "mean": float(samples.mean()), "std": float(samples.std()),
            "finite": bool(np.all(np.isfinite(samples)))}


def _recipe(args, run) -> dict:
    return {"optimizer": "adam (optax)", "lr": args.lr, "batch_size": run["batch_size"], "epochs": args.epochs,
            "epochs_run": len(run["history"]["epoch"]), "steps_per_epoch": run["steps_per_epoch"],
            "z_samples_per_step": 1, "kept": "the epoch with the best validation -ELBO",
            "time_budget_s": args.time_budget}


def _figures(args, run, shown, recon, samples, source) -> dict:
    """The curves, reconstructions and samples figures; ``shown``: test images in [0, 1]."""
    figs = {
        "curves": plot_curves(run, os.path.join(args.out, "vae_curves.png"),
                              f"VAE on {source}: negative ELBO per epoch"),
        "reconstructions": plot_reconstructions(shown, recon, os.path.join(args.out, "vae_reconstructions.png"),
                                                f"VAE reconstructions ({source}, test split)"),
        "samples": plot_samples(samples[:64], os.path.join(args.out, "vae_samples.png"), f"VAE samples ({source})",
                                reference=shown[:64]),
    }
    return {"figures": {k: os.path.basename(v) for k, v in figs.items()}}


def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    resolve(args)
    os.makedirs(args.out, exist_ok=True)
    res = run_digits(args) if args.data == "digits" else run_cifar(args)
    t, b = res["test"], res["baseline"]
    rows = [[res["model"], t["nelbo_nats"], t["bits_per_dim"], t["iwae_nll_nats"], t["iwae_bits_per_dim"]]]
    if "latent2" in res and not res["latent2"]["same_as_model"]:
        t2 = res["latent2"]["test"]
        rows.append([res["latent2"]["model"], t2["nelbo_nats"], t2["bits_per_dim"], t2["iwae_nll_nats"],
                     t2["iwae_bits_per_dim"]])
    rows.append([b["name"].split(",")[0] + " (exact)", b["nll_nats"], b["bits_per_dim"], b["nll_nats"],
                 b["bits_per_dim"]])
    res["claims"] = {"elbo_beats_independent_pixels": bool(t["nelbo_nats"] < b["nll_nats"]),
                     "iwae_at_most_elbo": bool(t["iwae_nll_nats"] <= t["nelbo_nats"] + 1e-6)}
    print_judge(res.get("judge"))
    k = t["iw_samples"]
    finish(args, res, ["model", "test -ELBO (nats)", "bits/dim", f"IWAE-{k} (nats)", f"IWAE-{k} bits/dim"], rows,
           f"\nVAE on {res['data_source']} ({res['likelihood']}), {res['n_test']} test images "
           f"(ELBO and IWAE: upper bounds of -log p(x))")
    return res


if __name__ == "__main__":
    main()
