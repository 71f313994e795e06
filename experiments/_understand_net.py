"""The network the understanding experiments (issue 15) look at, trained once and reused.

A ``fast_convnet`` trained on CIFAR-10 (the embedded digits without a copy) with the deep
experiments' recipe, saved with ``jaxnet.train.save_checkpoint`` and read back by every later
run with the same settings: ``experiments.saliency``, ``experiments.fooling``,
``experiments.synthesis`` and ``experiments.style_transfer`` all call :func:`trained_net`.

Sizes (``--net-epochs`` overrides the epochs):

- default: all 50,000 CIFAR-10 training images, 6 epochs, widths (32, 64, 128) (~7 min here);
- ``--quick``: 4,000 images, 4 epochs, peak learning rate 0.02 (0.1 elsewhere; 0.05 smoke);
- ``--smoke`` (the test suite): 600 images, 6 epochs, widths (8, 16).

The checkpoint is ``results/understand_net/<source>-<size>.ckpt`` (the folder: ``$JAXNET_UNDERSTAND_NET_DIR``
when set) unless ``--checkpoint PATH``
names another one (a missing file there is trained and written; one of another model or
input shape is refused in one line). Images are float32, normalised per channel with the
training split's statistics: :class:`Net` carries that normalisation, so pictures are shown
in [0, 1] and attacks are clipped to the valid pixel range in normalised units.
"""
from __future__ import annotations

import dataclasses
import os
import sys
from typing import Any

import numpy as np

from experiments._common import Timer, fail

# The peak learning rate per size: 0.1 diverged on the quick net's 128 steps (12 warm-up steps:
# training loss 3.4 after epoch 1, test accuracy 0.118); 0.02 trains (0.30 training accuracy
# after 2 of its epochs).
PEAK_LR = {"full": 0.1, "quick": 0.02, "smoke": 0.05}
NET_DIR_ENV = "JAXNET_UNDERSTAND_NET_DIR"   # the default checkpoints' folder (the test suite points it at a temporary one)

SIZES = {  # size -> (n_train, epochs, stem, widths)
    "full": (50_000, 6, 16, (32, 64, 128)),
    "quick": (4_000, 4, 16, (32, 64, 128)),
    "smoke": (600, 6, 4, (8, 16)),
}


@dataclasses.dataclass
class Net:
    """A trained classifier and its data. ``x_test`` are normalised float32 NHWC images;
    ``mean``/``std`` (C,) undo the normalisation (``to_unit``); ``clip`` is the valid pixel
    range [0, 1] in normalised units, per channel, shaped to broadcast over NHWC."""
    model: Any
    params: Any
    state: Any
    classes: tuple
    x_test: np.ndarray
    y_test: np.ndarray
    x_train: np.ndarray
    y_train: np.ndarray
    mean: np.ndarray
    std: np.ndarray
    source: str
    checkpoint: str
    test_accuracy: float
    trained_now: bool

    @property
    def clip(self) -> tuple[np.ndarray, np.ndarray]:
        return ((0.0 - self.mean) / self.std).astype(np.float32), ((1.0 - self.mean) / self.std).astype(np.float32)

    def to_unit(self, x) -> np.ndarray:
        """Normalised images -> [0, 1] pixels (clipped), for display."""
        return np.clip(np.asarray(x, np.float32) * self.std + self.mean, 0.0, 1.0)

    def predict(self, x, batch_size: int = 500) -> np.ndarray:
        """Predicted classes (N,) in eval mode. Every batch is padded to ``batch_size`` rows (eval
        mode treats each image alone), so one program serves every call."""
        f = _predict_fn(self.model)
        x = np.asarray(x)
        out = []
        for i in range(0, len(x), batch_size):
            xb = x[i:i + batch_size]
            pad = np.zeros((batch_size - len(xb), *xb.shape[1:]), xb.dtype)
            out.append(np.asarray(f(self.params, self.state, np.concatenate([xb, pad])))[:len(xb)])
        return np.concatenate(out) if out else np.zeros((0,), np.int32)


_PREDICT = {}


def _predict_fn(model):
    import jax
    import jax.numpy as jnp

    if model not in _PREDICT:
        _PREDICT[model] = jax.jit(lambda p, s, x: jnp.argmax(model.apply(p, s, x, train=False)[0], axis=-1))
    return _PREDICT[model]


def plain_arrays(tree):
    """``tree``'s arrays as plain single-device arrays, as a checkpoint reads them: ``fit`` returns
    arrays sharded over its (one-device) mesh, and a jitted function called with both kinds
    compiles twice (the input types differ)."""
    import jax
    import jax.numpy as jnp

    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a)), tree)


def add_net_flags(parser) -> None:
    parser.add_argument("--checkpoint", default=None,
                        help="the trained net's checkpoint (default results/understand_net/<source>-<size>.ckpt; "
                             "trained and written there when missing)")
    parser.add_argument("--net-epochs", type=int, default=None,
                        help="epochs when the net has to be trained (default 6; quick 4; smoke 6)")


def _size(args) -> str:
    return "smoke" if getattr(args, "smoke", False) else "quick" if getattr(args, "quick", False) else "full"


def _data(args, n_train: int):
    """(Dataset of float32 normalised images, mean (C,), std (C,), source) in [0, 1] pixel units."""
    from jaxnet.data import fit_normalizer, subsample, to_float

    from experiments._common import digits_uint8, load_data

    if args.data_dir:
        ds, source = load_data(args, val_size=0), "cifar10"
    else:
        print(f"experiments.{args.name}: no CIFAR-10 copy given (--data-dir or $JAXNET_CIFAR10_DIR): "
              f"running on the embedded 8x8 digits", flush=True)
        ds, source = digits_uint8(args.seed, val_size=0), "digits"
    if len(ds.y_train) > n_train:
        x, y = subsample(ds.x_train, ds.y_train, n_train, seed=args.seed)
        ds = ds.replace(x_train=x, y_train=y)
    ds = ds.replace(x_train=to_float(ds.x_train), x_test=to_float(ds.x_test), x_val=to_float(ds.x_val))
    norm = fit_normalizer(ds.x_train, mode="channel")
    ds = ds.replace(x_train=norm.apply(ds.x_train), x_test=norm.apply(ds.x_test), x_val=norm.apply(ds.x_val))
    return ds, np.asarray(norm.mean, np.float32).reshape(-1), np.asarray(norm.std, np.float32).reshape(-1), source


def _fail(args, msg: str):
    fail(args.name, msg)


def trained_net(args) -> Net:
    """The experiment's network: read from the checkpoint, or trained now and written there."""
    import jax

    from jaxnet.nn import fast_convnet
    from jaxnet.optim import make_optimizer
    from jaxnet.optim.schedules import make_schedule
    from jaxnet.train import evaluate, fit, num_batches, read_checkpoint, save_checkpoint

    size = _size(args)
    n_train, epochs, stem, widths = SIZES[size]
    if args.net_epochs is not None:
        if args.net_epochs < 1:
            _fail(args, f"--net-epochs must be >= 1, got {args.net_epochs}")
        epochs = args.net_epochs
    ds, mean, std, source = _data(args, n_train)
    folder = os.environ.get(NET_DIR_ENV) or os.path.join("results", "understand_net")
    path = args.checkpoint or os.path.join(folder, f"{source}-{size}.ckpt")
    model = fast_convnet(stem=stem, widths=widths, num_classes=len(ds.classes))
    input_shape = list(ds.x_train.shape[1:])
    params = state = None
    trained_now = False
    if os.path.exists(path):
        from experiments.what_learned import load_fast_convnet
        try:
            model, params, state, config = load_fast_convnet(path)
        except Exception as e:  # noqa: BLE001 - a bad file is a one-line exit, never a traceback
            _fail(args, f"cannot read the net's checkpoint: {str(e).splitlines()[0]}")
        if list(config.get("input_shape", [])) != input_shape:
            _fail(args, f"checkpoint {path!r} is for inputs {config.get('input_shape')}, the data has {input_shape}")
        print(f"net: {path} (fast_convnet stem {config['stem']}, widths {tuple(config['widths'])})", flush=True)
    else:
        bs = 128 if size != "smoke" else 50
        total = epochs * num_batches(len(ds.y_train), bs)
        opt = make_optimizer("nesterov", make_schedule("warmup_cosine", PEAK_LR[size],
                                                       total_steps=total, warmup_steps=max(1, total // 10)),
                             weight_decay=5e-4)
        small = ds.x_train.shape[1] < 32
        with Timer() as t:
            res = fit(model, ds.replace(x_val=ds.x_val[:0], y_val=ds.y_val[:0]), optimizer=opt, epochs=epochs,
                      batch_size=bs, key=args.seed, augment={"crop_padding": 1 if small else 4, "flip": not small},
                      progress=size == "full")
        params, state = plain_arrays((res.train_state.params, res.train_state.state))
        save_checkpoint(path, res.train_state, config={
            "model": "fast_convnet", "stem": stem, "widths": list(widths), "norm": "batchnorm",
            "input_shape": input_shape, "n_train": len(ds.y_train), "epochs": epochs, "source": source})
        trained_now = True
        print(f"net: trained fast_convnet on {len(ds.y_train)} {source} images, {epochs} epochs, "
              f"{t.elapsed:.0f} s -> {path}", flush=True)
    _, acc = evaluate(model, params, state, ds.x_test, ds.y_test, 500)
    print(f"net: test accuracy {float(acc):.4f}", flush=True)
    if float(acc) < 1.5 / len(ds.classes):
        sys.stderr.write(f"experiments.{args.name}: warning: the net's test accuracy {float(acc):.4f} is near chance "
                         f"({1 / len(ds.classes):.2f}): the pictures and numbers will mean little; delete {path} "
                         f"to train it again, or pass --net-epochs\n")
    del jax
    return Net(model, params, state, tuple(ds.classes), np.asarray(ds.x_test), np.asarray(ds.y_test),
               np.asarray(ds.x_train), np.asarray(ds.y_train), mean, std, source, path, float(acc), trained_now)
