"""Op arguments: every hyperparameter refuses NaN, inf, bools, strings and out-of-range
values with a one-line ValueError naming the op and the argument, accepts NumPy
scalars wherever it accepts Python numbers (with the same result), and padding is
never negative.  Labels outside [0, C) give the same result on both paths, and
``losses.checked`` reports them under jit.
"""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.experimental import checkify

from jaxnet import manual, ops
from jaxnet.ops import losses

PATHS = {"reference": ops, "manual": manual}
KEY = jax.random.PRNGKey(0)
z = jnp.zeros


def _x(shape, dtype=None):
    """Standard normal input drawn by NumPy (an eager jax.random draw compiles a kernel per shape)."""
    return jnp.asarray(np.random.default_rng(0).standard_normal(shape), dtype or jnp.result_type(float))


def _bn(m, name, **kw):
    return getattr(m, name)(_x((2, 3, 3, 4)), jnp.ones(4), z(4), z(4), jnp.ones(4), train=True, **kw)[0]


# (op, argument) -> (call(m, value), a valid Python value, NumPy spellings of it, bad values)
NAN, INF = float("nan"), float("inf")
FLOAT_BAD = [NAN, INF, -INF, "0.5", True, None, np.float32("nan")]
INT_BAD = [0, -1, 1.0, 2.5, True, "2", None, np.float64(2.0)]
HYPER = {
    ("leaky_relu", "slope"): (lambda m, v: m.leaky_relu(_x((2, 5)), slope=v), 0.2,
                              [np.float32(0.2), np.float64(0.2)], FLOAT_BAD + [-0.1]),
    ("elu", "alpha"): (lambda m, v: m.elu(_x((2, 5)), alpha=v), 0.5, [np.float32(0.5), np.float64(0.5)],
                       FLOAT_BAD + [-1.0]),
    ("maxout", "pieces"): (lambda m, v: m.maxout(_x((2, 6)), pieces=v), 3, [np.int64(3), np.int32(3)], INT_BAD),
    ("svm_hinge", "margin"): (lambda m, v: m.svm_hinge(_x((4, 3)), jnp.array([0, 1, 2, 0]), margin=v), 0.5,
                              [np.float32(0.5), np.float64(0.5)], FLOAT_BAD + [-1.0]),
    ("conv2d", "stride"): (lambda m, v: m.conv2d(_x((1, 5, 5, 2)), _x((3, 3, 2, 2)), stride=v), 2,
                           [np.int64(2), (np.int64(2), np.int32(2)), np.array([2, 2])], INT_BAD),
    ("conv2d", "dilation"): (lambda m, v: m.conv2d(_x((1, 5, 5, 2)), _x((2, 2, 2, 2)), dilation=v), 2,
                             [np.int64(2)], INT_BAD),
    ("conv2d", "groups"): (lambda m, v: m.conv2d(_x((1, 4, 4, 2)), _x((3, 3, 1, 2)), groups=v), 2,
                           [np.int64(2)], INT_BAD),
    ("conv2d", "padding"): (lambda m, v: m.conv2d(_x((1, 4, 4, 2)), _x((3, 3, 2, 2)), padding=v), 1,
                            [np.int64(1), (np.int64(1), 1), ((np.int64(1), 1), (1, 1))],
                            [-1, (-1, -1), (1, -1), ((0, -1), (0, 0)), 1.0, (1.5, 1), "FULL", True, None]),
    ("conv2d_transpose", "stride"): (lambda m, v: m.conv2d_transpose(_x((1, 3, 3, 2)), _x((3, 3, 2, 2)), stride=v),
                                     2, [np.int64(2)], INT_BAD),
    ("conv2d_transpose", "padding"): (lambda m, v: m.conv2d_transpose(_x((1, 3, 3, 2)), _x((3, 3, 2, 2)),
                                                                       padding=v),
                                      1, [np.int64(1)], [-1, np.int64(-1), 1.0, (1, 1), "SAME", True]),
    ("max_pool2d", "window"): (lambda m, v: m.max_pool2d(_x((1, 4, 4, 2)), window=v), 2, [np.int64(2)], INT_BAD),
    ("max_pool2d", "stride"): (lambda m, v: m.max_pool2d(_x((1, 5, 5, 2)), window=3, stride=v), 2,
                               [np.int64(2)], [v for v in INT_BAD if v is not None]),   # None: the window
    ("max_pool2d", "padding"): (lambda m, v: m.max_pool2d(_x((1, 3, 3, 2)), window=3, stride=2, padding=v), 1,
                                [np.int64(1), (np.int64(1), 1)], [-1, (-1, -1), ((0, -1), (0, 0)), 1.0, 3]),
    ("avg_pool2d", "window"): (lambda m, v: m.avg_pool2d(_x((1, 4, 4, 2)), window=v), 2, [np.int64(2)], INT_BAD),
    ("avg_pool2d", "padding"): (lambda m, v: m.avg_pool2d(_x((1, 3, 3, 2)), window=3, stride=2, padding=v), 1,
                                [np.int64(1)], [-1, (-1, -1), ((0, -1), (0, 0)), 2.0, (3, 3)]),
    ("batch_norm", "momentum"): (lambda m, v: _bn(m, "batch_norm", momentum=v), 0.5,
                                 [np.float32(0.5), np.float64(0.5)], FLOAT_BAD + [-0.1, 1.5]),
    ("batch_norm", "eps"): (lambda m, v: _bn(m, "batch_norm", eps=v), 1e-3, [np.float32(1e-3), np.float64(1e-3)],
                            FLOAT_BAD + [0.0, -1e-5]),
    ("spatial_batch_norm", "eps"): (lambda m, v: _bn(m, "spatial_batch_norm", eps=v), 1e-3, [np.float64(1e-3)],
                                    FLOAT_BAD + [0.0]),
    ("spatial_batch_norm", "momentum"): (lambda m, v: _bn(m, "spatial_batch_norm", momentum=v), 0.5,
                                         [np.float32(0.5)], FLOAT_BAD + [2.0]),
    ("conv2d_relu", "stride"): (lambda m, v: m.conv2d_relu(_x((1, 5, 5, 2)), _x((3, 3, 2, 2)), stride=v), 2,
                                [np.int64(2), (np.int64(2), np.int32(2))], INT_BAD),
    ("conv2d_relu", "dilation"): (lambda m, v: m.conv2d_relu(_x((1, 5, 5, 2)), _x((2, 2, 2, 2)), dilation=v), 2,
                                  [np.int64(2)], INT_BAD),
    ("conv2d_relu", "groups"): (lambda m, v: m.conv2d_relu(_x((1, 4, 4, 2)), _x((3, 3, 1, 2)), groups=v), 2,
                                [np.int64(2)], INT_BAD),
    ("conv2d_relu", "padding"): (lambda m, v: m.conv2d_relu(_x((1, 4, 4, 2)), _x((3, 3, 2, 2)), padding=v), 1,
                                 [np.int64(1), ((np.int64(1), 1), (1, 1))],
                                 [-1, (1, -1), 1.0, "FULL", True, None]),
    ("batch_norm_relu", "eps"): (lambda m, v: _bn(m, "batch_norm_relu", eps=v), 1e-3, [np.float32(1e-3)],
                                 FLOAT_BAD + [0.0, -1e-5]),
    ("batch_norm_relu", "momentum"): (lambda m, v: _bn(m, "batch_norm_relu", momentum=v), 0.5,
                                      [np.float64(0.5)], FLOAT_BAD + [-0.1, 1.5]),
    ("layer_norm", "eps"): (lambda m, v: m.layer_norm(_x((2, 5)), jnp.ones(5), z(5), eps=v), 1e-3,
                            [np.float32(1e-3), np.float64(1e-3)], FLOAT_BAD + [0.0]),
    ("group_norm", "eps"): (lambda m, v: m.group_norm(_x((1, 2, 2, 4)), jnp.ones(4), z(4), groups=2, eps=v), 1e-3,
                            [np.float32(1e-3)], FLOAT_BAD + [0.0]),
    ("group_norm", "groups"): (lambda m, v: m.group_norm(_x((1, 2, 2, 4)), jnp.ones(4), z(4), groups=v), 2,
                               [np.int64(2)], INT_BAD),
    ("local_response_norm", "size"): (lambda m, v: m.local_response_norm(_x((1, 2, 2, 4)), size=v), 3,
                                      [np.int64(3), np.int32(3)], INT_BAD),
    ("local_response_norm", "alpha"): (lambda m, v: m.local_response_norm(_x((1, 2, 2, 4)), alpha=v), 0.5,
                                       [np.float32(0.5), np.float64(0.5)], FLOAT_BAD + [-0.1]),
    ("local_response_norm", "beta"): (lambda m, v: m.local_response_norm(_x((1, 2, 2, 4)), beta=v), 0.5,
                                      [np.float32(0.5), np.float64(0.5)], FLOAT_BAD + [-0.1]),
    ("local_response_norm", "k"): (lambda m, v: m.local_response_norm(_x((1, 2, 2, 4)), k=v), 2.0,
                                   [np.float32(2.0), np.float64(2.0)], FLOAT_BAD + [0.0, -1.0]),
    ("dropout", "rate"): (lambda m, v: m.dropout(_x((4, 6)), KEY, rate=v), 0.5,
                          [np.float32(0.5), np.float64(0.5)], FLOAT_BAD + [-0.1, 1.0]),
    ("scaled_dot_product_attention", "dropout_rate"): (lambda m, v: m.scaled_dot_product_attention(
        _x((2, 5, 4)), _x((2, 6, 4)), _x((2, 6, 3)), key=KEY, dropout_rate=v, block_size=4), 0.5,
        [np.float32(0.5), np.float64(0.5)], FLOAT_BAD + [-0.1, 1.0]),
    ("scaled_dot_product_attention", "block_size"): (lambda m, v: m.scaled_dot_product_attention(
        _x((2, 5, 4)), _x((2, 6, 4)), _x((2, 6, 3)), block_size=v), 4, [np.int64(4), np.int32(4)], INT_BAD),
    ("patch_embed", "patch"): (lambda m, v: m.patch_embed(_x((1, 4, 4, 2)), _x((8, 3)), z(3), patch=v), 2,
                               [np.int64(2), np.int32(2)], INT_BAD),
    ("gan_generator_loss", "saturating"): (lambda m, v: m.gan_generator_loss(_x((5,)), saturating=v), True,
                                           [np.bool_(True)], [1, 0, 1.0, "True", None, np.int64(1), np.float32(1)]),
    ("cosine_similarity_matrix", "eps"): (lambda m, v: m.cosine_similarity_matrix(_x((3, 4)), _x((2, 4)), eps=v),
                                          1e-3, [np.float32(1e-3), np.float64(1e-3)], FLOAT_BAD + [0.0, -1e-8]),
    ("nt_xent_loss", "temperature"): (lambda m, v: m.nt_xent_loss(_x((4, 3)), temperature=v), 0.5,
                                      [np.float32(0.5), np.float64(0.5)], FLOAT_BAD + [0.0, -0.5]),
    ("upsample_nearest", "scale"): (lambda m, v: m.upsample_nearest(_x((1, 2, 2, 1)), scale=v), 2,
                                    [np.int64(2), (np.int64(2), np.int32(2))], INT_BAD + [(2, 0)]),
    ("upsample_bilinear", "scale"): (lambda m, v: m.upsample_bilinear(_x((1, 2, 2, 1)), scale=v), 2,
                                     [np.int64(2), (np.int64(2), np.int32(2))], INT_BAD + [(2, 0)]),
    ("max_unpool2d", "output_size"): (lambda m, v: m.max_unpool2d(_x((1, 2, 2, 1)), jnp.array([0, 1, 4, 5]).reshape(
        1, 2, 2, 1), output_size=v), 4, [np.int64(4), (np.int64(4), 4)], INT_BAD),
    ("roi_align", "output_size"): (lambda m, v: m.roi_align(_x((1, 4, 4, 2)), jnp.array([[0.0, 0.5, 3.0, 2.5]]),
                                                            jnp.array([0]), output_size=v), 2, [np.int64(2)], INT_BAD),
    ("roi_align", "spatial_scale"): (lambda m, v: m.roi_align(_x((1, 4, 4, 2)), jnp.array([[0.0, 0.5, 3.0, 2.5]]),
                                                              jnp.array([0]), output_size=2, spatial_scale=v), 0.5,
                                     [np.float32(0.5), np.float64(0.5)], FLOAT_BAD + [0.0, -1.0]),
    ("roi_align", "sampling_ratio"): (lambda m, v: m.roi_align(_x((1, 4, 4, 2)), jnp.array([[0.0, 0.5, 3.0, 2.5]]),
                                                               jnp.array([0]), output_size=2, sampling_ratio=v), 3,
                                      [np.int64(3), np.int32(3)], INT_BAD),
    ("roi_align", "aligned"): (lambda m, v: m.roi_align(_x((1, 4, 4, 2)), jnp.array([[0.0, 0.5, 3.0, 2.5]]),
                                                        jnp.array([0]), output_size=2, aligned=v), False,
                               [np.bool_(False)], [1, 0, 1.0, "True", None, np.int64(1), np.float32(1)]),
    ("roi_pool", "output_size"): (lambda m, v: m.roi_pool(_x((1, 4, 4, 2)), jnp.array([[0.0, 0.5, 3.0, 2.5]]),
                                                          jnp.array([0]), output_size=v), 2, [np.int64(2)], INT_BAD),
    ("roi_pool", "spatial_scale"): (lambda m, v: m.roi_pool(_x((1, 4, 4, 2)), jnp.array([[0.0, 0.5, 3.0, 2.5]]),
                                                            jnp.array([0]), output_size=2, spatial_scale=v), 0.5,
                                    [np.float32(0.5), np.float64(0.5)], FLOAT_BAD + [0.0, -1.0]),
    ("smooth_l1_loss", "beta"): (lambda m, v: m.smooth_l1_loss(_x((3, 4)), _x((3, 4)) * 0.5, beta=v), 0.5,
                                 [np.float32(0.5), np.float64(0.5)], FLOAT_BAD + [-0.5]),
    ("pixel_cross_entropy", "ignore_index"): (lambda m, v: m.pixel_cross_entropy(
        _x((1, 2, 2, 3)), jnp.array([0, 1, 2, 2]).reshape(1, 2, 2), ignore_index=v), 2,
        [np.int64(2), np.int32(2)], [1.0, 2.5, True, "2", None, np.float64(2.0)]),
}


def _ids(table):
    return [f"{op}-{arg}" for op, arg in table]


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("op,arg", list(HYPER), ids=_ids(HYPER))
def test_bad_hyperparameters_are_refused_in_one_line(op, arg, path):
    call, _, _, bad = HYPER[op, arg]
    for v in bad:
        with pytest.raises(ValueError) as e:
            call(PATHS[path], v)
        msg = str(e.value)
        assert msg.startswith(f"{op}: "), msg
        assert f"`{arg}`" in msg or (arg == "padding" and "padding" in msg), msg
        assert "\n" not in msg, msg


# NumPy spellings: one hyperparameter per op family (and both int and float kinds) in the default suite,
# each call compiling its op's kernels eagerly; the rest of the table is in the slow tier (make test-slow).
# The bad values above stay on every hyperparameter in the default suite.
SCALARS_DEFAULT = {("leaky_relu", "slope"), ("maxout", "pieces"), ("svm_hinge", "margin"), ("conv2d", "stride"),
                   ("conv2d", "padding"), ("max_pool2d", "padding"), ("batch_norm", "momentum"),
                   ("dropout", "rate"), ("patch_embed", "patch"), ("nt_xent_loss", "temperature"),
                   ("upsample_bilinear", "scale"), ("roi_align", "spatial_scale")}
assert SCALARS_DEFAULT <= set(HYPER)


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("op,arg", [k if k in SCALARS_DEFAULT else pytest.param(*k, marks=pytest.mark.slow)
                                    for k in HYPER], ids=_ids(HYPER))
def test_numpy_scalars_work_like_python_numbers(op, arg, path):
    call, good, spellings, _ = HYPER[op, arg]
    want = np.asarray(call(PATHS[path], good))
    for v in spellings:
        got = call(PATHS[path], v)
        assert got.dtype == want.dtype, (v, got.dtype)
        np.testing.assert_array_equal(np.asarray(got), want, err_msg=repr(v))


def test_every_op_hyperparameter_is_in_the_table():
    """Each keyword-only numeric argument of every op has a row."""
    import inspect
    skip = {"train", "approximate", "mask", "causal", "key"}   # flags, masks, keys: not numbers
    want = set()
    for name in ops.OP_NAMES:
        for p in inspect.signature(getattr(ops, name)).parameters.values():
            if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in skip:
                want.add((name, p.name))
    # stride/padding of avg_pool2d share max_pool2d's geometry checks (pool_geometry)
    assert want - set(HYPER) <= {("avg_pool2d", "stride")}, want - set(HYPER)


# ------------------------------------------------------------------------------------ shape arithmetic

@pytest.mark.parametrize("path", list(PATHS))
def test_geometry_refuses_empty_and_all_padding_shapes(path):
    m = PATHS[path]
    with pytest.raises(ValueError, match=r"conv2d: `x` \(1, 0, 4, 2\) has an empty spatial axis"):
        m.conv2d(z((1, 0, 4, 2)), z((1, 1, 2, 2)))
    with pytest.raises(ValueError, match=r"conv2d_transpose: `x` \(1, 4, 0, 2\) has an empty spatial axis"):
        m.conv2d_transpose(z((1, 4, 0, 2)), z((3, 3, 2, 2)))
    with pytest.raises(ValueError, match=r"max_pool2d: `x` \(1, 0, 0, 2\) has an empty spatial axis"):
        m.max_pool2d(z((1, 0, 0, 2)))
    with pytest.raises(ValueError, match=r"conv2d: the \(effective\) window 5 is larger than the padded input 4"):
        m.conv2d(z((1, 2, 6, 2)), z((5, 1, 2, 2)), padding=1)
    with pytest.raises(ValueError, match=r"conv2d: `kernel` must be a positive int"):
        m.conv2d(z((1, 4, 4, 2)), z((0, 3, 2, 2)))
    with pytest.raises(ValueError, match=r"conv2d_transpose: padding 2 crops everything"):
        m.conv2d_transpose(z((1, 1, 1, 2)), z((3, 3, 2, 2)), padding=2)
    with pytest.raises(ValueError, match=r"max_pool2d: padding 2 leaves a window entirely in the padding along H"):
        m.max_pool2d(z((1, 1, 1, 1)), window=2, stride=1, padding=2)
    with pytest.raises(ValueError, match=r"avg_pool2d: padding \(\(0, 0\), \(0, 3\)\) leaves a window entirely"):
        m.avg_pool2d(z((1, 2, 2, 1)), window=2, stride=1, padding=((0, 0), (0, 3)))
    # an empty batch is fine
    assert m.conv2d(z((0, 4, 4, 2)), z((3, 3, 2, 2))).shape == (0, 2, 2, 2)
    assert m.max_pool2d(z((0, 4, 4, 2))).shape == (0, 2, 2, 2)


# ----------------------------------------------------------------------------------------- labels

LOSSES = ("softmax_cross_entropy", "svm_hinge")


def _loss_and_grad(m, name, scores, labels, jit=False):
    f = jax.value_and_grad(lambda s: getattr(m, name)(s, labels))
    return (jax.jit(f) if jit else f)(scores)


# jitted (as training runs) in the default suite, which also runs the valid rows eagerly; the eager
# twins in the slow tier (make test-slow)
@pytest.mark.parametrize("jit", [pytest.param(False, marks=pytest.mark.slow), True], ids=["eager", "jit"])
@pytest.mark.parametrize("name", LOSSES)
def test_out_of_range_labels_give_nan_rows_on_both_paths(name, jit, x64):
    scores = _x((4, 10), jnp.float64)
    labels = jnp.array([3, 10, -1, 9])
    good = np.array([0, 3])
    results = {}
    for path, m in PATHS.items():
        loss, g = _loss_and_grad(m, name, scores, labels, jit)
        assert np.isnan(float(loss)), path
        g = np.asarray(g)
        assert np.isnan(g[1:3]).all(), (path, g)          # the rows with labels 10 and -1
        assert np.isfinite(g[good]).all(), (path, g)
        # the valid rows' gradients are those of the valid rows alone, rescaled to the batch of 4
        _, g_valid = _loss_and_grad(m, name, scores[good], labels[good])
        np.testing.assert_allclose(g[good], np.asarray(g_valid) / 2, rtol=1e-12)
        results[path] = g
    np.testing.assert_allclose(results["reference"], results["manual"], rtol=1e-12)


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("path", list(PATHS))
def test_checked_reports_the_first_bad_label_under_jit(name, path):
    m = PATHS[path]
    scores = _x((3, 10))

    def loss_fn(s, y):
        return getattr(m, name)(s, y)

    f = jax.jit(losses.checked(jax.grad(loss_fn)))
    err, g = f(scores, jnp.array([1, 2, 3]))
    assert err.get() is None and np.isfinite(np.asarray(g)).all()
    err, _ = f(scores, jnp.array([1, 10, -1]))
    assert f"{name}: label 10 at row 1 is outside [0, 10)" in err.get()
    with pytest.raises(Exception, match=r"label 10 at row 1"):
        err.throw()
    err, _ = jax.jit(losses.checked(loss_fn))(scores, jnp.array([0, 1, -3]))
    assert "label -3 at row 2" in err.get()
    # without the checked mode the loss traces under jit with no checks
    assert np.isnan(float(jax.jit(loss_fn)(scores, jnp.array([1, 10, -1]))))


def test_label_checks_with_checkify_directly():
    scores = _x((2, 3))
    f = checkify.checkify(jax.jit(lambda s, y: manual.svm_hinge(s, y) + ops.softmax_cross_entropy(s, y)))
    with losses.label_checks():
        err, _ = f(scores, jnp.array([0, 3]))
    assert "svm_hinge: label 3 at row 1 is outside [0, 3)" in err.get()


NEGATIVE_PADDINGS = [-1, np.int64(-1), (-1, -1), (1, -1), ((0, -1), (0, 0)), ((0, 0), (-2, 0))]


@pytest.mark.parametrize("path", list(PATHS))
def test_negative_padding_is_refused_everywhere(path):
    """On an input large enough that a cropped window would still fit."""
    m = PATHS[path]
    calls = {"conv2d": lambda p: m.conv2d(_x((1, 8, 8, 2)), _x((3, 3, 2, 2)), padding=p),
             "max_pool2d": lambda p: m.max_pool2d(_x((1, 8, 8, 2)), window=2, stride=1, padding=p),
             "avg_pool2d": lambda p: m.avg_pool2d(_x((1, 8, 8, 2)), window=2, stride=1, padding=p)}
    for op, call in calls.items():
        for p in NEGATIVE_PADDINGS:
            with pytest.raises(ValueError, match=rf"^{op}: `padding` must be >= 0"):
                call(p)
    for p in (-1, np.int64(-1)):
        with pytest.raises(ValueError, match=r"^conv2d_transpose: `padding` must be a non-negative int"):
            m.conv2d_transpose(_x((1, 3, 3, 2)), _x((3, 3, 2, 2)), padding=p)
