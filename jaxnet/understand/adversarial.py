"""Fooling images and adversarial examples: the course's fooling loop, FGSM, PGD (L-inf and L2
balls), and :class:`Adversarial`, the option of :func:`jaxnet.train.fit` that trains on them.

Conventions: images x (N, H, W, C) float, labels y (N,) int (or one int), the model in eval
mode.  ``clip=(low, high)`` is the valid pixel range given by the caller (numbers, or arrays
broadcastable to x such as per-channel bounds of normalised images); None: no clipping.
Untargeted attacks increase the softmax cross-entropy of ``y``; ``targeted=True`` decreases
that of the target ``y`` instead.  Every loop is a ``lax`` loop: the functions run under
``jax.jit`` with the model bound statically.
"""
from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp

from jaxnet.understand._common import (as_labels, check_choice, check_clip, check_images, check_int, check_key,
                                       check_model, check_number, clip_to, per_image_norm, scores)

Array = jax.Array
NORMS = ("linf", "l2")


def _xent_sum(model, params, state, x, y):
    s = scores(model, params, state, x)
    logp = jax.nn.log_softmax(s, axis=-1)
    return -jnp.sum(jnp.take_along_axis(logp, y[:, None], axis=1))


def loss_gradient(model, params, state, x, y) -> Array:
    """∂/∂x of Σ_n cross-entropy(s(x_n), y_n): each image's own loss gradient. (N, H, W, C)."""
    return jax.grad(lambda v: _xent_sum(model, params, state, v, y))(x)


def _common(fn, model, x, y, eps, clip):
    check_model(fn, model)
    check_images(fn, x)
    y = as_labels(fn, y, x.shape[0])
    eps = check_number(fn, "eps", eps, low=0.0)
    return y, eps, check_clip(fn, clip)


def fgsm(model, params, state, x, y, eps: float, *, clip=None, targeted: bool = False) -> Array:
    """Fast gradient sign method (Goodfellow et al., 2015):
    ``x' = x + eps · sign(∇ₓ L(x, y))`` (``targeted``: ``x − eps · sign(∇ₓ L(x, target))``),
    then clipped to ``clip``.

    x: (N, H, W, C) float; y: (N,) int or an int; eps: >= 0.  Returns x' like x.
    """
    y, eps, clip = _common("fgsm", model, x, y, eps, clip)
    g = loss_gradient(model, params, state, x, y)
    step = jnp.sign(g) * jnp.asarray(eps, x.dtype)
    return clip_to(x - step if targeted else x + step, clip)


def project(delta, eps, norm: str):
    """``delta`` (N, ...) projected onto the ``norm`` ball of radius ``eps`` (per image):
    L-inf clips each entry to [-eps, eps]; L2 rescales by ``min(1, eps / ||delta||₂)``."""
    if norm == "linf":
        return jnp.clip(delta, -eps, eps)
    nrm = per_image_norm(delta, "l2")
    return delta * jnp.minimum(1.0, eps / jnp.maximum(nrm, 1e-12))


def _random_start(key, x, eps, norm):
    if norm == "linf":
        return jax.random.uniform(key, x.shape, x.dtype, -eps, eps)
    k1, k2 = jax.random.split(key)
    d = jax.random.normal(k1, x.shape, x.dtype)
    d = d / jnp.maximum(per_image_norm(d, "l2"), 1e-12)
    dim = x[0].size
    r = jax.random.uniform(k2, (x.shape[0],) + (1,) * (x.ndim - 1), x.dtype) ** (1.0 / dim)
    return d * r * eps


def pgd(model, params, state, x, y, eps: float, *, norm: str = "linf", steps: int = 10,
        step_size: Optional[float] = None, random_start: bool = False, key=None, clip=None,
        targeted: bool = False) -> Array:
    """Projected gradient descent (Madry et al., 2018) on the loss, inside the ``norm`` ball of
    radius ``eps`` around x and inside ``clip``.

    Each of ``steps`` iterations: L-inf ``x ← x + a · sign(g)``; L2 ``x ← x + a · g / ||g||₂``
    (per image); then ``δ = project(x − x₀)``, ``x = clip(x₀ + δ)`` (clipping a point of the
    ball towards a range containing x₀ keeps it in the ball).

    x: (N, H, W, C) float, inside ``clip``; y: (N,) int or an int; eps: >= 0.  norm: "linf" or
    "l2".  steps: >= 1.  step_size: a > 0; default ``2.5 · eps / steps``.  random_start: start
    at a uniform draw from the ball (needs ``key``).  Returns x' like x.
    """
    fn = "pgd"
    y, eps, clip = _common(fn, model, x, y, eps, clip)
    check_choice(fn, "norm", norm, NORMS)
    steps = check_int(fn, "steps", steps)
    a = 2.5 * eps / steps if step_size is None else check_number(fn, "step_size", step_size, low=0.0,
                                                                 low_open=True)
    if random_start:
        check_key(fn, key)
    return _pgd(model, params, state, x, y, eps, norm, steps, a, key if random_start else None, clip, targeted)


def _pgd(model, params, state, x, y, eps, norm, steps, a, key, clip, targeted):
    x0 = x
    if key is not None:
        x = clip_to(x0 + _random_start(key, x0, eps, norm), clip)
    sign = -1.0 if targeted else 1.0

    def body(_, v):
        g = loss_gradient(model, params, state, v, y) * sign
        if norm == "linf":
            step = jnp.sign(g)
        else:
            step = g / jnp.maximum(per_image_norm(g, "l2"), 1e-12)
        v = v + jnp.asarray(a, x.dtype) * step
        return clip_to(x0 + project(v - x0, eps, norm), clip)

    return jax.lax.fori_loop(0, steps, body, x)


class FoolingResult(NamedTuple):
    """images: (N, H, W, C) the fooling images; iterations: (N,) int32 steps each took (0: already
    classified as the target); fooled: (N,) bool, classified as the target at the end."""
    images: Array
    iterations: Array
    fooled: Array


def fooling_images(model, params, state, x, target, *, learning_rate: float = 1.0,
                   max_iterations: int = 100, clip=None) -> FoolingResult:
    """The course's fooling loop: gradient *ascent* on the target class score with a normalised
    step, ``x ← x + lr · g / ||g||₂`` (g = ∂s_target / ∂x, per image), until the model classifies
    the image as the target or ``max_iterations`` steps.

    All images advance together in one ``lax.while_loop``; an image stops changing once fooled.
    x: (N, H, W, C) float; target: (N,) int or an int; learning_rate > 0; max_iterations >= 1.
    """
    fn = "fooling_images"
    check_model(fn, model)
    check_images(fn, x)
    t = as_labels(fn, target, x.shape[0], "target")
    lr = check_number(fn, "learning_rate", learning_rate, low=0.0, low_open=True)
    max_iterations = check_int(fn, "max_iterations", max_iterations)
    clip = check_clip(fn, clip)

    def fooled(v):
        return jnp.argmax(scores(model, params, state, v), axis=-1) == t

    def target_score_grad(v):
        return jax.grad(lambda u: jnp.sum(jnp.take_along_axis(scores(model, params, state, u),
                                                              t[:, None], axis=1)))(v)

    def cond(c):
        i, _, done, _ = c
        return (i < max_iterations) & ~jnp.all(done)

    def body(c):
        i, v, done, its = c
        g = target_score_grad(v)
        step = jnp.asarray(lr, v.dtype) * g / jnp.maximum(per_image_norm(g), 1e-12)
        v = jnp.where(done[:, None, None, None], v, clip_to(v + step, clip))
        its = its + (~done).astype(jnp.int32)
        return i + 1, v, fooled(v), its

    done0 = fooled(x)
    _, v, done, its = jax.lax.while_loop(cond, body, (0, x, done0, jnp.zeros(x.shape[0], jnp.int32)))
    return FoolingResult(v, its, done)


@dataclasses.dataclass(frozen=True)
class Adversarial:
    """Adversarial training for :func:`jaxnet.train.fit` (``fit(..., adversarial=Adversarial(...))``).

    Inside the jitted train step, each batch's adversarial examples are made from the current
    params (eval mode, no gradient flows through the attack into the params) and the step trains on
    them: ``mode="replace"`` trains on the adversarial batch only (Madry et al.), ``"augment"`` on
    the clean and the adversarial batch together (twice the batch; Goodfellow et al.'s mix with
    equal weights).

    kind: "fgsm", "pgd_linf" or "pgd_l2".  eps: the ball's radius (>= 0).  steps: PGD iterations
    (ignored by FGSM).  step_size: PGD's step (default ``2.5 · eps / steps``).  random_start: PGD
    starts at a random point of the ball (key from the step's key).  clip: the valid pixel range
    (low, high) of the training images, or None.
    """
    eps: float
    kind: str = "pgd_linf"
    steps: int = 7
    step_size: Optional[float] = None
    random_start: bool = True
    clip: Any = None
    mode: str = "replace"

    def __post_init__(self):
        fn = "Adversarial"
        check_number(fn, "eps", self.eps, low=0.0)
        check_choice(fn, "kind", self.kind, ("fgsm", "pgd_linf", "pgd_l2"))
        check_int(fn, "steps", self.steps)
        if self.step_size is not None:
            check_number(fn, "step_size", self.step_size, low=0.0, low_open=True)
        check_choice(fn, "mode", self.mode, ("replace", "augment"))
        clip = check_clip(fn, self.clip)
        if clip is not None:   # hashable: a tuple of floats or of nested tuples
            object.__setattr__(self, "clip", tuple(_hashable(c) for c in clip))

    def perturb(self, model, params, state, x, y, key) -> Array:
        """The adversarial examples of batch (x (B, ...), y (B,)) for the current params."""
        params, state = jax.lax.stop_gradient((params, state))
        clip = None if self.clip is None else tuple(jnp.asarray(c, x.dtype) for c in self.clip)
        if self.kind == "fgsm":
            g = loss_gradient(model, params, state, x, y)
            xa = clip_to(x + jnp.asarray(self.eps, x.dtype) * jnp.sign(g), clip)
        else:
            norm = "linf" if self.kind == "pgd_linf" else "l2"
            a = 2.5 * self.eps / self.steps if self.step_size is None else self.step_size
            xa = _pgd(model, params, state, x, y, float(self.eps), norm, self.steps, a,
                      key if self.random_start else None, clip, False)
        return jax.lax.stop_gradient(xa)

    def __call__(self, model, key, params, state, x, y, mask):
        """The train step's hook: ``(x, y, mask)`` to train on."""
        xa = self.perturb(model, params, state, x, y, key)
        if self.mode == "replace":
            return xa, y, mask
        return (jnp.concatenate([x, xa]), jnp.concatenate([y, y]), jnp.concatenate([mask, mask]))


def _hashable(c):
    try:
        hash(c)
        return c
    except TypeError:
        import numpy as np
        a = np.asarray(c)
        return float(a) if a.ndim == 0 else tuple(a.tolist())


__all__ = ["loss_gradient", "fgsm", "project", "pgd", "FoolingResult", "fooling_images", "Adversarial"]
