"""A captioning transformer against the LSTM captioner: same captions, same features, same epochs.

    python -m experiments.caption_transformer [--quick] [--smoke] [--data digits|cifar] [--out DIR]
        [--width 128] [--depth 2] [--heads 4] [--tf-epochs E] [...the captioning experiment's options]

Data and image features are :mod:`experiments.captioning`'s (:func:`experiments.captioning.prepare`):
digit strings (embedded) or CIFAR-10 mosaics, each slot's class scores from cross-fitted
convnets.  The LSTM captioner is that experiment's (``inject="every"``, cosine schedule).

The transformer reads the image as **regions**: the features (N, slots * C) are cut into one
token per slot (N, slots, C), projected to the model width with a learned position per slot:
that is the decoder's memory.  The caption is teacher-forced as the course does (input
``captions[:, :-1]``, targets ``captions[:, 1:]``, <NULL> masked; the loss sums over words and
averages over captions): word embeddings + the course's sinusoidal positions ->
:class:`jaxnet.nn.TransformerDecoder` (post-norm layers: causal self-attention, cross-attention
onto the regions, GELU feed-forward; dropout 0.1) -> an affine map to the vocabulary; every
op on the manual backward path.  AdamW, cosine decay; the same epochs and batch as the LSTM.

Decoding is one jitted ``lax.scan`` (:mod:`jaxnet.nn.decode`, greedy and beam search), each step
one query against the keys and values cached from the steps before
(:meth:`jaxnet.nn.TransformerDecoder.apply_cached`).  Reported for both captioners: BLEU-4
(sacrebleu) and whole-caption accuracy, greedy and beam, training seconds; ``attention.png``
shows, for a few held-out images, the last layer's cross-attention (mean over heads) of each
generated word over the slots.

``--quick``: 800 / 300 digit strings and 4 epochs; ``--smoke`` (the default test suite's run):
200 / 60 strings, one epoch, a one-layer transformer of width 32, and no LSTM captioner (its training
and decoders are :mod:`experiments.captioning`'s, run by that experiment's smoke; ``SMOKE_LSTM``).
"""
from __future__ import annotations

import dataclasses
import functools
import math
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax

from experiments import _common
from experiments import captioning as cap
from jaxnet import functional as F
from jaxnet.data.captions import END, NULL, START
from jaxnet.nn import TransformerDecoder, decode, sinusoidal_positions
from jaxnet.nn.init import small, xavier

NAME = "caption_transformer"


# ----------------------------------------------------------------------------------------- the model

@dataclasses.dataclass(frozen=True)
class CaptionTransformer:
    """Regions (N, slots, C) + caption tokens (N, T) -> word scores (N, T, V); module docstring."""
    vocab_size: int
    n_slots: int
    slot_dim: int
    max_len: int
    width: int = 128
    depth: int = 2
    heads: int = 4
    ff_hidden: int = 256
    dropout_rate: float = 0.1
    impl: str = "manual"

    @property
    def decoder(self) -> TransformerDecoder:
        return TransformerDecoder(self.depth, self.heads, self.ff_hidden, dropout_rate=self.dropout_rate,
                                  impl=self.impl)

    def init(self, key):
        k = jax.random.split(key, 5)
        w = self.width
        return {"region": {"w": xavier(k[0], (self.slot_dim, w)), "b": jnp.zeros(w)},
                "region_pos": small(k[1], (self.n_slots, w), scale=0.02),
                "embed": small(k[2], (self.vocab_size, w), scale=0.02),
                "decoder": self.decoder.init(k[3], (1, self.max_len, w))[0],
                "vocab": {"w": xavier(k[4], (w, self.vocab_size)), "b": jnp.zeros(self.vocab_size)}}

    def memory(self, params, features):
        """(N, slots * C) standardised features -> (N, slots, width) region tokens."""
        regions = features.reshape(features.shape[0], self.n_slots, self.slot_dim)
        return F.temporal_affine(regions, params["region"]["w"], params["region"]["b"], impl=self.impl) \
            + params["region_pos"]

    def _words(self, params, tokens, offset=0):
        x = F.word_embedding(tokens, params["embed"], impl=self.impl) * math.sqrt(self.width)
        pe = jax.lax.dynamic_slice_in_dim(sinusoidal_positions(self.max_len, self.width, x.dtype), offset,
                                          tokens.shape[1], axis=0)
        return x + pe

    def scores(self, params, features, tokens, *, train=False, key=None):
        mem = self.memory(params, features)
        h = self.decoder.apply(params["decoder"], {}, self._words(params, tokens), train=train, key=key, memory=mem)[0]
        return F.temporal_affine(h, params["vocab"]["w"], params["vocab"]["b"], impl=self.impl)

    def loss(self, params, features, captions, key=None):
        cin, cout = captions[:, :-1], captions[:, 1:]
        s = self.scores(params, features, cin, train=key is not None, key=key)
        return F.temporal_softmax_cross_entropy(s, cout, mask=cout != NULL, impl=self.impl)

    # --- decoding with the key/value cache
    def initial_carry(self, params, features):
        n = features.shape[0]
        return {"cache": self.decoder.init_cache(n, self.max_len, self.width, features.dtype),
                "pos": jnp.zeros((n,), jnp.int32), "memory": self.memory(params, features)}

    def make_step(self, params):
        def step(tokens, carry):
            pos = carry["pos"][0]
            x = self._words(params, tokens[:, None], pos)
            h, cache = self.decoder.apply_cached(params["decoder"], x, carry["cache"], pos, memory=carry["memory"])
            logits = F.affine(h[:, 0], params["vocab"]["w"], params["vocab"]["b"], impl=self.impl)
            return logits, {"cache": cache, "pos": carry["pos"] + 1, "memory": carry["memory"]}
        return step

    def cross_attention(self, params, features, tokens):
        """The last layer's cross-attention (N, T, slots), mean over heads, for input tokens (N, T)."""
        ws = self.decoder.cross_attention_weights(params["decoder"], self._words(params, tokens),
                                                  memory=self.memory(params, features))
        return jnp.mean(ws[-1], axis=1)


@functools.partial(jax.jit, static_argnames=("model", "max_len", "beam_size"))
def decode_captions(model, params, features, *, max_len, beam_size=0):
    """Greedy (beam_size 0) or beam-search captions, int32 (N, max_len) word indices after <START>."""
    carry = model.initial_carry(params, features)
    start = jnp.full((features.shape[0],), START, jnp.int32)
    if beam_size:
        out = decode.beam_search(model.make_step(params), carry, start, END, max_len, beam_size)
    else:
        out = decode.greedy(model.make_step(params), carry, start, max_len, end=END)
    return out[0] if isinstance(out, tuple) else out


@functools.partial(jax.jit, static_argnames=("model",))
def cross_attention_map(model, params, features, tokens):
    """:meth:`CaptionTransformer.cross_attention` as one compiled program (N, T, slots)."""
    return model.cross_attention(params, features, tokens)


def train_transformer(model, feats, caps, *, epochs, batch, lr, weight_decay, key):
    """AdamW with a cosine decay over all steps; dropout keys from ``key``. Returns (params, losses, seconds)."""
    n = len(caps)
    batch = min(batch, n)
    per_epoch = max(1, n // batch)
    total = epochs * per_epoch
    opt = optax.adamw(optax.cosine_decay_schedule(lr, total), weight_decay=weight_decay)
    params = model.init(jax.random.key(key))
    opt_state = opt.init(params)

    @jax.jit
    def step(params, opt_state, f, c, k):
        loss, g = jax.value_and_grad(model.loss)(params, f, c, k)
        upd, opt_state = opt.update(g, opt_state, params)
        return optax.apply_updates(params, upd), opt_state, loss

    rng, losses = np.random.default_rng(key), []
    base = jax.random.key(key + 1)
    with _common.Timer() as t:
        for s in range(total):
            if s % per_epoch == 0:
                order = rng.permutation(n)
            idx = order[(s % per_epoch) * batch:(s % per_epoch + 1) * batch]
            params, opt_state, loss = step(params, opt_state, feats[idx], caps[idx], jax.random.fold_in(base, s))
            losses.append(float(loss))
            if not math.isfinite(losses[-1]):
                raise FloatingPointError(f"caption_transformer: the loss became {losses[-1]} at step {s}")
    print(f"  transformer: {total} steps (batch {batch}), {t.elapsed:.1f} s, loss {losses[0]:.3f} -> "
          f"{np.mean(losses[-per_epoch:]):.4f}", flush=True)
    return params, losses, t.elapsed


# ------------------------------------------------------------------------------------------- figures

def plot_attention(data, vocab, model, params, f_te, captions, idx, path, n_slots) -> str:
    fig = _common.figure((12, 2.4 * len(idx)))
    for r, i in enumerate(idx):
        words = (captions[i].split() or ["<END>"])[:model.max_len - 1]      # <START> + words fit the positions
        tokens = np.asarray(vocab.encode([" ".join(words)], len(words) + 2))[:, :-1]      # <START> w1 .. wk
        # padded to max_len so that one compiled program serves every caption: the self-attention
        # is causal, so the rows of the real words do not see the padding
        tokens = np.pad(tokens, ((0, 0), (0, model.max_len - tokens.shape[1])), constant_values=NULL)
        att = np.asarray(cross_attention_map(model, params, jnp.asarray(f_te[i:i + 1]), jnp.asarray(tokens)))[0]
        ax_img = fig.add_subplot(len(idx), 2, 2 * r + 1)
        img = data.test.images[i]
        ax_img.imshow(img[..., 0] if img.shape[-1] == 1 else img, cmap="gray" if img.shape[-1] == 1 else None)
        ax_img.set_title(f"generated: {captions[i]}", fontsize=8, loc="left")
        ax_img.axis("off")
        ax = fig.add_subplot(len(idx), 2, 2 * r + 2)
        ax.imshow(att[:len(words)].T, cmap="viridis", aspect="auto", vmin=0, vmax=1)
        ax.set_yticks(range(n_slots), [f"slot {k + 1}" for k in range(n_slots)], fontsize=7)
        ax.set_xticks(range(len(words)), words, fontsize=7, rotation=30)
        ax.set_title("cross-attention of each word (input = the word before it) over the slots", fontsize=8)
    return _common.save_figure(fig, path)


# ---------------------------------------------------------------------------------------------- main

#: whether --smoke trains the LSTM captioner too (the slow tier sets it; the default suite's smoke skips it)
SMOKE_LSTM = False


def _extra(parser):
    cap._extra(parser)
    parser.add_argument("--width", type=int, default=128, help="transformer width")
    parser.add_argument("--depth", type=int, default=2, help="decoder layers")
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--ff-hidden", type=int, default=256)
    parser.add_argument("--tf-lr", type=float, default=1e-3, help="the transformer's AdamW peak learning rate")


def _check(args) -> None:
    try:
        if min(args.width, args.depth, args.heads, args.ff_hidden) < 1 or args.width % args.heads:
            raise ValueError(f"--width, --depth, --heads, --ff-hidden must be positive and --heads must divide "
                             f"--width (got {args.width}, {args.depth}, {args.heads}, {args.ff_hidden})")
        if not args.tf_lr > 0:
            raise ValueError(f"--tf-lr must be > 0, got {args.tf_lr}")
    except ValueError as e:
        print(f"experiments.{NAME}: {e}", file=sys.stderr)
        raise SystemExit(2)


def main(argv=None):
    args = _common.parse_args(NAME, __doc__.splitlines()[0], _extra, argv)
    _check(args)
    if args.smoke:
        args.width, args.depth, args.heads, args.ff_hidden = 32, 1, 2, 64
    prep = cap.prepare(args)
    epochs = _common.sized(args, args.epochs, 4, 1)
    batch = 50 if args.quick else 100
    refs, f_te = prep.refs, jnp.asarray(prep.f_te)
    results = {"data": args.data, "n_train": len(prep.c_tr), "n_test": len(refs), "epochs": epochs, "batch": batch,
               "oracle": {"bleu4": cap.bleu4(prep.oracle, refs), "accuracy": cap.exact_match(prep.oracle, refs)},
               "models": {}}

    def score(name, hyps, seconds, dec):
        row = results["models"].setdefault(name, {"train_time_s": seconds})
        row[dec] = {"bleu4": cap.bleu4(hyps, refs), "accuracy": cap.exact_match(hyps, refs)}
        print(f"  {name} {dec}: BLEU-4 {row[dec]['bleu4']:.2f}, whole-caption accuracy {row[dec]['accuracy']:.4f}",
              flush=True)

    if SMOKE_LSTM or not args.smoke:
        print("lstm:", flush=True)
        params, _, secs = cap._train_captioner(args, "lstm", prep.f_tr, prep.c_tr, epochs=epochs, batch=batch,
                                               lr=args.lr, schedule="cosine", inject=args.inject, key=args.seed + 1,
                                               label=f"{epochs} epochs")
        score("lstm", prep.vocab.decode(np.asarray(cap.decode_greedy(params, f_te, cell="lstm",
                                                                     max_len=prep.max_len))), secs, "greedy")
        score("lstm", prep.vocab.decode(np.asarray(cap.decode_beam(params, f_te, cell="lstm", max_len=prep.max_len,
                                                                   beam_size=args.beam_size))), secs, "beam")

    print("transformer:", flush=True)
    model = CaptionTransformer(len(prep.vocab), prep.n_slots, prep.f_tr.shape[1] // prep.n_slots, prep.length - 1,
                               args.width, args.depth, args.heads, args.ff_hidden)
    tparams, losses, secs = train_transformer(model, prep.f_tr, prep.c_tr, epochs=epochs, batch=batch, lr=args.tf_lr,
                                              weight_decay=1e-4, key=args.seed + 1)
    greedy = prep.vocab.decode(np.asarray(decode_captions(model, tparams, f_te, max_len=prep.max_len)))
    score("transformer", greedy, secs, "greedy")
    score("transformer", prep.vocab.decode(np.asarray(decode_captions(
        model, tparams, f_te, max_len=prep.max_len, beam_size=args.beam_size))), secs, "beam")
    results["models"]["transformer"]["final_train_loss"] = float(np.mean(losses[-10:]))
    pick = [int(i) for i in np.random.default_rng(args.seed).choice(len(refs), size=4, replace=False)]
    results["figures"] = {"attention": os.path.basename(plot_attention(
        prep.data, prep.vocab, model, tparams, prep.f_te, greedy, pick, os.path.join(args.out, "attention.png"),
        prep.n_slots))}
    results["examples"] = [{"index": i, "truth": refs[i], "transformer": greedy[i]} for i in pick]
    results["transformer"] = dataclasses.asdict(model)
    _common.print_table(["model", "decoder", "BLEU-4", "accuracy", "train s"],
                        [[m, d, r[d]["bleu4"], r[d]["accuracy"], r["train_time_s"]]
                         for m, r in results["models"].items() for d in ("greedy", "beam")]
                        + [["oracle", "-", results["oracle"]["bleu4"], results["oracle"]["accuracy"], None]],
                        title=f"held-out {args.data} captions ({len(refs)})")
    path = _common.write_results(args.out, results, args)
    print(f"wrote {path}", flush=True)
    return results


if __name__ == "__main__":
    main()
