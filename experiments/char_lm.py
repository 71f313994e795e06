"""Character-level language models of the Python standard library's source.

    python -m experiments.char_lm [--quick] [--out DIR] [--time-budget S] [--data-root DIR]

Data: :func:`jaxnet.data.load_text_corpus`: the stdlib's ``.py`` files (tests and
site-packages left out) split *by file* with ``crc32(relative path) % 100`` (train < 90,
validation 90..94, test 95..99), each split its files concatenated in sorted order, the
training text capped at ``--max-train-chars``. Vocabulary: ``<unk>`` + the printable ASCII,
``\\n`` and ``\\t`` characters of the training text.

Models, all scored in **bits per character on the test files**:

* **unigram / bigram count models** with add-k smoothing, ``p(b | a) = (c(a b) + k) /
  (c(a) + k V)`` (unigram: ``(c(b) + k) / (n + k V)``), ``k`` picked on the validation text
  from a log grid (add-one, k = 1, is in the grid and reported too). Scored on every
  character of the test text after the first (:func:`count_model_bpc`).
* **vanilla RNN (tanh), GRU and LSTM** of about the same parameter count (embedding
  ``--embed``, the LSTM's hidden size ``--hidden``, the RNN's and GRU's hidden sizes chosen
  so their counts come closest to the LSTM's: :func:`matched_hidden`), trained by truncated
  BPTT (:func:`jaxnet.train.train_tbptt`: ``--batch-size`` contiguous streams, chunks of
  ``--bptt`` characters, the state carried across chunks and reset each epoch) with Adam
  (``jaxnet.optim.adam``) after global-norm clipping (``--clip``), each for ``--time-budget``
  seconds of training (validation and the step's ahead-of-time compilation excluded), counted
  in process CPU seconds by default (``--budget-clock cpu``; ``wall`` for wall seconds).
  Validation bpc is measured every ``--val-every-s`` wall seconds of training (figure
  ``char_lm_val_bpc.png``: bpc vs training time on the budget's clock). Test and validation bpc are measured on
  ``--eval-rows`` contiguous rows of the split's text, state carried within each row; that
  scores every character except the first of each row and the few at the end that do not
  fill a ``--bptt`` window.

The recurrences are ``jaxnet.functional``'s ``rnn``/``gru``/``lstm`` (and ``word_embedding``,
``temporal_affine``) when those ops are present, else the plain ``lax.scan`` forms in this
file (:func:`_local_ops`), which compute the same functions; ``results.json["ops"]`` says
which ran.

Samples at temperatures 0.5 and 1.0 (``samples.txt``) from each net, primed with
``--prime``, drawn by a jitted ``lax.scan`` sampler (:func:`sample_text`) whose step has the
``step(tokens (B,), carry) -> (logits (B, V), carry)`` form of ``jaxnet.nn.decode.sample``
(used instead when that module is present).

Time: the machine's cores may be shared with other work, which slows the wall clock but
hardly the CPU clock, hence the CPU-time budget by default. ``results.json`` records per net
the training wall and CPU seconds, the compile time, the validation time, the wall time of
the whole net (including validation and test) and the steps made, next to the budget.

``--quick``: a 200 k-character training text, 20 k of validation/test, tiny nets and a few
seconds per net. ``--smoke`` (the default test suite's run): 50 k characters of training
text, 5 k of validation/test, the quick LSTM (``--nets``) for half a second.
"""
from __future__ import annotations

import functools
import math
import os
import sys
import time

import numpy as np

from experiments._common import fail, figure, grid_legend, parse_args, print_table, save_figure, sized, write_results

NAME = "char_lm"
DESCRIPTION = "Character-level language models (count models, RNN, GRU, LSTM) of the Python stdlib source."
NETS = ("rnn", "gru", "lstm")
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
COLORS = {"rnn": "tab:blue", "gru": "tab:green", "lstm": "tab:red"}
K_GRID = tuple(float(k) for k in np.round(np.logspace(-4, 1, 21), 6)) + (1.0,)
LN2 = math.log(2.0)


def _extra(parser) -> None:
    parser.add_argument("--data-root", default=None,
                        help="folder of .py files (default: this interpreter's standard library)")
    parser.add_argument("--max-train-chars", type=int, default=None,
                        help="cap on the training text (default: all of it; quick 200000; smoke 50000)")
    parser.add_argument("--max-eval-chars", type=int, default=None,
                        help="cap on each of the validation and test texts (default: all; quick 20000; smoke 5000)")
    parser.add_argument("--time-budget", type=float, default=None,
                        help="training seconds per net, see --budget-clock (default 600; quick 2.5; smoke 0.5)")
    parser.add_argument("--budget-clock", choices=("cpu", "wall"), default="cpu",
                        help="count --time-budget in process CPU seconds of training (default) or wall seconds")
    parser.add_argument("--embed", type=int, default=None, help="embedding size (default 32; quick 16)")
    parser.add_argument("--hidden", type=int, default=None, help="LSTM hidden size (default 192; quick 32)")
    parser.add_argument("--batch-size", type=int, default=None, help="streams per batch (default 32; quick 16)")
    parser.add_argument("--bptt", type=int, default=None, help="TBPTT chunk length K (default 64; quick 32)")
    parser.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    parser.add_argument("--clip", type=float, default=1.0, help="global-norm gradient clipping (default 1.0)")
    parser.add_argument("--epochs", type=int, default=20, help="most epochs per net (default 20)")
    parser.add_argument("--val-every-s", type=float, default=None,
                        help="validation every so many training seconds (default 60; quick 1.5; smoke 0.25)")
    parser.add_argument("--eval-rows", type=int, default=64, help="rows of the val/test streams (default 64)")
    parser.add_argument("--nets", default=None,
                        help="comma-separated subset of rnn,gru,lstm (default all; smoke lstm)")
    parser.add_argument("--prime", default="def ", help="text the samples start from (default 'def ')")
    parser.add_argument("--sample-len", type=int, default=None, help="sampled characters (default 600; quick 100)")
    parser.add_argument("--no-progress", action="store_true", help="no tqdm progress bars")


_fail = functools.partial(fail, NAME)   # one line on stderr, exit status 2


def _check_args(args) -> None:
    for name in ("max_train_chars", "max_eval_chars", "embed", "hidden", "batch_size", "bptt", "epochs",
                 "sample_len", "eval_rows"):
        v = getattr(args, name)
        if v is not None and v <= 0:
            _fail(f"--{name.replace('_', '-')} must be positive, got {v}")
    for name in ("time_budget", "lr", "clip", "val_every_s"):
        v = getattr(args, name)
        if v is not None and not (math.isfinite(v) and v > 0):
            _fail(f"--{name.replace('_', '-')} must be a positive finite number, got {v}")
    if args.nets is None:
        args.nets = sized(args, ",".join(NETS), ",".join(NETS), "lstm")   # smoke: one net, one set of compiles
    nets = [n.strip() for n in args.nets.split(",") if n.strip()]
    bad = [n for n in nets if n not in NETS]
    if bad or not nets:
        _fail(f"--nets must be a comma-separated subset of {','.join(NETS)}, got {args.nets!r}")
    args.nets = ",".join(nets)


# ---------------------------------------------------------------- count models

def ngram_counts(ids: np.ndarray, vocab_size: int, order: int) -> np.ndarray:
    """Counts of a 1-D id stream: ``(V,)`` unigram counts of ``ids[1:]`` (order 1) or the ``(V, V)``
    bigram counts ``c[a, b]`` of the pairs ``(ids[t], ids[t+1])`` (order 2), float64."""
    ids = np.asarray(ids, np.int64)
    if order == 1:
        return np.bincount(ids[1:], minlength=vocab_size).astype(np.float64)
    if order == 2:
        return np.bincount(ids[:-1] * vocab_size + ids[1:], minlength=vocab_size * vocab_size
                           ).reshape(vocab_size, vocab_size).astype(np.float64)
    raise ValueError(f"ngram_counts: order must be 1 or 2, got {order}")


def count_model_bpc(counts: np.ndarray, ids: np.ndarray, k: float) -> float:
    """Bits per character of the add-``k`` model of ``counts`` on ``ids[1:]`` (each character
    after the first; the bigram model conditions on the one before it)."""
    ids = np.asarray(ids, np.int64)
    v = counts.shape[-1]
    if counts.ndim == 1:
        p = (counts + k) / (counts.sum() + k * v)
        return float(-np.mean(np.log2(p[ids[1:]])))
    rows = counts.sum(axis=1, keepdims=True)
    p = (counts + k) / (rows + k * v)
    return float(-np.mean(np.log2(p[ids[:-1], ids[1:]])))


def fit_count_model(train_ids, val_ids, test_ids, vocab_size: int, order: int) -> dict:
    """Counts on train, ``k`` tuned on validation over :data:`K_GRID`; bpc on every split."""
    counts = ngram_counts(train_ids, vocab_size, order)
    val = {k: count_model_bpc(counts, val_ids, k) for k in K_GRID}
    best = min(val, key=val.get)
    return {
        "order": order, "k": best, "val_bpc": val[best],
        "test_bpc": count_model_bpc(counts, test_ids, best),
        "train_bpc": count_model_bpc(counts, train_ids, best),
        "test_bpc_add_one": count_model_bpc(counts, test_ids, 1.0),
        "val_bpc_by_k": {f"{k:g}": b for k, b in sorted(val.items())},
        "params": int(counts.size),
    }


# ---------------------------------------------------------------- nets

def param_count(kind: str, vocab: int, embed: int, hidden: int) -> int:
    """Parameters of embedding + recurrence + output affine: ``V E + G (E H + H H + H) + H V + V``."""
    g = GATES[kind]
    return vocab * embed + g * (embed * hidden + hidden * hidden + hidden) + hidden * vocab + vocab


def matched_hidden(kind: str, target: int, vocab: int, embed: int) -> int:
    """The hidden size whose :func:`param_count` is closest to ``target``."""
    return min(range(1, 4096), key=lambda h: abs(param_count(kind, vocab, embed, h) - target))


def init_params(kind: str, key, vocab: int, embed: int, hidden: int) -> dict:
    """Embedding ``N(0, 1)`` ``(V, E)``; ``wx (E, G H)`` ``N(0, 1/E)``; ``wh (H, G H)`` orthogonal
    per gate block; ``b (G H,)`` zeros (LSTM forget block [i, f, o, g] set to 1); output
    ``w (H, V)`` ``N(0, 1/H)``, ``b (V,)`` zeros. float32."""
    import jax
    import jax.numpy as jnp

    g = GATES[kind]
    k = jax.random.split(key, 4)
    orth = jax.nn.initializers.orthogonal()
    wh = jnp.concatenate([orth(kk, (hidden, hidden), jnp.float32) for kk in jax.random.split(k[2], g)], axis=1)
    b = jnp.zeros((g * hidden,), jnp.float32)
    if kind == "lstm":
        b = b.at[hidden:2 * hidden].set(1.0)
    return {
        "embed": jax.random.normal(k[0], (vocab, embed), jnp.float32),
        "wx": jax.random.normal(k[1], (embed, g * hidden), jnp.float32) / math.sqrt(embed),
        "wh": wh, "b": b,
        "w_out": jax.random.normal(k[3], (hidden, vocab), jnp.float32) / math.sqrt(hidden),
        "b_out": jnp.zeros((vocab,), jnp.float32),
    }


def _local_ops():
    """Whole-sequence ``rnn``/``gru``/``lstm``, ``word_embedding`` and ``temporal_affine`` written
    with ``lax.scan`` in plain ``jax.numpy`` (the signatures of ``jaxnet.functional``'s ops)."""
    import jax
    import jax.numpy as jnp

    def rnn_step(x, h, wx, wh, b):
        return jnp.tanh(x @ wx + h @ wh + b)

    def lstm_step(x, h, c, wx, wh, b):
        a = x @ wx + h @ wh + b
        i, f, o, gg = jnp.split(a, 4, axis=-1)
        c = jax.nn.sigmoid(f) * c + jax.nn.sigmoid(i) * jnp.tanh(gg)
        return jax.nn.sigmoid(o) * jnp.tanh(c), c

    def gru_step(x, h, wx, wh, b):
        hd = h.shape[-1]
        ax = x @ wx + b
        ah = h @ wh
        z = jax.nn.sigmoid(ax[:, :hd] + ah[:, :hd])
        r = jax.nn.sigmoid(ax[:, hd:2 * hd] + ah[:, hd:2 * hd])
        n = jnp.tanh(ax[:, 2 * hd:] + r * ah[:, 2 * hd:])
        return (1 - z) * n + z * h

    def _zeros(x, h, wh):
        return jnp.zeros((x.shape[0], wh.shape[0]), x.dtype) if h is None else h

    def rnn(x, h0, wx, wh, b):
        h0 = _zeros(x, h0, wh)
        _, hs = jax.lax.scan(lambda h, xt: (rnn_step(xt, h, wx, wh, b),) * 2, h0, jnp.swapaxes(x, 0, 1))
        return jnp.swapaxes(hs, 0, 1)

    def gru(x, h0, wx, wh, b):
        h0 = _zeros(x, h0, wh)
        _, hs = jax.lax.scan(lambda h, xt: (gru_step(xt, h, wx, wh, b),) * 2, h0, jnp.swapaxes(x, 0, 1))
        return jnp.swapaxes(hs, 0, 1)

    def lstm(x, h0, c0, wx, wh, b):
        h0 = _zeros(x, h0, wh)
        c0 = jnp.zeros_like(h0) if c0 is None else c0

        def body(hc, xt):
            h, c = lstm_step(xt, hc[0], hc[1], wx, wh, b)
            return (h, c), h

        (_, c), hs = jax.lax.scan(body, (h0, c0), jnp.swapaxes(x, 0, 1))
        return jnp.swapaxes(hs, 0, 1), c

    return {
        "rnn": rnn, "gru": gru, "lstm": lstm, "rnn_step": rnn_step, "gru_step": gru_step,
        "lstm_step": lstm_step,
        "word_embedding": lambda idx, w: w[idx],
        "temporal_affine": lambda x, w, b: x @ w + b,
    }


def resolve_ops() -> tuple[dict, str]:
    """The ops the nets are built from: ``jaxnet.functional``'s when every one of them is there,
    else :func:`_local_ops`. Returns ``(ops, source)``."""
    import jaxnet.functional as F

    names = ("rnn", "gru", "lstm", "rnn_step", "gru_step", "lstm_step", "word_embedding", "temporal_affine")
    if all(hasattr(F, n) for n in names):
        return {n: getattr(F, n) for n in names}, "jaxnet.functional"
    return _local_ops(), "local lax.scan (experiments.char_lm._local_ops)"


def make_model(kind: str, ops: dict):
    """``(apply, init_carry, step)`` of a ``kind`` net built from ``ops``.

    ``apply(params, carry, x int (N, K)) -> (logits (N, K, V), carry)``; the carry is ``h (N, H)``
    (``(h, c)`` for the LSTM). ``init_carry(n, hidden)`` zeros. ``step(params, tokens (B,), carry)
    -> (logits (B, V), carry)``: one character (the sampler's step).
    """
    import jax.numpy as jnp

    def apply(params, carry, x):
        e = ops["word_embedding"](x, params["embed"])
        if kind == "lstm":
            hs, c = ops["lstm"](e, carry[0], carry[1], params["wx"], params["wh"], params["b"])
            new = (hs[:, -1], c)
        else:
            hs = ops[kind](e, carry, params["wx"], params["wh"], params["b"])
            new = hs[:, -1]
        return ops["temporal_affine"](hs, params["w_out"], params["b_out"]), new

    def init_carry(n, hidden):
        h = jnp.zeros((n, hidden), jnp.float32)
        return (h, jnp.zeros_like(h)) if kind == "lstm" else h

    def step(params, tokens, carry):
        e = params["embed"][tokens]
        if kind == "lstm":
            h, c = ops["lstm_step"](e, carry[0], carry[1], params["wx"], params["wh"], params["b"])
            carry, out = (h, c), h
        else:
            out = carry = ops[f"{kind}_step"](e, carry, params["wx"], params["wh"], params["b"])
        return out @ params["w_out"] + params["b_out"], carry

    return apply, init_carry, step


_BOUND_STEPS: dict = {}


def _bound_step(step, params):
    """``lambda tokens, carry: step(params, tokens, carry)``, the same function object for the
    same ``step`` and ``params``: the library sampler compiles once per step function (compared
    by identity), so every temperature of a net shares one program."""
    key = (id(step), id(params))
    if key not in _BOUND_STEPS or _BOUND_STEPS[key][0] is not step or _BOUND_STEPS[key][1] is not params:
        _BOUND_STEPS.clear()  # one net at a time: drop the previous net's program
        _BOUND_STEPS[key] = (step, params, lambda t, c: step(params, t, c))
    return _BOUND_STEPS[key][2]


def sample_text(step, params, carry, start, max_len: int, key, temperature: float):
    """``max_len`` ids drawn after the token ids ``start (B,)`` from ``carry``, by a jitted
    ``lax.scan`` (``logits / temperature`` then a categorical draw each step), or by
    ``jaxnet.nn.decode.sample`` when that module is present and works. Returns ``(ids (B, max_len),
    which sampler ran)``."""
    import jax
    import jax.numpy as jnp

    try:
        from jaxnet.nn.decode import sample as _sample  # the library sampler, when present
    except ImportError:
        _sample = None
    if _sample is not None:
        try:
            out = _sample(_bound_step(step, params), carry, jnp.asarray(start, jnp.int32), max_len, key,
                          temperature)
            out = np.asarray(out[0] if isinstance(out, tuple) else out)
            if out.shape == (len(start), max_len):
                return out, "jaxnet.nn.decode.sample"
            note = f"jaxnet.nn.decode.sample returned shape {out.shape}"
        except Exception as e:  # noqa: BLE001 - the module may still be in flux; the run goes on
            note = f"jaxnet.nn.decode.sample failed ({type(e).__name__}: {e})"
    else:
        note = None

    @jax.jit
    def run(params, carry, start, key):
        def body(state, k):
            tok, c = state
            logits, c = step(params, tok, c)
            nxt = jax.random.categorical(k, logits / temperature, axis=-1).astype(jnp.int32)
            return (nxt, c), nxt

        _, toks = jax.lax.scan(body, (start, carry), jax.random.split(key, max_len))
        return jnp.swapaxes(toks, 0, 1)

    used = "lax.scan sampler (experiments.char_lm.sample_text)" + (f"; {note}" if note else "")
    return np.asarray(run(params, carry, jnp.asarray(start, jnp.int32), key)), used


# ---------------------------------------------------------------- figure

def plot_val_curves(nets: dict, counts: dict, path: str, title: str, clock: str = "cpu") -> str:
    fig = figure((8, 5))
    ax = fig.subplots()
    for kind, r in nets.items():
        h = r["history"]
        ax.plot(h["train_cpu_s"] if clock == "cpu" else h["train_time_s"], h["val_bpc"], color=COLORS[kind], marker="o", markersize=3,
                label=f"{kind.upper()} ({r['params']:,} params)")
    for name, style in (("unigram", ":"), ("bigram", "--")):
        if name in counts:
            ax.axhline(counts[name]["val_bpc"], color="0.4", ls=style, lw=1, label=f"{name} (add-k)")
    ax.set(xlabel=f"training time ({'process CPU' if clock == 'cpu' else 'wall'} s)",
           ylabel="validation bits per character", title="validation bpc vs training time")
    top = max([counts["unigram"]["val_bpc"] + 0.3] if "unigram" in counts else [5.0])
    ax.set_ylim(bottom=0, top=top)
    grid_legend([ax])
    return save_figure(fig, path, title)


# ---------------------------------------------------------------- docs table

def results_table(results: dict) -> str:
    """The markdown table of ``docs/sequence-experiments.md`` from a ``results.json`` dict:
    one row per model with its parameter count, validation and test bpc, training steps,
    training CPU and wall seconds."""
    head = ("| model | parameters | val bpc | test bpc | steps (chars seen) | training CPU s | "
            "training wall s | net's wall s |\n| --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for name, c in results["count_models"].items():
        rows.append(f"| {name} (add-k, k = {c['k']:g}; add-one: test {c['test_bpc_add_one']:.3f}) | "
                    f"{c['params']:,} counts | {c['val_bpc']:.3f} | {c['test_bpc']:.3f} | - | - | - | - |")
    for kind, r in results["nets"].items():
        rows.append(f"| {kind.upper()} (H = {r['hidden']}) | {r['params']:,} | {r['val_bpc']:.3f} | "
                    f"{r['test_bpc']:.3f} | {r['steps']:,} ({r['chars_seen'] / 1e6:.1f} M) | "
                    f"{r['train_cpu_s']:.0f} | {r['train_time_s']:.0f} | {r['wall_time_s']:.0f} |")
    return "\n".join([head, *rows])


# ---------------------------------------------------------------- main

def main(argv=None) -> dict:
    args = parse_args(NAME, DESCRIPTION, _extra, argv)
    _check_args(args)
    q = args.quick
    budget = args.time_budget if args.time_budget is not None else sized(args, 600.0, 2.5, 0.5)
    embed = args.embed or (16 if q else 32)
    hidden = args.hidden or (32 if q else 192)
    n_rows = args.batch_size or (16 if q else 32)
    k = args.bptt or (32 if q else 64)
    val_every_s = args.val_every_s or sized(args, 60.0, 1.5, 0.25)
    max_train = args.max_train_chars or sized(args, None, 200_000, 50_000)
    max_eval = args.max_eval_chars or sized(args, None, 20_000, 5_000)
    sample_len = args.sample_len or (100 if q else 600)
    nets_wanted = args.nets.split(",")

    import jax
    import optax

    from jaxnet.data import DataError, batchify, load_text_corpus
    from jaxnet.optim import adam
    from jaxnet.train import evaluate_bpc, make_tbptt_eval, train_tbptt

    t0 = time.perf_counter()
    try:
        corpus = load_text_corpus(args.data_root, max_train_bytes=max_train, max_eval_bytes=max_eval)
    except DataError as e:
        _fail(str(e))
    vocab = corpus.vocab
    ids = {s: corpus.ids(s) for s in ("train", "val", "test")}
    summary = corpus.summary()
    print(f"corpus {summary['root']}: train {summary['train_chars']:,} chars ({summary['train_files']} files), "
          f"val {summary['val_chars']:,} ({summary['val_files']}), test {summary['test_chars']:,} "
          f"({summary['test_files']}); vocab {vocab.size}  ({time.perf_counter() - t0:.1f} s)", flush=True)

    # ---- count models
    counts = {name: fit_count_model(ids["train"], ids["val"], ids["test"], vocab.size, order)
              for name, order in (("unigram", 1), ("bigram", 2))}

    # ---- nets
    ops, ops_source = resolve_ops()
    target = param_count("lstm", vocab.size, embed, hidden)
    sizes = {kind: (hidden if kind == "lstm" else matched_hidden(kind, target, vocab.size, embed)) for kind in NETS}
    try:
        train_stream = batchify(ids["train"], n_rows)
        val_stream = batchify(ids["val"], min(args.eval_rows, max(1, len(ids["val"]) // (k + 1))))
        test_stream = batchify(ids["test"], min(args.eval_rows, max(1, len(ids["test"]) // (k + 1))))
    except DataError as e:
        _fail(str(e))
    print(f"nets built from {ops_source}; parameter counts: "
          + ", ".join(f"{kd} (H={sizes[kd]}) {param_count(kd, vocab.size, embed, sizes[kd]):,}" for kd in NETS),
          flush=True)
    print(f"TBPTT: {n_rows} streams x {train_stream.shape[1]:,} chars, chunks of {k}, "
          f"{(train_stream.shape[1] - 1) // k} steps per epoch; budget {budget:g} s per net", flush=True)

    key = jax.random.PRNGKey(args.seed)
    nets, samples, sampler = {}, {}, None
    for i, kind in enumerate(NETS):
        if kind not in nets_wanted:
            continue
        hd = sizes[kind]
        apply, init_carry0, step = make_model(kind, ops)
        init_carry = lambda n, hd=hd, f=init_carry0: f(n, hd)  # noqa: E731
        params = init_params(kind, jax.random.fold_in(key, i), vocab.size, embed, hd)
        opt = optax.chain(optax.clip_by_global_norm(args.clip), adam(args.lr))
        wall = time.perf_counter()
        ev = make_tbptt_eval(apply)
        res = train_tbptt(apply, params, opt, init_carry, train_stream, k, epochs=args.epochs,
                          time_budget_s=budget, val_stream=val_stream, val_every_s=val_every_s,
                          progress=not args.no_progress, desc=kind, eval_fn=ev, budget_clock=args.budget_clock)
        te = time.perf_counter()
        test_bpc = evaluate_bpc(apply, res.params, init_carry, test_stream, k, eval_fn=ev)
        test_time = time.perf_counter() - te
        tail = res.train_losses[-50:]
        nets[kind] = {
            "hidden": hd, "embed": embed, "params": param_count(kind, vocab.size, embed, hd),
            "test_bpc": test_bpc, "val_bpc": res.history["val_bpc"][-1],
            "train_bpc_last50": float(np.mean(tail)) / LN2 if tail else None,
            "steps": res.steps, "chars_seen": res.steps * n_rows * k, "epochs_started": res.epochs_started,
            "train_time_s": res.train_time_s, "train_cpu_s": res.train_cpu_s, "compile_time_s": res.compile_time_s, "eval_time_s": res.eval_time_s, "test_eval_time_s": test_time,
            "cpu_time_s": res.cpu_time_s, "wall_time_s": time.perf_counter() - wall,
            "steps_per_s": res.steps / res.train_time_s if res.train_time_s else None,
            "stopped_by_budget": res.stopped_by_budget, "history": res.history,
        }
        print(f"{kind}: {res.steps} steps in {res.train_time_s:.1f} s training ({res.train_cpu_s:.0f} s CPU; "
              f"{nets[kind]['wall_time_s']:.0f} s wall), val {nets[kind]['val_bpc']:.3f}, "
              f"test {test_bpc:.3f} bpc", flush=True)
        # samples: prime with --prime, then draw at each temperature
        prime = vocab.encode(args.prime) if args.prime else np.zeros((1,), np.int32)
        carry = init_carry(1)
        for tok in prime[:-1]:
            _, carry = step(res.params, np.asarray([tok], np.int32), carry)
        samples[kind] = {}
        for j, temp in enumerate((0.5, 1.0)):
            out, sampler = sample_text(step, res.params, carry, np.asarray(prime[-1:], np.int32), sample_len,
                                       jax.random.fold_in(key, 100 + 10 * i + j), temp)
            samples[kind][f"{temp:g}"] = args.prime + vocab.decode(out[0])

    # ---- report
    os.makedirs(args.out, exist_ok=True)
    rows = [[name, c["params"], c["val_bpc"], c["test_bpc"], f"k={c['k']:g}"] for name, c in counts.items()]
    rows += [[kind.upper(), r["params"], r["val_bpc"], r["test_bpc"],
              f"H={r['hidden']}, {r['steps']} steps, {r['train_time_s']:.0f} s"] for kind, r in nets.items()]
    print_table(["model", "params", "val bpc", "test bpc", "notes"], rows, title="bits per character (test files)")
    with open(os.path.join(args.out, "samples.txt"), "w") as f:
        for kind, by_t in samples.items():
            for temp, text in by_t.items():
                f.write(f"===== {kind.upper()} (H={nets[kind]['hidden']}), temperature {temp}, primed with "
                        f"{args.prime!r} =====\n{text}\n\n")
    fig_path = plot_val_curves(nets, counts, os.path.join(args.out, "char_lm_val_bpc.png"),
                               "character-level LMs of the Python stdlib", args.budget_clock)
    results = {
        "command": "python -m experiments.char_lm " + " ".join(argv if argv is not None else sys.argv[1:]),
        "data": {**summary, "split": "crc32(relative path) % 100: train < 90, val 90..94, test 95..99",
                 "max_train_chars": max_train, "max_eval_chars": max_eval,
                 "eval_rows": {"val": val_stream.shape[0], "test": test_stream.shape[0]},
                 "scored_chars": {"val": int(val_stream.shape[0] * ((val_stream.shape[1] - 1) // k) * k),
                                  "test": int(test_stream.shape[0] * ((test_stream.shape[1] - 1) // k) * k)}},
        "protocol": {"time_budget_s": budget, "budget_clock": args.budget_clock, "batch_size": n_rows, "bptt": k, "lr": args.lr, "clip": args.clip,
                     "optimizer": "clip_by_global_norm + jaxnet.optim.adam", "embed": embed,
                     "lstm_hidden": hidden, "val_every_s": val_every_s, "epochs_max": args.epochs,
                     "steps_per_epoch": (train_stream.shape[1] - 1) // k},
        "ops": ops_source,
        "count_models": counts,
        "nets": nets,
        "samples": samples,
        "sampler": sampler,
        "figure": os.path.basename(fig_path),
        "cpu_count": os.cpu_count(),
    }
    write_results(args.out, results, args)
    return results


if __name__ == "__main__":
    main()
