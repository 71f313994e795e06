"""Bad input raises a clear error naming the op, the argument and the shapes — on both paths."""
import jax
import jax.numpy as jnp
import pytest

from jaxnet import manual, ops

BOTH = pytest.mark.parametrize("m", [ops, manual], ids=["reference", "manual"])
z = jnp.zeros


@BOTH
def test_conv_wrong_rank(m):
    with pytest.raises(ValueError, match=r"conv2d: `x` must have rank 4 .*got shape \(7, 7, 3\)"):
        m.conv2d(z((7, 7, 3)), z((3, 3, 3, 2)))


@BOTH
def test_conv_channel_mismatch(m):
    with pytest.raises(ValueError, match=r"conv2d: channel mismatch: x \(1, 7, 7, 3\) has 3 channels.*"
                                         r"w \(3, 3, 4, 2\)"):
        m.conv2d(z((1, 7, 7, 3)), z((3, 3, 4, 2)))


@BOTH
def test_conv_groups_must_divide(m):
    with pytest.raises(ValueError, match=r"conv2d: groups=2 must divide the input channels 3"):
        m.conv2d(z((1, 7, 7, 3)), z((3, 3, 1, 4)), groups=2)


@BOTH
def test_conv_bias_shape(m):
    with pytest.raises(ValueError, match=r"conv2d: `b` must have shape \(2,\).*got \(3,\)"):
        m.conv2d(z((1, 7, 7, 3)), z((3, 3, 3, 2)), z((3,)))


@BOTH
def test_conv_bad_padding(m):
    with pytest.raises(ValueError, match=r"conv2d: `padding` string must be 'SAME' or 'VALID'"):
        m.conv2d(z((1, 7, 7, 3)), z((3, 3, 3, 2)), padding="FULL")
    with pytest.raises(ValueError, match=r"conv2d: `stride` must be a positive int"):
        m.conv2d(z((1, 7, 7, 3)), z((3, 3, 3, 2)), stride=0)


@BOTH
def test_window_larger_than_input(m):
    with pytest.raises(ValueError, match=r"max_pool2d: .*window 3 is larger than the padded input 2"):
        m.max_pool2d(z((1, 2, 2, 1)), window=3)


@BOTH
def test_pool_stride_does_not_fit(m):
    with pytest.raises(ValueError, match=r"avg_pool2d: stride 2 does not fit along H.*\(1, 7, 8, 1\)"):
        m.avg_pool2d(z((1, 7, 8, 1)), window=2)


@BOTH
def test_affine_feature_mismatch(m):
    with pytest.raises(ValueError, match=r"affine: `x` \(2, 3, 4\) flattens to D=12.*`w` \(10, 5\) expects D=10"):
        m.affine(z((2, 3, 4)), z((10, 5)), z((5,)))


@BOTH
def test_negative_dropout_rate(m):
    with pytest.raises(ValueError, match=r"dropout: `rate` is the probability of DROPPING.*got -0.1"):
        m.dropout(z((2, 3)), jax.random.PRNGKey(0), rate=-0.1)
    with pytest.raises(ValueError, match=r"dropout: `rate`.*got 1.0"):
        m.dropout(z((2, 3)), jax.random.PRNGKey(0), rate=1.0)
    with pytest.raises(ValueError, match=r"dropout: training-mode dropout needs an explicit PRNG `key`"):
        m.dropout(z((2, 3)), None, rate=0.5)


@BOTH
def test_loss_label_errors(m):
    with pytest.raises(ValueError, match=r"softmax_cross_entropy: `labels` must have one entry per row.*"
                                         r"scores \(4, 3\) and labels \(5,\)"):
        m.softmax_cross_entropy(z((4, 3)), jnp.zeros(5, jnp.int32))
    with pytest.raises(ValueError, match=r"svm_hinge: `labels` must be integer class indices"):
        m.svm_hinge(z((4, 3)), z((4,)))
    with pytest.raises(ValueError, match=r"svm_hinge: `scores` must have rank 2"):
        m.svm_hinge(z((4,)), jnp.zeros(4, jnp.int32))
    with pytest.raises(ValueError, match=r"l2_loss: `pred` and `target` must have the same shape, "
                                         r"got \(4, 3\) and \(4, 2\)"):
        m.l2_loss(z((4, 3)), z((4, 2)))


@BOTH
def test_norm_parameter_shapes(m):
    with pytest.raises(ValueError, match=r"batch_norm: `gamma` must have shape \(4,\).*got \(3,\)"):
        m.batch_norm(z((2, 4)), z((3,)), z((4,)), z((4,)), z((4,)), train=True)
    with pytest.raises(ValueError, match=r"spatial_batch_norm: `x` must have rank 4"):
        m.spatial_batch_norm(z((2, 4)), z((4,)), z((4,)), z((4,)), z((4,)), train=True)
    with pytest.raises(ValueError, match=r"group_norm: groups=3 must divide the channels of x \(1, 2, 2, 4\)"):
        m.group_norm(z((1, 2, 2, 4)), z((4,)), z((4,)), groups=3)
    with pytest.raises(ValueError, match=r"layer_norm: `beta` must have shape \(5,\)"):
        m.layer_norm(z((2, 5)), z((5,)), z((4,)))


@BOTH
def test_activation_parameter_errors(m):
    with pytest.raises(ValueError, match=r"maxout: the last axis of `x` \(2, 5\) must split into `pieces`=2"):
        m.maxout(z((2, 5)), pieces=2)
    with pytest.raises(ValueError, match=r"prelu: `alpha` must be a scalar or have shape \(5,\)"):
        m.prelu(z((2, 5)), z((4,)))
    with pytest.raises(ValueError, match=r"leaky_relu: `slope` must be a non-negative number"):
        m.leaky_relu(z((2, 5)), slope=-1.0)


@BOTH
def test_conv_transpose_errors(m):
    with pytest.raises(ValueError, match=r"conv2d_transpose: channel mismatch: x \(1, 4, 4, 3\)"):
        m.conv2d_transpose(z((1, 4, 4, 3)), z((3, 3, 2, 5)))
    with pytest.raises(ValueError, match=r"conv2d_transpose: `padding` must be a non-negative int"):
        m.conv2d_transpose(z((1, 4, 4, 3)), z((3, 3, 3, 5)), padding="SAME")
