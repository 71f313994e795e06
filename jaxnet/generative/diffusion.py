"""Denoising diffusion (DDPM, Ho et al. 2020): noise schedules, forward noising, the training loss
with classifier-free guidance, and ancestral sampling as one ``lax.scan``.

The course's notes (2017) stop at PixelCNN, VAEs and GANs; the formulas here are the DDPM
paper's (Ho, Jain & Abbeel 2020), the cosine schedule is Nichol & Dhariwal's (2021) and
classifier-free guidance Ho & Salimans' (2022).

Time steps are indices ``t`` in ``0 .. T-1`` (T = ``num_steps``): index t is the paper's step
t + 1, so ``alphas_cumprod[t]`` is the paper's ``alpha_bar_{t+1}`` and ``t = 0`` is the least
noisy step.  With ``beta_t`` the schedule, ``alpha_t = 1 - beta_t`` and
``alpha_bar_t = prod_{s <= t} alpha_s``:

* forward noising (closed form): ``x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps``,
  ``eps ~ N(0, I)`` (:func:`q_sample`);
* training (epsilon prediction): ``L = mean (eps - eps_theta(x_t, t, y))^2`` over the batch and
  every pixel, with t uniform in ``0 .. T-1`` (:func:`ddpm_loss`); classifier-free guidance is
  trained by replacing each label by the null label :data:`NULL_LABEL` with probability
  ``cond_drop``;
* sampling (ancestral, the paper's Algorithm 2): from ``x_T ~ N(0, I)``, for t = T-1 down to 0,
  ``x_{t-1} = mu(x_t, t) + sigma_t z``, ``z ~ N(0, I)``, where ``sigma_t^2`` is the posterior
  variance ``beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)`` (0 at t = 0, so the last step adds
  no noise) and the posterior mean, with ``x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps) /
  sqrt(alpha_bar_t)``, is::

      mu = beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t) * x0_hat
           + sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) * x_t
         = (x_t - beta_t / sqrt(1 - alpha_bar_t) * eps) / sqrt(alpha_t)

  (the second form is used unless ``clip`` clamps ``x0_hat``; :func:`p_sample`, :func:`sample`);
* guidance: ``eps = (1 + w) eps(x_t, t, y) - w eps(x_t, t, null)`` with ``w = guidance >= 0``
  (w = 0 is the plain conditional model, and then the unconditional one is not evaluated).

The model is any function ``model_fn(params, x_t, t, y) -> eps_hat``: x_t (N, ...) float,
t (N,) int32 step indices, y (N,) int32 labels (:data:`NULL_LABEL` = -1 where dropped) or
``None`` for an unconditional model; it returns an array of x_t's shape.  For the
:class:`~jaxnet.generative.unet.UNet`, ``model_fn = unet.eps``.

Every function is pure and jittable; the arguments' checks are host-side, one-line
``ValueError`` s naming the function and the value.  A ``t`` that is a concrete array is range
checked; a traced ``t`` outside ``0 .. T-1`` gives NaN (no clamping), as jaxnet's ops do for
out-of-range indices.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxnet._checks import check_number, check_positive_int, is_int

__all__ = ["Schedule", "NULL_LABEL", "make_schedule", "q_sample", "ddpm_loss", "p_sample", "sample"]

NULL_LABEL = -1
"""The label classifier-free guidance uses for "no label" (the UNet maps it to its extra class)."""

_KINDS = ("linear", "cosine")


class Schedule(NamedTuple):
    """A noise schedule: arrays of shape (T,), T = ``num_steps``, in one float dtype (a pytree).

    Index t is the paper's step t + 1 (module docstring).  ``alphas_cumprod_prev[0] = 1``;
    ``posterior_variance[0] = 0``.
    """
    betas: jax.Array                      # beta_t
    alphas: jax.Array                     # 1 - beta_t
    alphas_cumprod: jax.Array             # alpha_bar_t = prod_{s <= t} alpha_s
    alphas_cumprod_prev: jax.Array        # alpha_bar_{t-1} (1 at t = 0)
    sqrt_alphas_cumprod: jax.Array        # sqrt(alpha_bar_t)
    sqrt_one_minus_alphas_cumprod: jax.Array   # sqrt(1 - alpha_bar_t)
    sqrt_recip_alphas: jax.Array          # 1 / sqrt(alpha_t)
    posterior_variance: jax.Array         # beta_t (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)
    posterior_mean_coef1: jax.Array       # beta_t sqrt(alpha_bar_{t-1}) / (1 - alpha_bar_t)   (times x0)
    posterior_mean_coef2: jax.Array       # sqrt(alpha_t) (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)  (times x_t)

    @property
    def num_steps(self) -> int:
        """T, a Python int (static under jit)."""
        return int(self.betas.shape[0])


def make_schedule(num_steps, kind="linear", beta_start=1e-4, beta_end=0.02, *, cosine_s=0.008,
                  max_beta=0.999, dtype=None) -> Schedule:
    """The noise schedule of ``num_steps`` steps: a :class:`Schedule` of (T,) arrays.

    kind="linear": ``betas = linspace(beta_start, beta_end, T)`` (Ho et al.'s 1e-4 .. 0.02 are
    for T = 1000; with fewer steps ``alpha_bar`` does not reach 0 unless the betas are scaled
    up, e.g. by 1000 / T).  kind="cosine" (Nichol & Dhariwal; ``beta_start``/``beta_end``
    unused): ``alpha_bar(t) = f(t + 1) / f(0)``, ``f(s) = cos((s / T + cosine_s) / (1 + cosine_s)
    * pi / 2)^2``, as betas ``1 - alpha_bar(t) / alpha_bar(t - 1)`` clipped at ``max_beta``,
    and ``alpha_bar`` then recomputed from the clipped betas.  Computed in NumPy float64, then
    cast to ``dtype`` (default: JAX's default float, float32 unless x64 is on).
    """
    fn = "make_schedule"
    t_steps = check_positive_int(fn, "num_steps", num_steps)
    if not isinstance(kind, str) or kind not in _KINDS:
        raise ValueError(f"{fn}: `kind` must be one of {_KINDS}, got {kind!r}")
    if kind == "linear":
        b0 = check_number(fn, "beta_start", beta_start, low=0.0, high=1.0, low_open=True, high_open=True)
        b1 = check_number(fn, "beta_end", beta_end, low=0.0, high=1.0, low_open=True, high_open=True)
        if b0 > b1:
            raise ValueError(f"{fn}: `beta_start` must be <= `beta_end`, got {beta_start!r} > {beta_end!r}")
        betas = np.linspace(b0, b1, t_steps, dtype=np.float64)
    else:
        s = check_number(fn, "cosine_s", cosine_s, low=0.0)
        cap = check_number(fn, "max_beta", max_beta, low=0.0, high=1.0, low_open=True, high_open=True)
        f = np.cos((np.arange(t_steps + 1, dtype=np.float64) / t_steps + s) / (1 + s) * math.pi / 2) ** 2
        abar = f / f[0]
        betas = np.clip(1.0 - abar[1:] / abar[:-1], 0.0, cap)
    alphas = 1.0 - betas
    abar = np.cumprod(alphas)
    prev = np.concatenate([[1.0], abar[:-1]])
    table = dict(betas=betas, alphas=alphas, alphas_cumprod=abar, alphas_cumprod_prev=prev,
                 sqrt_alphas_cumprod=np.sqrt(abar), sqrt_one_minus_alphas_cumprod=np.sqrt(1.0 - abar),
                 sqrt_recip_alphas=1.0 / np.sqrt(alphas),
                 posterior_variance=betas * (1.0 - prev) / (1.0 - abar),
                 posterior_mean_coef1=betas * np.sqrt(prev) / (1.0 - abar),
                 posterior_mean_coef2=np.sqrt(alphas) * (1.0 - prev) / (1.0 - abar))
    dt = jnp.result_type(float) if dtype is None else dtype
    return Schedule(**{k: jnp.asarray(v, dtype=dt) for k, v in table.items()})


# ------------------------------------------------------------------------------------------ checks

def _check_schedule(fn, schedule) -> int:
    if not isinstance(schedule, Schedule):
        raise ValueError(f"{fn}: `schedule` must be a Schedule from make_schedule, got {type(schedule).__name__}")
    return schedule.num_steps


def _check_x(fn, name, x):
    if not hasattr(x, "ndim") or x.ndim < 2:
        raise ValueError(f"{fn}: `{name}` must be a batch (N, ...) of rank >= 2, got shape {tuple(np.shape(x))}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"{fn}: `{name}` must be a float array, got dtype {x.dtype}")


def _concrete(a) -> bool:
    return not isinstance(a, jax.core.Tracer)


def _check_t(fn, t, n, num_steps):
    """t: an integer scalar or (N,); a concrete one must be in [0, T). Returns t as an array."""
    t = jnp.asarray(t) if _concrete(t) else t
    if t.ndim not in (0, 1) or (t.ndim == 1 and t.shape[0] != n):
        raise ValueError(f"{fn}: `t` must be a scalar or (N,) = ({n},) of step indices, got shape {tuple(t.shape)}")
    if not jnp.issubdtype(t.dtype, jnp.integer):
        raise ValueError(f"{fn}: `t` must hold integer step indices, got dtype {t.dtype}")
    if _concrete(t) and t.size:
        v = np.asarray(t)
        lo, hi = int(v.min()), int(v.max())
        if lo < 0 or hi >= num_steps:
            raise ValueError(f"{fn}: `t` must be in [0, {num_steps}) (the schedule's num_steps), "
                             f"got values in [{lo}, {hi}]")
    return t


def _check_labels(fn, labels, n):
    if labels is None:
        return None
    labels = jnp.asarray(labels) if _concrete(labels) else labels
    if labels.shape != (n,) or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(f"{fn}: `labels` must be (N,) = ({n},) integer class indices, "
                         f"got shape {tuple(labels.shape)} dtype {labels.dtype}")
    return labels.astype(jnp.int32)


def _check_guidance(fn, guidance, labels) -> float:
    w = check_number(fn, "guidance", guidance, low=0.0)
    if w > 0 and labels is None:
        raise ValueError(f"{fn}: `guidance`={guidance!r} needs `labels` (classifier-free guidance mixes the "
                         f"conditional and the unconditional predictions)")
    return w


def _check_clip(fn, clip):
    return None if clip is None else check_number(fn, "clip", clip, low=0.0, low_open=True)


def _gather(table, t, ndim):
    """``table[t]`` shaped (N, 1, ..., 1) for broadcasting against a rank-``ndim`` batch; NaN where
    t is outside [0, T) (a traced t is not checked on the host)."""
    ok = (t >= 0) & (t < table.shape[0])
    v = jnp.where(ok, table[jnp.clip(t, 0, table.shape[0] - 1)], jnp.nan)
    return jnp.reshape(v, v.shape + (1,) * (ndim - v.ndim))


def _check_eps(fn, eps, x):
    if tuple(np.shape(eps)) != tuple(x.shape):
        raise ValueError(f"{fn}: `model_fn` must return the noise prediction of x_t's shape {tuple(x.shape)}, "
                         f"got shape {tuple(np.shape(eps))}")
    return eps


# --------------------------------------------------------------------------------- forward process

def q_sample(schedule: Schedule, x0, t, noise):
    """The forward process in closed form: ``x_t = sqrt(alpha_bar_t) x0 + sqrt(1 - alpha_bar_t) noise``.

    x0: (N, ...) float (images (N, H, W, C)).  t: (N,) (or a scalar, the same for every example)
    integer step indices in [0, T).  noise: x0's shape, N(0, I) draws.  Returns x_t, x0's shape
    and dtype.
    """
    fn = "q_sample"
    num_steps = _check_schedule(fn, schedule)
    _check_x(fn, "x0", x0)
    t = _check_t(fn, t, x0.shape[0], num_steps)
    if tuple(np.shape(noise)) != tuple(x0.shape):
        raise ValueError(f"{fn}: `noise` must have x0's shape {tuple(x0.shape)}, got {tuple(np.shape(noise))}")
    return _q_sample(schedule, x0, t, noise)


def _q_sample(schedule, x0, t, noise):
    t = jnp.broadcast_to(t, (x0.shape[0],))
    a = _gather(schedule.sqrt_alphas_cumprod, t, x0.ndim).astype(x0.dtype)
    s = _gather(schedule.sqrt_one_minus_alphas_cumprod, t, x0.ndim).astype(x0.dtype)
    return a * x0 + s * noise


# ------------------------------------------------------------------------------------------ training

def ddpm_loss(model_fn: Callable, params, x0, key, schedule: Schedule, *, labels=None, cond_drop=0.1):
    """The DDPM training loss (epsilon prediction), a scalar: ``mean (eps - model_fn(params, x_t, t, y))^2``.

    x0: (N, ...) float, a batch of data (images (N, H, W, C), scaled as the model expects,
    e.g. to [-1, 1]).  key: a PRNG key, split as ``k_t, k_noise, k_drop = jax.random.split(key, 3)``:
    ``t = randint(k_t, (N,), 0, T)``, ``eps = normal(k_noise, x0.shape)``, and with ``labels``
    ((N,) ints) each label is replaced by :data:`NULL_LABEL` where ``bernoulli(k_drop, cond_drop,
    (N,))`` is True (classifier-free guidance training; ``cond_drop`` in [0, 1], ignored without
    labels, when ``y = None`` is passed to the model).  The mean is over the batch and every
    pixel.  Differentiate it with respect to ``params`` (``jax.grad`` / ``value_and_grad``).
    """
    fn = "ddpm_loss"
    num_steps = _check_schedule(fn, schedule)
    _check_x(fn, "x0", x0)
    n = x0.shape[0]
    labels = _check_labels(fn, labels, n)
    drop = check_number(fn, "cond_drop", cond_drop, low=0.0, high=1.0)
    k_t, k_noise, k_drop = jax.random.split(key, 3)
    t = jax.random.randint(k_t, (n,), 0, num_steps)
    noise = jax.random.normal(k_noise, x0.shape, x0.dtype)
    x_t = _q_sample(schedule, x0, t, noise)
    y = None
    if labels is not None:
        y = jnp.where(jax.random.bernoulli(k_drop, drop, (n,)), NULL_LABEL, labels)
    eps = _check_eps(fn, model_fn(params, x_t, t, y), x_t)
    return jnp.mean((eps - noise) ** 2)


# ------------------------------------------------------------------------------------------ sampling

def _guided_eps(model_fn, params, x, t, labels, guidance):
    """``model_fn`` at (x, t, labels), mixed with the null label's prediction unless guidance is
    ``None`` (no guidance: the host saw w = 0); a guidance value may be traced."""
    if labels is None or guidance is None:
        return model_fn(params, x, t, labels)
    n = x.shape[0]
    both = model_fn(params, jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                    jnp.concatenate([labels, jnp.full((n,), NULL_LABEL, labels.dtype)]))
    cond, uncond = both[:n], both[n:]
    return (1 + guidance) * cond - guidance * uncond


def _step(model_fn, params, schedule, x, t, key, labels, guidance, clip, fn):
    """One ancestral step from x_t (N, ...) at step index t (scalar or (N,)) to x_{t-1}."""
    n = x.shape[0]
    tb = jnp.broadcast_to(jnp.asarray(t, jnp.int32), (n,))
    eps = _check_eps(fn, _guided_eps(model_fn, params, x, tb, labels, guidance), x).astype(x.dtype)

    def g(table):
        return _gather(table, tb, x.ndim).astype(x.dtype)

    if clip is None:
        mean = g(schedule.sqrt_recip_alphas) * (x - g(schedule.betas) / g(schedule.sqrt_one_minus_alphas_cumprod) * eps)
    else:
        x0_hat = (x - g(schedule.sqrt_one_minus_alphas_cumprod) * eps) / g(schedule.sqrt_alphas_cumprod)
        x0_hat = jnp.clip(x0_hat, -clip, clip)
        mean = g(schedule.posterior_mean_coef1) * x0_hat + g(schedule.posterior_mean_coef2) * x
    z = jax.random.normal(key, x.shape, x.dtype)
    return mean + jnp.sqrt(g(schedule.posterior_variance)) * z


def p_sample(model_fn: Callable, params, schedule: Schedule, x, t, key, *, labels=None, guidance=0.0, clip=None):
    """One ancestral sampling step: x_{t-1} = mu(x_t, t) + sigma_t z (module docstring).

    x: x_t (N, ...) float.  t: the step index, a scalar or (N,) int in [0, T).  key: a PRNG key,
    ``z = jax.random.normal(key, x.shape)`` (unused at t = 0, where sigma = 0).  labels: (N,) ints
    or None.  guidance: w >= 0 (needs labels when > 0).  clip: None, or c > 0 to clamp the
    predicted x0 to [-c, c] before the posterior mean (e.g. 1.0 for data in [-1, 1]).
    Returns x_{t-1}, x's shape and dtype.
    """
    fn = "p_sample"
    num_steps = _check_schedule(fn, schedule)
    _check_x(fn, "x", x)
    t = _check_t(fn, t, x.shape[0], num_steps)
    labels = _check_labels(fn, labels, x.shape[0])
    w = _check_guidance(fn, guidance, labels)
    return _step(model_fn, params, schedule, x, t, key, labels, w or None, _check_clip(fn, clip), fn)


def _sample(model_fn, params, key, schedule, labels, guidance, *, shape, clip, every):
    num_steps = schedule.num_steps
    k_init, k_steps = jax.random.split(key)
    x = jax.random.normal(k_init, shape, schedule.betas.dtype)
    ts = jnp.arange(num_steps - 1, -1, -1, dtype=jnp.int32)
    keys = jax.random.split(k_steps, num_steps)

    def advance(x, t, k):
        return _step(model_fn, params, schedule, x, t, k, labels, guidance, clip, "sample")

    if every is None:
        x, _ = jax.lax.scan(lambda x, tk: (advance(x, *tk), None), x, (ts, keys))
        return x
    frames = jnp.zeros((num_steps // every + 1,) + tuple(shape), x.dtype).at[0].set(x)

    def step(carry, tkj):
        x, frames = carry
        t, k, done = tkj
        x = advance(x, t, k)
        slot = done // every
        frames = frames.at[slot].set(jnp.where(done % every == 0, x, frames[slot]))
        return (x, frames), None

    done = jnp.arange(1, num_steps + 1, dtype=jnp.int32)
    (x, frames), _ = jax.lax.scan(step, (x, frames), (ts, keys, done))
    return x, frames


_sample_jit = jax.jit(_sample, static_argnums=(0,), static_argnames=("shape", "clip", "every"))


def sample(model_fn: Callable, params, key, shape, schedule: Schedule, *, labels=None, guidance=0.0, clip=None,
           every=None):
    """Ancestral DDPM sampling (Algorithm 2): T denoising steps as one ``lax.scan``, under ``jax.jit``.

    model_fn: ``model_fn(params, x_t, t, y) -> eps`` (module docstring), a hashable function (it
    is a static argument of the jitted scan: pass the same object to reuse the compiled
    program, e.g. ``unet.eps``; the program is the same for every guidance w > 0).  key: a PRNG
    key, split as ``k_init, k_steps = split(key)``; ``x_T = normal(k_init, shape)`` and the step
    at index t (the j-th step, j = T-1-t) draws its z from ``split(k_steps, T)[j]``.  shape:
    (N, ...) of the samples, e.g. (16, 8, 8, 1); their dtype is the schedule's.  labels: (N,)
    int class indices for a conditional model, or None.  guidance: the classifier-free guidance
    weight w >= 0 (0: the conditional model alone, the unconditional one not evaluated; w > 0
    runs both as one batch of 2N).  clip: None, or c > 0 to clamp each step's predicted x0 to
    [-c, c] (e.g. 1.0 for data scaled to [-1, 1]).

    Returns x_0 (``shape``); with ``every=k`` (a positive int), ``(x_0, frames)``: frames
    (T // k + 1, *shape) holds x_T and then the images after every k-th step (after k, 2k, ...
    steps; the last frame is x_0 when k divides T).  Callable inside a jitted function too.
    """
    fn = "sample"
    _check_schedule(fn, schedule)
    try:
        shape = tuple(shape)
    except TypeError:
        shape = None
    if not shape or len(shape) < 2 or not all(is_int(d) and d >= 1 for d in shape):
        raise ValueError(f"{fn}: `shape` must be a tuple (N, ...) of rank >= 2 of positive ints, got {shape!r}")
    shape = tuple(int(d) for d in shape)
    labels = _check_labels(fn, labels, shape[0])
    w = _check_guidance(fn, guidance, labels)
    if every is not None:
        every = check_positive_int(fn, "every", every)
    if not callable(model_fn):
        raise ValueError(f"{fn}: `model_fn` must be a function (params, x_t, t, y) -> eps, got {model_fn!r}")
    guidance = jnp.asarray(w, schedule.betas.dtype) if w > 0 else None   # traced: a new w compiles nothing new
    return _sample_jit(model_fn, params, key, schedule, labels, guidance, shape=shape,
                       clip=_check_clip(fn, clip), every=every)
