"""Shared helpers for the experiment scripts in ``experiments/`` (run as ``python -m experiments.<name>``).

Every script takes the same four options, writes ``results.json`` plus its figures into
``--out`` and prints a short table. The API is deliberately small:

``parse_args(name, description, extra=None, argv=None) -> argparse.Namespace``
    Common options: ``--data-dir`` (default ``$JAXNET_CIFAR10_DIR``), ``--quick`` (the
    few-minute version, run by ``make test-slow``), ``--smoke`` (``--quick`` made smaller
    still: the seconds-long run of ``make test``, same code path and outputs, numbers not
    meant to be read; it sets ``args.quick`` too), ``--out`` (default ``results/<name>``),
    ``--seed`` (default 0). ``extra`` is an optional ``callable(parser)`` that adds the
    script's own options. The returned namespace also carries ``args.name`` and
    ``args.start_time`` (``time.perf_counter()`` at parse time, used for the wall time).

``sized(args, full, quick, smoke=None)``
    The value for the run's size: ``smoke`` with ``--smoke`` (``quick`` when it is None),
    ``quick`` with ``--quick``, else ``full``.

``load_data(args, *, val_size=0) -> jaxnet.data.Dataset``
    CIFAR-10 from ``args.data_dir`` as uint8 NHWC (convert with ``jaxnet.data.to_float``).
    ``val_size`` training images are held out as ``x_val`` (0: all 50,000 stay in
    ``x_train``). When no copy is found the script exits with one line on stderr
    (exit status 2) instead of a traceback.

``cifar_or_digits(args, n_train) -> (Dataset, source, description)``
    The deep-net experiments' data: a CIFAR-10 subsample when a copy is given, else the
    embedded digits; float32, normalised per channel.

``cifar_or_digits_uint8(args, *, val_size=0) -> (Dataset, source)``
    The classic classifiers' data (kNN, linear, two-layer and feature experiments): CIFAR-10
    as ``load_data`` gives it when a copy is given, else the embedded 8x8 digits with the
    same pixel scale (uint8 0..255); ``source`` is "cifar10" or "digits".

``quick_cifar_or_digits_uint8(args, *, val_size=1000, normalize=False) -> (Dataset, source)``
    ``cifar_or_digits_uint8``, cut to 4,000 training and 2,000 test images with ``--quick``
    (400 and 200 with ``--smoke``), optionally ``float_normalized``; prints the data set and
    its loading time.

``quick_subset(ds, *, n_train, n_test, seed) -> Dataset``
    The smoke-test subsample of a Dataset (at most the examples there are).

``fail(name, msg)``
    A setting the script cannot run: ``experiments.<name>: <msg>`` on one line of stderr,
    exit status 2 (scripts bind it as ``_fail = functools.partial(fail, NAME)``).

``write_results(out_dir, results, args=None) -> str``
    Writes ``<out_dir>/results.json`` atomically (temporary file, then ``os.replace``):
    ``results`` plus ``experiment``, ``settings`` (all options), ``seed``, ``quick``, ``smoke``,
    ``wall_time_s`` (since ``parse_args``), ``versions`` (python, jax, numpy, backend) and
    ``finished_at``. ``args`` defaults to the namespace from the last ``parse_args`` call.
    numpy scalars/arrays are converted to plain JSON. Returns the path.

``print_table(headers, rows, title=None)``
    Prints an aligned plain-text table (floats with 4 significant digits).

``figure(figsize) -> matplotlib.figure.Figure``
    A figure on the Agg canvas (dpi 100), no pyplot and no display needed; save it with
    ``save_figure``.

``grid_legend(axes, *, which="major", **legend_kw)``
    Each axis gets a light grid (alpha 0.3, ``which`` ticks) and a legend (font size 8 unless
    ``legend_kw`` says otherwise).

``save_figure(fig, path, title=None) -> str``
    The figure's last steps: the optional ``suptitle``, ``tight_layout``, a PNG at ``path``
    (its folder created); returns ``path``.

``float_normalized(ds) -> Dataset``
    uint8 images of every split to float32 (``jaxnet.data.to_float``), then normalised per
    channel with the training split's statistics.

``Timer``
    ``with Timer() as t: ...`` then ``t.elapsed`` (seconds, ``time.perf_counter``);
    ``t.elapsed`` also reads the running time inside the block.

``gymnax_env(args, env_id) -> (env, env_params)``
    ``gymnax.make(env_id)`` for the RL experiments; without gymnax, one stderr line and exit 2.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import math
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["parse_args", "sized", "load_data", "cifar_or_digits", "cifar_or_digits_uint8", "quick_cifar_or_digits_uint8", "digits_uint8", "quick_subset",
           "float_normalized", "write_results", "print_table", "figure", "grid_legend", "save_figure", "Timer", "fail"]

ENV_DATA = "JAXNET_CIFAR10_DIR"
_LAST_ARGS: argparse.Namespace | None = None


def parse_args(
    name: str,
    description: str,
    extra: Callable[[argparse.ArgumentParser], Any] | None = None,
    argv: Sequence[str] | None = None,
) -> argparse.Namespace:
    """Parse the common options (see module docstring); ``argv=None`` reads ``sys.argv``."""
    global _LAST_ARGS
    parser = argparse.ArgumentParser(prog=f"python -m experiments.{name}", description=description)
    parser.add_argument(
        "--data-dir", default=os.environ.get(ENV_DATA) or None,
        help=f"CIFAR-10 copy: cifar10-jpeg.tar.gz, an image-folder root or cifar-10-batches-py "
             f"(default: ${ENV_DATA})",
    )
    parser.add_argument("--quick", action="store_true", help="small, fast version (minutes)")
    parser.add_argument("--smoke", action="store_true",
                        help="tiny version for the default test suite (seconds; implies --quick)")
    parser.add_argument("--out", default=os.path.join("results", name),
                        help="output folder for results.json and figures (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="seed for subsampling/splits/init (default: 0)")
    if extra is not None:
        extra(parser)
    args = parser.parse_args(argv)
    if args.smoke:
        args.quick = True
    args.name = name
    args.start_time = time.perf_counter()
    _LAST_ARGS = args
    return args


def fail(name: str, msg: str):
    """``experiments.<name>: <msg>`` on one line of stderr, then exit status 2 (SystemExit)."""
    sys.stderr.write(f"experiments.{name}: {msg}\n")
    raise SystemExit(2)


def sized(args: argparse.Namespace, full: Any, quick: Any, smoke: Any = None) -> Any:
    """``smoke`` under ``--smoke`` (``quick`` if None), ``quick`` under ``--quick``, else ``full``."""
    if getattr(args, "smoke", False) and smoke is not None:
        return smoke
    return quick if getattr(args, "quick", False) else full


def load_data(args: argparse.Namespace, *, val_size: int = 0):
    """CIFAR-10 (uint8 NHWC) from ``args.data_dir``, or exit with a one-line message."""
    from jaxnet.data import load_cifar10

    prog = f"experiments.{getattr(args, 'name', 'experiment')}"
    if not args.data_dir:
        sys.stderr.write(
            f"{prog}: CIFAR-10 not found: pass --data-dir PATH (e.g. cifar10-jpeg.tar.gz) "
            f"or set {ENV_DATA}\n"
        )
        raise SystemExit(2)
    try:
        return load_cifar10(args.data_dir, val_size=val_size, seed=args.seed)
    except FileNotFoundError as e:
        sys.stderr.write(f"{prog}: CIFAR-10 not found: {e}\n")
        raise SystemExit(2) from None


def _jsonable(obj: Any) -> Any:
    """Plain JSON values from numpy/jax scalars and arrays, tuples, paths; NaN/inf -> None."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if obj is None or isinstance(obj, (bool, int, str)):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if hasattr(obj, "tolist"):  # numpy / jax arrays and scalars
        return _jsonable(obj.tolist())
    return str(obj)


def _versions() -> dict:
    import numpy as np

    info = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import jax

        info["jax"] = jax.__version__
        info["backend"] = jax.default_backend()
        info["devices"] = [str(d) for d in jax.devices()]
    except Exception as e:  # noqa: BLE001 - a results file should still be written
        info["jax"] = f"unavailable ({type(e).__name__})"
    return info


def write_results(out_dir: str | os.PathLike, results: dict, args: argparse.Namespace | None = None) -> str:
    """Write ``results.json`` atomically with the run's metadata; returns its path."""
    args = args if args is not None else _LAST_ARGS
    payload: dict[str, Any] = {}
    if args is not None:
        settings = {k: v for k, v in vars(args).items() if k not in ("start_time",)}
        payload.update(
            experiment=getattr(args, "name", None),
            settings=settings,
            seed=getattr(args, "seed", None),
            quick=bool(getattr(args, "quick", False)),
            smoke=bool(getattr(args, "smoke", False)),
            wall_time_s=round(time.perf_counter() - args.start_time, 3)
            if hasattr(args, "start_time") else None,
        )
    payload["versions"] = _versions()
    payload["finished_at"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    payload.update(results)
    out_dir = os.fspath(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "results.json")
    fd, tmp = tempfile.mkstemp(prefix="results.", suffix=".json.tmp", dir=out_dir)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(_jsonable(payload), f, indent=2, allow_nan=False)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def _cell(v: Any) -> str:
    if isinstance(v, float) or (hasattr(v, "dtype") and getattr(v, "ndim", 1) == 0 and v.dtype.kind == "f"):
        v = float(v)
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    return str(v)


def print_table(headers: Sequence[Any], rows: Sequence[Sequence[Any]], title: str | None = None) -> None:
    """Print rows as an aligned plain-text table (numbers right-aligned)."""
    cells = [[_cell(h) for h in headers]] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(r[i]) for r in cells if i < len(r)) for i in range(len(headers))]
    numeric = [bool(rows) and all(_is_num(row[i]) for row in rows if i < len(row)) for i in range(len(headers))]

    def fmt(row):
        return "  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths)))

    if title:
        print(title)
    print(fmt(cells[0]).rstrip())
    print("  ".join("-" * w for w in widths))
    for row in cells[1:]:
        print(fmt(row).rstrip())
    sys.stdout.flush()


def finish(args: argparse.Namespace, results: dict, headers: Sequence[Any], rows: Sequence[Sequence[Any]],
           title: str) -> dict:
    """The end of an experiment with claims: print the table and ``results["claims"]``, write
    ``results.json``, say where; returns ``results``."""
    print_table(headers, rows, title=title)
    print(f"claims: {results['claims']}", flush=True)
    path = write_results(args.out, results, args)
    print(f"wrote {path}", flush=True)
    return results


def gymnax_env(args: argparse.Namespace, env_id: str):
    """``gymnax.make(env_id)`` -> (env, env_params) for the RL experiments; without gymnax (the ``rl``
    extra), one line ``experiments.<name>: needs gymnax ...`` on stderr and exit status 2."""
    try:
        import gymnax
    except ImportError as e:
        print(f"experiments.{args.name}: needs gymnax for the environment (pip install gymnax six): {e}",
              file=sys.stderr)
        raise SystemExit(2)
    return gymnax.make(env_id)


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) or hasattr(v, "dtype")


def figure(figsize):
    """A matplotlib Figure of ``figsize`` inches at dpi 100 on the Agg canvas (no pyplot)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, dpi=100)
    FigureCanvasAgg(fig)
    return fig


def grid_legend(axes, *, which: str = "major", **legend_kw) -> None:
    """A light grid (alpha 0.3, ``which`` ticks) and a legend (font size 8 by default) on each axis."""
    legend_kw.setdefault("fontsize", 8)
    for ax in axes:
        ax.grid(True, which=which, alpha=0.3)
        ax.legend(**legend_kw)


def save_figure(fig, path: str | os.PathLike, title: str | None = None) -> str:
    """``fig.suptitle(title)`` (if given), ``tight_layout``, then a PNG at ``path`` (its folder
    created). Returns ``path``."""
    if title is not None:
        fig.suptitle(title)
    fig.tight_layout()
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, format="png")
    return path


class Timer:
    """Wall-clock timer: ``with Timer() as t: ...; t.elapsed`` (seconds)."""

    def __init__(self) -> None:
        self.start: float | None = None
        self.end: float | None = None

    def __enter__(self) -> "Timer":
        self.start, self.end = time.perf_counter(), None
        return self

    def __exit__(self, *exc) -> None:
        self.end = time.perf_counter()

    @property
    def elapsed(self) -> float:
        if self.start is None:
            return 0.0
        return (self.end if self.end is not None else time.perf_counter()) - self.start


def quick_subset(ds, *, n_train: int = 4000, n_test: int = 2000, seed: int = 0):
    """The smoke-test version of a Dataset: ``n_train`` training and ``n_test`` test
    examples drawn with ``seed`` (fewer when the split is smaller; the validation split is kept)."""
    from jaxnet.data import subsample
    x_tr, y_tr = subsample(ds.x_train, ds.y_train, min(n_train, len(ds.y_train)), seed=seed)
    x_te, y_te = subsample(ds.x_test, ds.y_test, min(n_test, len(ds.y_test)), seed=seed)
    return ds.replace(x_train=x_tr, y_train=y_tr, x_test=x_te, y_test=y_te)


def digits_uint8(seed: int = 0, *, val_size: int | None = None):
    """The embedded 8x8 digits as CIFAR-10's loader returns its images: uint8 NHWC in 0..255
    (the 17 grey levels 0..16 mapped to round(255 * v / 16)), one channel, split by ``seed``.

    ``val_size=0`` merges the validation split into the training split (as ``load_data``
    keeps all training images when no validation split is asked for); any other value keeps
    the digits' own stratified split (1,257 / 270 / 270).
    """
    import numpy as np

    from jaxnet.data import load_digits

    ds = load_digits(seed=seed)
    u8 = lambda x: np.round(np.asarray(x, np.float32) * 255.0).astype(np.uint8)  # noqa: E731
    ds = ds.replace(x_train=u8(ds.x_train), x_val=u8(ds.x_val), x_test=u8(ds.x_test))
    if val_size == 0:
        ds = ds.replace(x_train=np.concatenate([ds.x_train, ds.x_val]),
                        y_train=np.concatenate([ds.y_train, ds.y_val]),
                        x_val=ds.x_val[:0], y_val=ds.y_val[:0])
    return ds


def cifar_or_digits_uint8(args: argparse.Namespace, *, val_size: int = 0):
    """The classic classifiers' data: ``(Dataset, source)`` with uint8 NHWC images in 0..255.

    With ``--data-dir`` (or ``$JAXNET_CIFAR10_DIR``): ``load_data(args, val_size=val_size)``,
    CIFAR-10 exactly as before (a missing copy still exits with status 2). Without it: the
    embedded digits (:func:`digits_uint8`), with a one-line note on stdout; source "digits".
    """
    if args.data_dir:
        return load_data(args, val_size=val_size), "cifar10"
    print(f"experiments.{getattr(args, 'name', 'experiment')}: no CIFAR-10 copy given (--data-dir or "
          f"${ENV_DATA}): running on the embedded 8x8 digits", flush=True)
    return digits_uint8(args.seed, val_size=val_size), "digits"


def quick_cifar_or_digits_uint8(args: argparse.Namespace, *, val_size: int = 1000, normalize: bool = False):
    """:func:`cifar_or_digits_uint8` as the trained classifiers use it: with ``--quick`` a
    subsample (4,000 training, 2,000 test images; ``--smoke``: 400 and 200), with ``normalize``
    float32 images normalised per channel (:func:`float_normalized`). Prints the data set and
    the loading time. Returns ``(Dataset, source)``."""
    with Timer() as t_load:
        ds, source = cifar_or_digits_uint8(args, val_size=val_size)
        if args.quick:
            n_train, n_test = sized(args, None, (4000, 2000), (400, 200))
            ds = quick_subset(ds, n_train=n_train, n_test=n_test, seed=args.seed)
        if normalize:
            ds = float_normalized(ds)
    print(f"data: {ds}  ({t_load.elapsed:.1f} s){'  [quick: subsampled]' if args.quick else ''}", flush=True)
    return ds, source


def cifar_or_digits(args: argparse.Namespace, n_train: int):
    """The data of the deep-net experiments: ``(Dataset, source, description)``.

    With ``--data-dir`` (or ``$JAXNET_CIFAR10_DIR``): CIFAR-10 with ``n_train`` training
    images (subsampled with ``args.seed``), 1,000 validation and all test images; without
    it, the embedded 8x8 digits (at most ``n_train`` training images).  Images are float32,
    normalised per channel with training-split statistics; ``source`` is "cifar10" or "digits".
    """
    from jaxnet.data import load_digits, subsample

    if args.data_dir:
        ds = load_data(args, val_size=1000)
        source, label = "cifar10", f"CIFAR-10 ({args.data_dir})"
    else:
        ds = load_digits(seed=args.seed)
        source, label = "digits", "digits (embedded, 8x8)"
    if len(ds.y_train) > n_train:
        x, y = subsample(ds.x_train, ds.y_train, n_train, seed=args.seed)
        ds = ds.replace(x_train=x, y_train=y)
    ds = float_normalized(ds)
    desc = f"{label}: {len(ds.y_train)} training images, {len(ds.y_val)} validation, {len(ds.y_test)} test"
    return ds, source, desc


def float_normalized(ds):
    """Every split's images as float32 (``jaxnet.data.to_float``), normalised per channel with
    the training split's statistics (``normalize_dataset(ds, "channel")``)."""
    from jaxnet.data import normalize_dataset, to_float

    ds = ds.replace(x_train=to_float(ds.x_train), x_val=to_float(ds.x_val), x_test=to_float(ds.x_test))
    return normalize_dataset(ds, "channel")
