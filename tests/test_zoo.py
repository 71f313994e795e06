"""jaxnet.nn.zoo: every architecture's parameter count (torchvision's and the lecture's), shapes, errors.

Counts and shapes come from ``jax.eval_shape`` (nothing is compiled or allocated); one small
net runs for real."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet.nn import zoo
from jaxnet.nn import summary
from jaxnet.nn.summary import count_params

# torchvision 0.2x's parameter counts for the same configurations (1000 classes); LeNet-5:
# the lecture's 61,706; the CIFAR nets: He et al.'s with projection shortcuts (zoo docstring).
COUNTS = {
    "lenet5": 61_706, "alexnet": 61_100_840, "googlenet": 6_624_904,
    "zfnet": 107_627_624,                                    # no torchvision twin: this layout's (zoo.zfnet)
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032, "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "cifar_resnet20": 272_474, "cifar_resnet32": 466_906, "cifar_resnet44": 661_338, "cifar_resnet56": 855_770,
    "cifar_resnet110": 1_730_714,
    "cifar_plain20": 269_722, "cifar_plain32": 464_154, "cifar_plain44": 658_586, "cifar_plain56": 853_018,
    "cifar_plain110": 1_727_962,
    "wrn16_4": 2_748_890, "wrn28_10": 36_479_194,           # Zagoruyko & Komodakis: 2.7 M, 36.5 M
    "mobilenet": 4_231_976,                                  # Howard et al.: 4.2 M
}


def _params(model, shape):
    return jax.eval_shape(lambda k: model.init(k, shape)[0], jax.random.key(0))


def test_every_model_is_pinned():
    assert set(COUNTS) == set(zoo.ZOO)


@pytest.mark.parametrize("name", sorted(COUNTS))
def test_parameter_count_and_output_shape(name):
    make, shape = zoo.ZOO[name]
    model = make()
    assert count_params(_params(model, (2,) + shape)) == COUNTS[name]
    assert model.output_shape((2,) + shape) == (2, 10 if name.startswith(("lenet", "cifar", "wrn")) else 1000)


def test_shapes_inside_the_nets_are_the_lectures():
    # AlexNet: CONV1 55x55 (torchvision's 64 filters; the lecture's 96 give 34,944 params: 11*11*3*96 + 96)
    a = zoo.alexnet()
    x = (1, 224, 224, 3)
    assert a.layers[0].output_shape(x) == (1, 55, 55, 64)
    assert a.output_shape(x) == (1, 1000)
    # ZFNet (Zeiler & Fergus fig. 3): 110x110x96 after CONV1, 26x26x256 after CONV2, 6x6x512 into fc6
    z, h, seen = zoo.zfnet(), x, {}
    for name, layer in zip(z.names, z.layers):
        h = seen[name] = layer.output_shape(h)
    assert (seen["conv1"], seen["conv2"], seen["pool5"]) == ((1, 110, 110, 96), (1, 26, 26, 256), (1, 6, 6, 512))
    # ResNet-50: 56x56 after the stem and pool, 7x7x2048 before the average pool
    r = zoo.resnet(50)
    h = x
    for name, layer in zip(r.names, r.layers):
        h = layer.output_shape(h)
        if name == "pool":
            assert h == (1, 56, 56, 64)
        if name == "stage4":
            assert h == (1, 7, 7, 2048)
    # the plain twin has the ResNet's layers minus the projection shortcuts
    res, plain = _params(zoo.cifar_resnet(20), (1, 32, 32, 3)), _params(zoo.cifar_resnet(20, plain=True),
                                                                         (1, 32, 32, 3))
    shortcuts = sum(count_params(res[f"stage{s}"]["block1"]["add"]["shortcut"]) for s in (2, 3))
    assert count_params(res) - count_params(plain) == shortcuts == 16 * 32 + 2 * 32 + 32 * 64 + 2 * 64


def test_a_small_net_runs_and_learns_its_shapes():
    model = zoo.cifar_resnet(8, width=4)
    params, state = model.init(jax.random.key(0), (2, 16, 16, 3))
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3)), jnp.float32)

    @jax.jit
    def step(params, state, x):
        def loss(p):
            logits, new_state = model.apply(p, state, x, train=True)
            return jnp.sum(jax.nn.log_softmax(logits)[:, 0]), (logits, new_state)
        return jax.grad(loss, has_aux=True)(params)

    grads, (logits, new_state) = step(params, state, x)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grads))
    # batch norm's running statistics moved (train mode)
    assert not np.allclose(new_state["stem"]["bn"]["mean"], state["stem"]["bn"]["mean"])


def test_zero_init_residual_starts_every_block_as_its_shortcut():
    """torchvision's ``zero_init_residual``: the last BN gamma of each body is 0, nothing else
    changes (same parameter tree and count), and a block's output is relu(shortcut(x))."""
    from jaxnet.nn import BatchNorm
    model, zero = zoo.cifar_resnet(8, width=4), zoo.cifar_resnet(8, width=4, zero_init_residual=True)
    shape = (2, 8, 8, 3)
    p, s = model.init(jax.random.key(0), shape)
    pz, _ = zero.init(jax.random.key(0), shape)
    assert jax.tree.structure(p) == jax.tree.structure(pz)
    last = [pz[f"stage{i}"]["block1"]["add"]["body"]["bn2"]["gamma"] for i in (1, 2, 3)]
    assert all(np.array_equal(g, np.zeros_like(g)) for g in last)
    assert np.array_equal(pz["stage1"]["block1"]["add"]["body"]["bn1"]["gamma"], np.ones(4))
    block = zero.layers[zero.names.index("stage2")].layers[0]          # projection shortcut, stride 2
    x = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 8, 4)), jnp.float32)
    bp, bs = pz["stage2"]["block1"], s["stage2"]["block1"]
    y, _ = block.apply(bp, bs, x, train=True)
    short = block.layers[0].shortcut
    ys, _ = short.apply(bp["add"]["shortcut"], bs["add"]["shortcut"], x, train=True)
    np.testing.assert_allclose(y, jax.nn.relu(ys), rtol=1e-6, atol=1e-6)
    rz = zoo.resnet(50, zero_init_residual=True)
    assert count_params(_params(rz, (1, 64, 64, 3))) == count_params(_params(zoo.resnet(50), (1, 64, 64, 3)))
    body = rz.layers[rz.names.index("stage1")].layers[0].layers[0].body            # bottleneck: bn3 is last
    assert body.layers[body.names.index("bn3")].gamma_init == 0 and body.layers[body.names.index("bn2")].gamma_init == 1
    with pytest.raises(ValueError, match="BatchNorm: `gamma_init` must be a finite number"):
        BatchNorm(gamma_init=float("nan"))


@pytest.mark.parametrize("make, match", [
    (lambda: zoo.cifar_resnet(8, plain=True, zero_init_residual=True), "cifar_resnet: `zero_init_residual` needs"),
    (lambda: zoo.vgg(12), "vgg: depth must be one of"),
    (lambda: zoo.resnet(20), "resnet: depth must be one of"),
    (lambda: zoo.cifar_resnet(21), "cifar_resnet: depth must be 6n"),
    (lambda: zoo.cifar_resnet(20, width=0), "cifar_resnet: `width` must be a positive int"),
    (lambda: zoo.alexnet(num_classes=0), "alexnet: `num_classes`"),
    (lambda: zoo.lenet5(num_classes=2.5), "lenet5: `num_classes`"),
    (lambda: zoo.wide_resnet(27, 10), "wide_resnet: depth must be 6n \\+ 4"),
    (lambda: zoo.wide_resnet(28, 0), "wide_resnet: `widen`"),
    (lambda: zoo.mobilenet(width=0), "mobilenet: `width` must be a positive number"),
])
def test_bad_configurations_are_one_line_errors(make, match):
    with pytest.raises(ValueError, match=match) as e:
        make()
    assert "\n" not in str(e.value)


def test_wrong_input_size_is_a_one_line_error_with_the_shapes():
    a = zoo.alexnet()
    params, state = jax.eval_shape(lambda k: a.init(k, (1, 224, 224, 3)), jax.random.key(0))
    with pytest.raises(ValueError, match="affine") as e:    # 7x7x256 features where fc6 was built for 6x6
        jax.eval_shape(lambda p, x: a.apply(p, state, x, train=False), params,
                       jax.ShapeDtypeStruct((1, 256, 256, 3), jnp.float32))
    first = str(e.value).splitlines()[0]                     # (JAX appends a note on its traceback filter)
    assert first.startswith("affine: ") and "12544" in first and "9216" in first, first


# ----------------------------------------------------------------------------- accounting

@pytest.mark.parametrize("name, gmacs", [("alexnet", 0.71), ("vgg16", 15.47), ("resnet18", 1.81),
                                         ("resnet50", 4.09), ("resnet152", 11.51),
                                         ("googlenet", 1.50), ("mobilenet", 0.57)])
def test_multiply_adds_match_the_published_counts(name, gmacs):
    """torchvision's documented GFLOPS (multiply-adds, 224x224) for the same nets."""
    make, shape = zoo.ZOO[name]
    s = summary(make(), (2,) + shape)
    assert round(s.macs_per_example / 1e9, 2) == gmacs
    assert s.total_macs == 2 * s.macs_per_example


def test_the_lectures_alexnet_conv1_and_vgg16_memory():
    from jaxnet.nn import Conv2D, Sequential
    # CONV1: 96 11x11 filters at stride 4 on 227x227x3 -> 55x55x96, 34,944 parameters
    s = summary(Sequential((Conv2D(96, kernel=11, stride=4, padding=0),), ("conv1",)), (1, 227, 227, 3))
    assert s.output_shape == (1, 55, 55, 96) and s.total_params == 34_944
    assert s.total_macs == 55 * 55 * 96 * 11 * 11 * 3
    # VGG-16: the lecture's per-layer memory (input, every conv, pool and fc output) sums to
    # 15.2 M values per image, 61 MB forward; its "TOTAL memory: 24M * 4 bytes ~= 96MB" is off
    v = summary(zoo.vgg(16), (1, 224, 224, 3))
    n = 224 * 224 * 3 + sum(int(np.prod(r.output_shape)) for r in v.rows
                            if r.layer_type in ("Conv2D", "MaxPool2D", "Affine"))
    assert n == 15_237_608


def test_summary_command(capsys):
    from jaxnet.cli import main
    assert main(["summary", "resnet18"]) == 0
    out = capsys.readouterr().out
    assert "total params: 11,689,512" in out and "1,814.1 M multiply-adds" in out
    assert main(["summary", "convnet", "--input", "8x8x1", "--batch", "4"]) == 0
    assert "input (4, 8, 8, 1)" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["summary", "nope"], "unknown model 'nope'"),
    (["summary", "convnet"], "--input HxWxC is needed for 'convnet'"),
    (["summary", "lenet5", "--input", "32x32"], "--input must be HxWxC"),
    (["summary", "lenet5", "--batch", "0"], "--batch must be >= 1"),
    (["summary", "resnet18", "--input", "3x3x3"], "resnet18 on input 3x3x3:"),
])
def test_summary_command_bad_input_is_one_line(argv, message, capsys):
    from jaxnet.cli import main
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err


def test_inception_naive_vs_bottleneck_operation_counts():
    """The lecture's example: a 28x28x256 input. Naive module (1x1 128, 3x3 192, 5x5 96, 3x3 pool):
    28x28x672 out, ~854 M multiply-adds. With 1x1 bottlenecks (64 before the 3x3 and the 5x5, 64
    after the pool): 28x28x480 out and 271 M (the notes' "358M" does not follow from its layers)."""
    from jaxnet.nn import Conv2D, MaxPool2D, Parallel
    naive = Parallel((Conv2D(128, kernel=1), Conv2D(192, kernel=3), Conv2D(96, kernel=5), MaxPool2D(3, 1, padding=1)))
    s = summary(naive, (1, 28, 28, 256))
    assert s.output_shape == (1, 28, 28, 672)
    assert s.total_macs == 784 * (128 * 256 + 192 * 9 * 256 + 96 * 25 * 256) == 854_196_224
    b = summary(zoo.inception(128, 64, 192, 64, 96, 64, five_by_five=True), (1, 28, 28, 256))
    assert b.output_shape == (1, 28, 28, 480)
    assert b.total_macs == 784 * (128 * 256 + 64 * 256 + 192 * 9 * 64 + 64 * 256 + 96 * 25 * 64 + 64 * 256) == 271_351_808
    # torchvision's GoogLeNet has a 3x3 kernel in the "5x5" branch; the paper's 5x5: 7,005,832 parameters
    assert count_params(_params(zoo.googlenet(five_by_five=True), (1, 224, 224, 3))) == 7_005_832


def test_mobilenet_multiply_adds_and_depthwise_convolutions():
    """Howard et al. table 1 / 8: 569 M multiply-adds at 224x224, width 1.0; the depthwise
    convolutions are feature-grouped (one 3x3 filter per channel)."""
    s = summary(zoo.mobilenet(), (1, 224, 224, 3))
    assert round(s.macs_per_example / 1e6) == 569
    dw = [r for r in s.rows if r.path.endswith("/dw")]
    assert len(dw) == 13 and all(r.params == 9 * r.output_shape[-1] for r in dw)
    half = summary(zoo.mobilenet(width=0.5), (1, 224, 224, 3))
    assert round(half.total_params / 1e6, 1) == 1.3          # the paper's 0.5 MobileNet-224: 1.3 M


def test_local_response_norm_layer_and_alexnets_norm(x64):
    from jaxnet.nn import LocalResponseNorm
    from jaxnet.ops.norm import _local_response_norm_oracle
    x = np.random.default_rng(3).standard_normal((1, 2, 2, 6))
    layer = LocalResponseNorm(size=5, alpha=5e-4, beta=0.75, k=2.0)
    y, _ = jax.jit(lambda x: layer.apply({}, {}, x, train=False))(jnp.asarray(x))
    np.testing.assert_allclose(y, _local_response_norm_oracle(x, size=5, alpha=5e-4, beta=0.75, k=2.0), rtol=1e-13)
    a = zoo.alexnet(lrn=True)
    assert [n for n in a.names if n.startswith("norm")] == ["norm1", "norm2"]
    assert count_params(_params(a, (1, 224, 224, 3))) == COUNTS["alexnet"]     # NORM has no parameters


def test_stochastic_depth_drops_whole_examples_and_is_the_identity_in_eval():
    from jaxnet.nn import Conv2D, Residual, Sequential, StochasticDepth
    sd = StochasticDepth(0.5)
    x = jnp.ones((16, 2, 2, 3))

    @jax.jit
    def run(x, key):
        return jax.value_and_grad(lambda x: jnp.sum(sd.apply({}, {}, x, train=True, key=key)[0]))(x)

    total, g = run(x, jax.random.key(0))
    y = sd.apply({}, {}, x, train=True, key=jax.random.key(0))[0]
    per_row = np.asarray(y).reshape(16, -1)
    assert set(np.unique(per_row)) <= {0.0, 2.0}                      # dropped, or kept and scaled by 1/(1-p)
    assert all(len(set(r)) == 1 for r in per_row)                      # a whole example at a time
    assert 0 < (per_row[:, 0] == 0).sum() < 16
    np.testing.assert_array_equal(g, y)                                # d(sum y)/dx is the mask
    assert sd.apply({}, {}, x, train=False)[0] is x
    with pytest.raises(ValueError, match="StochasticDepth.*needs a PRNG key"):
        sd.apply({}, {}, x, train=True)
    with pytest.raises(ValueError, match="StochasticDepth"):
        StochasticDepth(1.0)
    # in a residual block a dropped example is its shortcut alone
    block = Residual(Sequential((Conv2D(3, bias=False), StochasticDepth(0.5))))
    params, state = block.init(jax.random.key(1), x.shape)
    out = np.asarray(block.apply(params, state, x, train=True, key=jax.random.key(2))[0]).reshape(16, -1)
    dropped = (out == 1.0).all(axis=1)
    assert 0 < dropped.sum() < 16


def test_reshape_layer():
    from jaxnet.nn import Reshape
    r = Reshape((2, -1))
    assert r.output_shape((3, 2, 2, 3)) == (3, 2, 6)
    x = jnp.arange(24.0).reshape(2, 12)
    np.testing.assert_array_equal(r.apply({}, {}, x, train=False)[0], np.arange(24.0).reshape(2, 2, 6))
    for bad in ((2, -1, -1), (0, 3), "23", (2.0,)):
        with pytest.raises(ValueError, match="Reshape: `shape` must be"):
            Reshape(bad)
    with pytest.raises(ValueError, match=r"Reshape: cannot reshape each example of input \(1, 7\)"):
        Reshape((2, -1)).output_shape((1, 7))
