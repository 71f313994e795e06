"""PyTorch state_dict <-> jaxnet params (jaxnet.nn.interop), and torchvision logit parity.

The layout tests need no torch.  The parity tests build randomly initialised torchvision
networks, convert their state_dicts, and compare logits; they need torch and torchvision
(the ``bench`` extra: ``make bench`` installs them) and skip without them, saying so.
"""
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxnet import nn
from jaxnet.nn import zoo
from jaxnet.nn.interop import from_torch_state_dict, parametrised_layers, to_torch_state_dict

SMALL = nn.Sequential((nn.Conv2D(4, kernel=3, padding=1), nn.BatchNorm(), nn.ReLU(), nn.MaxPool2D(2),
                       nn.Flatten(), nn.Affine(5, bias=False), nn.ReLU(), nn.Affine(3)),
                      names=("conv", "bn", "relu", "pool", "flat", "fc1", "relu2", "fc2"))
SHAPE = (2, 6, 4, 3)      # H != W: the flatten reorder must not assume a square map


def _params(model, shape, seed=0):
    """Random params and running statistics (NumPy draws), in the model's structure."""
    p_like, s_like = jax.eval_shape(lambda k: model.init(k, shape), jax.random.key(0))
    rng = np.random.default_rng(seed)
    draw = lambda a: jnp.asarray(rng.uniform(0.5, 1.5, a.shape) if a.ndim == 1 else  # noqa: E731
                                 rng.standard_normal(a.shape) / np.sqrt(np.prod(a.shape[:-1])), a.dtype)
    return jax.tree_util.tree_map(draw, p_like), jax.tree_util.tree_map(draw, s_like)


def test_layers_are_listed_in_the_order_the_model_applies_them():
    layers = parametrised_layers(SMALL, SHAPE)
    assert [(p, k) for p, k, _, _ in layers] == [(("conv",), "conv"), (("bn",), "batchnorm"),
                                                (("fc1",), "linear"), (("fc2",), "linear")]
    assert layers[2][3] == (3, 2, 4) and layers[3][3] is None     # fc1 reads a flattened 3x2x4 map
    block = parametrised_layers(zoo.resnet(18), (1, 64, 64, 3))
    paths = [".".join(p) for p, *_ in block]
    i = paths.index("stage2.block1.add.body.bn2")
    assert paths[i + 1:i + 3] == ["stage2.block1.add.shortcut.conv", "stage2.block1.add.shortcut.bn"]
    assert [k for _, k, _, _ in block].count("conv") == 20 and len(block) == 41   # 17 + 3 shortcuts, 20 bn, fc


def test_round_trip_is_exact(x64):
    params, state = _params(SMALL, SHAPE)
    sd = to_torch_state_dict(SMALL, params, state, SHAPE)
    assert sd["conv.weight"].shape == (4, 3, 3, 3) and sd["fc1.weight"].shape == (5, 24)
    assert "fc1.bias" not in sd and sd["bn.running_var"].shape == (4,)
    p2, s2 = from_torch_state_dict(SMALL, sd, SHAPE)
    assert jax.tree_util.tree_structure(p2) == jax.tree_util.tree_structure(params)
    for a, b in zip(jax.tree_util.tree_leaves((params, state)), jax.tree_util.tree_leaves((p2, s2))):
        np.testing.assert_array_equal(a, b)
        assert b.dtype == jnp.float64


def test_pytorch_layouts_compute_the_same_layer_outputs(x64):
    """The converted weights, applied the PyTorch way (NCHW cross-correlation, (C, H, W) flatten,
    x @ W.T), give the jaxnet layers' outputs."""
    params, state = _params(SMALL, SHAPE)
    sd = to_torch_state_dict(SMALL, params, state, SHAPE)
    x = np.random.default_rng(1).standard_normal(SHAPE)
    # the convolution, NCHW with OIHW weights, by loops over the 3x3 window
    w, b = sd["conv.weight"], sd["conv.bias"]
    xc = np.pad(x.transpose(0, 3, 1, 2), ((0, 0), (0, 0), (1, 1), (1, 1)))
    ref = np.zeros((2, 4, 6, 4)) + b[None, :, None, None]
    for i in range(3):
        for j in range(3):
            ref += np.einsum("nchw,oc->nohw", xc[:, :, i:i + 6, j:j + 4], w[:, :, i, j])
    got = SMALL.layers[0].apply(params["conv"], {}, jnp.asarray(x), train=False)[0]
    np.testing.assert_allclose(np.asarray(got).transpose(0, 3, 1, 2), ref, rtol=1e-12, atol=1e-12)
    # the linear layer after the flatten: PyTorch flattens (C, H, W)
    feat = np.random.default_rng(2).standard_normal((2, 3, 2, 4))           # N, H, W, C
    torch_way = feat.transpose(0, 3, 1, 2).reshape(2, -1) @ sd["fc1.weight"].T
    jax_way = feat.reshape(2, -1) @ np.asarray(params["fc1"]["w"])
    np.testing.assert_allclose(torch_way, jax_way, rtol=1e-12)


def _drop_fc2(sd):
    del sd["fc2.bias"], sd["fc2.weight"]


@pytest.mark.parametrize("edit, needle", [
    (_drop_fc2, "3 parametrised modules, the model 4"),
    (lambda sd: sd.update({"fc1.bias": np.zeros(5)}), r"torch gives \['b', 'w'\], the model wants \['w'\]"),
    (lambda sd: sd.update({"fc2.weight": np.zeros((3, 6))}), r"w has shape \(6, 3\) after conversion, the model wants \(5, 3\)"),
    (lambda sd: sd.update({"conv.weight": np.zeros((4, 3))}), "a torch linear paired with a jaxnet conv"),
])
def test_mismatches_are_one_line_errors(edit, needle):
    params, state = _params(SMALL, SHAPE)
    sd = to_torch_state_dict(SMALL, params, state, SHAPE)
    edit(sd)
    with pytest.raises(ValueError, match=needle) as e:
        from_torch_state_dict(SMALL, sd, SHAPE)
    assert str(e.value).startswith("from_torch_state_dict: ") and "\n" not in str(e.value)


def test_unknown_module_kind_is_named():
    sd = {"embed.weight": np.zeros((3, 4, 5))}
    with pytest.raises(ValueError, match=r"module 'embed' with entries \['weight'\] is not a convolution"):
        from_torch_state_dict(nn.Sequential((nn.Affine(2),)), sd, (1, 3))


# ------------------------------------------------------------------------- torchvision parity

_HAVE_TV = importlib.util.find_spec("torch") is not None and importlib.util.find_spec("torchvision") is not None
needs_torchvision = pytest.mark.skipif(
    not _HAVE_TV, reason="torchvision parity: torch and torchvision are not installed here "
                         "(`make bench` installs the bench extra, which has both)")


def _import_torchvision():
    """torchvision, also where its compiled ops do not load against the installed torch (PyPI's
    torchvision wheel is built for CUDA torch; with the CPU torch wheel its import stops at
    registering the ops' meta kernels). The models are Python and need none of those ops, so the
    import is retried with the meta-kernel registration turned off."""
    import sys

    import torch
    try:
        import torchvision
        return torchvision
    except RuntimeError as e:
        if "does not exist" not in str(e):
            raise
    for name in [n for n in sys.modules if n == "torchvision" or n.startswith("torchvision.")]:
        del sys.modules[name]
    register = torch.library.register_fake
    torch.library.register_fake = lambda *a, **k: (lambda f: f)
    try:
        import torchvision
    finally:
        torch.library.register_fake = register
    return torchvision


def _torchvision_logits(name, dtype, size, seed=0):
    import torch
    torchvision = _import_torchvision()
    torch.manual_seed(seed)
    kwargs = {"aux_logits": False, "init_weights": True} if name == "googlenet" else {}
    net = getattr(torchvision.models, name)(weights=None, **kwargs).to(dtype).eval()
    with torch.no_grad():       # non-trivial running statistics, so the state mapping is tested
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(seed).standard_normal((2, 3, size, size))
    with torch.no_grad():
        logits = net(torch.from_numpy(x).to(dtype)).numpy()
    return net.state_dict(), x.transpose(0, 2, 3, 1), logits


@needs_torchvision
@pytest.mark.parametrize("name, model, size", [
    ("resnet18", lambda: zoo.resnet(18), 64),
    ("vgg11", lambda: zoo.vgg(11), 224),
    ("alexnet", lambda: zoo.alexnet(), 224),
])
def test_torchvision_logits_in_float64(x64, name, model, size):
    import torch
    sd, x, want = _torchvision_logits(name, torch.float64, size)
    m = model()
    params, state = from_torch_state_dict(m, sd, x.shape, dtype=jnp.float64)
    got = jax.jit(lambda p, s, x: m.apply(p, s, x, train=False)[0])(params, state, jnp.asarray(x))
    assert got.dtype == jnp.float64
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-9, atol=1e-9 * np.abs(want).max())


@needs_torchvision
def test_torchvision_resnet50_logits_in_float32():
    import torch
    sd, x, want = _torchvision_logits("resnet50", torch.float32, 64)
    m = zoo.resnet(50)
    params, state = from_torch_state_dict(m, sd, x.shape, dtype=jnp.float32)
    got = jax.jit(lambda p, s, x: m.apply(p, s, x, train=False)[0])(params, state, jnp.asarray(x, jnp.float32))
    assert got.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(got), want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
