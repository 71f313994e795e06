"""The sample judge of the generative experiments (issue 16): a jaxnet classifier that puts a number
on generated images, trained once per data source and recipe and reused from disk.

    judge = load_judge("digits", args)      # or "cifar10"; args: the experiment's namespace
    judge.probs(images)                     # float32 NHWC in [0, 1] -> (N, 10) float64 class probabilities
    judge.features(images)                  # -> (N, F) float64: the classifier's penultimate layer
    judge.score(images)                     # -> {"classifier_score", "confident_fraction", "class_coverage", "frechet"}
    judge.reference                         # the same dict for real held-out images (the "real data" row)
    judge.test_accuracy                     # the classifier's accuracy on the test split

The numbers (:mod:`jaxnet.generative.metrics`) are jaxnet's own measures: the Inception-Score
formula (``classifier_score``, in [1, 10]), the fraction of images classified with probability
>= 0.9, how evenly the predictions cover the classes (entropy of the mean prediction / log 10),
and the FID formula (``frechet``) in the classifier's feature space against the real test
split. Another network and feature space than Inception-v3: not comparable with published IS or
FID values, only with other numbers of the same judge (same source, recipe and seed).

Data splits (the experiments' own, for the same seed): digits: ``load_digits(seed)``, the
classifier trains on its 1,257 training images, ``reference`` scores the 270 validation images
(never trained on), ``frechet`` compares with the 270 test images. CIFAR-10: ``load_cifar10``
with 5,000 training images held out by ``seed``; the classifier trains on the other 45,000,
``reference`` scores 2,000 of the held-out ones, ``frechet`` compares with the 10,000 test
images. The Fréchet distance is biased upwards for small sample sizes: compare generated samples
with ``judge.real_score(n)`` for the same n (``judge.reference`` is ``real_score(n_reference)``).

The classifier is ``jaxnet.nn.fast_convnet`` (batch norm, global max pool; features: the pooled
last block), trained with ``jaxnet.train.fit`` (Nesterov SGD, warmup-cosine, crop/flip
augmentation), deterministic for a seed. Inputs are normalised per channel inside the judge
with the training split's statistics. Recipes (:data:`RECIPES`): digits (16, (32, 64, 64)) 20 epochs
(seconds); CIFAR-10 (12, (24, 48, 96)), 3 epochs on 45,000 images (about 2 minutes on an idle 2-core CPU, much
longer on a loaded one; about 70% test accuracy);
under ``--smoke`` a tiny one (widths (8, 16)) costing seconds.

Cache: ``<judge_dir>/<source>-<size>-seed<seed>-<hash>.ckpt`` (``jaxnet.train.save_checkpoint``:
atomic, checksummed), the hash over the recipe. ``judge_dir`` is ``args.judge_dir`` when set, else
``$JAXNET_JUDGE_DIR/<source>``, else ``results/_judge/<source>``. The file also holds the
normalisation, the test accuracy, the test features' mean and covariance and the held-out
images' features and probabilities, so a cached judge loads without the data set. A lock file
makes a second process wait for the first one's training instead of training too. An
unreadable cache file is reported on stderr and trained again.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
from typing import Any

import numpy as np

from experiments._common import Timer

__all__ = ["load_judge", "Judge", "RECIPES", "SOURCES", "JUDGE_DIR_ENV"]

SOURCES = ("digits", "cifar10")
JUDGE_DIR_ENV = "JAXNET_JUDGE_DIR"
FORMAT = 1                       # bump when what the cache holds changes

# (source, size) -> recipe; size "smoke" under --smoke, else "full" (--quick uses the full judge:
# it is cached, and a quick experiment's numbers should be judged like the full one's)
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("digits", "full"): {"stem": 16, "widths": [32, 64, 64], "n_train": None, "epochs": 20, "batch_size": 64,
                         "peak_lr": 0.05, "weight_decay": 5e-4, "crop_padding": 1, "flip": False},
    ("digits", "smoke"): {"stem": 8, "widths": [8, 16], "n_train": None, "epochs": 6, "batch_size": 64,
                          "peak_lr": 0.05, "weight_decay": 5e-4, "crop_padding": 1, "flip": False},
    ("cifar10", "full"): {"stem": 12, "widths": [24, 48, 96], "n_train": 45_000, "epochs": 3, "batch_size": 128,
                          "peak_lr": 0.1, "weight_decay": 5e-4, "crop_padding": 4, "flip": True},
    ("cifar10", "smoke"): {"stem": 8, "widths": [8, 16, 32], "n_train": 1_000, "epochs": 3, "batch_size": 50,
                           "peak_lr": 0.05, "weight_decay": 5e-4, "crop_padding": 4, "flip": True},
}
HELD_OUT = {"digits": None, "cifar10": 5_000}       # CIFAR training images kept from the classifier (digits: val split)
N_REFERENCE = {"digits": 270, "cifar10": 2_000}     # real held-out images in judge.reference
BATCH = 256                                          # every forward pass is padded to this many rows: one program
RANGE_TOL = 1e-3                                     # pixels this far outside [0, 1] are clipped; farther is an error


def _size(args) -> str:
    return "smoke" if getattr(args, "smoke", False) else "full"


def _recipe_hash(source: str, recipe: dict, seed: int) -> str:
    text = json.dumps({"format": FORMAT, "source": source, "recipe": recipe, "seed": seed,
                       "held_out": HELD_OUT[source], "n_reference": N_REFERENCE[source]}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:10]


def cache_path(source: str, args) -> str:
    """Where :func:`load_judge` reads (or writes) the judge for ``source`` and ``args``."""
    size = _size(args)
    recipe = RECIPES[(source, size)]
    folder = getattr(args, "judge_dir", None) or (
        os.path.join(os.environ[JUDGE_DIR_ENV], source) if os.environ.get(JUDGE_DIR_ENV)
        else os.path.join("results", "_judge", source))
    name = f"{source}-{size}-seed{args.seed}-{_recipe_hash(source, recipe, args.seed)}.ckpt"
    return os.path.join(os.fspath(folder), name)


class Judge:
    """A trained classifier with the measures of :mod:`jaxnet.generative.metrics` (see the module
    docstring). Build it with :func:`load_judge`.

    Attributes: ``source``, ``input_shape`` (H, W, C), ``num_classes``, ``feature_dim``,
    ``test_accuracy``, ``reference`` (the score dict of ``n_reference`` real held-out images),
    ``path`` (the cache file), ``trained_now`` (True when this load trained it), ``recipe``.
    """

    def __init__(self, model, params, state, config: dict, extra: dict, path: str, trained_now: bool):
        self.model, self.params, self.state = model, params, state
        self.source = config["source"]
        self.recipe = config["recipe"]
        self.input_shape = tuple(config["input_shape"])
        self.num_classes = int(config["num_classes"])
        self.feature_dim = int(config["widths"][-1])
        self.test_accuracy = float(config["test_accuracy"])
        self.mean = np.asarray(config["mean"], np.float32)
        self.std = np.asarray(config["std"], np.float32)
        self.test_stats = (np.asarray(extra["test_mean"], np.float64), np.asarray(extra["test_cov"], np.float64))
        self.n_test = int(config["n_test"])
        # the held-out split is stored in its loader's order (CIFAR-10's is sorted by class): a fixed
        # shuffle makes every prefix (real_score(n)) a sample of all classes
        order = np.random.default_rng(int(config["seed"])).permutation(len(extra["held_out_probs"]))
        self._held_feats = np.asarray(extra["held_out_features"], np.float64)[order]
        self._held_probs = np.asarray(extra["held_out_probs"], np.float64)[order]
        self.path, self.trained_now = path, trained_now
        self.n_reference = min(N_REFERENCE[self.source], len(self._held_probs))
        self.reference = self.real_score(self.n_reference)

    # ------------------------------------------------------------------ forward passes

    def _check(self, fn: str, images) -> np.ndarray:
        x = np.asarray(images)
        want = "(N, " + ", ".join(str(d) for d in self.input_shape) + ")"
        if x.ndim != 4 or tuple(x.shape[1:]) != self.input_shape or x.shape[0] < 1:
            raise ValueError(f"judge.{fn}: images must have shape {want} for the {self.source} judge (float NHWC in "
                             f"[0, 1]), got shape {tuple(x.shape)}")
        if not np.issubdtype(x.dtype, np.floating):
            raise ValueError(f"judge.{fn}: images must be floats in [0, 1], got dtype {x.dtype} with shape "
                             f"{tuple(x.shape)} (uint8 images: divide by 255)")
        x = x.astype(np.float32)
        if not np.all(np.isfinite(x)):
            raise ValueError(f"judge.{fn}: images must be finite, got non-finite pixels in shape {tuple(x.shape)}")
        lo, hi = float(x.min()), float(x.max())
        if lo < -RANGE_TOL or hi > 1 + RANGE_TOL:
            raise ValueError(f"judge.{fn}: images must be in [0, 1], got values in [{lo:.3g}, {hi:.3g}] with shape "
                             f"{tuple(x.shape)} (tanh outputs: use (x + 1) / 2)")
        return np.clip(x, 0.0, 1.0)

    def _forward(self, fn: str, images) -> tuple[np.ndarray, np.ndarray]:
        """(features (N, F), probabilities (N, K)), both float64."""
        x = self._check(fn, images)
        return _run_forward(self.model, self.params, self.state, (x - self.mean) / self.std)

    def probs(self, images) -> np.ndarray:
        """Class probabilities (N, 10) float64 (rows sum to 1) of images (N, H, W, C) float in [0, 1]."""
        return self._forward("probs", images)[1]

    def features(self, images) -> np.ndarray:
        """The classifier's penultimate layer (N, F) float64 for images (N, H, W, C) float in [0, 1]."""
        return self._forward("features", images)[0]

    def score(self, images) -> dict:
        """``{"classifier_score", "confident_fraction", "class_coverage", "frechet"}`` of images
        (N, H, W, C) float in [0, 1], N >= 2; ``frechet`` against the real test split's features."""
        feats, probs = self._forward("score", images)
        if len(probs) < 2:
            raise ValueError(f"judge.score: needs at least 2 images, got shape {tuple(np.shape(images))}")
        return _score(feats, probs, self.test_stats)

    def real_score(self, n: int) -> dict:
        """The score dict of ``n`` real held-out images (never trained on, not in the test split; the
        first n of a fixed shuffle of them):
        the "real data" row for ``n`` generated samples (``reference`` is ``real_score(n_reference)``)."""
        avail = len(self._held_probs)
        if not isinstance(n, (int, np.integer)) or isinstance(n, bool) or not 2 <= n <= avail:
            raise ValueError(f"judge.real_score: n must be an int in [2, {avail}] (the held-out images), got {n!r}")
        return _score(self._held_feats[:n], self._held_probs[:n], self.test_stats)

    def __repr__(self) -> str:
        return (f"Judge({self.source}, fast_convnet stem {self.recipe['stem']} widths {tuple(self.recipe['widths'])}, "
                f"test accuracy {self.test_accuracy:.4f}, {self.path})")


def _score(feats, probs, test_stats) -> dict:
    from jaxnet.generative.metrics import class_coverage, classifier_score, confident_fraction, frechet_distance

    return {"classifier_score": classifier_score(probs), "confident_fraction": confident_fraction(probs),
            "class_coverage": class_coverage(probs), "frechet": frechet_distance(feats, test_stats)}


_FORWARD: dict = {}


def _forward_fn(model):
    """Jitted ``(params, state, x) -> (features, logits)``: every layer but the last, then the last."""
    import jax

    from jaxnet.nn import Sequential

    if model not in _FORWARD:
        body = Sequential(model.layers[:-1], model.names[:-1])
        head, head_name = model.layers[-1], model.names[-1]

        @jax.jit
        def forward(params, state, x):
            p = {k: v for k, v in params.items() if k != head_name}
            s = {k: v for k, v in state.items() if k != head_name}
            feats = body.apply(p, s, x, train=False)[0]
            logits = head.apply(params[head_name], state[head_name], feats, train=False)[0]
            return feats, logits

        _FORWARD[model] = forward
    return _FORWARD[model]


def _run_forward(model, params, state, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Features and softmax probabilities (float64) of normalised images, in padded batches of BATCH."""
    f = _forward_fn(model)
    feats, logits = [], []
    for i in range(0, len(x), BATCH):
        xb = x[i:i + BATCH]
        pad = np.zeros((BATCH - len(xb), *xb.shape[1:]), np.float32)
        fb, lb = f(params, state, np.concatenate([xb, pad]).astype(np.float32))
        feats.append(np.asarray(fb, np.float64)[:len(xb)])
        logits.append(np.asarray(lb, np.float64)[:len(xb)])
    feats, logits = np.concatenate(feats), np.concatenate(logits)
    z = logits - logits.max(axis=1, keepdims=True)
    p = np.exp(z)
    return feats, p / p.sum(axis=1, keepdims=True)


# ---------------------------------------------------------------------- data, training, cache

def _data(source: str, args):
    """(x_train, y_train, x_held, x_test, y_test, classes): float32 [0, 1] NHWC, the judge's splits."""
    from jaxnet.data import load_digits, to_float

    if source == "digits":
        ds = load_digits(seed=args.seed)
        return ds.x_train, ds.y_train, ds.x_val, ds.x_test, ds.y_test, ds.classes
    from experiments._common import load_data

    ds = load_data(args, val_size=HELD_OUT[source])
    return (to_float(ds.x_train), ds.y_train, to_float(ds.x_val), to_float(ds.x_test), ds.y_test, ds.classes)


def _train(source: str, args, recipe: dict, path: str):
    """Train the classifier, compute what the cache holds, write it; returns (model, params, state, config, extra)."""
    from jaxnet.data import Dataset, fit_normalizer, subsample
    from jaxnet.generative.metrics import gaussian_stats
    from jaxnet.nn import fast_convnet
    from jaxnet.optim import make_optimizer
    from jaxnet.optim.schedules import make_schedule
    from jaxnet.train import fit, num_batches, save_checkpoint

    from experiments._understand_net import plain_arrays

    x_tr, y_tr, x_held, x_te, y_te, classes = _data(source, args)
    if recipe["n_train"] is not None and len(y_tr) > recipe["n_train"]:
        x_tr, y_tr = subsample(x_tr, y_tr, recipe["n_train"], seed=args.seed)
    norm = fit_normalizer(x_tr, mode="channel")
    mean = np.asarray(norm.mean, np.float32).reshape(-1)
    std = np.asarray(norm.std, np.float32).reshape(-1)
    nx = lambda x: ((x - mean) / std).astype(np.float32)  # noqa: E731
    ds = Dataset(x_train=nx(x_tr), y_train=y_tr, x_val=nx(x_tr[:0]), y_val=y_tr[:0], x_test=nx(x_te), y_test=y_te,
                 classes=tuple(classes), name=source)
    model = fast_convnet(stem=recipe["stem"], widths=tuple(recipe["widths"]), num_classes=len(classes))
    bs, epochs = recipe["batch_size"], recipe["epochs"]
    total = epochs * num_batches(len(y_tr), bs)
    opt = make_optimizer("nesterov", make_schedule("warmup_cosine", recipe["peak_lr"], total_steps=total,
                                                   warmup_steps=max(1, total // 10)),
                         weight_decay=recipe["weight_decay"])
    with Timer() as t:
        res = fit(model, ds, optimizer=opt, epochs=epochs, batch_size=bs, key=args.seed,
                  augment={"crop_padding": recipe["crop_padding"], "flip": recipe["flip"]},
                  progress=source == "cifar10" and _size(args) == "full")
    params, state = plain_arrays((res.train_state.params, res.train_state.state))
    test_feats, test_probs = _run_forward(model, params, state, ds.x_test)
    held_feats, held_probs = _run_forward(model, params, state, nx(x_held))
    acc = float(np.mean(np.argmax(test_probs, axis=1) == np.asarray(y_te)))
    test_mean, test_cov = gaussian_stats(test_feats)
    config = {"model": "fast_convnet", "stem": recipe["stem"], "widths": list(recipe["widths"]), "norm": "batchnorm",
              "input_shape": list(x_tr.shape[1:]), "num_classes": len(classes), "source": source,
              "seed": int(args.seed), "recipe": recipe, "format": FORMAT, "n_train": int(len(y_tr)),
              "n_test": int(len(y_te)), "n_held_out": int(len(x_held)), "mean": mean.tolist(), "std": std.tolist(),
              "test_accuracy": acc, "train_time_s": round(t.elapsed, 2)}
    extra = {"test_mean": test_mean, "test_cov": test_cov,
             "held_out_features": held_feats.astype(np.float32), "held_out_probs": held_probs}
    save_checkpoint(path, res.train_state, config=config, extra=extra)
    print(f"judge: trained fast_convnet (stem {recipe['stem']}, widths {tuple(recipe['widths'])}) on {len(y_tr)} "
          f"{source} images, {epochs} epochs, {t.elapsed:.0f} s; test accuracy {acc:.4f} -> {path}", flush=True)
    return model, params, state, config, extra


def _read(path: str):
    """(model, params, state, config, extra) from a cache file; raises on anything unexpected."""
    from jaxnet.train import read_checkpoint

    from experiments.what_learned import load_fast_convnet

    model, params, state, config = load_fast_convnet(path)
    if config.get("format") != FORMAT:
        raise ValueError(f"cache format {config.get('format')!r}, this judge writes {FORMAT}")
    _, _, extra, _ = read_checkpoint(path)
    for k in ("test_mean", "test_cov", "held_out_features", "held_out_probs"):
        if k not in extra:
            raise ValueError(f"cache has no {k!r}")
    return model, params, state, config, extra


@contextlib.contextmanager
def _lock(path: str):
    """An exclusive lock on ``path + ".lock"`` (fcntl; a no-op where there is none)."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    with open(path + ".lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def load_judge(source: str, args) -> Judge:
    """The judge for ``source`` ("digits" or "cifar10"): read from its cache file, or trained now
    and written there (see the module docstring). ``args``: the experiment's namespace; reads
    ``args.seed``, ``args.smoke`` (the tiny recipe), ``args.data_dir`` (CIFAR-10, needed only to
    train: a missing copy exits with one line, status 2) and ``args.judge_dir`` if present.
    """
    if source not in SOURCES:
        raise ValueError(f"load_judge: source must be one of {SOURCES}, got {source!r}")
    if not hasattr(args, "seed"):
        raise ValueError("load_judge: args must carry the experiment's options (args.seed missing)")
    recipe = RECIPES[(source, _size(args))]
    path = cache_path(source, args)
    with _lock(path):
        loaded = None
        if os.path.exists(path):
            try:
                loaded = _read(path)
            except Exception as e:  # noqa: BLE001 - a bad cache file is trained again, said in one line
                print(f"experiments.{getattr(args, 'name', 'judge')}: judge cache {path!r} unreadable "
                      f"({str(e).splitlines()[0]}): training it again", file=sys.stderr, flush=True)
        trained_now = loaded is None
        if trained_now:
            loaded = _train(source, args, recipe, path)
    model, params, state, config, extra = loaded
    judge = Judge(model, params, state, config, extra, path, trained_now)
    if not trained_now:
        print(f"judge: {source} fast_convnet from {path} (test accuracy {judge.test_accuracy:.4f})", flush=True)
    return judge
