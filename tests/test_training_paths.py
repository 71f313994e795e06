"""A real model trained with the manual and with the autodiff backward gives the same numbers.

In float64: the two paths then agree to round-off over the whole run (measured: parameters
8e-15 apart, relative to their largest entry, after 2 epochs; every loss identical). In float32
the two runs separate like any two float32 runs of Adam, by ~100x per epoch from round-off, and
how far they have got after 2 epochs depends on the compiler's choices (3e-7 relative at XLA's
default LLVM level, 0.3% of a first-layer weight at -O0), which float64 leaves no room for."""
import jax
import numpy as np

from jaxnet import nn
from jaxnet.data import load_digits, normalize_dataset
from jaxnet.optim import make_optimizer
from jaxnet.train import fit


def test_convnet_trained_either_way_gives_the_same_numbers(x64):
    ds = normalize_dataset(load_digits(seed=0), "channel")
    ds = ds.replace(**{k: getattr(ds, k).astype(np.float64) for k in ("x_train", "x_val", "x_test")})
    runs = {}
    for impl in ("manual", "auto"):
        model = nn.small_convnet(channels=(8, 16), num_classes=10, impl=impl)
        runs[impl] = fit(model, ds, optimizer=make_optimizer("adam", 3e-3), epochs=2, batch_size=64,
                         key=0, impl=impl, progress=False)
    m, a = runs["manual"], runs["auto"]
    leaves = jax.tree_util.tree_leaves(m.train_state.params)
    assert leaves and all(x.dtype == np.float64 for x in leaves)
    np.testing.assert_allclose(m.history["train_loss"], a.history["train_loss"], rtol=1e-12)
    np.testing.assert_allclose(m.history["val_acc"], a.history["val_acc"], atol=1e-12)
    for x, y in zip(leaves, jax.tree_util.tree_leaves(a.train_state.params)):
        np.testing.assert_allclose(x, y, rtol=1e-9, atol=1e-12 * float(np.max(np.abs(y))))
    assert m.history["val_acc"][-1] > 0.5
