"""A real model trained with the manual and with the autodiff backward gives the same numbers."""
import jax
import numpy as np

from jaxnet import nn
from jaxnet.data import load_digits, normalize_dataset
from jaxnet.optim import make_optimizer
from jaxnet.train import fit


def test_convnet_trained_either_way_gives_the_same_numbers():
    ds = normalize_dataset(load_digits(seed=0), "channel")
    runs = {}
    for impl in ("manual", "auto"):
        model = nn.small_convnet(channels=(8, 16), num_classes=10, impl=impl)
        runs[impl] = fit(model, ds, optimizer=make_optimizer("adam", 3e-3), epochs=2, batch_size=64,
                         key=0, impl=impl, progress=False)
    m, a = runs["manual"], runs["auto"]
    np.testing.assert_allclose(m.history["train_loss"], a.history["train_loss"], rtol=1e-4)
    np.testing.assert_allclose(m.history["val_acc"], a.history["val_acc"], atol=1 / 270 + 1e-9)
    for x, y in zip(jax.tree_util.tree_leaves(m.train_state.params), jax.tree_util.tree_leaves(a.train_state.params)):
        np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-5)
    assert m.history["val_acc"][-1] > 0.5
