"""DDPM pieces (jaxnet.generative.diffusion) and the UNet noise predictor (jaxnet.generative.unet).

Float64 throughout (the conftest's x64 fixture).  The schedule, the loss and the sampler are
checked against NumPy with a tiny linear noise predictor whose formula NumPy repeats; the UNet
runs one jitted forward pass (its variations packed into one batch: every example is
independent, group norm being per example), and is traced, not compiled, through the loss and
the sampler.
"""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxnet.generative import (NULL_LABEL, Schedule, UNet, ddpm_loss, make_schedule, p_sample, q_sample, sample,
                               timestep_embedding)
from jaxnet.nn.transformer import sinusoidal_positions

pytestmark = pytest.mark.usefixtures("x64")

T, K = 7, 3                      # the small tests' steps and classes
B0, B1 = 0.05, 0.4               # their betas, so that alpha_bar_T is small with 7 steps


def _np_schedule(betas):
    a = 1.0 - betas
    ab = np.cumprod(a)
    return a, ab, np.concatenate([[1.0], ab[:-1]])


def _lin_model(p, x, t, y):
    """eps_hat = a[t] x + b[t] (+ c[y], c's last row the null class): a model NumPy can repeat."""
    def col(v):
        return v[:, None, None, None]
    eps = col(p["a"][t]) * x + col(p["b"][t])
    return eps if y is None else eps + col(p["c"][y])


def _lin_np(p, x, t, y):
    p = {k: np.asarray(v) for k, v in p.items()}
    t = np.broadcast_to(t, (x.shape[0],))
    eps = p["a"][t][:, None, None, None] * x + p["b"][t][:, None, None, None]
    return eps if y is None else eps + p["c"][np.asarray(y)][:, None, None, None]


def _lin_params(seed=0):
    r = np.random.default_rng(seed)
    return {"a": jnp.asarray(0.5 + 0.3 * r.standard_normal(T)), "b": jnp.asarray(0.2 * r.standard_normal(T)),
            "c": jnp.asarray(0.5 * r.standard_normal(K + 1))}


def _schedule():
    return make_schedule(T, beta_start=B0, beta_end=B1)


def _key(seed):
    """An rbg key (XLA's RngBitGenerator): on CPU its samplers compile several times faster than threefry's."""
    return jax.random.key(seed, impl="rbg")


def _one_line_error(fn, match, *args, **kwargs):
    with pytest.raises(ValueError, match=match) as e:
        fn(*args, **kwargs)
    assert "\n" not in str(e.value)
    return str(e.value)


# ----------------------------------------------------------------------------------------- schedules

def test_linear_schedule_known_values():
    s = make_schedule(1000)
    assert isinstance(s, Schedule) and s.num_steps == 1000 and s.betas.dtype == jnp.float64
    b = np.asarray(s.betas)
    assert b[0] == pytest.approx(1e-4, rel=1e-12) and b[-1] == pytest.approx(0.02, rel=1e-12)
    np.testing.assert_allclose(np.diff(b), (0.02 - 1e-4) / 999, rtol=1e-9)
    a, ab, prev = _np_schedule(np.linspace(1e-4, 0.02, 1000))
    np.testing.assert_allclose(s.alphas, a, rtol=1e-15)
    np.testing.assert_allclose(s.alphas_cumprod, ab, rtol=1e-12)
    assert 3e-5 < ab[-1] < 6e-5                                         # Ho et al.: alpha_bar_T ~ 4e-5
    np.testing.assert_allclose(s.alphas_cumprod_prev, prev, rtol=1e-12)
    np.testing.assert_allclose(s.sqrt_alphas_cumprod ** 2, ab, rtol=1e-12)
    np.testing.assert_allclose(s.sqrt_one_minus_alphas_cumprod ** 2, 1 - ab, rtol=1e-12)
    np.testing.assert_allclose(s.sqrt_recip_alphas, 1 / np.sqrt(a), rtol=1e-12)
    np.testing.assert_allclose(s.posterior_variance, b * (1 - prev) / (1 - ab), rtol=1e-12)
    assert float(s.posterior_variance[0]) == 0.0 and float(s.alphas_cumprod_prev[0]) == 1.0
    np.testing.assert_allclose(s.posterior_mean_coef1, b * np.sqrt(prev) / (1 - ab), rtol=1e-12)
    np.testing.assert_allclose(s.posterior_mean_coef2, np.sqrt(a) * (1 - prev) / (1 - ab), rtol=1e-12)
    assert make_schedule(4, dtype=jnp.float32).betas.dtype == jnp.float32
    with jax.enable_x64(False):
        assert make_schedule(4).alphas_cumprod.dtype == jnp.float32    # JAX's default float


def test_cosine_schedule_known_values():
    s = make_schedule(1000, "cosine")
    ab, b = np.asarray(s.alphas_cumprod), np.asarray(s.betas)

    def f(k):
        return np.cos((k / 1000 + 0.008) / 1.008 * np.pi / 2) ** 2
    assert 1 - 1e-4 < ab[0] < 1                                         # alpha_bar(0) ~ 1
    assert np.all(np.diff(ab) < 0) and ab[-1] < 1e-8                     # monotone, to ~0
    np.testing.assert_allclose(ab[:-1], f(np.arange(1, 1000)) / f(0), rtol=1e-10)
    assert b[-1] == pytest.approx(0.999) and np.all(b[:-1] < 0.999) and np.all(b > 0)   # only the last clipped
    np.testing.assert_allclose(ab, np.cumprod(1 - b), rtol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    ({"num_steps": 0}, r"make_schedule: `num_steps` must be a positive int, got 0"),
    ({"num_steps": 2.5}, r"make_schedule: `num_steps` must be a positive int, got 2.5"),
    ({"num_steps": True}, r"make_schedule: `num_steps` must be a positive int, got True"),
    ({"num_steps": 5, "kind": "quadratic"}, r"make_schedule: `kind` must be one of .* got 'quadratic'"),
    ({"num_steps": 5, "beta_start": 0.1, "beta_end": 0.01}, r"make_schedule: `beta_start` must be <= `beta_end`"),
    ({"num_steps": 5, "beta_end": 1.0}, r"make_schedule: `beta_end` must be in \(0, 1\), got 1.0"),
    ({"num_steps": 5, "beta_start": float("nan")}, r"make_schedule: `beta_start` .* got nan"),
    ({"num_steps": 5, "kind": "cosine", "cosine_s": -0.1}, r"make_schedule: `cosine_s` must be a non-negative number"),
    ({"num_steps": 5, "kind": "cosine", "max_beta": 1.0}, r"make_schedule: `max_beta` must be in \(0, 1\), got 1.0"),
])
def test_make_schedule_refuses_bad_arguments(kwargs, match):
    _one_line_error(make_schedule, match, **kwargs)


# --------------------------------------------------------------------------------------- q_sample

def test_q_sample_closed_form_mean_and_variance():
    s = make_schedule(10, beta_start=0.01, beta_end=0.3)
    ab = np.cumprod(1 - np.linspace(0.01, 0.3, 10))
    rng = np.random.default_rng(0)
    v, n, steps = np.array([1.5, -0.5, 0.25]), 40000, (0, 3, 6, 9)
    x0 = np.tile(v, (n, 1))
    t = np.repeat(steps, n // 4).astype(np.int32)
    noise = rng.standard_normal((n, 3))
    xt, nan_rows = jax.jit(lambda x0, t, noise: (q_sample(s, x0, t, noise),
                                                 q_sample(s, x0[:3], t[:3] + jnp.array([10, -1, 0]), noise[:3])))(
        jnp.asarray(x0), jnp.asarray(t), jnp.asarray(noise))
    xt = np.asarray(xt)
    np.testing.assert_allclose(xt, np.sqrt(ab[t])[:, None] * x0 + np.sqrt(1 - ab[t])[:, None] * noise,
                               rtol=1e-13, atol=1e-13)
    for step in steps:                       # the moments of q(x_t | x_0) = N(sqrt(ab) x0, (1 - ab) I)
        rows = xt[t == step]
        se = np.sqrt((1 - ab[step]) / rows.shape[0])
        assert np.all(np.abs(rows.mean(0) - np.sqrt(ab[step]) * v) < 5 * se)
        np.testing.assert_allclose(rows.var(0), 1 - ab[step], rtol=0.06)   # 4 standard errors (sqrt(2/n) = 0.014)
    nan_rows = np.asarray(nan_rows)          # a traced t outside [0, T) gives NaN, not a clamped step
    assert np.isnan(nan_rows[:2]).all() and np.isfinite(nan_rows[2]).all()


def test_q_sample_refuses_bad_inputs():
    s, x0 = _schedule(), jnp.zeros((2, 4))
    assert "got values in [0, 7]" in _one_line_error(q_sample, r"q_sample: `t` must be in \[0, 7\)",
                                                     s, x0, jnp.array([0, 7]), x0)
    _one_line_error(q_sample, r"q_sample: `t` must be in \[0, 7\) .* got values in \[-1, 2\]", s, x0,
                    np.array([-1, 2]), x0)
    _one_line_error(q_sample, r"q_sample: `t` must hold integer step indices, got dtype float", s, x0,
                    jnp.array([0.0, 1.0]), x0)
    _one_line_error(q_sample, r"q_sample: `t` must be a scalar or \(N,\) = \(2,\)", s, x0, jnp.array([0, 1, 2]), x0)
    _one_line_error(q_sample, r"q_sample: `noise` must have x0's shape \(2, 4\), got \(2, 3\)", s, x0,
                    jnp.array([0, 1]), jnp.zeros((2, 3)))
    _one_line_error(q_sample, r"q_sample: `x0` must be a batch \(N, ...\) of rank >= 2, got shape \(4,\)", s,
                    jnp.zeros(4), 0, jnp.zeros(4))
    _one_line_error(q_sample, r"q_sample: `x0` must be a float array, got dtype int", s, jnp.zeros((2, 4), int), 0,
                    x0)
    _one_line_error(q_sample, r"q_sample: `schedule` must be a Schedule from make_schedule, got dict",
                    s._asdict(), x0, 0, x0)


# -------------------------------------------------------------------------------------- ddpm_loss

def test_ddpm_loss_value_and_gradient_match_the_formula():
    s, p = _schedule(), _lin_params()
    rng = np.random.default_rng(1)
    x0 = jnp.asarray(rng.standard_normal((8, 2, 2, 1)))
    labels = jnp.array([0, 1, 2, 0, 1, 2, 0, 1])
    key = _key(3)
    ab_table = jnp.asarray(np.cumprod(1 - np.linspace(B0, B1, T)))

    def explicit(p):
        k_t, k_n, k_d = jax.random.split(key, 3)           # the key use ddpm_loss documents
        t = jax.random.randint(k_t, (8,), 0, T)
        eps = jax.random.normal(k_n, x0.shape)
        ab = ab_table[t][:, None, None, None]
        x_t = jnp.sqrt(ab) * x0 + jnp.sqrt(1 - ab) * eps
        y = jnp.where(jax.random.bernoulli(k_d, 0.5, (8,)), NULL_LABEL, labels)
        return jnp.mean((_lin_model(p, x_t, t, y) - eps) ** 2), (t, eps, x_t, y)

    def run(p):
        def loss(q=p, **kw):
            return ddpm_loss(_lin_model, q, x0, key, s, **kw)
        l, g = jax.value_and_grad(lambda q: loss(q, labels=labels, cond_drop=0.5))(p)
        opt = optax.sgd(0.2)                                  # one optax step along the gradient
        stepped = optax.apply_updates(p, opt.update(g, opt.init(p), p)[0])
        return ((l, g), jax.value_and_grad(explicit, has_aux=True)(p), loss(stepped, labels=labels, cond_drop=0.5),
                loss(labels=labels, cond_drop=1.0), loss(labels=jnp.full((8,), NULL_LABEL), cond_drop=0.0), loss())
    (l, g), ((le, (t, eps, x_t, y)), ge), l_stepped, l_all, l_null, l_none = jax.jit(run)(p)
    t, eps, x_t, y = map(np.asarray, (t, eps, x_t, y))
    assert 0 < np.sum(y == NULL_LABEL) < 8                # the draw dropped some labels and kept others
    np.testing.assert_allclose(l, le, rtol=1e-13)
    np.testing.assert_allclose(l, np.mean((_lin_np(p, x_t, t, y) - eps) ** 2), rtol=1e-12)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(ge)):
        assert np.all(np.isfinite(a)) and np.any(a != 0)
        np.testing.assert_allclose(a, b, rtol=1e-11, atol=1e-15)
    assert l_stepped < 0.95 * l                           # the loss decreases along its gradient
    assert float(l_all) == pytest.approx(float(l_null), rel=1e-14)   # cond_drop=1: every label is the null one
    assert abs(float(l_all) - float(l)) > 1e-6
    np.testing.assert_allclose(l_none, np.mean((_lin_np(p, x_t, t, None) - eps) ** 2), rtol=1e-12)   # y=None


def test_ddpm_loss_refuses_bad_inputs():
    s, x0, key = _schedule(), jnp.zeros((2, 2, 2, 1)), _key(0)
    p = _lin_params()
    _one_line_error(ddpm_loss, r"ddpm_loss: `cond_drop` must be in \[0, 1\], got 1.5", _lin_model, p, x0, key, s,
                    labels=jnp.array([0, 1]), cond_drop=1.5)
    _one_line_error(ddpm_loss, r"ddpm_loss: `labels` must be \(N,\) = \(2,\) integer class indices, got shape \(3,\)",
                    _lin_model, p, x0, key, s, labels=jnp.array([0, 1, 2]))
    _one_line_error(ddpm_loss, r"ddpm_loss: `labels` must be .* dtype float", _lin_model, p, x0, key, s,
                    labels=jnp.array([0.0, 1.0]))
    _one_line_error(ddpm_loss, r"ddpm_loss: `cond_drop` must be in \[0, 1\], got nan", _lin_model, p, x0, key, s,
                    labels=jnp.array([0, 1]), cond_drop=float("nan"))
    _one_line_error(ddpm_loss, r"ddpm_loss: `x0` must be a batch", _lin_model, p, jnp.zeros(3), key, s)
    _one_line_error(jax.eval_shape, r"ddpm_loss: `model_fn` must return the noise prediction of x_t's shape "
                    r"\(2, 2, 2, 1\), got shape \(2, 4\)",
                    lambda: ddpm_loss(lambda p, x, t, y: x.reshape(2, 4), p, x0, key, s))


# ----------------------------------------------------------------------------------------- sampling

def _posterior_step_np(s_np, p, x, t, labels, w, z, clip=None):
    """x_{t-1} by the posterior-mean formula: mu = coef1 x0_hat + coef2 x_t, plus sigma z."""
    betas, a, ab, prev = s_np
    t = np.broadcast_to(t, (x.shape[0],))
    col = (slice(None), None, None, None)
    eps = _lin_np(p, x, t, labels)
    if w:
        eps = (1 + w) * eps - w * _lin_np(p, x, t, np.full(x.shape[0], -1))
    x0_hat = (x - np.sqrt(1 - ab[t])[col] * eps) / np.sqrt(ab[t])[col]
    if clip is not None:
        x0_hat = np.clip(x0_hat, -clip, clip)
    mean = (betas[t] * np.sqrt(prev[t]) / (1 - ab[t]))[col] * x0_hat + \
        (np.sqrt(a[t]) * (1 - prev[t]) / (1 - ab[t]))[col] * x
    return mean + np.sqrt(betas[t] * (1 - prev[t]) / (1 - ab[t]))[col] * z


def test_sample_steps_determinism_and_guidance_zero():
    s, p = _schedule(), _lin_params()
    betas = np.linspace(B0, B1, T)
    s_np = (betas, *_np_schedule(betas))
    shape, labels, w = (3, 2, 2, 1), jnp.array([0, 2, 1]), 1.5

    def conditional(p, x, t, y):           # the conditional model with the labels built in, run unconditionally
        return _lin_model(p, x, t, labels)

    @jax.jit
    def run(key):                          # sample inside jit, with the draws it documents
        k_init, k_steps = jax.random.split(key)
        zs = jax.lax.map(lambda k: jax.random.normal(k, shape), jax.random.split(k_steps, T))
        return (sample(_lin_model, p, key, shape, s, labels=labels, guidance=w, every=2),
                jax.random.normal(k_init, shape), zs,
                sample(_lin_model, p, key, shape, s, labels=labels, guidance=0.0),
                sample(conditional, p, key, shape, s))
    (x0, frames), x_t, zs, plain, cond = run(_key(7))
    assert x0.shape == shape and x0.dtype == jnp.float64 and np.all(np.isfinite(x0))
    assert frames.shape == (T // 2 + 1,) + shape
    np.testing.assert_array_equal(frames[0], x_t)
    x = np.asarray(x_t)
    for j in range(T):                     # step j goes from t = T-1-j to t - 1; frames every 2 steps
        x = _posterior_step_np(s_np, p, x, T - 1 - j, labels, w, np.asarray(zs[j]))
        if (j + 1) % 2 == 0:
            np.testing.assert_allclose(frames[(j + 1) // 2], x, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(x0, x, rtol=1e-10, atol=1e-12)   # T = 7: the last step is not a frame
    np.testing.assert_array_equal(plain, cond)                   # guidance 0 is the conditional model alone
    assert not np.allclose(plain, x0)                            # and guidance 1.5 is not
    again, other = run(_key(7)), run(_key(8))
    np.testing.assert_array_equal(again[0][0], x0)               # determinism for a key
    np.testing.assert_array_equal(again[3], plain)
    assert not np.allclose(other[0][0], x0)
    f32 = jax.eval_shape(lambda: sample(_lin_model, p, _key(0), shape,
                                        make_schedule(T, beta_start=B0, beta_end=B1, dtype=jnp.float32)))
    assert f32.dtype == jnp.float32 and f32.shape == shape       # the samples take the schedule's dtype


def test_p_sample_clip_and_per_example_steps():
    s, p = _schedule(), _lin_params()
    betas = np.linspace(B0, B1, T)
    s_np = (betas, *_np_schedule(betas))
    x = 3 * np.random.default_rng(2).standard_normal((3, 2, 2, 1))
    key, t = _key(4), np.array([4, 0, 2], np.int32)
    out, z = jax.jit(lambda x, key: (p_sample(_lin_model, p, s, x, t, key, labels=jnp.array([1, 0, 2]), clip=0.5),
                                     jax.random.normal(key, x.shape)))(jnp.asarray(x), key)
    want = _posterior_step_np(s_np, p, x, t, np.array([1, 0, 2]), 0.0, np.asarray(z), clip=0.5)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    assert not np.allclose(want, _posterior_step_np(s_np, p, x, t, np.array([1, 0, 2]), 0.0, np.asarray(z)))
    _one_line_error(p_sample, r"p_sample: `t` must be in \[0, 7\) .* got values in \[7, 7\]", _lin_model, p, s,
                    jnp.asarray(x), 7, key)
    _one_line_error(p_sample, r"p_sample: `guidance`=2.0 needs `labels`", _lin_model, p, s, jnp.asarray(x), 3, key,
                    guidance=2.0)
    _one_line_error(p_sample, r"p_sample: `guidance` must be a non-negative number, got inf", _lin_model, p, s,
                    jnp.asarray(x), 3, key, labels=jnp.array([0, 1, 2]), guidance=float("inf"))


@pytest.mark.parametrize("kwargs, match", [
    ({"guidance": -1.0}, r"sample: `guidance` must be a non-negative number, got -1.0"),
    ({"guidance": float("nan")}, r"sample: `guidance` must be a non-negative number, got nan \(not a finite number\)"),
    ({"guidance": "strong"}, r"sample: `guidance` must be a non-negative number, got 'strong'"),
    ({"guidance": 1.0, "labels": None}, r"sample: `guidance`=1.0 needs `labels`"),
    ({"shape": (3,)}, r"sample: `shape` must be a tuple \(N, ...\) of rank >= 2 of positive ints, got \(3,\)"),
    ({"shape": (0, 2)}, r"sample: `shape` must be .* got \(0, 2\)"),
    ({"labels": jnp.array([0, 1])}, r"sample: `labels` must be \(N,\) = \(3,\) integer class indices"),
    ({"every": 0}, r"sample: `every` must be a positive int, got 0"),
    ({"clip": 0.0}, r"sample: `clip` must be a positive number, got 0.0"),
    ({"schedule": None}, r"sample: `schedule` must be a Schedule from make_schedule, got NoneType"),
])
def test_sample_refuses_bad_arguments(kwargs, match):
    args = {"shape": (3, 2, 2, 1), "schedule": _schedule(), "labels": jnp.array([0, 1, 2]), **kwargs}
    _one_line_error(sample, match, _lin_model, _lin_params(), _key(0), args.pop("shape"),
                    args.pop("schedule"), **args)


# ---------------------------------------------------------------------------------------------- UNet

def _draw_params(model, shape, seed=0):
    """Params of ``model.init``'s shapes drawn by NumPy (nothing compiled): weights N(0, 1/fan_in), gains
    1 + N(0, 0.1^2), other vectors N(0, 0.1^2)."""
    abstract = jax.eval_shape(lambda k: model.init(k, shape)[0], _key(0))
    rng = np.random.default_rng(seed)

    def draw(path, a):
        z = rng.standard_normal(a.shape)
        if len(a.shape) >= 2:
            return jnp.asarray(z / np.sqrt(np.prod(a.shape[:-1])))
        return jnp.asarray((1.0 if "gamma" in jax.tree_util.keystr(path) else 0.0) + 0.1 * z)
    return abstract, jax.tree_util.tree_map_with_path(draw, abstract)


def test_unet_output_shape_and_time_and_label_embeddings():
    unet = UNet((4, 8), num_classes=K, groups=4)
    abstract, params = _draw_params(unet, (1, 4, 4, 2))
    assert sorted(abstract) == ["down", "head", "label", "mid", "stem", "time", "up"]
    assert abstract["label"]["w"].shape == (K + 1, 16) and abstract["stem"]["w"].shape == (3, 3, 2, 4)
    assert abstract["head"]["conv"]["w"].shape == (3, 3, 4, 2) and abstract["up"]["0"]["up"]["w"].shape == (3, 3, 8, 8)
    assert abstract["down"]["0"]["down"]["w"].shape == (3, 3, 4, 4) and "down" not in abstract["down"]["1"]
    assert unet.output_shape((5, 4, 4, 2)) == (5, 4, 4, 2)
    image = np.random.default_rng(3).standard_normal((1, 4, 4, 2))
    x = jnp.asarray(np.concatenate([image] * 5 + [-image]))
    t = jnp.array([3, 7, 3, 3, 3, 3])
    y = jnp.array([1, 1, 2, NULL_LABEL, K, 1])

    @jax.jit
    def run(p, x, t, y):
        return (unet.apply(p, {}, (x, t, y), train=False), unet.conditioning(p, t[:2], None),
                unet.conditioning(p, t[:2], jnp.array([NULL_LABEL, NULL_LABEL])),
                unet.conditioning(p, t[:2], y[:2] * jnp.array([1, 5])),
                timestep_embedding(jnp.array([0, 3, 9]), 8), timestep_embedding(jnp.array([0, 3, 9]), 7))
    (eps, state), e_none, e_null, e_bad, pe8, pe7 = run(params, x, t, y)
    assert state == {} and eps.shape == x.shape and eps.dtype == jnp.float64 and np.all(np.isfinite(eps))
    eps = np.asarray(eps)

    def differ(i, j):
        return np.abs(eps[i] - eps[j]).max() > 1e-3 * np.abs(eps[i]).max()
    assert differ(0, 1)                       # the time step changes the output
    assert differ(0, 2)                       # the label changes it
    assert differ(0, 5)                       # and the image
    np.testing.assert_allclose(eps[3], eps[4], rtol=1e-13)             # -1 and num_classes: the null class
    np.testing.assert_allclose(e_none, e_null, rtol=1e-14)             # y=None: the null class
    assert e_none.shape == (2, 16) and np.abs(np.asarray(e_none[0] - e_none[1])).max() > 1e-3
    assert np.all(np.isfinite(e_bad[0])) and np.all(np.isnan(e_bad[1]))   # a traced label 5 > num_classes: NaN
    # the time embedding is the transformer's sinusoid at rows t (odd widths end in a sine)
    np.testing.assert_allclose(pe8, np.asarray(sinusoidal_positions(10, 8))[[0, 3, 9]], rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(pe7, np.asarray(sinusoidal_positions(10, 7))[[0, 3, 9]], rtol=1e-12, atol=1e-12)


def test_unet_through_the_loss_and_the_sampler_traced():
    unet = UNet((4, 8), blocks=2, num_classes=K, groups=4)
    abstract, params = _draw_params(unet, (2, 4, 4, 1))
    s = _schedule()
    grads = jax.eval_shape(jax.grad(lambda p: ddpm_loss(unet.eps, p, jnp.zeros((2, 4, 4, 1)), _key(0), s,
                                                        labels=jnp.array([0, 2]))), params)
    assert jax.tree.structure(grads) == jax.tree.structure(abstract)
    assert all(g.shape == a.shape for g, a in zip(jax.tree.leaves(grads), jax.tree.leaves(abstract)))
    out = jax.eval_shape(lambda p: sample(unet.eps, p, _key(0), (2, 4, 4, 1), s, labels=jnp.array([0, 1]),
                                          guidance=3.0, every=2), params)
    assert out[0].shape == (2, 4, 4, 1) and out[1].shape == (T // 2 + 1, 2, 4, 4, 1)


def test_unet_refuses_bad_inputs():
    unet, cond = UNet((4, 8), groups=4), UNet((4, 8), num_classes=K, groups=4)
    params = cparams = {}                  # every check comes before the params are read
    x = jnp.zeros((2, 4, 4, 1))
    _one_line_error(unet.apply, r"UNet: `x` must be \(N, H, W, C\), got shape \(4, 4, 1\)", params, {},
                    (jnp.zeros((4, 4, 1)), 0), train=False)
    _one_line_error(unet.apply, r"UNet: H and W of x \(2, 5, 5, 1\) must be divisible by 2\^\(levels - 1\) = 2",
                    params, {}, (jnp.zeros((2, 5, 5, 1)), 0), train=False)
    _one_line_error(unet.apply, r"UNet: `t` must be a scalar or \(N,\) = \(2,\), got shape \(3,\)", params, {},
                    (x, jnp.array([0, 1, 2])), train=False)
    _one_line_error(unet.apply, r"UNet: apply takes the tuple \(x, t\) or \(x, t, y\)", params, {}, x, train=False)
    _one_line_error(unet.apply, r"UNet: labels `y` given to an unconditional UNet", params, {},
                    (x, 0, jnp.array([0, 1])), train=False)
    _one_line_error(cond.apply, r"UNet: labels `y` must be in \[0, 3\) or -1 / 3 \(the null class\), got values "
                    r"in \[0, 4\]", cparams, {}, (x, 0, jnp.array([0, 4])), train=False)
    _one_line_error(cond.apply, r"got values in \[-2, 1\]", cparams, {}, (x, 0, jnp.array([-2, 1])), train=False)
    _one_line_error(cond.apply, r"UNet: `y` must be \(N,\) = \(2,\) integer labels", cparams, {},
                    (x, 0, jnp.array([0.0, 1.0])), train=False)
    _one_line_error(unet.init, r"UNet: `input_shape` must be \(N, H, W, C\), got shape \(4, 4, 1\)",
                    _key(0), (4, 4, 1))
    _one_line_error(UNet, r"UNet: `widths` must be a non-empty tuple of positive ints, got \(\)", ())
    _one_line_error(UNet, r"UNet: `widths` must be .* got \(8, 0\)", (8, 0))
    _one_line_error(UNet, r"UNet: `blocks` must be a positive int, got 0", (8,), blocks=0)
    _one_line_error(UNet, r"UNet: `num_classes` must be a positive int, got 0", (8,), num_classes=0)
    _one_line_error(UNet, r"UNet: `groups` must be a positive int, got 0", (8,), groups=0)
    _one_line_error(UNet, r"UNet: `time_features` must be a positive int, got -4", (8,), time_features=-4)
