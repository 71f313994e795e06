"""Every op under jax.jit and jax.vmap, both paths; per-example gradients with vmap."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import functional as F
from jaxnet import registry
from jaxnet.gradcheck import rel_error
from conftest import normal

SPECS = registry.SPECS


def _first_case_args(spec, seed=0):
    case = spec.cases[0]
    args = spec.sample(jax.random.PRNGKey(seed), case.dims, jnp.float64)
    return case, args


# The reference path ("auto") is plain jax.numpy, whose jit and vmap are JAX's; the input checks are
# shared by both paths. The default suite runs the manual path (custom_vjp under jit/vmap is
# jaxnet's own code); the reference path's twins are in the slow tier (make test-slow).
IMPLS = ["manual", pytest.param("auto", marks=pytest.mark.slow)]


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("spec", SPECS, ids=[s.name for s in SPECS])
def test_jit_matches_eager(x64, spec, impl):
    case, args = _first_case_args(spec)
    eager = spec.call(impl, args, case)
    jitted = jax.jit(lambda a: spec.call(impl, a, case))(args)
    assert rel_error(eager, jitted) < 1e-12


# vmap and its gradient: one op per family in the default suite (each op compiles four programs,
# ~1-4 s); every other op is in the slow tier (make test-slow). jit vs eager above stays on every op.
VMAP_DEFAULT = {"affine", "elu", "softmax_cross_entropy", "conv2d", "max_pool2d", "batch_norm", "dropout",
                "word_embedding", "rnn", "scaled_dot_product_attention", "gram_matrix", "nt_xent_loss",
                "upsample_bilinear", "roi_align"}
VMAP_SPECS = [s if s.name in VMAP_DEFAULT else pytest.param(s, marks=pytest.mark.slow) for s in SPECS]


def test_vmap_default_ops_are_one_per_family():
    fam = {s.name: s.family for s in SPECS}
    assert VMAP_DEFAULT <= set(fam) and {fam[n] for n in VMAP_DEFAULT} == set(fam.values())


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("spec", VMAP_SPECS, ids=[s.name for s in SPECS])
def test_vmap_matches_a_loop(x64, spec, impl):
    """vmap over a leading axis of stacked inputs = calling the op on each slice."""
    case = spec.cases[0]
    batches = [spec.sample(jax.random.PRNGKey(s), case.dims, jnp.float64) for s in range(3)]
    stacked = jax.tree_util.tree_map(lambda *xs: jnp.stack(xs), *batches)
    if spec.name == "dropout":      # keys are stacked as key data; vmap handles typed keys too
        stacked = (stacked[0], jnp.stack([b[1] for b in batches]))

    def out(a):
        return spec.differentiable_output(spec.call(impl, a, case))

    # each side is jitted (one compile for all slices; eager dispatch is test_jit_matches_eager's job)
    vmapped = jax.jit(jax.vmap(lambda *a: out(a)))(*stacked)
    one = jax.jit(lambda *a: out(a))
    looped = jnp.stack([one(*b) for b in batches])
    assert rel_error(vmapped, looped) < 1e-12
    # and the gradient of the vmapped op equals the per-slice gradients
    diff = [i for i in spec.diff_argnums if batches[0][i] is not None]

    def with_diff(args, values):
        full = list(args)
        for i, v in zip(diff, values):
            full[i] = v
        return full

    def total(values):
        return jnp.sum(jax.vmap(lambda *a: out(a))(*with_diff(stacked, values)) ** 2)

    def single(values, b):
        return jnp.sum(out(with_diff(b, values)) ** 2)

    g_vmap = jax.jit(jax.grad(total))([stacked[i] for i in diff])
    g_single = jax.jit(jax.grad(single))
    for j, b in enumerate(batches):
        g_one = g_single([b[i] for i in diff], b)
        assert rel_error([g[j] for g in g_vmap], g_one) < 1e-9


@pytest.mark.parametrize("impl", IMPLS)       # the reference path's twin in the slow tier, as above
def test_per_example_gradients_of_a_small_convnet(x64, impl):
    """vmap(grad(loss of one example)) equals the gradient of each example alone."""
    k = jax.random.split(jax.random.PRNGKey(0), 5)
    params = {"conv": {"w": normal(k[0], (3, 3, 1, 4)) * 0.3, "b": jnp.zeros(4)},
              "fc": {"w": normal(k[1], (16, 3)) * 0.3, "b": jnp.zeros(3)}}
    x = normal(k[2], (5, 4, 4, 1))
    y = jax.random.randint(k[3], (5,), 0, 3)

    def loss(p, xi, yi):          # one example, kept as a batch of one inside
        h = F.relu(F.conv2d(xi[None], p["conv"]["w"], p["conv"]["b"], padding=1, impl=impl), impl=impl)
        h = F.max_pool2d(h, window=2, impl=impl)
        return F.softmax_cross_entropy(F.affine(h, p["fc"]["w"], p["fc"]["b"], impl=impl), yi[None], impl=impl)

    per_example = jax.jit(jax.vmap(jax.grad(loss), in_axes=(None, 0, 0)))(params, x, y)
    grad_alone = jax.jit(jax.grad(loss))
    for i in range(5):
        alone = grad_alone(params, x[i], y[i])
        for a, b in zip(jax.tree_util.tree_leaves(per_example), jax.tree_util.tree_leaves(alone)):
            np.testing.assert_allclose(a[i], b, rtol=1e-10, atol=1e-12)
    # and their mean is the batch gradient
    def batch_loss(p):
        return jnp.mean(jax.vmap(loss, in_axes=(None, 0, 0))(p, x, y))
    full = jax.jit(jax.grad(batch_loss))(params)
    for a, b in zip(jax.tree_util.tree_leaves(per_example), jax.tree_util.tree_leaves(full)):
        np.testing.assert_allclose(jnp.mean(a, axis=0), b, rtol=1e-10, atol=1e-12)
